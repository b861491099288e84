"""The estimators of --method against closed forms: each recovers a Gaussian from its samples (and c = log Z where it
learns c), each written-out gradient is autograd's, Langevin chains reach a known Gaussian, and every method resumes
bit for bit."""
import math
import os

import pytest
import torch

import methods
import resume
import train
from conftest import GaussEnergy, refused
from likelihood import cd_loss, langevin, mle_grid, mle_loss, mle_nodes
from model import EBM
from score import dsm_loss, sm_loss, sm_loss_mlp
from util import cnce_loss, ence_loss, is_loss, rank_loss

MEAN = torch.tensor([0.7, -0.4], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.15], [0.15, 0.25]], dtype=torch.float64)
N, NU = 20000, 4


def samples(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MEAN + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T


def moments(energy):
    """The mean and covariance of a GaussEnergy's density: mu and (L Lᵀ)⁻¹."""
    chol = energy.chol.detach().tril()
    return energy.mu.detach(), torch.linalg.inv(chol @ chol.T)


def lbfgs(energy, loss_fn):
    opt = torch.optim.LBFGS(energy.parameters(), lr=1, max_iter=400, tolerance_grad=1e-9, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    opt.step(closure)
    return energy


def start():
    """A Gaussian model away from the truth: mean 0, covariance I, c = 1."""
    return GaussEnergy(c=1.0)


def family(loss):
    """A loss of util.py on the data and ν draws of N(0, 4I) per data point, as a function of the model."""
    x = samples(N, 0)
    gen = 2 * torch.randn(NU * N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.cat([x, gen])
    log_q = -(u ** 2).sum(1) / 8 - math.log(8 * math.pi)
    return lambda energy: loss(energy(u).squeeze(1), log_q, NU)[0]


def cnce(eps=0.5):
    x = samples(N, 0)
    y = methods.copies(x, eps, NU)
    return lambda energy: cnce_loss(energy(torch.cat([x, y])).squeeze(1), NU)[0]


def mle():
    x = samples(N, 0)
    torch.manual_seed(2)
    base = mle_grid()
    nodes = mle_nodes(base).double()
    return lambda energy: mle_loss(energy(torch.cat([x, nodes])).squeeze(1), N, base[2].double())[0]


# each method, its loss as a function of the model, and its tolerances on the mean, the covariance and c - log Z
# (None: no c). 2·10^4 samples give the mean a standard error below 0.005 and the covariance's entries below 0.005.
CLOSED = {
    'rank': (lambda: family(rank_loss), 0.03, 0.03, None),
    'ence': (lambda: family(ence_loss), 0.03, 0.03, 0.03),
    'is': (lambda: family(is_loss), 0.03, 0.03, None),
    'cnce': (cnce, 0.03, 0.03, None),
    'mle': (mle, 0.02, 0.02, None),
    'sm': (lambda: (lambda energy: sm_loss(energy, samples(N, 0))), 0.02, 0.02, None),
}


@pytest.mark.parametrize('name', CLOSED)
def test_each_method_recovers_a_gaussian(name):
    make, tol_mean, tol_cov, tol_c = CLOSED[name]
    loss = make()
    energy = start()
    lbfgs(energy, lambda: loss(energy))
    mean, cov = moments(energy)
    assert (mean - MEAN).abs().max() < tol_mean, (name, mean)
    assert (cov - COV).abs().max() < tol_cov, (name, cov)
    if tol_c is not None:
        assert abs(energy.c.item() - energy.log_z()) < tol_c


def test_denoising_score_matching_recovers_the_gaussian_smoothed_by_its_noise():
    """DSM at σ fits the data convolved with N(0, σ²I): the mean, and the covariance Σ + σ²I, exactly."""
    sigma, x = 0.3, samples(N, 0)
    torch.manual_seed(3)
    energy = start()
    opt = torch.optim.Adam(energy.parameters(), lr=0.02)
    for _ in range(1500):
        opt.zero_grad()
        dsm_loss(energy, x[torch.randint(N, (2000,))], sigma).backward()
        opt.step()
    mean, cov = moments(energy)
    assert (mean - MEAN).abs().max() < 0.03
    assert (cov - COV - sigma**2 * torch.eye(2, dtype=torch.float64)).abs().max() < 0.03


@pytest.mark.parametrize('persistent', [False, True])
def test_contrastive_divergence_recovers_a_gaussian(persistent):
    """cd (chains from the data) and pcd (chains kept), with 10 Langevin steps of 0.01, by Adam on batches of 1000."""
    STEPS = 500
    x, batch = samples(N, 0), 1000
    torch.manual_seed(4)
    energy = start()
    chains = 2 * torch.randn(batch, 2, dtype=torch.float64)
    opt = torch.optim.Adam(energy.parameters(), lr=0.02)
    for _ in range(STEPS):
        data = x[torch.randint(N, (batch,))]
        chains = langevin(energy, chains if persistent else data, 10, 0.01, math.sqrt(0.02)).detach()
        opt.zero_grad()
        cd_loss(energy(torch.cat([data, chains])).squeeze(1), batch)[0].backward()
        opt.step()
    mean, cov = moments(energy)
    assert (mean - MEAN).abs().max() < 0.05, mean
    assert (cov - COV).abs().max() < 0.05, cov


def test_langevin_chains_reach_a_known_gaussian():
    """5000 chains from N(0, 4I), 400 steps of a = 0.005: the mean and covariance of N(MEAN, COV) (ULA's bias is O(a))."""
    chol_p = torch.linalg.cholesky(torch.linalg.inv(COV))
    energy = GaussEnergy(MEAN.tolist(), chol_p.tolist())
    torch.manual_seed(5)
    x = langevin(energy, 2 * torch.randn(5000, 2, dtype=torch.float64), 400, 0.005, math.sqrt(0.01))
    assert (x.mean(0) - MEAN).abs().max() < 0.03
    assert (torch.cov(x.T) - COV).abs().max() < 0.03


# ----------------------------------------------------------------------------------------------------
# the written-out gradients

def layout(nu, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, gen = torch.randn(30, 2, generator=g).double(), 2 * torch.randn(30 * nu, 2, generator=g).double()
    u = torch.cat([x, gen])
    return u, -(u ** 2).sum(1) / 8 - math.log(8 * math.pi)


WRITTEN = {     # a method: its loss of log p̃ at u, and u
    'rank': lambda: (lambda lp, u, lq: rank_loss(lp, lq, 3), *layout(3)),
    'ence': lambda: (lambda lp, u, lq: ence_loss(lp, lq, 3), *layout(3)),
    'is': lambda: (lambda lp, u, lq: is_loss(lp, lq, 3), *layout(3)),
    'cnce': lambda: (lambda lp, u, lq: cnce_loss(lp, 3), *layout(3)),
    'mle': lambda: (lambda lp, u, lq: mle_loss(lp, 30, mle_grid()[2].double()), torch.cat([layout(1)[0][:30], mle_nodes(mle_grid()).double()]), None),
    'cd': lambda: (lambda lp, u, lq: cd_loss(lp, 30), layout(1)[0], None),
    # Du & Mordatch's energy penalty α(E(x⁺)² + E(x⁻)²), E = -log p̃ - c
    'cd-penalty': lambda: (lambda lp, u, lq: cd_loss(lp, 30, 0.3, 1.5), layout(1)[0], None),
}


@pytest.mark.parametrize('act, base', [('leaky_relu', 0.0), ('silu', 0.0), ('silu', 2.0)])
@pytest.mark.parametrize('name', WRITTEN)
def test_each_written_out_gradient_is_autograds(name, act, base):
    torch.manual_seed(6)
    loss_fn, u, log_q = WRITTEN[name]()
    energy = EBM(hidden=16, act=act, base=base).double()
    log_p, backward = energy.log_p_and_backward(u)
    backward(loss_fn(log_p, u, log_q)[1])
    mine = {k: p.grad.clone() for k, p in energy.named_parameters()}
    energy.zero_grad()
    loss_fn(energy(u).squeeze(1), u, log_q)[0].backward()
    for k, p in energy.named_parameters():
        assert torch.allclose(mine[k], p.grad, rtol=1e-9, atol=1e-12), (name, k)
    if name not in methods.LEARNS_C and name != 'cd-penalty':   # the penalty's E = -log p̃ - c takes c as a constant
        assert abs(p.grad.item() if k == 'c' else energy.c.grad.item()) < 1e-12     # c cancels


@pytest.mark.parametrize('fourier, base', [(0, 0.0), (8, 0.0), (8, 1.5)])
def test_the_score_is_autograds_gradient_in_x(fourier, base):
    torch.manual_seed(7)
    energy = EBM(hidden=16, act='silu', fourier=fourier, base=base).double()
    x = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(energy(x).sum(), x)[0]
    assert torch.allclose(energy.score(x.detach()), want, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in energy.parameters())        # and no weight gradient is written


@pytest.mark.parametrize('fourier, base', [(0, 0.0), (8, 0.0), (8, 1.5)])
@pytest.mark.parametrize('act', ['softplus', 'silu', 'gelu', 'tanh'])
def test_the_forward_mode_score_matching_loss_is_autograds(act, fourier, base):
    """--method sm's written-out pass (sm_loss_mlp) against sm_loss by autograd's double backward: the loss and its
    gradient in θ, on the network with and without Fourier features and a Gaussian base."""
    torch.manual_seed(9)
    energy, x = EBM(hidden=16, act=act, fourier=fourier, base=base).double(), torch.randn(50, 2, dtype=torch.float64)
    mine, want = sm_loss_mlp(energy, x), sm_loss(energy, x)
    assert mine.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-14)
    params = list(energy.parameters())
    for a, b in zip(torch.autograd.grad(mine, params, materialize_grads=True),
                    torch.autograd.grad(want, params, materialize_grads=True), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13)


def test_score_matching_in_closed_form_on_a_gaussian():
    """For log p̃ = -(x - μ)ᵀP(x - μ)/2 the score is -P(x - μ) and the Laplacian -tr P: sm_loss is that formula."""
    chol_p = torch.tensor([[1.3, 0.0], [0.4, 0.9]], dtype=torch.float64)
    energy, x = GaussEnergy(MEAN.tolist(), chol_p.tolist()), samples(100, 8)
    p = chol_p @ chol_p.T
    s = -(x - MEAN) @ p
    assert sm_loss(energy, x).item() == pytest.approx((0.5 * (s ** 2).sum(1) - p.trace()).mean().item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# the command line

RUN = ['--samples', 200, '--batch', 50, '--hidden', 8, '--no-plot', '--eval-every', 0]
FLAGS = {'cd': ['--alpha', 0.1], 'pcd': ['--langevin-steps', 3], 'pcd+buffer': ['--langevin-steps', 3, '--buffer', 120], 'sm': ['--act', 'softplus'], 'dsm': ['--sigma', 0.2], 'cnce': [],
         'rank': ['--nu', 2], 'ence': ['--optim', 'ngd'], 'is': [], 'mle': [], 'nce': ['--noise', 'fce', '--fce-alternate',
         '--flow-layers', 2, '--flow-hidden', 8]}


def train_run(tmp_path, name, *extra):
    argv = [str(a) for a in RUN + ['--method', name.split('+')[0], '--ckpt', tmp_path / name / 'c.pth'] + FLAGS[name] + list(extra)]
    train.main(train.get_args(argv))
    return torch.load(tmp_path / name / 'c.pth', weights_only=True), open(tmp_path / name / 'metrics.csv').read()


@pytest.mark.parametrize('name', FLAGS)
def test_every_method_resumes_bit_for_bit(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    whole, whole_csv = train_run(tmp_path / 'a', name, '--epoch', 2)
    train_run(tmp_path / 'b', name, '--epoch', 1)
    half, half_csv = train_run(tmp_path / 'b', name, '--epoch', 1, '--resume')
    for k, t in whole['energy'].items():
        assert torch.equal(t, half['energy'][k]), k
    assert whole['method_state'].keys() == half['method_state'].keys()
    for k, v in whole['method_state'].items():
        assert torch.equal(v, half['method_state'][k]) if isinstance(v, torch.Tensor) else v == half['method_state'][k]
    seconds = whole_csv.splitlines()[0].split(',').index('seconds')
    drop_seconds = lambda text: [line.split(',')[:seconds] + line.split(',')[seconds + 1:] for line in text.splitlines()]
    assert drop_seconds(whole_csv) == drop_seconds(half_csv)
    head, row = whole_csv.splitlines()[:2]
    assert head.startswith('epoch,value,acc,c,log_z,nll,kl,')         # the same columns for every method
    assert (row.split(',')[2] == '') == (name not in methods.CLASSIFIES)
    if name.startswith('pcd'):      # a chain a batch row, or the replay buffer
        assert whole['method_state'][name[4:] or 'chains'].shape == ((120 if '+' in name else 50), 2)


def test_no_c_means_a_blank_c_and_an_exact_log_z(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck, text = train_run(tmp_path, 'mle', '--epoch', 1, '--eval-every', 1)
    row = dict(zip(*(line.split(',') for line in text.splitlines()[:2]), strict=True))
    assert row['c'] == '' and float(row['log_z']) and float(row['kl']) > 0
    assert ck['energy']['c'].item() == 1.0          # never stepped


@pytest.mark.parametrize('name, damage, words', [
    ('pcd', lambda s: s.pop('chains'), 'no chains'),
    ('pcd', lambda s: s.update(chains=torch.zeros(7, 2)), r'has shape \(7, 2\)'),
    ('pcd', lambda s: s.update(chains=torch.full((50, 2), math.nan)), 'non-finite'),
    ('pcd+buffer', lambda s: s.update(buffer=torch.zeros(50, 2)), r'has shape \(50, 2\)'),
    ('cnce', lambda s: s.update(eps=-1.0), "cnce's positive noise scale"),
    ('cnce', lambda s: s.pop('eps'), "cnce's positive noise scale"),
])
def test_a_checkpoint_without_its_method_state_is_refused(name, damage, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck, _ = train_run(tmp_path, name, '--epoch', 1)
    damage(ck['method_state'])
    torch.save(ck, tmp_path / name / 'c.pth')
    args = train.get_args([str(a) for a in RUN + ['--method', name.split('+')[0], '--ckpt', tmp_path / name / 'c.pth', '--resume'] + FLAGS[name]])
    with pytest.raises(resume.Unfit, match=words):
        resume.load(tmp_path / name / 'c.pth', args, train.network_kwargs(vars(args)))


@pytest.mark.parametrize('argv, words', [
    (['--sigma', 0.1], '--sigma: means nothing for --method nce; it serves dsm'),
    (['--method', 'sm', '--act', 'silu', '--noise', 'fit'], '--noise: means nothing for --method sm'),
    (['--method', 'mle', '--nu', 4], '--nu: means nothing for --method mle'),
    (['--method', 'dsm', '--langevin-steps', 5], 'it serves cd, pcd'),
    (['--method', 'cd', '--cnce-eps', 0.1], 'it serves cnce'),
    (['--optim', 'ngd', '--b2', 0.99], "--b2: Adam's"),
    (['--fce-alternate'], 'without --noise fce'),
    (['--method', 'rank', '--noise', 'fce'], 'it serves --method nce'),
    (['--method', 'sm'], "leaky_relu's Laplacian is 0"),
    (['--method', 'dsm', '--sigma', -1], '--sigma: must be finite and positive'),
    (['--method', 'cnce', '--cnce-eps', 'nan'], '--cnce-eps: must be finite and positive'),
    (['--method', 'cd', '--langevin-steps', 0], '--langevin-steps: must be at least 1'),
    (['--method', 'pcd', '--langevin-noise', -0.1], '--langevin-noise: must be finite and 0 or more'),
    (['--method', 'cd', '--langevin-step', 'inf'], '--langevin-step: must be finite and positive'),
    (['--method', 'cd', '--buffer', 10], '--buffer: means nothing for --method cd; it serves pcd'),
    (['--method', 'pcd', '--alpha', -1], '--alpha: must be finite and 0 or more'),
    (['--method', 'pcd', '--buffer', -1], '--buffer: must be 0 or more'),
    (['--method', 'gibbs'], "invalid choice: 'gibbs'"),
    (['--optim', 'sgd'], "invalid choice: 'sgd'"),
])
def test_method_flags_are_one_line_errors(argv, words, capsys):
    assert words in refused(train.get_args, argv, capsys)


def test_help_lists_every_method_with_a_line(capsys):
    with pytest.raises(SystemExit):
        train.get_args(['--help'])
    text = capsys.readouterr().out
    options = ' '.join(text[text.index('options:'):].split())      # the help, its wrapping undone
    for name, line in methods.METHODS.items():
        assert f' {name} {line}' in options


def test_the_resume_command_of_each_method_parses_to_the_same_run(tmp_path):
    skip = ('resume', 'epoch', 'eval_every')        # the flags a resume may change
    for name, extra in FLAGS.items():
        args = train.get_args([str(a) for a in RUN + ['--method', name.split('+')[0], '--ckpt', os.path.join(tmp_path, 'c.pth')] + extra])
        again = train.get_args(resume.command(args, 3).split()[2:])
        assert {k: v for k, v in vars(again).items() if k not in skip} == {k: v for k, v in vars(args).items() if k not in skip}, name


def test_pcd_replay_buffer_draws_its_chains_from_the_buffer_and_restarts_a_twentieth_from_the_noise():
    """--buffer: a step's chains are buffer rows (here all at 0) but for about REINIT of them drawn from the noise
    (here a point mass far away), and go back into the rows they came from; the Langevin steps move nothing here."""
    import torch.distributions as D

    import optim
    torch.manual_seed(8)
    args = train.get_args(['--method', 'pcd', '--buffer', '5000', '--batch', '2000', '--langevin-steps', '1',
                           '--langevin-step', '1e-12', '--langevin-noise', '0'])
    energy = EBM(hidden=8)
    far = D.Independent(D.Normal(torch.full((2,), 100.0), torch.full((2,), 1e-3)), 1)
    x = torch.randn(2000, 2)
    method = methods.build(args, energy, far, x, None, optim.adam_init(list(energy.parameters())), saved=dict(buffer=torch.zeros(5000, 2)))
    method.step(x, 0.0)
    moved = method.state['buffer'].norm(dim=1) > 50
    n = 5000 * (1 - (1 - 1 / 5000) ** 2000)      # rows drawn at least once, of which a twentieth come back from far
    assert 0.6 * methods.REINIT * n < moved.sum() < 1.4 * methods.REINIT * n


def test_cd_with_its_tuned_defaults_does_not_run_off_on_moons(tmp_path, monkeypatch):
    """Without Du & Mordatch's energy penalty CD's energies fall together and log Z grows without bound: on moons,
    1000 samples, 400 steps at lr 1e-2, cd as it ran before tuning (α = 0, 10 Langevin steps) reaches log Z 12.7 and
    KL 1.8 (KL 10⁶ at the benchmark's budget). With its tuned defaults the same run keeps log Z near the data's and
    learns."""
    monkeypatch.chdir(tmp_path)
    run = ['--method', 'cd', '--dataset', 'moons', '--samples', '1000', '--epoch', '40', '--lr', '1e-2', '--no-plot', '--eval-every', '40']
    last = {}
    for name, extra in (('tuned', []), ('unpenalised', ['--alpha', '0', '--langevin-steps', '10'])):
        args = train.get_args(run + ['--ckpt', str(tmp_path / name / 'c.pth')] + extra)
        train.main(args)
        last[name] = (args.alpha, torch.load(tmp_path / name / 'c.pth', weights_only=True)['history'][-1])
    alpha, tuned = last['tuned']
    assert alpha == methods.TUNED['cd']['alpha'] > 0
    assert tuned['log_z'] < 5 and tuned['kl'] < 0.6
    assert last['unpenalised'][1]['log_z'] > 8      # the same run without the penalty runs off
