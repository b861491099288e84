"""Maximum likelihood, NCE's reference: exact, with log Z(θ) by quadrature at every step (possible in 2D only), and
approximate, with the model's samples drawn by Langevin dynamics (contrastive divergence, persistent or not).

Both are the gradient of the negative log-likelihood, -E_data ∇ log p̃_θ + E_{p_θ} ∇ log p̃_θ: they differ in where
the model's expectation comes from. Each loss returns (loss, dL/d log p̃_θ at its points); c cancels in both."""
import math

import torch

from evaluate import grid

MLE_N, MLE_LIM = 48, 5.5        # the quadrature grid of every step: 48 × 48 nodes over [-5.5, 5.5]², cells of 0.23


def mle_grid(device='cpu'):
    """Exact MLE's quadrature grid, made once a run: the midpoints of MLE_N × MLE_N cells over [-MLE_LIM, MLE_LIM]²."""
    return grid(MLE_LIM, MLE_N, device)


def mle_nodes(base):
    """A step's quadrature nodes: the grid shifted by one uniform offset in a cell, so that the estimate of Z is
    unbiased and the model cannot hide mass between fixed nodes."""
    return base + (torch.rand(2, device=base.device) - 0.5) * (2 * MLE_LIM / MLE_N)


def mle_loss(log_p, n, h=2 * MLE_LIM / MLE_N):
    """Exact maximum likelihood: for n data points and then the grid's nodes (cells of side h),

        L = -(1/n) Σ_i log p̃_θ(x_i) + log Σ_k h² p̃_θ(node_k),    dL/d log p̃ = -1/n at data, softmax_k at the nodes,

    the test NLL's own formula with log Z by the midpoint rule. The mass beyond [-5.5, 5.5]² is left out."""
    lse = torch.logsumexp(log_p[n:], 0)
    loss = -log_p[:n].mean() + lse + 2 * math.log(h)
    return loss, torch.cat([log_p.new_full((n,), -1 / n), (log_p[n:].detach() - lse.detach()).exp()])


def langevin(energy, x, steps, step_size, noise_scale):
    """k steps of Langevin dynamics on p_θ from x: x ← x + a ∇ₓ log p̃_θ(x) + b ξ, ξ ~ N(0, I). With b = √(2a)
    (the default) it is the unadjusted Langevin algorithm, whose chain tends to p_θ as a → 0. Only ∇ₓ is computed,
    no weight gradient (EBM.scorer, built once for the k steps). The k steps' noise is drawn at once, and x is
    updated in place (on a copy)."""
    noise = torch.randn(steps, *x.shape, device=x.device, dtype=x.dtype).mul_(noise_scale)
    x, score = x.clone(), energy.scorer(step_size)
    for k in range(steps):
        x.add_(score(x)).add_(noise[k])
    return x


def cd_loss(log_p, n):
    """Contrastive divergence (Hinton 2002; persistent, Tieleman 2008): for n data points and then m chain states
    x⁻ standing in for samples of p_θ,

        L = -(1/n) Σ_i log p̃_θ(x_i) + (1/m) Σ_j log p̃_θ(x⁻_j),    dL/d log p̃ = -1/n at data, +1/m at the chains,

    whose gradient is the log-likelihood's with E_{p_θ} replaced by the chains' mean. Its value is not a likelihood."""
    m = len(log_p) - n
    return -log_p[:n].mean() + log_p[n:].mean(), torch.cat([log_p.new_full((n,), -1 / n), log_p.new_full((m,), 1 / m)])
