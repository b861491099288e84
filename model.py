"""The energy-based model: an MLP energy f_θ and a learnable c standing for log Z(θ)."""
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
    """log p_θ(x) = -f_θ(x) - c. The defaults are the original network: 2 hidden layers of 128, LeakyReLU(0.2)."""

    def __init__(self, dim=2, hidden=128, depth=2, act='leaky_relu'):
        super().__init__()
        layers, width = [], dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[act]()]
            width = hidden
        self.f = nn.Sequential(*layers, nn.Linear(width, 1))
        # c is trained like any other weight; NCE makes it converge to log Z(θ) = log ∫ exp(-f_θ)
        self.c = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x):
        return -self.f(x) - self.c
