"""2D toy datasets: a sampler for each and its true log density.

The first five are the original script's generators (with pinwheel seeded and exact in count), the last
three FFJORD's scikit-learn ones. Every sampler draws from a torch.Generator, so a seed fixes the data.
"""
import math

import torch

DATASETS = ('8gaussians', '2spirals', 'checkerboard', 'rings', 'pinwheel', 'moons', 'circles', 'swissroll')


def _centers():
    """The 8 Gaussians' means: 4 units out at every 45 degrees, then the whole set scaled by 1/sqrt(2)."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return 4 * torch.stack([angle.cos(), angle.sin()], 1) / math.sqrt(2)


SPIRAL_TURN = 3 * math.pi       # 2spirals: curve parameter t = 3π sqrt(U), i.e. 540 degrees
RING_RADII = (0.75, 1.5, 2.25, 3.0)
PINWHEEL = dict(arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25)


def sample_2d_data(dataset, n_samples, generator=None):
    """n_samples points of `dataset` as a float32 tensor of shape (n_samples, 2), on the CPU."""
    n, g = n_samples, generator
    if n < 1:
        raise ValueError(f'n_samples must be at least 1, got {n}')
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    randint = lambda high: torch.randint(high, (n,), generator=g)

    if dataset == '8gaussians':
        x = _centers()[randint(8)] + 0.5 / math.sqrt(2) * randn(n, 2)
    elif dataset == '2spirals':
        t = SPIRAL_TURN * rand(n).sqrt()
        arm = torch.stack([-t * t.cos(), t * t.sin()], 1) + 0.5 * rand(n, 2)
        sign = 2.0 * randint(2)[:, None] - 1             # which of the two mirrored spirals
        x = sign * arm / 3 + 0.1 * randn(n, 2)
    elif dataset == 'checkerboard':
        x1 = 4 * rand(n) - 2
        x2 = rand(n) - 2 * randint(2) + x1.floor() % 2
        x = 2 * torch.stack([x1, x2], 1)
    elif dataset == 'rings':
        r = torch.tensor(RING_RADII, dtype=torch.float64)[randint(4)]
        angle = 2 * math.pi * rand(n)
        x = r[:, None] * torch.stack([angle.cos(), angle.sin()], 1) + 0.08 * randn(n, 2)
    elif dataset == 'pinwheel':
        P = PINWHEEL
        f = randn(n, 2) * torch.tensor([P['radial_std'], P['tangential_std']], dtype=torch.float64)
        f[:, 0] += 1
        a = 2 * math.pi / P['arms'] * randint(P['arms']) + P['rate'] * f[:, 0].exp()
        # x = 2 R(-a) f: each point is rotated by an angle that grows with its radius
        x = 2 * torch.stack([f[:, 0] * a.cos() + f[:, 1] * a.sin(), -f[:, 0] * a.sin() + f[:, 1] * a.cos()], 1)
    elif dataset in ('moons', 'circles', 'swissroll'):
        import sklearn.datasets  # only these three need scikit-learn
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        if dataset == 'moons':
            x = 2 * torch.as_tensor(sklearn.datasets.make_moons(n, noise=0.1, random_state=seed)[0])
            x = x + torch.tensor([-1.0, -0.2], dtype=torch.float64)
        elif dataset == 'circles':
            x = 3 * torch.as_tensor(sklearn.datasets.make_circles(n, factor=0.5, noise=0.08, random_state=seed)[0])
        else:
            x = torch.as_tensor(sklearn.datasets.make_swiss_roll(n, noise=1.0, random_state=seed)[0])[:, [0, 2]] / 5
    else:
        raise ValueError(f'unknown dataset {dataset!r}; choose from {", ".join(DATASETS)}')
    return x.float()


# ----------------------------------------------------------------------------------------------------
# true densities

LOG_2PI = math.log(2 * math.pi)


def _log_normal(x, mean, std):
    """log N(x; mean, std² I) in 2D, broadcasting over leading dims; x and mean end in 2."""
    return -((x - mean) ** 2).sum(-1) / (2 * std**2) - LOG_2PI - 2 * math.log(std)


def _log_ring(rho, r, std):
    """log density of a point at radius rho, for a uniform angle on the circle of radius r plus N(0, std² I).
    Averaging the Gaussian over the angle gives the Rice form exp(-(rho² + r²)/2σ²) I0(rho r / σ²) / 2πσ²;
    i0e(z) = exp(-z) I0(z) keeps it finite."""
    z = rho * r / std**2
    return -(rho - r) ** 2 / (2 * std**2) + torch.special.i0e(z).log() - LOG_2PI - 2 * math.log(std)


def _log_curve(x, t, log_w, mean_fn, std):
    """log ∫ w(t) N(x; m(t), std² I) dt over a curve m(t), by the trapezoid rule on the nodes t with
    log weights log_w (the curve parameter's density times the rule's weights)."""
    out = []
    for xc in x.split(1024):
        out.append(torch.logsumexp(_log_normal(xc[:, None], mean_fn(t), std) + log_w, 1))
    return torch.cat(out)


def _trapezoid(lo, hi, m):
    t = torch.linspace(lo, hi, m, dtype=torch.float64)
    w = torch.full((m,), (hi - lo) / (m - 1), dtype=torch.float64)
    w[[0, -1]] /= 2
    return t, w


def _diff_ndtr(u, v):
    """Φ(u) - Φ(v) for u > v, without cancellation in the right tail (there it is Φ(-v) - Φ(-u))."""
    flip = (u + v) > 0
    return torch.where(flip, torch.special.ndtr(-v) - torch.special.ndtr(-u), torch.special.ndtr(u) - torch.special.ndtr(v))


def _log_spiral_arm(x, m=1024):
    """One 2spirals arm: x = (-t cos t + u1/2, t sin t + u2/2)/3 + 0.1 z, t = 3π sqrt(U), u ~ U[0,1)².
    Given t, each coordinate is a uniform of width 1/6 plus N(0, 0.01): 6 (Φ(hi) - Φ(lo)). The arm is at
    least 0.03 wide in t, so 1024 nodes (spacing 0.009) resolve it."""
    t, w = _trapezoid(0.0, SPIRAL_TURN, m)
    w = w * 2 * t / SPIRAL_TURN**2                           # t has density 2t / (3π)² on [0, 3π]
    a = torch.stack([-t * t.cos(), t * t.sin()], 1) / 3
    out = []
    for xc in x.split(1024):
        lo = (xc[:, None] - a - 1 / 6) / 0.1
        # only nodes within 9 noise std of the point matter (the rest add < 1e-19): evaluate Φ just there
        i, j = ((lo > -11) & (lo < 9)).all(-1).nonzero(as_tuple=True)
        g = (6 * _diff_ndtr(lo[i, j] + 10 / 6, lo[i, j])).prod(-1) * w[j]
        out.append(torch.zeros(len(xc), dtype=torch.float64).index_add_(0, i, g).log())
    return torch.cat(out)


def _log_pinwheel(x, m=512, iters=40):
    return torch.cat([_log_pinwheel_chunk(xc, m, iters) for xc in x.split(2048)])


def _log_pinwheel_chunk(x, m, iters):
    """Exact, by a change of variables. One arm maps f = (f0, f1) ~ N((1, 0), diag(0.3², 0.1²)) to
    x = 2 R(-a) f with a = a_k + rate·exp(f0), a rotation, so |x/2| = |f| and f = R(a) x/2. Given x, f0
    solves f0 = |x/2| cos(φ + a_k + rate·exp(f0)), which may have several roots; each contributes
    p(f) / |det ∂x/∂f| with det ∂x/∂f = 4 (1 + rate·exp(f0) f1). We bracket the roots on a grid of f0
    spanning ±7 radial std (beyond it p(f0) < 1e-10; spacing 0.008, far below the 1.1 period of the
    cosine there) and refine each by bisection."""
    P = PINWHEEL
    y = x / 2
    rho, phi = y.norm(dim=1), torch.atan2(y[:, 1], y[:, 0])
    f0_grid = torch.linspace(1 - 7 * P['radial_std'], 1 + 7 * P['radial_std'], m, dtype=torch.float64)
    log_p = torch.full((len(x),), -math.inf, dtype=torch.float64)
    for k in range(P['arms']):
        base = phi + 2 * math.pi * k / P['arms']
        h = lambda f0, i: rho[i] * torch.cos(base[i] + P['rate'] * f0.exp()) - f0    # noqa: B023 (used within this iteration only)
        hg = rho[:, None] * torch.cos(base[:, None] + P['rate'] * f0_grid.exp()) - f0_grid
        i, j = torch.nonzero((hg[:, :-1] > 0) != (hg[:, 1:] > 0), as_tuple=True)  # point i, bracket j
        lo, hi, h_lo = f0_grid[j], f0_grid[j + 1], hg[i, j]
        for _ in range(iters):
            mid = (lo + hi) / 2
            same = (h(mid, i) > 0) == (h_lo > 0)
            lo, hi, h_lo = torch.where(same, mid, lo), torch.where(same, hi, mid), torch.where(same, h(mid, i), h_lo)
        f0 = (lo + hi) / 2
        f1 = rho[i] * torch.sin(base[i] + P['rate'] * f0.exp())
        term = (-((f0 - 1) / P['radial_std']) ** 2 / 2 - (f1 / P['tangential_std']) ** 2 / 2 - LOG_2PI
                - math.log(P['radial_std'] * P['tangential_std'])
                - torch.log(4 * (1 + P['rate'] * f0.exp() * f1).abs()) - math.log(P['arms']))
        log_p = _logaddexp_at(log_p, i, term)
    return log_p


def _logaddexp_at(acc, index, values):
    """acc[index] = log(exp(acc[index]) + Σ exp(values)) for repeated indices, stably."""
    if len(index) == 0:
        return acc
    peak = torch.full_like(acc, -math.inf).scatter_reduce_(0, index, values, 'amax')
    peak = torch.maximum(peak, acc).nan_to_num(neginf=0.0)
    total = torch.exp(acc - peak).index_add_(0, index, torch.exp(values - peak[index]))
    return total.log() + peak


@torch.no_grad()
def log_density(dataset, x):
    """The true log density of `dataset` at the rows of x, shape (N,), on x's device and dtype.
    Closed form for 8gaussians, checkerboard, rings and circles; an exact change of variables with root
    finding for pinwheel; a trapezoid rule over the generator's curve parameter for 2spirals, moons and
    swissroll, with nodes several times closer than the curve's width in that parameter. Computed in float64 on the CPU."""
    x64 = x.detach().to('cpu', torch.float64)
    if dataset == '8gaussians':
        log_p = torch.logsumexp(_log_normal(x64[:, None], _centers(), 0.5 / math.sqrt(2)), 1) - math.log(8)
    elif dataset == '2spirals':
        log_p = torch.logaddexp(_log_spiral_arm(x64), _log_spiral_arm(-x64)) - math.log(2)
    elif dataset == 'checkerboard':
        inside = (x64.abs() < 4).all(1) & ((x64 / 2).floor().sum(1) % 2 == 0)
        log_p = torch.where(inside, -math.log(32), -math.inf)
    elif dataset == 'rings':
        rho = x64.norm(dim=1)
        log_p = torch.logsumexp(torch.stack([_log_ring(rho, r, 0.08) for r in RING_RADII]), 0) - math.log(4)
    elif dataset == 'pinwheel':
        log_p = _log_pinwheel(x64)
    elif dataset == 'moons':
        t, w = _trapezoid(0.0, math.pi, 1024)
        log_w = (w / math.pi).log()
        shift = torch.tensor([-1.0, -0.2], dtype=torch.float64)
        upper = lambda t: 2 * torch.stack([t.cos(), t.sin()], 1) + shift
        lower = lambda t: 2 * torch.stack([1 - t.cos(), 0.5 - t.sin()], 1) + shift
        log_p = torch.logaddexp(_log_curve(x64, t, log_w, upper, 0.2), _log_curve(x64, t, log_w, lower, 0.2)) - math.log(2)
    elif dataset == 'circles':
        rho = x64.norm(dim=1)
        log_p = torch.logaddexp(_log_ring(rho, 3.0, 0.24), _log_ring(rho, 1.5, 0.24)) - math.log(2)
    elif dataset == 'swissroll':
        t, w = _trapezoid(1.5 * math.pi, 4.5 * math.pi, 2048)
        log_w = (w / (3 * math.pi)).log()
        log_p = _log_curve(x64, t, log_w, lambda t: torch.stack([t * t.cos(), t * t.sin()], 1) / 5, 0.2)
    else:
        raise ValueError(f'unknown dataset {dataset!r}; choose from {", ".join(DATASETS)}')
    return log_p.to(x.device, x.dtype)
