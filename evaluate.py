"""Exact evaluation: log Z by quadrature on a grid, the test NLL of the normalised model and the KL to the data."""
import math

import torch

PLOT_LIM = 4.0   # the data lives in [-4, 4]²; the plots show this window
GRID_N = 320     # cells across that window, for the plot and the quadrature alike (side 0.025)
# rows a pass of the evaluation, at most: on a CPU 2048 rows keep a layer's activations (1 MB at 128 wide) nearer
# the core, and an evaluation of the original network took 0.10 s against 0.115 s with 8192 (docs/estimators.md)
CHUNK, CPU_CHUNK = 8192, 2048


def grid(lim, n, device='cpu'):
    """Midpoints of an n×n grid of square cells on [-lim, lim]², shape (n*n, 2); row i of the image is y_i."""
    t = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (2 * lim / n) - lim
    y, x = torch.meshgrid(t, t, indexing='ij')
    return torch.stack([x.flatten(), y.flatten()], 1)


@torch.inference_mode()
def log_p_on(energy, points):
    """log p_θ at many points, in chunks so that the activations stay small, shape (N,). Each row's value is the
    same whatever the chunk (on this CPU, bit for bit)."""
    return torch.cat([energy(p).squeeze(1) for p in points.split(CPU_CHUNK if points.device.type == 'cpu' else CHUNK)])


def window_log_p(energy, n=GRID_N):
    """log p_θ on the n×n grid of the data window [-4, 4]², shape (n, n): the plot's image."""
    return log_p_on(energy, grid(PLOT_LIM, n, energy.c.device)).view(n, n)


@torch.inference_mode()
def log_partition(energy, lim=8.0, n=GRID_N, log_p=None):
    """log Z(θ) = log ∫ exp(-f_θ(x)) dx over [-lim, lim]², by the midpoint rule.

    Cells of side h = 8/n on the data window [-4, 4]² (n = 320: h = 0.025, a third of the rings' noise
    std 0.08), and of side 4h on the rest, where no data is and the model is smooth and small. `log_p`
    may pass log p_θ on the fine grid, shape (n, n), as computed for the plot, to evaluate it only once.
    Everything is float32 (mps has no float64); the sum is a logsumexp, so no precision is lost."""
    h = 2 * PLOT_LIM / n
    m = 2 * lim / (4 * h)
    if lim < PLOT_LIM or abs(m - round(m)) > 1e-6 or n % 8:
        raise ValueError(f'need lim >= {PLOT_LIM}, n a multiple of 8 and (lim - {PLOT_LIM}) a multiple of 4·8/n; got lim={lim}, n={n}')
    if log_p is None:
        log_p = window_log_p(energy, n)
    outer = grid(lim, round(m), energy.c.device)
    outer = outer[(outer.abs() > PLOT_LIM).any(1)]
    # log p_θ = -f_θ - c, so ∫ exp(-f_θ) = exp(c) ∫ p_θ
    return torch.logsumexp(torch.cat([log_p.flatten() + 2 * math.log(h),
                                      log_p_on(energy, outer) + 2 * math.log(4 * h)]), 0) + energy.c.detach().squeeze()


@torch.inference_mode()
def evaluate(energy, x_test, entropy=None, n=GRID_N):
    """Exact metrics of the model: c, log_z (quadrature), the test NLL of the normalised model and, given the
    true density's entropy estimate H = mean -log p_data on the same x_test, KL(p_data || p_θ) = NLL - H.
    Also returns log p_θ on the plot's grid, so the plot reuses this evaluation."""
    log_p = window_log_p(energy, n)
    log_z = log_partition(energy, n=n, log_p=log_p)
    c = energy.c.detach().squeeze()
    nll = -(log_p_on(energy, x_test).mean() + c - log_z)
    out = dict(c=c.item(), log_z=log_z.item(), nll=nll.item())
    out['kl'] = out['nll'] - entropy if entropy is not None else None
    return out, log_p


@torch.inference_mode()
def evaluate_flow(flow, x_test, entropy):
    """The flow as a density model of its own: its test NLL and KL(p_data || q_φ) = NLL - H, exact (the flow
    alone, without the broad part the noise mixes in)."""
    nll = -flow.log_prob(x_test).mean().item()
    return dict(flow_nll=nll, flow_kl=nll - entropy)
