"""The energy-based model: an MLP energy f_θ and a learnable c standing for log Z(θ)."""
import math

import torch
import torch.nn as nn

aten = torch.ops.aten
# each activation: its module, and its backward (dL/dh, z) -> dL/dz for h = act(z), the same ATen kernel
# autograd calls for it, so the hand-written backward of EBM.log_p_and_backward matches autograd exactly
ACTIVATIONS = {
    'leaky_relu': (lambda: nn.LeakyReLU(0.2), lambda g, z: aten.leaky_relu_backward(g, z, 0.2, False)),
    'silu': (nn.SiLU, aten.silu_backward),
    'gelu': (nn.GELU, aten.gelu_backward),
    'softplus': (nn.Softplus, lambda g, z: aten.softplus_backward(g, z, 1, 20)),
    'tanh': (nn.Tanh, lambda g, z: aten.tanh_backward(g, torch.tanh(z))),
}


class EBM(nn.Module):
    """log p_θ(x) = -f_θ(x) - c. The defaults are the original network: 2 hidden layers of 128, LeakyReLU(0.2).

    fourier=m > 0 feeds the MLP [x, sin 2πBx, cos 2πBx] instead of x, with B a fixed random dim×m matrix of
    frequencies drawn from N(0, fourier_std²) (cycles per unit), kept as a buffer so a checkpoint restores it.
    These random Fourier features (Tancik et al. 2020) let a small MLP draw sharp edges, such as the
    checkerboard's, that it otherwise learns only slowly; fourier_std sets the finest detail it can draw.

    base=s > 0 multiplies the model by a fixed Gaussian, p̃_θ(x) = N(x; 0, s²I) exp(-f_θ(x)): log p_θ gains
    -|x|²/2s² - log 2πs². An MLP's f grows at most linearly far from the data, so the base makes the model
    normalisable whatever the network does where no data and no noise lie (docs/strong-preset.md). With the base equal
    to NCE's noise q, log q cancels in NCE's logit, which is then -f_θ - c - log ν."""

    def __init__(self, dim=2, hidden=128, depth=2, act='leaky_relu', fourier=0, fourier_std=0.25, base=0.0):
        super().__init__()
        self.base = base
        self.register_buffer('freq', fourier_std * torch.randn(dim, fourier) if fourier else None)
        self.act, self.act_backward = act, ACTIVATIONS[act][1]
        layers, width = [], dim + 2 * fourier
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[act][0]()]
            width = hidden
        self.f = nn.Sequential(*layers, nn.Linear(width, 1))
        # c is trained like any other weight; NCE makes it converge to log Z(θ) = log ∫ exp(-f_θ)
        self.c = nn.Parameter(torch.tensor([1.0]))

    def features(self, x):
        if self.freq is None:
            return x
        z = (2 * math.pi) * (x @ self.freq)
        return torch.cat([x, z.sin(), z.cos()], 1)

    def log_base(self, x):
        """log N(x; 0, s²I) of the base, shape (N, 1), or 0 without one. x: the points, or their features, which
        begin with them."""
        if not self.base:
            return 0.0
        d = self.freq.shape[0] if self.freq is not None else x.shape[1]
        return -0.5 * (x[:, :d] ** 2).sum(1, keepdim=True) / self.base ** 2 - d * math.log(2 * math.pi * self.base ** 2) / 2

    def forward(self, x):
        return self.log_p_of(self.f(self.features(x)), x)

    def log_p_of(self, f, x):
        """log p_θ(x) = -f - c (+ the base's log density), shape (N, 1), from f = f_θ(x)."""
        return -f - self.c + self.log_base(x) if self.base else -f - self.c

    @torch.no_grad()
    def log_p_and_backward(self, x):
        """log p_θ(x), as forward(x), and a function that takes dL/d log p_θ(x) and stores dL/dθ in each
        parameter's .grad: backpropagation through the MLP written out. Autograd gives the same gradient
        (tests/test_value.py checks it), but on a network this small its bookkeeping costs more than the
        arithmetic. Only the weights get gradients: the features of x have none to pass on."""
        h, inputs = self.kept_forward(x)

        @torch.no_grad()
        def backward(grad_log_p, input_grad=False, c_grad=True):
            """Returns dL/dx too if input_grad, else None (the input, the data or the noise, needs none). With
            c_grad=False, c.grad is left as it is: a loss in which c cancels has none to write."""
            if c_grad:
                self.c.grad = -grad_log_p.sum(0, keepdim=True)
            g = self.backward_from(-grad_log_p.unsqueeze(1), inputs, len(self.f), input_grad)   # dL/df = -dL/d log p
            return g - grad_log_p.unsqueeze(1) * x / self.base ** 2 if g is not None and self.base else g
        return self.log_p_of(h, x).squeeze(1), backward

    @torch.no_grad()
    def log_p_and_score(self, x):
        """log p_θ(x) and ∇ₓ log p_θ(x), shapes (N,) and (N, 2), from one pass forward and one back with no weight
        gradient: AIS's MALA steps need both at every proposal."""
        f, inputs = self.kept_forward(x)
        g = self.backward_from(torch.full_like(f, -1.0), inputs, len(self.f), True, weights=False)   # d log p/df = -1
        return self.log_p_of(f, x).squeeze(1), g - x / self.base ** 2 if self.base else g

    def kept_forward(self, x):
        """f_θ(x), shape (N, 1), and the input of each layer, for a backward written out."""
        h, inputs = self.features(x), []
        for layer in self.f:
            inputs.append(h)
            h = layer(h)
        return h, inputs

    @torch.no_grad()
    def backward_from(self, g, inputs, top, input_grad, weights=True):
        """Backpropagate g = dL/d(output of layer top - 1) down the MLP, whose layers had the inputs `inputs`: each
        weight's .grad if weights, and dL/dx if input_grad."""
        for i in reversed(range(top)):
            layer, h = self.f[i], inputs[i]
            if isinstance(layer, nn.Linear):               # z = h Wᵀ + b
                if weights:
                    layer.weight.grad, layer.bias.grad = g.T @ h, g.sum(0)
                g = g @ layer.weight if i or input_grad else None
            else:                                          # h' = act(h)
                g = self.act_backward(g, h)
        return g if g is None else self.features_backward(g, inputs[0])

    def features_backward(self, g, h):
        """dL/dx from g = dL/d(features), h the features."""
        if self.freq is None:
            return g
        # features [x, sin z, cos z] with z = 2π x B: dL/dx = g_x + (g_sin cos z - g_cos sin z)(2π B)ᵀ
        m = self.freq.shape[1]
        g_z = g[:, 2:2 + m] * h[:, 2 + m:] - g[:, 2 + m:] * h[:, 2:2 + m]
        return g[:, :2] + (2 * math.pi) * (g_z @ self.freq.T)

    def score(self, x, scale=1.0):
        """scale · ∇ₓ log p_θ(x), with no weight gradient written (scorer's function, for one call)."""
        return self.scorer(scale)(x)

    def scorer(self, scale=1.0):
        """The function x -> scale · ∇ₓ log p_θ(x) that Langevin dynamics follows, for weights that stay as they are
        while it is used (cd's and pcd's k calls a step). It is log_p_and_backward's pass cut to what ∇ₓ needs: the
        last layer is linear, so d log p/dh there is -w for every row and it is neither run nor backpropagated, nor is
        the last activation, which only it reads; the layers' weights are looked up once, and the layers called
        without nn.Module's per-call overhead, which is most of a pass this small."""
        # a list: slicing nn.Sequential builds a new module each time
        linears = [layer for layer in self.f if isinstance(layer, nn.Linear)]
        act, act_backward = self.f[1].forward, self.act_backward
        with torch.no_grad():
            hidden = [(layer.bias, layer.weight.T, layer.weight) for layer in linears[:-1]]
            top = linears[-1].weight.mul(-scale)        # scale · d log p/dh at the last hidden layer, for every row

        @torch.no_grad()
        def score(x):
            h0 = h = self.features(x)
            zs = []
            for i, (bias, weight_t, _) in enumerate(hidden):
                if i:
                    h = act(zs[-1])
                zs.append(torch.addmm(bias, h, weight_t))
            g = top.expand(len(x), -1)
            for (_, _, weight), z in zip(reversed(hidden), reversed(zs), strict=True):
                g = act_backward(g, z) @ weight
            g = self.features_backward(g, h0)
            return g - x * (scale / self.base ** 2) if self.base else g       # the base's score, -x/s²
        return score
