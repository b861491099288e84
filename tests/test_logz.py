"""logz.py: each estimate of log Z against a closed form, the sandwich of forward and reverse AIS, the grid sampler
against p_θ, the written-out score, and the command line."""
import math
import os

import pytest
import torch
import torch.distributions as D

import evaluate
import logz
import train
from conftest import assert_one_line_error
from model import EBM
from test_plane import Mixture

Q = D.Independent(D.Normal(torch.zeros(2), torch.full((2,), 2.0)), 1)      # the original noise, N(0, 4I)
ENERGIES = {
    'gaussian': lambda: Mixture([(0.5, -0.3)], [0.4], [1.0], scale=3.0),
    'two gaussians': lambda: Mixture([(-2.0, 0.5), (1.5, -1.0)], [0.3, 0.5], [0.3, 0.7], scale=3.0),
}
# |error| each estimator stays within at 10^4 and at 10^6 evaluations, on these seeds; annealed NCE converges
# slowest: its chains lag one MALA step behind each distribution, and it does not reweight them as AIS does
TOL = {1e4: dict(importance=0.1, ais=0.3, reverse=0.3, annealed=0.5),
       1e6: dict(importance=0.01, ais=0.02, reverse=0.02, annealed=0.04)}


def errors(energy, budget, seed):
    gen = torch.Generator().manual_seed(seed)
    k, m = logz.shape(budget)
    regions = evaluate.plane(energy)['regions']
    forward, levels, betas = logz.ais(energy, Q, k, m, gen, keep=True)
    found = dict(importance=logz.importance(energy, Q, int(budget), gen), ais=forward,
                 annealed=logz.annealed_nce(levels, betas),
                 reverse=logz.ais(energy, Q, k, m, gen, x=logz.grid_sample(regions, m, gen)))
    return {name: v.item() - energy.log_z for name, v in found.items()}


@pytest.mark.parametrize('budget', TOL)
@pytest.mark.parametrize('name', ENERGIES)
def test_each_estimator_reaches_the_closed_form_as_its_budget_grows(name, budget):
    found = errors(ENERGIES[name](), budget, seed=1)
    assert all(abs(found[k]) < tol for k, tol in TOL[budget].items()), found


def test_forward_ais_lies_below_log_z_and_reverse_ais_above():
    """At K = 10 and M = 4 the two are far apart: over 100 repeats each, forward AIS's mean lies more than 3 standard
    errors below log Z (it is unbiased in Z, so biased low in log Z) and reverse AIS's as far above."""
    energy = ENERGIES['two gaussians']()
    regions, gen = evaluate.plane(energy)['regions'], torch.Generator().manual_seed(2)
    forward = torch.stack([logz.ais(energy, Q, 10, 4, gen) for _ in range(100)]) - energy.log_z
    reverse = torch.stack([logz.ais(energy, Q, 10, 4, gen, x=logz.grid_sample(regions, 4, gen)) for _ in range(100)]) - energy.log_z
    assert forward.mean() + 3 * forward.std() / 10 < 0 < reverse.mean() - 3 * reverse.std() / 10


def test_the_grid_samplers_histogram_is_p_theta():
    """20000 draws of a mixture with a mode in the window and one at radius 10, counted in 16 boxes of the window
    and the rest of the plane, against the mixture's own masses there: a chi-squared test at the 0.1% level."""
    from scipy.stats import chisquare, norm
    energy = Mixture([(0.5, -1.0), (6.0, 8.0)], [0.6, 1.0], [0.8, 0.2])
    x = logz.grid_sample(evaluate.plane(energy)['regions'], 20000, torch.Generator().manual_seed(3)).double()
    edges = torch.linspace(-4, 4, 5, dtype=torch.float64)
    inside = (x.abs() < 4).all(1)
    i, j = (torch.bucketize(x[inside, d], edges) - 1 for d in (0, 1))
    counts = torch.bincount(4 * j + i, minlength=16).tolist() + [int((~inside).sum())]
    box = lambda a, b, mu, s: norm.cdf((b - mu) / s) - norm.cdf((a - mu) / s)
    mass = [sum(w * box(edges[c], edges[c + 1], mu[0], s) * box(edges[r], edges[r + 1], mu[1], s)
                for mu, s, w in zip(energy.means.tolist(), energy.stds.tolist(), (0.8, 0.2), strict=True))
            for r in range(4) for c in range(4)]
    mass.append(1 - sum(mass))
    assert chisquare(counts, [20000 * m for m in mass]).pvalue > 1e-3


@pytest.mark.parametrize('act, fourier, base', [('leaky_relu', 0, 0.0), ('silu', 8, 0.0), ('silu', 8, 1.5)])
def test_the_written_out_score_is_autograds(act, fourier, base):
    torch.manual_seed(9)
    energy = EBM(hidden=16, act=act, fourier=fourier, base=base).double()
    x = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    log_p, score = energy.log_p_and_score(x.detach())
    want = energy(x).squeeze(1)
    assert torch.equal(log_p, want.detach())
    assert torch.allclose(score, torch.autograd.grad(want.sum(), x)[0], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# the command line

@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """A tiny NCE run's checkpoint: 200 points of 8gaussians, one epoch of a 16-wide network with a Gaussian base,
    which makes it normalisable whatever its two steps did."""
    folder = tmp_path_factory.mktemp('logz')
    path = str(folder / 'c.pth')
    train.main(train.get_args(['--samples', '200', '--epoch', '1', '--hidden', '16', '--base', '2', '--no-plot',
                               '--eval-every', '0', '--ckpt', path]))
    return path


def test_logz_py_prints_each_estimate_and_its_error_against_the_quadrature(ckpt, capsys):
    run = lambda *a: (logz.main(logz.get_args([ckpt, '--budgets', '1e3', '3e3', *a])), capsys.readouterr().out)[1]
    out = run()
    log_z = float(out.splitlines()[0].split('over the plane ')[1].split()[0])
    rows = [line.split() for line in out.splitlines()[2:]]
    names = [' '.join(r[:-3]) for r in rows]
    assert names == ['nce c'] + ['is', 'ais', 'annealed nce', 'reverse ais'] * 2
    assert all(float(r[-1]) == pytest.approx(float(r[-2]) - log_z, abs=2e-4) for r in rows)     # as printed, 4 places
    assert run() == out and run('--seed', '5') != out       # every draw from the seed's stream


def test_a_model_that_is_not_normalisable_gets_a_notice_and_no_error_column(ckpt, tmp_path, capsys):
    ck = torch.load(ckpt, weights_only=True)
    ck['energy'] = {k: torch.zeros_like(v) if k.startswith('f.') else v for k, v in ck['energy'].items()}   # f = 0: flat
    ck['model_kwargs']['base'] = 0.0        # and no base: Z = ∞
    torch.save(ck, tmp_path / 'flat.pth')
    logz.main(logz.get_args([str(tmp_path / 'flat.pth'), '--budgets', '1e3']))
    out = capsys.readouterr().out.splitlines()
    assert 'not normalisable' in out[0] and 'error' not in out[1]
    assert [line.split()[0] for line in out[2:]] == ['nce', 'is', 'ais', 'annealed']     # no reverse AIS: no p_θ to draw from


@pytest.mark.parametrize('argv, words', [
    (['missing.pth'], 'missing.pth'),
    (['bad.pth'], 'bad.pth'),
    (['good', '--budgets', '0'], '--budgets: each must be a number of evaluations, at least 1; got 0'),
    (['good', '--budgets', 'nan'], 'got nan'),
    (['good', '--budgets', 'x'], "invalid float value: 'x'"),
    (['--benchmark', 'nowhere'], 'no checkpoint (*.pth.tar) in nowhere, and no logz.csv to read'),
    (['good', '--benchmark', '.'], 'not both'),
    ([], 'give a checkpoint, or --benchmark DIR'),
    (['good', '--jobs', '0'], '--jobs: must be at least 1'),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(argv, words, ckpt, tmp_path, run):
    (tmp_path / 'bad.pth').write_bytes(b'not a checkpoint')
    argv = [ckpt if a == 'good' else a for a in argv]
    before = sorted(os.listdir(tmp_path))
    assert words in assert_one_line_error(run('logz.py', *argv))
    assert sorted(os.listdir(tmp_path)) == before


def test_a_budget_is_run_as_papers_run_ais():
    assert [logz.shape(b) for b in (1e3, 1e4, 1e5, 1e6, 10)] == [(100, 10), (100, 100), (1000, 100), (1000, 1000), (10, 1)]
    betas = logz.schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    assert math.isclose(float(betas[25]), 0.5, abs_tol=1e-6)


def test_the_benchmark_scores_each_checkpoint_once_and_its_tables_are_read_from_its_csv(ckpt, tmp_path, monkeypatch, capsys):
    """--benchmark DIR: a row per model, estimator and budget in --out; run again, it skips the models already there
    and writes the same CSV; --docs puts the tables between docs/logz.md's markers and draws the figure."""
    import shutil
    folder = tmp_path / 'models'
    folder.mkdir()
    shutil.copy(ckpt, folder / 'a.pth.tar')
    train.main(train.get_args(['--samples', '200', '--epoch', '1', '--hidden', '16', '--base', '2', '--no-plot', '--seed', '1',
                               '--eval-every', '0', '--method', 'cd', '--ckpt', str(folder / 'b.pth.tar')]))
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs/logz.md').write_text('# t\n<!-- logz:start -->\n<!-- logz:end -->\n')
    monkeypatch.setattr(logz, 'ROOT', str(tmp_path))
    argv = ['--benchmark', str(folder), '--budgets', '1e3', '--out', str(tmp_path / 'l.csv')]
    logz.main(logz.get_args(argv))
    first = (tmp_path / 'l.csv').read_text()
    rows = logz.read_rows(tmp_path / 'l.csv')
    assert sorted({(r['method'], r['seed']) for r in rows}) == [('cd', 1), ('nce', 0)]
    assert [r['estimator'] for r in rows if r['method'] == 'cd'] == ['is', 'ais', 'annealed nce', 'reverse ais']
    assert all(r['k'] == 100 and r['m'] == 10 for r in rows if r['estimator'] in ('ais', 'reverse ais'))
    capsys.readouterr()
    logz.main(logz.get_args(argv + ['--docs']))
    assert '2 checkpoints; 2 scored before' in capsys.readouterr().out
    assert (tmp_path / 'l.csv').read_text() == first
    doc = (tmp_path / 'docs/logz.md').read_text()
    assert '| `ais` | ' in doc and '2 models, 2 scored. Not normalisable: none.' in doc and 'Regenerated by' not in doc and (tmp_path / 'images/logz.png').stat().st_size > 5000



def test_a_benchmark_killed_mid_run_keeps_the_models_it_scored(tmp_path, run):
    """SIGKILL --benchmark once logz.csv holds a model: the CSV is whole, and the same command skips what it holds."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    folder = tmp_path / 'models'
    for seed in range(3):
        train.main(train.get_args(['--samples', '200', '--epoch', '1', '--hidden', '16', '--base', '2', '--no-plot',
                                   '--seed', str(seed), '--eval-every', '0', '--ckpt', str(folder / f'{seed}.pth.tar')]))
    argv = ['--benchmark', str(folder), '--budgets', '1e3', '1e5', '--jobs', '1', '--out', str(tmp_path / 'l.csv')]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'logz.py'), *argv], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        if (tmp_path / 'l.csv').exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {r['seed'] for r in logz.read_rows(tmp_path / 'l.csv')}
    assert 1 <= len(kept) < 3        # each model a second or so: the kill comes before the last
    out = run('logz.py', *argv).stdout
    assert f'3 checkpoints; {len(kept)} scored before' in out
    assert {r['seed'] for r in logz.read_rows(tmp_path / 'l.csv')} == {0, 1, 2}


def test_the_committed_logz_csv_regenerates_docs_logz_md_to_the_byte(tmp_path, monkeypatch, capsys):
    """--benchmark over a folder with no checkpoint reads --out alone: from the committed logz.csv, --docs writes
    docs/logz.md as committed, its tables and the footer of the run that scored the models."""
    import shutil

    from conftest import ROOT
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'none').mkdir()
    shutil.copy(os.path.join(ROOT, 'docs/logz.md'), tmp_path / 'docs/logz.md')
    shutil.copy(os.path.join(ROOT, 'logz.csv'), tmp_path / 'logz.csv')
    monkeypatch.setattr(logz, 'ROOT', str(tmp_path))
    logz.main(logz.get_args(['--benchmark', str(tmp_path / 'none'), '--out', str(tmp_path / 'logz.csv'), '--docs']))
    doc = (tmp_path / 'docs/logz.md').read_text()
    assert doc == open(os.path.join(ROOT, 'docs/logz.md')).read()
    assert '160 models' in doc and 'Regenerated by `python logz.py --benchmark` in ' in doc
    assert (tmp_path / 'logz.csv').read_text() == open(os.path.join(ROOT, 'logz.csv')).read()
