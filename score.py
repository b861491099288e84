"""Score matching: the estimators that fit ∇ₓ log p̃_θ, the model's score, which does not depend on Z, so they learn
no normaliser. They need derivatives in x, which autograd takes (create_graph), and their gradient in θ goes back
through those derivatives."""
import torch


def score_and_graph(energy, x):
    """∇ₓ log p̃_θ(x), kept in autograd's graph so that a loss of it can be differentiated in θ."""
    x = x.detach().requires_grad_(True)
    return x, torch.autograd.grad(energy(x).sum(), x, create_graph=True)[0]


def sm_loss(energy, x):
    """Score matching (Hyvärinen 2005), exact in 2D:

        L = E_data [ ½ ‖∇ₓ log p̃_θ(x)‖² + Δₓ log p̃_θ(x) ],    Δ = ∂²/∂x₁² + ∂²/∂x₂²,

    equal, up to a constant, to ½ E ‖∇ₓ log p̃_θ - ∇ₓ log p_data‖². It needs a twice-differentiable energy: with
    LeakyReLU the Laplacian is 0 almost everywhere and L is minimised by a flat model (train.py refuses it)."""
    x, s = score_and_graph(energy, x)
    laplacian = sum(torch.autograd.grad(s[:, d].sum(), x, create_graph=True)[0][:, d] for d in range(x.shape[1]))
    return (0.5 * (s ** 2).sum(1) + laplacian).mean()


def dsm_loss(energy, x, sigma):
    """Denoising score matching (Vincent 2011): the score at x̃ = x + σξ, ξ ~ N(0, I), is fitted to that of the
    Gaussian corruption, ∇ log N(x̃; x, σ²I) = -(x̃ - x)/σ²,

        L = E ½ ‖∇ₓ log p̃_θ(x̃) + (x̃ - x)/σ²‖²,

    which is score matching of the data smoothed by N(0, σ²I): first derivatives only, biased by σ."""
    noise = sigma * torch.randn_like(x)
    _, s = score_and_graph(energy, x + noise)
    return 0.5 * ((s + noise / sigma**2) ** 2).sum(1).mean()


# an activation's value and first two derivatives at z, for the forward-mode pass of sm_loss_mlp
DERIVATIVES = {
    'softplus': lambda z: (lambda s: (torch.nn.functional.softplus(z), s, s * (1 - s)))(torch.sigmoid(z)),
    'silu': lambda z: (lambda s: (z * s, s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))))(torch.sigmoid(z)),
    'gelu': lambda z: (lambda cdf, pdf: (z * cdf, cdf + z * pdf, pdf * (2 - z * z)))(
        0.5 * (1 + torch.erf(z / 2**0.5)), torch.exp(-0.5 * z * z) / (2 * torch.pi) ** 0.5),
    'tanh': lambda z: (lambda t: (t, 1 - t * t, -2 * t * (1 - t * t)))(torch.tanh(z)),
}


def sm_loss_mlp(energy, x):
    """sm_loss for model.EBM, written out in forward mode, as train.py's --method sm runs it: each layer carries its
    value h, its derivatives J_d = ∂h/∂x_d and its second derivatives K_d = ∂²h/∂x_d² along both axes, so one pass
    gives ∇ₓ f = J and Δ f = Σ_d K_d, and one backward (autograd) gives the loss's gradient in θ. Through a linear
    layer J and K go as h does (without the bias); through h' = a(h), J' = a'(h) J and K' = a''(h) J² + a'(h) K.
    Autograd's double backward computes the same numbers (tests/test_estimators.py) at about twice the cost."""
    n, d = x.shape
    h = energy.features(x)
    if energy.freq is None:
        j = torch.eye(d, dtype=x.dtype, device=x.device).expand(n, d, d).transpose(0, 1)     # (d, n, d): ∂x/∂x_d
        k = torch.zeros_like(j)
    else:           # [x, sin z, cos z], z = 2π x B: ∂z/∂x_d = 2πB_d; sin' = cos, sin'' = -sin, cos' = -sin, cos'' = -cos
        m, w = energy.freq.shape[1], 2 * torch.pi * energy.freq                                  # w: (d, m)
        sin, cos = h[:, d:d + m], h[:, d + m:]
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        j = torch.stack([torch.cat([eye[i].expand(n, d), cos * w[i], -sin * w[i]], 1) for i in range(d)])
        k = torch.stack([torch.cat([x.new_zeros(n, d), -sin * w[i] ** 2, -cos * w[i] ** 2], 1) for i in range(d)])
    derivatives = DERIVATIVES[energy.act]
    for layer in energy.f:          # (one product of the stacked h, J, K measured 1.4x slower than three)
        if isinstance(layer, torch.nn.Linear):
            h, j, k = layer(h), j @ layer.weight.T, k @ layer.weight.T
        else:
            h, a1, a2 = derivatives(h)
            j, k = a1 * j, a2 * j * j + a1 * k
    j, k = j[..., 0], k[..., 0]         # f's: ∇ₓ f and its second derivatives
    # log p̃ = -f: ∇ₓ log p̃ = -J, Δ log p̃ = -Σ_d K_d; a base N(0, s²I) adds -x/s² and -d/s²
    if not energy.base:
        return (0.5 * (j ** 2).sum(0) - k.sum(0)).mean()
    return (0.5 * ((j + x.T / energy.base ** 2) ** 2).sum(0) - k.sum(0) - d / energy.base ** 2).mean()
