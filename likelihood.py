"""Maximum likelihood, NCE's reference: exact, with log Z(θ) by quadrature at every step (possible in 2D only), and
approximate, with the model's samples drawn by Langevin dynamics (contrastive divergence, persistent or not).

Both are the gradient of the negative log-likelihood, -E_data ∇ log p̃_θ + E_{p_θ} ∇ log p̃_θ: they differ in where
the model's expectation comes from. Each loss returns (loss, dL/d log p̃_θ at its points); c cancels in both."""

import torch

from evaluate import grid, log_p_on, ring

MLE_N, MLE_LIM = 48, 5.5        # the quadrature grid of every step: 48 × 48 nodes over [-5.5, 5.5]², cells of 0.23
# and beyond it two shells [-2L, 2L]² minus [-L, L]², L = 5.5 and 11, in cells of side L/3 (108 nodes a shell), out to
# [-22, 22]²: the original network's energy rises 4 to 15 a unit past the data and the strong preset's base leaves e^-60
# there. Shells out to 352 made the step's Z so noisy while a young network is not normalisable that 5000 steps fell
# short (2spirals, seed 0: KL 0.62 with six shells, 0.47 with four, 0.41 with two; docs/exact.md)
MLE_SHELLS, MLE_SHELL_CELLS = 2, 3


def mle_grid(device='cpu'):
    """Exact MLE's quadrature nodes, made once a run: the midpoints of MLE_N × MLE_N cells over [-MLE_LIM, MLE_LIM]²,
    then of the shells' cells; the side of each node's cell, shape (K, 1), and the log of its area, shape (K,)."""
    parts, lim = [(grid(MLE_LIM, MLE_N, device), 2 * MLE_LIM / MLE_N)], MLE_LIM
    for _ in range(MLE_SHELLS):
        parts.append((ring(lim, 2 * lim, lim / MLE_SHELL_CELLS, device), lim / MLE_SHELL_CELLS))
        lim *= 2
    nodes = torch.cat([p for p, _ in parts])
    side = torch.cat([torch.full((len(p), 1), s, device=device) for p, s in parts])
    return nodes, side, 2 * side.squeeze(1).log()


def mle_nodes(base):
    """A step's quadrature nodes: each cell's midpoint shifted by one uniform offset, the same fraction of every cell,
    so that each node is uniform over its cell, the estimate of Z is unbiased over all that the cells cover,
    and the model cannot hide mass between fixed nodes."""
    nodes, side, _ = base
    return nodes + (torch.rand(2, device=nodes.device) - 0.5) * side


@torch.inference_mode()
def step_log_z(energy, base):
    """The log Z one --method mle step sees: the midpoint sum at a step's shifted nodes (mle_nodes), plus c."""
    return torch.logsumexp(log_p_on(energy, mle_nodes(base)) + base[2], 0) + energy.c.detach().squeeze()


def mle_loss(log_p, n, log_area):
    """Exact maximum likelihood: for n data points and then the quadrature's nodes, of cells of area a_k,

        L = -(1/n) Σ_i log p̃_θ(x_i) + log Σ_k a_k p̃_θ(node_k),    dL/d log p̃ = -1/n at data, w_k/Σ w at the nodes,

    w_k = a_k p̃_θ(node_k): the test NLL's own formula with log Z by the midpoint rule over [-22, 22]² (mle_grid)."""
    log_w = log_p[n:] + log_area
    lse = torch.logsumexp(log_w, 0)
    loss = -log_p[:n].mean() + lse
    return loss, torch.cat([log_p.new_full((n,), -1 / n), (log_w.detach() - lse.detach()).exp()])


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


def cd_loss(log_p, n, alpha=0.0, c=0.0):
    """Contrastive divergence (Hinton 2002; persistent, Tieleman 2008): for n data points and then m chain states
    x⁻ standing in for samples of p_θ,

        L = -(1/n) Σ_i log p̃_θ(x_i) + (1/m) Σ_j log p̃_θ(x⁻_j),    dL/d log p̃ = -1/n at data, +1/m at the chains,

    whose gradient is the log-likelihood's with E_{p_θ} replaced by the chains' mean. Its value is not a likelihood.
    With alpha > 0, Du & Mordatch's (2019, "Implicit generation and modeling with energy-based models", eq. 4)
    energy penalty α((1/n) Σ_i E(x_i)² + (1/m) Σ_j E(x⁻_j)²) is added, E = f_θ = -log p̃_θ - c (c, which CD never
    steps, passed in): it keeps the energies near 0, where without it they can run off together (dL/d log p̃ gains
    -2αE/n at the data and -2αE/m at the chains)."""
    m = len(log_p) - n
    weight = torch.cat([log_p.new_full((n,), 1 / n), log_p.new_full((m,), 1 / m)])
    loss, grad = -log_p[:n].mean() + log_p[n:].mean(), weight * torch.cat([-log_p.new_ones(n), log_p.new_ones(m)])
    if alpha:
        e = -(log_p + c)
        loss, grad = loss + alpha * (weight * e ** 2).sum(), grad - 2 * alpha * weight * e
    return loss, grad
