"""The claims that justify NCE and our exact evaluation, checked against closed forms."""
import math

import pytest
import torch
import torch.distributions as D

from conftest import GaussEnergy, fitted_original
from evaluate import log_partition
from model import EBM
from util import value

MEAN = torch.tensor([0.7, -0.4], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)


def fit_nce(nu, n=20000, seed=0):
    """Fit the unnormalised Gaussian model (mean, precision, c) by NCE, full batch with L-BFGS."""
    g = torch.Generator().manual_seed(seed)
    x = MEAN + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    noise = D.MultivariateNormal(torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64))
    gen = 2 * torch.randn(n * nu, 2, generator=g, dtype=torch.float64)
    energy = GaussEnergy(c=1.0)
    opt = torch.optim.LBFGS(energy.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10, line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = value(energy, noise, x, gen, nu)[0]
        loss.backward()
        return loss
    opt.step(closure)
    return energy


@pytest.mark.parametrize('nu', [1, 4])
def test_nce_recovers_log_z_and_the_mean(nu):
    energy = fit_nce(nu)
    assert abs(energy.c.item() - energy.log_z()) < 0.05
    assert (energy.mu.detach() - MEAN).abs().max() < 0.05
    # and c is log Z of the data's own density: log 2π + log det Σ / 2
    assert abs(energy.c.item() - (math.log(2 * math.pi) + 0.5 * torch.logdet(COV).item())) < 0.05


@pytest.mark.parametrize('nu', [1, 4])
def test_gradient_wrt_c_vanishes_at_the_true_log_z(nu):
    """At the true model (right mean, precision and c = log Z) the expected gradient of V in c is zero."""
    n = 400000
    g = torch.Generator().manual_seed(1)
    chol_p = torch.linalg.cholesky(torch.linalg.inv(COV))
    energy = GaussEnergy(MEAN.tolist(), chol_p.tolist())
    energy.c.data.fill_(energy.log_z())
    x = MEAN + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    gen = 2 * torch.randn(n * nu, 2, generator=g, dtype=torch.float64)
    noise = D.MultivariateNormal(torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64))
    value(energy, noise, x, gen, nu)[0].backward()
    at_truth = energy.c.grad.item()
    energy.c.grad = None
    energy.c.data += 0.1          # a wrong c has a clearly non-zero gradient on the same sample
    value(energy, noise, x, gen, nu)[0].backward()
    assert abs(at_truth) < 3e-3 < abs(energy.c.grad.item()) / 5


@pytest.mark.parametrize('std', [0.08, 1.0])
def test_quadrature_log_z_of_a_gaussian(std):
    """log_partition against the closed form log(2π σ²), for a Gaussian as narrow as a ring of 'rings'."""
    chol = ((1 / std, 0.0), (0.0, 1 / std))
    energy = GaussEnergy((0.3171, -1.2345), chol).float()
    assert abs(log_partition(energy) - math.log(2 * math.pi * std**2)) < 1e-3


def test_quadrature_matches_a_fine_uniform_grid_on_a_trained_network():
    """The quadrature against the same with cells 4x finer everywhere, for a network fitted to rings."""
    energy = fitted_original('rings')
    fine = log_partition(energy, n=1280)      # h = 0.00625 on the data window
    assert abs(log_partition(energy) - fine) < 1e-3
    # the fit is sharp enough for the check to mean something: the ring structure is there
    assert abs(energy.c.item() - fine) < 1.0


def test_an_evaluation_from_the_fixed_inputs_gives_the_same_numbers_to_the_bit():
    """A run makes the Fourier features of the evaluation's points once (fixed_inputs) and passes them at every epoch:
    the metrics and the window's log p_θ are exactly those of the evaluation from the points."""
    from evaluate import evaluate, fixed_inputs
    torch.manual_seed(1)
    energy, x_test = EBM(hidden=32, depth=3, act='silu', fourier=16, base=2.0), torch.randn(3000, 2)
    fixed = fixed_inputs(energy, x_test)
    assert [sum(len(c) for c in part) for part in fixed] == [320 ** 2, 160 ** 2 - 80 ** 2, 3000]
    (plain, log_p), (cached, log_p_cached) = evaluate(energy, x_test, 1.5), evaluate(energy, x_test, 1.5, fixed=fixed)
    assert plain == cached and torch.equal(log_p, log_p_cached)
    with torch.no_grad():
        energy.f[0].weight.mul_(1.1)             # the weights train; the features do not
    assert evaluate(energy, x_test, 1.5)[0] == evaluate(energy, x_test, 1.5, fixed=fixed)[0] != plain
    assert fixed_inputs(EBM(), x_test) is None   # without features, the points are the inputs
