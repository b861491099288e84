"""Exact evaluation: log Z by quadrature on a grid, the test NLL of the normalised model and the KL to the data."""
import functools
import math

import torch

PLOT_LIM = 4.0   # the data lives in [-4, 4]²; the plots show this window
Z_LIM = 8.0      # the quadrature's fine part: [-8, 8]²; shells beyond it reach as far as the model has mass
GRID_N = 320     # cells across the data window, for the plot and the quadrature alike (side 0.025)
TOL = 1e-3       # nats: log Z over the plane to within this (plane's err)
SHELL = 16       # a shell [-2L, 2L]² minus [-L, L]² beyond [-8, 8]² in cells of side L/16
FAR = 8.0 * 2**12    # 32768: mass still not decaying at this distance means Z = ∞
REFINE = 3       # a region's cells are halved at most this many times to meet TOL
SPLITS = 16      # collars split off at a cliff, at most (plane)
MAX_CELLS = 2**22    # no region is refined into more cells than this (64 MB of points)
KEPT_CELLS = 2**18   # a region of at most this many cells keeps its layout() from one evaluation to the next
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
    order (row by row), built without the hole's cells: a region of the quadrature. Both edges must be whole numbers
    of cells from 0; inner = 0 is the whole square."""
    m, k = 2 * outer / side, inner / side
    if not 0 <= inner < outer or abs(m - round(m)) > 1e-6 or abs(k - round(k)) > 1e-6:
        raise ValueError(f'need 0 <= inner < outer, each a whole number of cells of side {side}; got {inner}, {outer}')
    t = (torch.arange(round(m), device=device, dtype=torch.float32) + 0.5) * side - outer
    far = t.abs() > inner
    below, hole, above = t[t < -inner], t[~far], t[t > inner]     # rows: whole below and above the hole, cut beside it
    rows = [torch.stack([x.flatten(), y.flatten()], 1) for y, x in
            (torch.meshgrid(ys, xs, indexing='ij') for ys, xs in ((below, t), (hole, t[far]), (above, t)))]
    return torch.cat(rows)


def cells(inner, outer, side):
    """How many cells ring(inner, outer, side) has."""
    return round((2 * outer / side) ** 2 - (2 * inner / side) ** 2)


def layout(inner, outer, side, device):
    """A region's points, ring(inner, outer, side), and the indices of its cells that are white on a chessboard, that
    lie along its outer edge and that lie along its inner edge. The same regions come back at every evaluation, so
    those of at most KEPT_CELLS cells are kept: building them cost as much as evaluating the original network there."""
    return (kept_layout if cells(inner, outer, side) <= KEPT_CELLS else make_layout)(inner, outer, side, device)


def make_layout(inner, outer, side, device):
    points = ring(inner, outer, side, device)
    i, j = ((points + outer) / side).floor().long().unbind(1)      # each cell's column and row
    d = points.abs().amax(1)
    white, edge, first = (i + j) % 2 == 0, d > outer - side, d < inner + side
    return points, *(mask.nonzero().squeeze(1) for mask in (white, ~white, edge, first))


kept_layout = functools.lru_cache(maxsize=32)(make_layout)


def log_mass(log_p, side):
    """log of the midpoint rule's ∫ exp(log p) over cells of side `side`, given log p at their midpoints."""
    return torch.logsumexp(log_p, 0) + 2 * math.log(side)


def region(energy, inner, outer, side, log_p=None, coarse=None):
    """A region's midpoint sum and what its error is judged by: log p at its cells' midpoints (given, or computed),
    log I_h (cells of side h), log I_2h (cells twice as wide; given, where the region was summed on them before), and
    the sums over the two colours of the cells laid out as a chessboard, each a rule of its own on a lattice turned by
    45°, whose mean is I_h. Without `coarse`, I_2h is left to summed(), for a region that is not refined at once."""
    points, white, black, edge, first = layout(inner, outer, side, energy.c.device)
    log_p = log_p_on(energy, points) if log_p is None else log_p
    return dict(inner=inner, outer=outer, side=side, log_p=log_p, fine=log_mass(log_p, side), coarse=coarse,
                halves=[log_mass(log_p[white], side) + math.log(2), log_mass(log_p[black], side) + math.log(2)],
                edge=log_mass(log_p[edge], side), first=log_mass(log_p[first], side))


def summed(energy, r):
    """r with its I_2h, summed now on cells twice as wide if it was left out."""
    if r['coarse'] is None:
        r['coarse'] = log_mass(log_p_on(energy, layout(r['inner'], r['outer'], 2 * r['side'], energy.c.device)[0]), 2 * r['side'])
    return r


def mass_edge(r, distance, lz, tol):
    """The least edge c, inner < c < outer and a whole number of cells of twice the region's side from 0, beyond which
    the region holds less than tol of the mass, relative to Z = exp(lz); its outer edge where there is none. distance:
    each of its cells' distance from 0 in the max norm."""
    step = 2 * r['side']
    band = ((distance - r['inner']) / step).floor().long()       # the bands of width `step` from the inner edge
    mass = (r['log_p'].double() + 2 * math.log(r['side']) - lz).exp()
    beyond = torch.zeros(int(band.max()) + 1, dtype=torch.float64, device=mass.device).index_add_(0, band, mass).flip(0).cumsum(0).flip(0)
    k = (beyond[1:] < tol).nonzero()
    whole = abs(r['inner'] / step - round(r['inner'] / step)) < 1e-6
    return r['inner'] + (k[0].item() + 1) * step if len(k) and whole else r['outer']


def error(r, lz):
    """A region's estimated error, relative to Z = exp(lz): the larger of |I_h - I_2h| / 3 (Richardson's estimate of
    the error of I_h, I - I_h = (I_h - I_2h) / 3 + O(h⁴) once the rule is in its O(h²) regime) and the gap between its
    chessboard's two colours (large where the integrand has features as narrow as the cells, before that regime, which
    Richardson can miss by chance; unlike shifted rules, the two colours tile a region's straight edges alike, so mass
    at an edge does not inflate it)."""
    return max(abs(rel(r['fine'], lz) - rel(r['coarse'], lz)) / 3, abs(rel(r['halves'][0], lz) - rel(r['halves'][1], lz)))


def rel(log_mass, lz):
    """A mass (its log, a 0-d tensor) relative to Z = exp(lz)."""
    return math.exp(log_mass.item() - lz)


@torch.inference_mode()
def plane(energy, n=GRID_N, log_p=None, outer=None, tol=TOL):
    """log Z(θ) = log ∫ exp(-f_θ(x)) dx over the whole plane, by the midpoint rule on cells that widen away from the
    data, as far out as the model has mass. Returns a dict: log_z (a 0-d tensor; inf if the model is not normalisable),
    outside (the share of the model's mass outside the data window [-4, 4]²) and err (the estimated bound on log_z's
    error, nats), and the regions as summed last (their cells: layout(); log p_θ at their midpoints: log_p).

    The regions: the data window in cells of side h = 8/n (n = 320: h = 0.025, a third of the rings' noise std), the
    ring out to [-8, 8]² in cells of 4h, then shells [-2L, 2L]² minus [-L, L]², L = 8, 16, 32, ..., in cells of L/16.
    Shells are added until one carries less than tol/100 of the mass and less than half the one before it: the
    integrand is seen to decay, and the tail beyond, were it to keep halving at each doubling of L, is at most the
    last shell's mass, which the bound counts. If the shells still carry that mass at L = FAR, the model is not
    normalisable (its energy does not grow in some direction) and log_z is inf.

    While the regions' estimated errors (error()) and the tail add up to more than tol, relative to Z (which bounds
    the error of log Z in nats), the region that errs most is summed again on cells half as wide, at most REFINE
    times; a region beyond the window holding more than tol is checked so once in any case, on the band of it that
    holds the mass. `log_p` may pass log p_θ on the window's grid, shape (n, n), as computed for the plot, and `outer` the
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
    levels, splits = [0] * len(regions), 0
    while True:
        # [-8, 8]² as one sum, as before the shells (its value to the bit where the shells add nothing)
        near = [r['log_p'] + 2 * math.log(r['side']) for r in regions if r['outer'] <= Z_LIM]
        far = [r['fine'] for r in regions if r['outer'] > Z_LIM]
        log_z = torch.logaddexp(torch.logsumexp(torch.cat(near), 0), torch.stack(far).logsumexp(0))
        lz = log_z.item()
        if not math.isfinite(lz):       # log p itself inf (or nan) somewhere
            return broken if math.isnan(lz) else unbounded
        # a region beyond the window holding more than tol of the mass is trusted only once two sides of its cells
        # agree: its first |I_h - I_2h| and its chessboard can both be small by chance where the model has features
        # as narrow as its cells (the strong network without its base on rings, seed 2: 1.1e-3 off without this).
        # Only its band out to where less than tol lies beyond is summed again (mass_edge); the rest keeps its cells,
        # as any region holding less than tol does (on bench.py's model: 24576 new nodes instead of 76800)
        unchecked = [i for i, r in enumerate(regions) if i and levels[i] == 0 and r['fine'].item() - lz > math.log(tol)
                     and cells(r['inner'], r['outer'], r['side'] / 2) <= MAX_CELLS]
        if unchecked:
            i = unchecked[0]
            r = regions[i]
            distance = layout(r['inner'], r['outer'], r['side'], device)[0].abs().amax(1)
            c = mass_edge(r, distance, lz, tol)
            within = distance < c       # its cells inside the band's edge
            band = region(energy, r['inner'], c, r['side'] / 2, coarse=log_mass(r['log_p'][within], r['side']))
            rest = [region(energy, c, r['outer'], r['side'], log_p=r['log_p'][~within])] if c < r['outer'] else []   # under tol
            regions[i:i + 1], levels[i:i + 1] = [band, *rest], [1] + [0] * len(rest)
            continue
        # a cliff at an edge: where a region's outermost cells hold mass, the density may fall within the next
        # region's first cells, between their midpoints, and no estimate made of those midpoints would see it. Were
        # the density to go on as it was, the first band of wider cells would hold the edge band's mass times the
        # ratio of the sides; what it holds less than that is counted as error. Where it errs most, two of the wider
        # cells are split off, in the narrower cells, as a collar whose own estimates see the fall
        errs = [error(summed(energy, r), lz) for r in regions]
        cliffs = [0.0] + [max(0.0, rel(prev['edge'], lz) * r['side'] / prev['side'] - rel(r['first'], lz))
                          if r['side'] > prev['side'] else 0.0 for prev, r in zip(regions[:-1], regions[1:], strict=True)]
        err = sum(errs) + sum(cliffs) + math.exp(tail - lz)
        todo = [i for i, r in enumerate(regions) if levels[i] < REFINE and cells(r['inner'], r['outer'], r['side'] / 2) <= MAX_CELLS]
        i = max(range(len(regions)), key=cliffs.__getitem__)
        r, side, cut = regions[i], regions[i - 1]['side'], regions[i]['inner'] + 2 * regions[i]['side']
        split = (splits < SPLITS and cliffs[i] > max([tol / 10] + [errs[j] for j in todo])
                 and cells(r['inner'], min(cut, r['outer']), side) <= MAX_CELLS)
        if err <= tol or not todo and not split:
            break
        if split:
            splits += 1
            if cut < r['outer']:
                regions[i:i + 1] = [region(energy, r['inner'], cut, side), region(energy, cut, r['outer'], r['side'])]
                levels[i:i + 1] = [0, levels[i]]
            else:               # two cells wide: the whole region in the narrower cells
                regions[i] = region(energy, r['inner'], r['outer'], side)
            continue
        i = max(todo, key=errs.__getitem__)    # its cells halved: its sum so far is the new I_2h
        r = regions[i]
        regions[i], levels[i] = region(energy, r['inner'], r['outer'], r['side'] / 2, coarse=r['fine']), levels[i] + 1
    outside = torch.stack([r['fine'] for r in regions[1:]]).logsumexp(0).item() - lz
    return dict(log_z=log_z + energy.c.detach().squeeze(), outside=math.exp(outside), err=err, regions=regions)


@torch.inference_mode()
def log_z_in_window(energy, n=GRID_N):
    """log Z over [-8, 8]² alone, as the evaluation summed it before it covered the plane (the window's cells and the
    ring's, no shells, no error estimate): for bench.py's cost ratio and the tests."""
    h = 2 * PLOT_LIM / n
    inner = log_p_on(energy, ring(PLOT_LIM, Z_LIM, 4 * h, energy.c.device))
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
    return inputs(energy, grid(PLOT_LIM, n, device)), inputs(energy, ring(PLOT_LIM, Z_LIM, 8 * PLOT_LIM / n, device)), inputs(energy, x_test)


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
