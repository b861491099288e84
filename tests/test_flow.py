"""The learned noise: the flow's density and gradients, FCE's two steps, NCE with a flow as q, and train.py's fce runs."""
import csv
import math

import pytest
import torch

from conftest import GaussEnergy, refused
from data import sample_2d_data
from evaluate import grid
from files import load_checkpoint
from flow import FlowNoise, fit
from model import EBM
from noise import make_noise
from util import fce_backward, value


def perturbed_flow(x, scale=0.3, seed=0, broad=0.1, dtype=torch.float32):
    """A flow on x's mean and std whose every weight is moved at random: couplings far from the identity."""
    torch.manual_seed(seed)
    noise = make_noise('fce', x, flow_broad=broad)
    noise.flow.to(dtype)
    with torch.no_grad():
        for p in noise.flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return noise


def test_the_flow_and_the_noise_integrate_to_one_on_the_quadrature_square():
    x = sample_2d_data('8gaussians', 2000, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    noise = make_noise('flow', x)
    fit(noise.flow, x, 300)
    cells = grid(8.0, 320)                   # cells of side 1/20 on [-8, 8]²
    with torch.no_grad():
        flow = noise.flow.log_prob(cells).exp().sum().item() / 20**2
        q = noise.log_prob(cells).exp().sum().item() / 20**2
    assert abs(flow - 1) < 1e-2 and abs(q - 1) < 1e-2
    # the fit moved it away from its starting Gaussian: the 8 modes are there
    start = make_noise('flow', x).flow
    with torch.no_grad():
        assert noise.flow.log_prob(x).mean() > start.log_prob(x).mean() + 0.3


@pytest.mark.parametrize('dtype, rtol', [(torch.float64, 1e-12), (torch.float32, 1e-3)])
def test_a_sample_maps_back_to_its_own_log_density(dtype, rtol):
    """Exact in float64. In float32 the perturbed flow throws samples out to |x| ~ 400, where mapping them back
    loses a relative 2e-4 of log q on one CPU (1.3e-3 absolute at x ≈ (-165, 166)), so the bound is relative."""
    x = sample_2d_data('rings', 500, torch.Generator().manual_seed(0))
    flow = perturbed_flow(x, dtype=dtype).flow
    with torch.no_grad():
        gen, log_q = flow.rsample_and_log_prob(1000)
        assert torch.allclose(flow.log_prob(gen), log_q, rtol=rtol, atol=0)


@pytest.mark.parametrize('fourier, broad, base', [(0, 0.1, 0.0), (8, 0.1, 0.0), (0, 0.0, 0.0), (8, 0.1, 2.0)])
def test_fce_gradients_written_out_match_autograd(fourier, broad, base):
    """fce_backward's flow gradient is dV/dφ and its EBM gradient d(-V)/dθ, as autograd finds them through the
    same draws: the flow's own reparameterised samples, the broad ones and the data (and with a Gaussian base, whose
    log density the flow's draws pass through too)."""
    x = sample_2d_data('rings', 100, torch.Generator().manual_seed(0))
    noise = perturbed_flow(x, broad=broad)
    energy = EBM(hidden=32, fourier=fourier, base=base)
    torch.manual_seed(1)
    _, flow_turn = fce_backward(energy, noise, x, 2, threshold=0.0)
    assert flow_turn
    ours = [p.grad.clone() for p in [*noise.flow.parameters(), *energy.parameters()]]
    torch.manual_seed(1)
    u, log_q, _ = noise.contrast_and_backward(x, 200)
    minus_v = value(energy, None, x, u[100:], 2, log_q=log_q)[0]
    flow_grads = torch.autograd.grad(-minus_v, list(noise.flow.parameters()), retain_graph=True)
    ebm_grads = torch.autograd.grad(minus_v, list(energy.parameters()))
    for a, b in zip(ours, [*flow_grads, *ebm_grads], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_a_flow_step_lowers_v_and_an_ebm_step_raises_it():
    """On a fixed batch and fixed draws, a small step along each model's gradient moves V = E log σ(G) + E log σ(-G)
    the way each wants: the EBM up (it tells data from noise better), the flow down (its draws fool the EBM more)."""
    x = sample_2d_data('8gaussians', 200, torch.Generator().manual_seed(0))
    noise = perturbed_flow(x, scale=0.1)
    torch.manual_seed(0)
    energy = EBM(hidden=32)

    def v():
        torch.manual_seed(7)                # the same draws each time
        with torch.no_grad():
            u, log_q, _ = noise.contrast_and_backward(x, 200)
            return -value(energy, None, x, u[200:], 1, log_q=log_q)[0].item()

    def step(params, lr):
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad

    v0 = v()
    torch.manual_seed(7)
    fce_backward(energy, noise, x, 1, threshold=0.0)
    step(noise.flow.parameters(), 1e-2)     # its .grad is dV/dφ
    v_flow = v()
    step(noise.flow.parameters(), -1e-2)    # back, then the EBM's step alone; its .grad is d(-V)/dθ
    step(energy.parameters(), 1e-2)
    v_ebm = v()
    assert v_flow < v0 - 1e-4 and v_ebm > v0 + 1e-4


def test_nce_is_consistent_with_a_flow_as_a_fixed_known_q():
    """NCE's c converges to the model's true log Z and its mean to the data's, with q a (far from Gaussian) flow
    mixed with N(0, 4I): any q with an exact density and mass wherever the data has it will do."""
    mean, cov = torch.tensor([0.7, -0.4], dtype=torch.float64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x = mean + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    noise = perturbed_flow(x.float(), scale=0.2, dtype=torch.float64)
    noise.flow.requires_grad_(False)
    gen = noise.sample((n,))
    with torch.no_grad():
        log_q = noise.log_prob(torch.cat([x, gen]))
    energy = GaussEnergy(c=1.0)
    opt = torch.optim.LBFGS(energy.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = value(energy, None, x, gen, 1, log_q=log_q)[0]
        loss.backward()
        return loss
    opt.step(closure)
    assert abs(energy.c.item() - energy.log_z()) < 0.05
    assert (energy.mu.detach() - mean).abs().max() < 0.05


def test_stratified_draws_give_the_broad_share_and_iid_sampling_the_mixture():
    x = sample_2d_data('rings', 500, torch.Generator().manual_seed(0))
    noise = FlowNoise(make_noise('flow', x).flow, 0.25)     # a fresh flow: the Gaussian N(mean, diag std²) of x
    u, log_q, _ = noise.contrast_and_backward(x[:10], 40)
    assert u.shape == (50, 2) and log_q.shape == (50,) and torch.equal(u[:10], x[:10])
    torch.manual_seed(0)
    far = (noise.sample((40000,)).abs() > 3.5).any(1).float().mean().item()

    def p_far(mean, std):       # P(|x_i| > 3.5 for some i), x ~ N(mean, diag std²)
        phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))
        return 1 - math.prod(phi((3.5 - m) / s) - phi((-3.5 - m) / s) for m, s in zip(mean, std, strict=True))
    flow = noise.flow
    expected = 0.75 * p_far(flow.loc[0].tolist(), flow.std[0].tolist()) + 0.25 * p_far([0, 0], [2, 2])
    assert far == pytest.approx(expected, abs=0.006)


def test_fce_trains_checkpoints_resumes_exactly_and_draws_the_moving_noise(tmp_path, monkeypatch):
    import train
    monkeypatch.chdir(tmp_path)
    common = ['--noise', 'fce', '--samples', '400', '--fce-threshold', '0.3', '--flow-layers', '2', '--flow-hidden', '16']
    train.main(train.get_args([*common, '--epoch', '3', '--ckpt', 'a/n.pth.tar', '--images', 'a']))
    train.main(train.get_args([*common, '--epoch', '2', '--ckpt', 'b/n.pth.tar', '--images', 'b', '--no-plot']))
    train.main(train.get_args([*common, '--epoch', '1', '--ckpt', 'b/n.pth.tar', '--images', 'b', '--resume', '--no-plot']))
    whole, split = load_checkpoint(tmp_path / 'a/n.pth.tar'), load_checkpoint(tmp_path / 'b/n.pth.tar')
    assert whole['epoch'] == split['epoch'] == 2
    for part in ('energy', 'flow'):
        assert all(torch.equal(whole[part][k], split[part][k]) for k in whole[part])
    assert all(torch.equal(a, b) for k in whole['flow_optimizer'] for a, b in zip(whole['flow_optimizer'][k], split['flow_optimizer'][k], strict=True))
    rows = list(csv.DictReader(open(tmp_path / 'a/metrics.csv')))
    assert [r['flow_steps'] for r in rows] == [str(h['flow_steps']) for h in whole['history']]
    assert int(rows[-1]['flow_steps']) > 0 and all(float(r['flow_kl']) > 0 for r in rows)
    # the frame's middle panel is the current q: it changes from epoch to epoch
    import numpy as np
    from PIL import Image
    middle = [np.asarray(Image.open(tmp_path / f'a/epoch_{i}.png'))[:, 400:800] for i in (0, 2)]
    assert (middle[0] != middle[1]).mean() > 0.01


def test_metrics_leave_the_flow_columns_blank_for_a_fixed_noise_and_fill_them_for_a_flow(tmp_path, monkeypatch):
    import train
    monkeypatch.chdir(tmp_path)
    train.main(train.get_args(['--samples', '200', '--epoch', '1', '--no-plot', '--ckpt', 'g/n.pth.tar']))
    train.main(train.get_args(['--samples', '200', '--epoch', '1', '--no-plot', '--ckpt', 'f/n.pth.tar', '--noise', 'flow',
                               '--flow-fit', '50']))
    g, f = (next(csv.DictReader(open(tmp_path / d / 'metrics.csv'))) for d in 'gf')
    assert g['flow_nll'] == g['flow_kl'] == g['flow_steps'] == ''
    assert float(f['flow_kl']) > 0 and f['flow_steps'] == ''
    assert 'flow' not in load_checkpoint(tmp_path / 'g/n.pth.tar')


@pytest.mark.parametrize('args', [('--flow-layers', 0), ('--flow-hidden', -3), ('--flow-lr', 'nan'), ('--flow-lr', 0),
                                  ('--flow-fit', 0), ('--flow-broad', 1), ('--flow-broad', -0.1), ('--fce-threshold', 1),
                                  ('--noise', 'flow', '--samples', 1, '--batch', 1),
                                  ('--noise', 'fce', '--flow-hidden', 10**6)])
def test_bad_flow_flags_are_one_line_errors(args, tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.chdir(tmp_path)
    err = refused(train.get_args, args, capsys)
    if 10**6 in args:                   # a flow too big for the machine: the memory estimate names it
        assert 'the flow' in err
    assert list(tmp_path.iterdir()) == []


def test_a_flow_checkpoint_resumed_with_another_noise_or_flow_is_refused(tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.chdir(tmp_path)
    common = ['--samples', '200', '--no-plot', '--eval-every', '0']
    train.main(train.get_args([*common, '--noise', 'fce', '--epoch', '1', '--flow-layers', '2']))
    before = (tmp_path / 'ckpts/nce.pth.tar').read_bytes()
    for flags, message in ((['--noise', 'gaussian'], 'trained with --noise fce, not gaussian'),
                           (['--noise', 'flow', '--flow-layers', '2'], 'trained with --noise fce, not flow'),
                           (['--noise', 'fce'], 'holds a flow trained with --flow-layers 2, not 4')):
        with pytest.raises(SystemExit) as e:
            train.main(train.get_args([*common, '--resume', *flags]))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and ': error: ' in err[-1] and message in err[-1]
    assert (tmp_path / 'ckpts/nce.pth.tar').read_bytes() == before
