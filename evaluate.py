"""Exact evaluation: log Z by quadrature on a grid, the test NLL of the normalised model and the KL to the data."""
import math

import torch

PLOT_LIM = 4.0   # the data lives in [-4, 4]²; the plots show this window
Z_LIM = 8.0      # the quadrature's fine part: [-8, 8]²; shells beyond it reach as far as the model has mass
GRID_N = 320     # cells across the data window, for the plot and the quadrature alike (side 0.025)
TOL = 1e-3       # nats: log Z over the plane to within this (plane's err)
SHELL = 16       # a shell [-2L, 2L]² minus [-L, L]² beyond [-8, 8]² in cells of side L/16
FAR = 8.0 * 2**12    # 32768: mass still not decaying at this distance means Z = ∞
REFINE = 3       # a region's cells are halved at most this many times to meet TOL
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
    return torch.cat([(-energy.f(h) - energy.c + energy.log_base(h)).squeeze(1) for h in points])     # energy.forward, from its features


def window_log_p(energy, n=GRID_N, window=None):
    """log p_θ on the n×n grid of the data window [-4, 4]², shape (n, n): the plot's image. window: its inputs()."""
    return log_p_on(energy, grid(PLOT_LIM, n, energy.c.device) if window is None else window).view(n, n)


def ring(inner, outer, side, device='cpu'):
    """Midpoints of the cells of side `side` on [-outer, outer]² outside [-inner, inner]², shape (N, 2), in grid()'s
    order, and the mask that picks them from grid(outer, m), shape (m, m): a region of the quadrature. Both edges
    must be whole numbers of cells from 0; inner = 0 is the whole square."""
    m, k = 2 * outer / side, inner / side
    if not 0 <= inner < outer or abs(m - round(m)) > 1e-6 or abs(k - round(k)) > 1e-6:
        raise ValueError(f'need 0 <= inner < outer, each a whole number of cells of side {side}; got {inner}, {outer}')
    points = grid(outer, round(m), device)
    mask = (points.abs() > inner).any(1)
    return points[mask], mask.view(round(m), round(m))


def log_mass(log_p, side):
    """log of the midpoint rule's ∫ exp(log p) over cells of side `side`, given log p at their midpoints."""
    return torch.logsumexp(log_p, 0) + 2 * math.log(side)


def region(energy, inner, outer, side, log_p=None):
    """A region's midpoint sum and what its error is judged by: log p at its cells' midpoints (given, or computed),
    log I_h (cells of side h), log I_2h (cells twice as wide), and the sums over the two colours of the cells laid
    out as a chessboard, each a rule of its own on a lattice turned by 45°, whose mean is I_h."""
    device = energy.c.device
    points, mask = ring(inner, outer, side, device)
    log_p = log_p_on(energy, points) if log_p is None else log_p
    full = torch.full(mask.shape, -math.inf, device=device)
    full[mask] = log_p
    i = torch.arange(len(mask), device=device)
    white = (i[:, None] + i) % 2 == 0
    halves = [log_mass(full[white], side) + math.log(2), log_mass(full[~white], side) + math.log(2)]
    return dict(inner=inner, outer=outer, side=side, log_p=log_p, fine=log_mass(log_p, side),
                coarse=log_mass(log_p_on(energy, ring(inner, outer, 2 * side, device)[0]), 2 * side), halves=halves)


def error(r, lz):
    """A region's estimated error, relative to Z = exp(lz): the larger of |I_h - I_2h| (Richardson's estimate, 3 times
    the error of I_h where the rule has reached its O(h²) regime) and the gap between its chessboard's two colours
    (large where the integrand has features as narrow as the cells, which Richardson can miss by chance; unlike
    shifted rules, the two colours tile a region's straight edges alike, so mass at an edge does not inflate it)."""
    rel = lambda t: math.exp(t.item() - lz)
    return max(abs(rel(r['fine']) - rel(r['coarse'])), abs(rel(r['halves'][0]) - rel(r['halves'][1])))


@torch.inference_mode()
def plane(energy, n=GRID_N, log_p=None, outer=None, tol=TOL):
    """log Z(θ) = log ∫ exp(-f_θ(x)) dx over the whole plane, by the midpoint rule on cells that widen away from the
    data, as far out as the model has mass. Returns a dict: log_z (a 0-d tensor; inf if the model is not normalisable),
    outside (the share of the model's mass outside the data window [-4, 4]²) and err (the estimated bound on log_z's
    error, nats).

    The regions: the data window in cells of side h = 8/n (n = 320: h = 0.025, a third of the rings' noise std), the
    ring out to [-8, 8]² in cells of 4h, then shells [-2L, 2L]² minus [-L, L]², L = 8, 16, 32, ..., in cells of L/16.
    Shells are added until one carries less than tol/100 of the mass and less than half the one before it: the
    integrand is seen to decay, and the tail beyond, were it to keep halving at each doubling of L, is at most the
    last shell's mass, which the bound counts. If the shells still carry that mass at L = FAR, the model is not
    normalisable (its energy does not grow in some direction) and log_z is inf.

    While the regions' estimated errors (error()) and the tail add up to more than tol, relative to Z (which bounds
    the error of log Z in nats), the region that errs most is summed again on cells half as wide, at most REFINE
    times. `log_p` may pass log p_θ on the window's grid, shape (n, n), as computed for the plot, and `outer` the
    inputs() of ring(4, 8, 4h): they are evaluated only once. Everything is float32 (mps has no float64) and every
    sum a logsumexp, so no precision is lost; the bound's bookkeeping is in float64."""
    device, h = energy.c.device, 2 * PLOT_LIM / n
    window = log_p.flatten() if log_p is not None else window_log_p(energy, n).flatten()
    inner = None if outer is None else log_p_on(energy, outer)
    regions = [region(energy, 0, PLOT_LIM, h, window), region(energy, PLOT_LIM, Z_LIM, 4 * h, inner)]
    unbounded = dict(log_z=torch.tensor(math.inf, device=device), outside=1.0, err=0.0)
    broken = dict(log_z=torch.tensor(math.nan, device=device), outside=math.nan, err=math.nan)   # nan somewhere
    tail, lim = None, Z_LIM
    while tail is None:
        if lim >= FAR:
            return unbounded
        regions.append(region(energy, lim, 2 * lim, lim / SHELL))
        lim, fine = 2 * lim, regions[-1]['fine'].item()
        if math.isnan(fine):
            return broken
        if len(regions) > 3:
            lz = torch.stack([r['fine'] for r in regions]).logsumexp(0).item()
            if fine < lz + math.log(tol / 100) and fine < regions[-2]['fine'].item() - math.log(2):
                tail = fine
    levels = [0] * len(regions)
    while True:
        # [-8, 8]² as one sum, as before the shells (its value to the bit where the shells add nothing)
        core = torch.logsumexp(torch.cat([r['log_p'] + 2 * math.log(r['side']) for r in regions[:2]]), 0)
        log_z = torch.logaddexp(core, torch.stack([r['fine'] for r in regions[2:]]).logsumexp(0))
        lz = log_z.item()
        if not math.isfinite(lz):       # log p itself inf (or nan) somewhere
            return broken if math.isnan(lz) else unbounded
        errs = [error(r, lz) for r in regions]
        err = sum(errs) + math.exp(tail - lz)
        # a region beyond the window holding more than tol of the mass is trusted only once two sides of its cells
        # agree: its first |I_h - I_2h| can be small by chance, as where a density's edge at the window meets wider cells
        unchecked = [i for i, r in enumerate(regions) if i and levels[i] == 0 and r['fine'].item() - lz > math.log(tol)]
        todo = [i for i in range(len(regions)) if levels[i] < REFINE]
        if err <= tol and not unchecked or not todo:
            break
        i = unchecked[0] if unchecked else max(todo, key=errs.__getitem__)    # its cells halved
        r = regions[i]
        regions[i], levels[i] = region(energy, r['inner'], r['outer'], r['side'] / 2), levels[i] + 1
    outside = torch.stack([r['fine'] for r in regions[1:]]).logsumexp(0).item() - lz
    return dict(log_z=log_z + energy.c.detach().squeeze(), outside=math.exp(outside), err=err)


@torch.inference_mode()
def log_z_in_window(energy, n=GRID_N):
    """log Z over [-8, 8]² alone, as the evaluation summed it before it covered the plane (the window's cells and the
    ring's, no shells, no error estimate): for bench.py's cost ratio and the tests."""
    h = 2 * PLOT_LIM / n
    inner = log_p_on(energy, ring(PLOT_LIM, Z_LIM, 4 * h, energy.c.device)[0])
    core = torch.cat([window_log_p(energy, n).flatten() + 2 * math.log(h), inner + 2 * math.log(4 * h)])
    return torch.logsumexp(core, 0) + energy.c.detach().squeeze()


def log_partition(energy, **kw):
    """log Z(θ) over the plane, a float (plane's log_z)."""
    return plane(energy, **kw)['log_z'].item()


def fixed_inputs(energy, x_test, n=GRID_N):
    """The inputs() of every point evaluate() passes through a network with Fourier features: the window's grid, the
    cells beyond it and the held-out set, for a run to make once and pass at each evaluation (on the strong network
    their sin and cos were a fifth of an evaluation). None for a network without features, whose inputs are the
    points themselves. They take 4·(2 + 2m) bytes a point, 74 MB for the strong preset's m = 64."""
    if energy.freq is None:
        return None
    device = energy.c.device
    return inputs(energy, grid(PLOT_LIM, n, device)), inputs(energy, ring(PLOT_LIM, Z_LIM, 8 * PLOT_LIM / n, device)[0]), inputs(energy, x_test)


@torch.inference_mode()
def evaluate(energy, x_test, entropy=None, n=GRID_N, fixed=None):
    """Exact metrics of the model: c, log_z (quadrature), the test NLL of the normalised model and, given the
    true density's entropy estimate H = mean -log p_data on the same x_test, KL(p_data || p_θ) = NLL - H.
    Also returns log p_θ on the plot's grid, so the plot reuses this evaluation. fixed: fixed_inputs(energy,
    x_test, n), the same numbers to the bit."""
    window, outer, test = fixed or (None, None, x_test)
    log_p = window_log_p(energy, n, window)
    z = plane(energy, n=n, log_p=log_p, outer=outer)
    c = energy.c.detach().squeeze()
    nll = -(log_p_on(energy, test).mean() + c - z['log_z'])
    out = dict(c=c.item(), log_z=z['log_z'].item(), nll=nll.item(), outside=z['outside'], log_z_err=z['err'])
    out['kl'] = out['nll'] - entropy if entropy is not None else None
    return out, log_p


@torch.inference_mode()
def evaluate_flow(flow, x_test, entropy):
    """The flow as a density model of its own: its test NLL and KL(p_data || q_φ) = NLL - H, exact (the flow
    alone, without the broad part the noise mixes in)."""
    nll = -flow.log_prob(x_test).mean().item()
    return dict(flow_nll=nll, flow_kl=nll - entropy)
