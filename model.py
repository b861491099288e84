"""The energy-based model: an MLP energy f_θ and a learnable c standing for log Z(θ)."""
import math

import torch
import torch.nn as nn

ACTIVATIONS = {
    'leaky_relu': lambda: nn.LeakyReLU(0.2),
    'silu': nn.SiLU,
    'gelu': nn.GELU,
    'softplus': nn.Softplus,
    'tanh': nn.Tanh,
}


class EBM(nn.Module):
    """log p_θ(x) = -f_θ(x) - c. The defaults are the original network: 2 hidden layers of 128, LeakyReLU(0.2).

    fourier=m > 0 feeds the MLP [x, sin 2πBx, cos 2πBx] instead of x, with B a fixed random dim×m matrix of
    frequencies drawn from N(0, fourier_std²) (cycles per unit), kept as a buffer so a checkpoint restores it.
    These random Fourier features (Tancik et al. 2020) let a small MLP draw sharp edges, such as the
    checkerboard's, that it otherwise learns only slowly; fourier_std sets the finest detail it can draw."""

    def __init__(self, dim=2, hidden=128, depth=2, act='leaky_relu', fourier=0, fourier_std=0.25):
        super().__init__()
        self.register_buffer('freq', fourier_std * torch.randn(dim, fourier) if fourier else None)
        layers, width = [], dim + 2 * fourier
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[act]()]
            width = hidden
        self.f = nn.Sequential(*layers, nn.Linear(width, 1))
        # c is trained like any other weight; NCE makes it converge to log Z(θ) = log ∫ exp(-f_θ)
        self.c = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        if self.freq is not None:
            z = (2 * math.pi) * (x @ self.freq)
            x = torch.cat([x, z.sin(), z.cos()], 1)
        return -self.f(x) - self.c
