"""Exact evaluation: log Z by quadrature on a grid, the test NLL of the normalised model and the KL to the data."""
import math

import torch

PLOT_LIM = 4.0   # the data lives in [-4, 4]²; the plots show this window
Z_LIM = 8.0      # log Z integrates over [-8, 8]²
GRID_N = 320     # cells across that window, for the plot and the quadrature alike (side 0.025)
# rows a pass of the evaluation, at most: on a CPU 2048 rows keep a layer's activations (1 MB at 128 wide) nearer
# the core, and an evaluation of the original network took 0.10 s against 0.115 s with 8192 (docs/estimators.md)
CHUNK, CPU_CHUNK = 8192, 2048
TEST_SAMPLES = 20000    # the held-out set's size


def grid(lim, n, device='cpu'):
    """Midpoints of an n×n grid of square cells on [-lim, lim]², shape (n*n, 2); row i of the image is y_i."""
    t = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (2 * lim / n) - lim
    y, x = torch.meshgrid(t, t, indexing='ij')
    return torch.stack([x.flatten(), y.flatten()], 1)


def chunks(points):
    """points in the rows a pass takes at once on their device."""
    return points.split(CPU_CHUNK if points.device.type == 'cpu' else CHUNK)


def inputs(energy, points):
    """points as the network's first layer takes them, in log_p_on's chunks. With Fourier features these are the sin
    and cos of frequencies that do not train, the same at every evaluation of a run (fixed_inputs)."""
    with torch.inference_mode():
        return [energy.features(p) for p in chunks(points)]


@torch.inference_mode()
def log_p_on(energy, points):
    """log p_θ at many points, in chunks so that the activations stay small, shape (N,): points (N, 2), or inputs()
    made of them, which gives the same values to the bit. Each row's value is the same whatever the chunk (on this
    CPU, bit for bit)."""
    if torch.is_tensor(points):
        return torch.cat([energy(p).squeeze(1) for p in chunks(points)])
    return torch.cat([(-energy.f(h) - energy.c).squeeze(1) for h in points])     # energy.forward, from its features


def window_log_p(energy, n=GRID_N, window=None):
    """log p_θ on the n×n grid of the data window [-4, 4]², shape (n, n): the plot's image. window: its inputs()."""
    return log_p_on(energy, grid(PLOT_LIM, n, energy.c.device) if window is None else window).view(n, n)


def outer_points(lim, n, device='cpu'):
    """log_partition's nodes beyond the data window: the midpoints of cells of side 4·8/n on [-lim, lim]² outside
    [-4, 4]²."""
    m = 2 * lim / (4 * 2 * PLOT_LIM / n)
    if lim < PLOT_LIM or abs(m - round(m)) > 1e-6 or n % 8:
        raise ValueError(f'need lim >= {PLOT_LIM}, n a multiple of 8 and (lim - {PLOT_LIM}) a multiple of 4·8/n; got lim={lim}, n={n}')
    outer = grid(lim, round(m), device)
    return outer[(outer.abs() > PLOT_LIM).any(1)]


@torch.inference_mode()
def log_partition(energy, lim=Z_LIM, n=GRID_N, log_p=None, outer=None):
    """log Z(θ) = log ∫ exp(-f_θ(x)) dx over [-lim, lim]², by the midpoint rule.

    Cells of side h = 8/n on the data window [-4, 4]² (n = 320: h = 0.025, a third of the rings' noise
    std 0.08), and of side 4h on the rest, where no data is and the model is smooth and small. `log_p`
    may pass log p_θ on the fine grid, shape (n, n), as computed for the plot, to evaluate it only once, and
    `outer` the inputs() of outer_points(lim, n). Everything is float32 (mps has no float64); the sum is a
    logsumexp, so no precision is lost."""
    h = 2 * PLOT_LIM / n
    if outer is None:
        outer = outer_points(lim, n, energy.c.device)
    if log_p is None:
        log_p = window_log_p(energy, n)
    # log p_θ = -f_θ - c, so ∫ exp(-f_θ) = exp(c) ∫ p_θ
    return torch.logsumexp(torch.cat([log_p.flatten() + 2 * math.log(h),
                                      log_p_on(energy, outer) + 2 * math.log(4 * h)]), 0) + energy.c.detach().squeeze()


def fixed_inputs(energy, x_test, n=GRID_N):
    """The inputs() of every point evaluate() passes through a network with Fourier features: the window's grid, the
    cells beyond it and the held-out set, for a run to make once and pass at each evaluation (on the strong network
    their sin and cos were a fifth of an evaluation). None for a network without features, whose inputs are the
    points themselves. They take 4·(2 + 2m) bytes a point, 74 MB for the strong preset's m = 64."""
    if energy.freq is None:
        return None
    device = energy.c.device
    return inputs(energy, grid(PLOT_LIM, n, device)), inputs(energy, outer_points(Z_LIM, n, device)), inputs(energy, x_test)


@torch.inference_mode()
def evaluate(energy, x_test, entropy=None, n=GRID_N, fixed=None):
    """Exact metrics of the model: c, log_z (quadrature), the test NLL of the normalised model and, given the
    true density's entropy estimate H = mean -log p_data on the same x_test, KL(p_data || p_θ) = NLL - H.
    Also returns log p_θ on the plot's grid, so the plot reuses this evaluation. fixed: fixed_inputs(energy,
    x_test, n), the same numbers to the bit."""
    window, outer, test = fixed or (None, None, x_test)
    log_p = window_log_p(energy, n, window)
    log_z = log_partition(energy, n=n, log_p=log_p, outer=outer)
    c = energy.c.detach().squeeze()
    nll = -(log_p_on(energy, test).mean() + c - log_z)
    out = dict(c=c.item(), log_z=log_z.item(), nll=nll.item())
    out['kl'] = out['nll'] - entropy if entropy is not None else None
    return out, log_p


@torch.inference_mode()
def evaluate_flow(flow, x_test, entropy):
    """The flow as a density model of its own: its test NLL and KL(p_data || q_φ) = NLL - H, exact (the flow
    alone, without the broad part the noise mixes in)."""
    nll = -flow.log_prob(x_test).mean().item()
    return dict(flow_nll=nll, flow_kl=nll - entropy)
