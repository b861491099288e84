"""log Z over the whole plane: far modes, models that are not normalisable, the original network's window, exact
MLE's nodes, the Gaussian base, and what the frame and metrics.csv say of the mass outside the window."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import evaluate
from conftest import fitted_original
from evaluate import GRID_N, grid, plane
from likelihood import mle_grid, mle_nodes
from model import EBM

TOL = evaluate.TOL      # 1e-3 nats, the bound the quadrature promises


class Mixture(nn.Module):
    """log p̃(x) = log Σ_j w_j N(x; μ_j, σ_j² I) + log s, with c = 0: its log Z is log(s Σ_j w_j) in closed form."""

    def __init__(self, means, stds, weights, scale=1.0):
        super().__init__()
        self.means, self.stds = torch.tensor(means), torch.tensor(stds)
        self.log_w = torch.tensor(weights).log() + math.log(scale)
        self.c = nn.Parameter(torch.zeros(1))
        self.log_z = math.log(scale * sum(weights))

    def forward(self, x):
        d2 = ((x[:, None, :] - self.means) ** 2).sum(2)
        log_n = -d2 / (2 * self.stds ** 2) - torch.log(2 * math.pi * self.stds ** 2)
        return torch.logsumexp(log_n + self.log_w, 1, keepdim=True) - self.c


class Energy(nn.Module):
    """log p̃ = g(x) - c for a function g of our choosing."""

    def __init__(self, g):
        super().__init__()
        self.g, self.c = g, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.g(x)[:, None] - self.c


@pytest.mark.parametrize('far', [(12.0, -16.0), (-30.0, 40.0)])
def test_a_far_mode_is_integrated_to_its_closed_form(far):
    """A two-Gaussian mixture, one component in the data window and one at radius 20 or 50, where [-8, 8]² would
    miss 30% of the mass."""
    energy = Mixture([(0.5, -0.3), far], [0.3, 0.7], [0.7, 0.3], scale=3.0)
    z = plane(energy)
    assert abs(z['log_z'].item() - energy.log_z) < TOL
    assert z['err'] <= TOL
    assert z['outside'] == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize('g', [
    lambda x: torch.zeros(len(x)),              # flat: Z = ∞
    lambda x: -torch.relu(x[:, 0]),             # falls to the right, flat on the left half-plane
    lambda x: 0.05 * x.norm(dim=1),             # log p̃ rises in every direction
    lambda x: -x.norm(dim=1) + 2 * torch.relu(x[:, 1]),     # falls everywhere but up, where it rises
], ids=['flat', 'half-flat', 'rising', 'rising-one-way'])
def test_an_energy_that_does_not_grow_in_some_direction_is_not_normalisable(g):
    z = plane(Energy(g))
    assert z['log_z'].item() == math.inf and z['outside'] == 1.0
    metrics, _ = evaluate.evaluate(Energy(g), torch.randn(50, 2), entropy=1.0)
    assert metrics['log_z'] == metrics['nll'] == metrics['kl'] == math.inf


def test_an_mlp_with_a_flat_output_is_not_normalisable_and_a_gaussian_base_makes_it_so():
    """f constant: exp(-f) has no finite integral; N(x; 0, s²I) exp(-f) integrates to exp(-f) exactly."""
    energy = EBM(hidden=16, act='silu')
    with torch.no_grad():
        energy.f[-1].weight.zero_()
        energy.f[-1].bias.fill_(0.7)
    assert plane(energy)['log_z'].item() == math.inf
    based = EBM(hidden=16, act='silu', base=2.0)
    based.load_state_dict(energy.state_dict())
    z = plane(based)
    assert abs(z['log_z'].item() - (-0.7)) < TOL
    assert z['outside'] == pytest.approx(1 - math.erf(4 / (2 * math.sqrt(2))) ** 2, abs=1e-4)    # N(0, 4I) beyond [-4, 4]²


def test_the_original_network_keeps_its_log_z_where_its_mass_lies_in_the_window(trained_original):
    """Where the shells beyond [-8, 8]² add nothing and the grid's error is within bounds, log Z is the sum over
    [-8, 8]² as it was, to the bit."""
    z = plane(trained_original)
    assert torch.equal(z['log_z'], evaluate.log_z_in_window(trained_original))
    assert z['err'] <= TOL and z['outside'] < 0.05


def test_the_bound_holds_against_a_fine_uniform_grid_on_a_wiggly_network():
    """A network of Fourier features with weights three times their initial size, on a base N(0, 3²I): plane's log Z
    against the midpoint rule on cells of 0.02 over [-16, 16]², in float64, beyond which the base leaves e^-14."""
    torch.manual_seed(3)
    energy = EBM(hidden=32, act='silu', fourier=16, fourier_std=0.5, base=3.0)
    with torch.no_grad():
        for p in energy.f.parameters():
            p.mul_(3)
    z = plane(energy)
    fine = energy.double()
    points = grid(16.0, 1600).double()
    with torch.inference_mode():
        ref = torch.logsumexp(torch.cat([fine(p).squeeze(1) for p in points.split(2**16)]), 0) + 2 * math.log(0.02)
    assert abs(z['log_z'].item() - (ref + fine.c.squeeze()).item()) < TOL
    assert z['err'] <= TOL


@pytest.mark.parametrize('edge', [4.02, 4.3, 12.0])
def test_a_density_that_falls_off_a_cliff_just_past_a_region_edge_is_integrated(edge):
    """p̃(x) = σ(k(a - |x₁|)) σ(k(a - |x₂|)), flat out to a = 4.02 (or 4.3, 12) and gone within 1/k = 0.003: Z is
    ((2/k) softplus(ka))². At 4.02 the mass past the window's edge lies between the window's last midpoints and the
    ring's first, 0.05 out, so the sum over [-8, 8]² misses 1% of Z, and a Richardson or chessboard check made of those
    midpoints sees nothing; the collar split off at the edge does."""
    k = 300.0
    energy = Energy(lambda x: -torch.nn.functional.softplus(k * (x.abs() - edge)).sum(1))
    log_z = 2 * math.log(2 / k * (k * edge + math.log1p(math.exp(-k * edge))))
    z = plane(energy)
    assert abs(z['log_z'].item() - log_z) < TOL and z['err'] <= TOL
    if edge == 4.02:
        assert evaluate.log_z_in_window(energy).item() < log_z - 5 * TOL


@pytest.mark.parametrize('mode', [(4.6, 0.15), (6.0, 0.05)], ids=['near-the-window', 'narrow'])
def test_only_the_band_of_a_region_that_holds_the_mass_is_checked_on_finer_cells(mode):
    """A mode past the window, 5% of the mass, at radius 4.6 or (as narrow as the ring's cells of 0.1) at radius 6:
    the ring [4, 8]² holding more than the tolerance is trusted only on cells half as wide, and only out to where
    less than the tolerance lies beyond; the rest keeps its cells. log Z is its closed form either way."""
    radius, std = mode
    energy = Mixture([(0.5, -0.3), (radius, 0.0)], [0.3, std], [0.95, 0.05])
    z = plane(energy)
    assert abs(z['log_z'].item() - energy.log_z) < TOL and z['err'] <= TOL
    ring = [(r['inner'], r['outer'], r['side']) for r in z['regions'] if evaluate.PLOT_LIM <= r['inner'] < evaluate.Z_LIM]
    h = 2 * evaluate.PLOT_LIM / GRID_N
    (_, edge, side), (start, end, rest) = ring
    assert side <= 2 * h and rest == 4 * h and edge == start and radius + 2 * std < edge < end == evaluate.Z_LIM
    cut = evaluate.region(energy, edge, end, rest)
    assert torch.equal(cut['log_p'], z['regions'][2]['log_p'])     # the rest's values as they were, in its own order
    assert math.exp(cut['fine'].item() - z['log_z'].item()) < TOL


def test_mle_nodes_estimate_z_over_the_plane_without_bias():
    """--method mle's log Z: the nodes cover the plane far beyond the grid, and the mean over steps of the estimate of
    Z, Σ_k a_k p̃(node_k), is the closed form, here of a mixture with 30% of its mass at radius 20."""
    energy = Mixture([(0.5, -0.3), (12.0, -16.0)], [0.3, 0.7], [0.7, 0.3])
    base = mle_grid()
    assert base[0].abs().max() > 20 and len(base[0]) == 48 ** 2 + 2 * 108
    torch.manual_seed(0)
    with torch.no_grad():
        est = torch.stack([torch.logsumexp(energy(mle_nodes(base)).squeeze(1) + base[2], 0).exp() for _ in range(400)])
    assert abs(est.mean().item() - 1.0) < 3 * est.std().item() / 20 + 1e-3     # within 3 standard errors


def test_the_frame_shows_the_share_in_its_title(tmp_path):
    """The three panels stay; the model panel's title changes with the share, and only there."""
    from PIL import Image

    import plot
    from noise import make_noise
    x = torch.randn(200, 2)
    frame = plot.Frame(x, make_noise('gaussian', x))
    log_p = torch.zeros(GRID_N, GRID_N)
    frame.save(log_p, tmp_path / 'none.png')
    frame.save(log_p, tmp_path / 'some.png', outside=0.0841)
    frame.close()
    a, b = (np.asarray(Image.open(tmp_path / f'{n}.png')) for n in ('none', 'some'))
    rows, cols = np.nonzero((a != b).any(2))
    assert len(rows) and rows.max() < 0.1 * a.shape[0] and cols.min() > 0.6 * a.shape[1]    # the third panel's title
    assert plot.share(0.0841) == '8.4%' and plot.share(2e-5) == '<0.1%'


def test_a_run_reports_a_model_that_is_not_normalisable_once_and_records_inf(tmp_path, monkeypatch, capsys):
    import csv

    import train
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluate, 'plane', lambda *a, **k: dict(log_z=torch.tensor(math.inf), outside=1.0, err=0.0))
    train.main(train.get_args(['--epoch', '2', '--samples', '200', '--no-plot']))
    out = capsys.readouterr()
    assert (out.out + out.err).count('not normalisable') == 1
    with open(tmp_path / 'ckpts/metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['log_z'], r['kl'], r['outside']) for r in rows] == [('inf', 'inf', '1.0')] * 2


@pytest.fixture(scope='module')
def trained_original():
    """The original network after 600 NCE steps on 8gaussians."""
    return fitted_original('8gaussians')
