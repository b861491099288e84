"""The noise families and the strong preset's code path."""
import math

import pytest
import torch

from data import sample_2d_data
from evaluate import grid
from files import load_checkpoint
from model import EBM
from noise import make_noise
from util import value


@pytest.mark.parametrize('dataset', ['rings', 'checkerboard', 'pinwheel'])
def test_gmm_noise_has_finite_log_density_on_the_whole_quadrature_square(dataset):
    x = sample_2d_data(dataset, 3000, torch.Generator().manual_seed(0))
    noise = make_noise('gmm', x)
    log_q = noise.log_prob(grid(8.0, 200))
    assert torch.isfinite(log_q).all() and log_q.min() > -60
    assert noise.sample((7,)).shape == (7, 2)


@pytest.mark.parametrize('dataset', ['8gaussians', 'swissroll', 'checkerboard'])
def test_fit_noise_covers_every_training_point(dataset):
    x = sample_2d_data(dataset, 5000, torch.Generator().manual_seed(0))
    noise = make_noise('fit', x)
    assert noise.log_prob(x).exp().min() > 1e-3
    assert torch.allclose(noise.mean, x.mean(0))


@pytest.mark.parametrize('kind', ['gaussian', 'fit', 'gmm', 'flow', 'fce'])
def test_every_noise_gives_a_finite_objective_and_gradient(kind):
    x = sample_2d_data('moons', 1000, torch.Generator().manual_seed(0))
    noise, energy = make_noise(kind, x), EBM()
    loss, _ = value(energy, noise, x[:100], noise.sample((400,)), nu=4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(energy.c.grad)


def test_strong_preset_trains_checkpoints_and_resumes(run, tmp_path):
    p = run('train.py', '--preset', 'strong', '--epoch', 2, '--samples', 1024, '--noise', 'gmm', '--eval-every', 2, '--no-plot')
    assert p.returncode == 0, p.stderr
    ck = load_checkpoint(tmp_path / 'ckpts/nce.pth.tar')
    assert ck['model_kwargs'] == dict(dim=2, hidden=128, depth=3, act='silu', fourier=64, fourier_std=0.25, base=2.0)
    assert ck['args']['nu'] == 4 and ck['args']['batch'] == 256 and ck['args']['schedule'] == 'cosine' and ck['epoch'] == 1
    assert ck['history'][-1]['kl'] is not None
    # model_kwargs and the state dict rebuild the network, Fourier frequencies included
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    assert torch.equal(energy.freq, ck['energy']['freq'])
    # the preset is part of the run: --resume needs no flag but --preset
    p = run('train.py', '--resume', '--preset', 'strong', '--epoch', 1, '--samples', 1024, '--noise', 'gmm', '--no-plot')
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(tmp_path / 'ckpts/nce.pth.tar')['epoch'] == 2
    # explicit flags override the preset
    p = run('train.py', '--preset', 'strong', '--epoch', 1, '--samples', 512, '--nu', 2, '--hidden', 32, '--fourier', 0,
            '--base', 0, '--ckpt', 'b/n.pth.tar', '--eval-every', 0, '--no-plot')
    assert p.returncode == 0, p.stderr
    ck = load_checkpoint(tmp_path / 'b/n.pth.tar')
    assert ck['args']['nu'] == 2 and ck['model_kwargs'] == dict(dim=2, hidden=32, depth=3, act='silu')


def test_fourier_features_are_fixed_sin_cos_of_the_input():
    torch.manual_seed(0)
    energy = EBM(hidden=16, depth=1, fourier=8, fourier_std=0.5)
    assert energy.freq.shape == (2, 8) and not energy.freq.requires_grad
    assert energy.freq.std().item() == pytest.approx(0.5, rel=0.6)
    x = torch.randn(5, 2)
    z = 2 * math.pi * x @ energy.freq
    features = torch.cat([x, z.sin(), z.cos()], 1)
    assert torch.allclose(energy(x), -energy.f(features) - energy.c)
    assert energy.f[0].in_features == 2 + 16


@pytest.mark.parametrize('kind', ['gaussian', 'fit', 'gmm'])
def test_noise_log_prob_does_not_validate_its_input(kind):
    """Validation would cost a host sync in every step; it must be off for every noise the loop uses."""
    noise = make_noise(kind, sample_2d_data('rings', 500, torch.Generator().manual_seed(0)))
    assert not noise._validate_args and not getattr(noise, 'base_dist', noise)._validate_args
    assert noise.log_prob(torch.full((3, 2), float('nan'))).isnan().all()   # no ValueError: nothing was checked
