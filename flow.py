"""A normalizing flow q_φ on the plane: the learned noise of NCE with a flow (--noise flow) and of Flow Contrastive
Estimation (--noise fce), with an exact log-density, reparameterised samples and its backpropagation written out."""
import math

import torch
import torch.nn as nn

aten = torch.ops.aten
LOG_2PI = math.log(2 * math.pi)
# the defaults of train.py's --flow-layers, --flow-hidden and --flow-lr, chosen by cost and fit (docs/flow.md)
LAYERS, HIDDEN, LR = 4, 64, 1e-3
CHUNK = 8192    # rows a pass takes at once where many are asked for (evaluation, an epoch's noise)


class Flow(nn.Module):
    """q_φ(x): x = T(z), z ~ N(0, I), T `layers` affine couplings (RealNVP, Dinh et al. 2017) followed by a fixed
    standardisation (the training data's std and mean per coordinate). Coupling k rescales and shifts one
    coordinate by amounts an MLP computes from the other,

        y_d ← y_d · exp(s_k(y_o)) + t_k(y_o),   d = k mod 2, o = 1 - d,   s_k = tanh(·) in (-1, 1),

    so it inverts in closed form and its log-Jacobian is s_k(y_o). Hence, for x = T(z),

        log q_φ(x) = log N(z; 0, I) - Σ_k s_k - Σ_i log std_i.

    The last layer of each MLP starts at zero: a fresh flow is the Gaussian with the data's mean and std.
    Layer k's weights are row k of six stacked parameters. At these sizes a step's cost is the number of ops,
    not their arithmetic, so both passes keep what their backward needs and return it as a function, as
    EBM.log_p_and_backward does: autograd's bookkeeping cost more than the arithmetic (docs/flow.md)."""

    def __init__(self, loc, std, layers=LAYERS, hidden=HIDDEN):
        super().__init__()
        self.register_buffer('loc', loc.reshape(1, 2).clone())
        self.register_buffer('std', std.reshape(1, 2).clone())
        self.layers = layers
        shapes = dict(w1=(1, hidden), b1=(hidden,), w2=(hidden, hidden), b2=(hidden,), w3=(hidden, 2), b3=(2,))
        fan_in = dict(w1=1, b1=1, w2=hidden, b2=hidden)
        for name, shape in shapes.items():      # nn.Linear's initialisation, but the last layer's zeros
            bound = 1 / math.sqrt(fan_in[name]) if name in fan_in else 0
            self.register_parameter(name, nn.Parameter(torch.empty(layers, *shape).uniform_(-bound, bound)))

    def couple(self, k, y, sample):
        """Coupling k on y = [y_0, y_1] (columns, changed in place): forward (z → x) if sample, else inverse.
        Returns what its backward needs."""
        d = k % 2
        y_o = y[1 - d]
        h1p = torch.addmm(self.b1[k], y_o, self.w1[k])
        h1 = torch.nn.functional.silu(h1p)
        h2p = torch.addmm(self.b2[k], h1, self.w2[k])
        h2 = torch.nn.functional.silu(h2p)
        st = torch.addmm(self.b3[k], h2, self.w3[k])
        s, t = torch.tanh(st[:, :1]), st[:, 1:]
        scale = torch.exp(s if sample else -s)
        y_in = y[d]
        y[d] = torch.addcmul(t, y_in, scale) if sample else (y_in - t) * scale
        return k, (y_o, h1p, h1, h2p, h2, s, scale, y_in, y[d])

    def net_backward(self, k, saved, g_s, g_t):
        """Accumulate layer k's weight gradients from dL/ds and dL/dt; returns dL/dy_o."""
        y_o, h1p, h1, h2p, h2, s = saved[:6]
        g_st = torch.cat([g_s * (1 - s * s), g_t], 1)
        self.w3.grad[k].addmm_(h2.T, g_st)
        self.b3.grad[k].add_(g_st.sum(0))
        g = aten.silu_backward(g_st @ self.w3[k].T, h2p)
        self.w2.grad[k].addmm_(h1.T, g)
        self.b2.grad[k].add_(g.sum(0))
        g = aten.silu_backward(g @ self.w2[k].T, h1p)
        self.w1.grad[k].addmm_(y_o.T, g)
        self.b1.grad[k].add_(g.sum(0))
        return g @ self.w1[k].T

    def zero_grad_(self):
        for p in self.parameters():
            p.grad = torch.zeros_like(p)

    def log_prob_and_backward(self, x):
        """log q_φ(x), shape (N,): x → z through the couplings in reverse. And a function that takes dL/d log q_φ(x)
        and adds dL/dφ to each parameter's .grad (x itself, data or fixed draws, needs no gradient)."""
        y = (x - self.loc) / self.std
        y = [y[:, :1], y[:, 1:]]
        tape = [self.couple(k, y, sample=False) for k in reversed(range(self.layers))]
        log_det = torch.cat([saved[5] for _, saved in tape], 1).sum(1)
        log_q = -0.5 * (y[0] ** 2 + y[1] ** 2).squeeze(1) - log_det - (LOG_2PI + self.std.log().sum())

        def backward(g_log_q):
            g_lq = g_log_q.unsqueeze(1)
            g = [-g_lq * y[0], -g_lq * y[1]]            # d(-|z|²/2)/dz = -z
            for k, saved in reversed(tape):             # the layers in the order x → z applied them, backwards
                d, scale, y_out = k % 2, saved[6], saved[8]
                g_out = g[d]
                g[d] = g_out * scale                    # y_out = (y_in - t) e^{-s}
                g[1 - d] = g[1 - d] + self.net_backward(k, saved, -g_out * y_out - g_lq, -g[d])
        return log_q, backward

    def log_prob(self, x):
        """log q_φ(x), in chunks of rows: a pass keeps a few hidden-wide tensors a layer for its backward."""
        return torch.cat([self.log_prob_and_backward(c)[0] for c in x.split(CHUNK)])

    def rsample_and_backward(self, z):
        """x = T(z), shape (N, 2), and log q_φ(x), differentiable in φ through x too (reparameterised). And a
        function that takes dL/dx and dL/d log q_φ(x) and adds dL/dφ to each parameter's .grad."""
        y = [z[:, :1], z[:, 1:]]
        tape = [self.couple(k, y, sample=True) for k in range(self.layers)]
        log_det = torch.cat([saved[5] for _, saved in tape], 1).sum(1)
        x = torch.cat(y, 1) * self.std + self.loc
        log_q = -0.5 * (z ** 2).sum(1) - log_det - (LOG_2PI + self.std.log().sum())

        def backward(g_x, g_log_q):
            g_lq = g_log_q.unsqueeze(1)
            g_y = g_x * self.std
            g = [g_y[:, :1], g_y[:, 1:]]
            for k, saved in reversed(tape):             # y_out = y_in e^{s} + t
                d, scale, y_in = k % 2, saved[6], saved[7]
                g_out = g[d]
                g[d] = g_out * scale
                g[1 - d] = g[1 - d] + self.net_backward(k, saved, g_out * y_in * scale - g_lq, g_out)
        return x, log_q, backward

    def rsample_and_log_prob(self, n):
        """n samples x = T(z), z ~ N(0, I), and log q_φ(x), differentiable in φ (with autograd on)."""
        return self.rsample_and_backward(torch.randn(n, 2, device=self.loc.device, dtype=self.loc.dtype))[:2]


def log_broad(x):
    """log N(x; 0, 4I), the original noise, in closed form: -|x|²/8 - log 8π."""
    return -0.125 * (x ** 2).sum(1) - math.log(8 * math.pi)


class FlowNoise:
    """The noise of --noise flow and fce: q = (1 - w) q_φ + w N(0, 4I). NCE learns p_θ only where q can tell it
    apart from the data, so q must keep mass wherever the EBM may put it; a flow fitted to the data has light
    tails, and without the broad part the EBM piles mass up where no sample of q ever lands (docs/flow.md)."""

    def __init__(self, flow, broad):
        self.flow, self.broad = flow, broad

    def mix(self, x, log_q_flow):
        """log q at x from log q_φ(x), and ∂ log q / ∂ log q_φ, the flow's share of q at x."""
        if self.broad == 0:
            return log_q_flow, torch.ones_like(log_q_flow)
        a, b = log_q_flow + math.log1p(-self.broad), log_broad(x) + math.log(self.broad)
        log_q = torch.logaddexp(a, b)
        return log_q, torch.exp(a - log_q)

    def log_prob(self, x):
        return self.mix(x, self.flow.log_prob(x))[0]

    @torch.no_grad()
    def sample(self, shape):
        """iid draws from q: each from the flow or, with probability w, from N(0, 4I)."""
        n, loc = shape[0], self.flow.loc
        z = torch.randn(n, 2, device=loc.device, dtype=loc.dtype)
        x = torch.cat([self.flow.rsample_and_backward(c)[0] for c in z.split(CHUNK)])
        broad = torch.rand(n, device=x.device) < self.broad
        return torch.where(broad[:, None], 2 * torch.randn_like(x), x)

    def contrast_and_backward(self, x, n):
        """The rows u = [x; n draws from q] and log q at them; and a function that takes dL/du (used at the
        flow's draws only) and dL/d log q(u), and adds dL/dφ to the flow's .grad.

        The draws are stratified: round(w n) from N(0, 4I), the rest x̃ = T_φ(z), z ~ N(0, I), reparameterised;
        an average over them estimates an expectation under q as iid draws would. One pass each way through the
        flow: to z for the data and the broad draws, from z for the flow's."""
        n_broad = round(self.broad * n)
        xg = torch.cat([x, 2 * torch.randn(n_broad, 2, device=x.device, dtype=x.dtype)])
        log_q_xg, density_backward = self.flow.log_prob_and_backward(xg)
        gen, log_q_gen, sample_backward = self.flow.rsample_and_backward(torch.randn(n - n_broad, 2, device=x.device, dtype=x.dtype))
        u = torch.cat([xg, gen])
        log_q, share = self.mix(u, torch.cat([log_q_xg, log_q_gen]))

        def backward(g_u, g_log_q):
            self.flow.zero_grad_()
            g_flow = g_log_q * share                    # d log q = share · d log q_φ + (1 - share) · d log N(0, 4I)
            m = len(xg)
            density_backward(g_flow[:m])
            # at x̃ the broad part's density moves with x̃ too: d log N(x; 0, 4I)/dx = -x/4
            g_gen = g_u[m:] - ((1 - share[m:]) * g_log_q[m:]).unsqueeze(1) * gen / 4
            sample_backward(g_gen, g_flow[m:])
        return u, log_q, backward


def fit(flow, x, steps, batch=100, lr=LR):
    """Maximum likelihood: Adam on -mean log q_φ(x) over `steps` batches of x in a fresh random order each epoch."""
    import optim
    params = list(flow.parameters())
    adam = optim.adam_init(params)
    per_epoch = max(1, len(x) // batch)
    with torch.no_grad():
        for i in range(steps):
            if i % per_epoch == 0:
                order = torch.randperm(len(x), device=x.device)
            rows = x[order[(i % per_epoch) * batch:][:batch]]
            log_q, backward = flow.log_prob_and_backward(rows)
            flow.zero_grad_()
            backward(torch.full_like(log_q, -1 / len(rows)))
            optim.adam_step(params, adam, lr, 0.9, 0.999)
    return flow
