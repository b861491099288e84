import math
import os
import subprocess
import sys

import pytest

# one thread a test process, and for the scripts the tests start: `pytest -n auto` runs a process per core, and two
# threads in each would fight over the cores (the suite takes 3 minutes so on 2 cores, 5 with threads contending)
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class GaussEnergy(nn.Module):
    """An unnormalised 2D Gaussian model, log p = -(x - mu)ᵀ P (x - mu)/2 - c with P = L Lᵀ: its true log Z is
    log 2π - log det P / 2, so NCE's c can be checked against the exact answer."""

    def __init__(self, mu=(0.0, 0.0), chol=((1.0, 0.0), (0.0, 1.0)), c=0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mu, dtype=torch.float64))
        self.chol = nn.Parameter(torch.tensor(chol, dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor([c], dtype=torch.float64))

    def forward(self, x):
        z = (x.to(self.mu.dtype) - self.mu) @ self.chol.tril()
        return (-0.5 * (z ** 2).sum(1, keepdim=True) - self.c).to(x.dtype)

    def score(self, x, scale=1.0):
        """scale · ∇ₓ log p, by autograd, for Langevin dynamics (EBM.score's counterpart)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return scale * torch.autograd.grad(self(x).sum(), x)[0]

    def scorer(self, scale=1.0):
        return lambda x: self.score(x, scale)

    def log_z(self):
        return math.log(2 * math.pi) - self.chol.diagonal().abs().log().sum().item()


def fitted_original(dataset, steps=600):
    """The original network after `steps` NCE steps (Adam, lr 3e-3, batches of 200) on 4000 points of dataset."""
    from data import sample_2d_data
    from model import EBM
    from noise import make_noise
    from util import value
    torch.manual_seed(0)
    x = sample_2d_data(dataset, 4000, torch.Generator().manual_seed(0))
    energy, noise = EBM(), make_noise('gaussian', x)
    opt = torch.optim.Adam(energy.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (200,))]
        loss = value(energy, noise, batch, noise.sample((200,)))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return energy


@pytest.fixture
def run(tmp_path):
    """Run a repo script in a subprocess inside tmp_path; returns the CompletedProcess."""
    def run(script, *args, cwd=None, timeout=120):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd or tmp_path,
                              env=env, capture_output=True, text=True, timeout=timeout)
    return run


def error_line(stderr):
    """The error of a refused command, 'prog: error: ...', with at most one line after it, the one that points to
    --help (a run that fails mid-way has its progress bar above it; tests/test_cli.py checks that a refused
    command line says nothing before it). Returns the error's line."""
    lines = stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if ': error: ' in line]
    assert errors, stderr
    after = lines[errors[-1] + 1:]      # a run that fails mid-way has its progress bar above the error
    assert not after or len(after) == 1 and after[0].startswith('try: python ') and after[0].endswith(' --help'), stderr
    return lines[errors[-1]]


def assert_one_line_error(proc):
    """argparse style: exit 2, the error (error_line), and no traceback; returns the error's line."""
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    return error_line(proc.stderr)


def refused(get_args, argv, capsys):
    """Parse argv in-process: assert the parser exits 2 with the error first, in argparse's words, and at most one
    more line, the one that points to --help; return the error's line."""
    with pytest.raises(SystemExit) as e:
        get_args([str(a) for a in argv])
    assert e.value.code == 2
    return error_line(capsys.readouterr().err)
