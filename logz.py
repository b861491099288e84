"""Estimate a trained model's log Z as one must outside 2D, and score each estimate against the quadrature over the
plane: importance sampling with the run's noise, NCE's learned c, annealed importance sampling (AIS) forward and
reverse, whose pair is the bidirectional Monte Carlo sandwich, and annealed NCE.

$ python logz.py ckpts/nce.pth.tar                     # each estimator at budgets of 10^3 to 10^5 energy evaluations
$ python logz.py ckpts/nce.pth.tar --budgets 1e4 --seed 3
$ python results.py --methods nce mle sm cd --keep runs/logz  # the benchmark's models, then every one of them scored:
$ python logz.py --benchmark runs/logz --budgets 1e3 1e4 1e5 1e6 --docs    # logz.csv, docs/logz.md's tables, the figure

A budget counts evaluations of the energy: IS draws that many points from q; AIS runs M chains through K
distributions (K·M = budget, a MALA step at each) and annealed NCE reads the same chains. Reverse AIS starts from
exact samples of p_θ, which only 2D allows: drawn from the quadrature's cells (not counted in its budget).
docs/logz.md measures every estimator on the benchmark's models.
"""
import glob
import math
import os
import sys
import time
import types

import torch

import cli

ROOT = os.path.dirname(os.path.abspath(__file__))
# the default budgets: on this 2-core CPU, 7.3 s for the strong network's checkpoint (15.4 s with 1e6 too) and
# under 8 s for the original network's with 1e6; the benchmark passes 1e6 as well
BUDGETS = (1e3, 1e4, 1e5)
DELTA = 4.0     # the sigmoid schedule's steepness (Grosse, Ghahramani & Adams 2015, BDMC)
ACCEPT = 0.574  # MALA's optimal acceptance rate (Roberts & Rosenthal 1998): each level's step size is steered to it
NEWTON = 30     # Newton steps of annealed NCE's 1D logistic regressions


def shape(budget):
    """AIS's (K distributions, M chains) for a budget of K·M evaluations, as papers run it: K = 100 below 10^5 and
    1000 from there (at most the budget), M the rest. 10^3 to 10^6 are K = 100 with M = 10 and 100, then K = 1000
    with M = 100 and 1000."""
    k = min(100 if budget < 1e5 else 1000, int(budget))
    return k, max(1, round(budget / k))


# ----------------------------------------------------------------------------------------------------
# the estimators: each takes the energy, with p̃ = exp(-f_θ) (c aside), and returns log Ẑ, a 0-d tensor

def importance(energy, q, n, gen=None):
    """Importance sampling with the noise q (Geyer 1994's Monte Carlo MLE uses the same estimate):
    log Ẑ = log (1/n) Σ_i p̃(x_i) / q(x_i), x_i ~ q. Unbiased in Z, so E[log Ẑ] ≤ log Z (Jensen); its variance is
    that of p̃/q, large where q misses the model's modes."""
    from evaluate import log_p_on
    x = sample(q, n, gen)
    with torch.no_grad():
        return torch.logsumexp(log_p_on(energy, x) + energy.c - q.log_prob(x), 0) - math.log(n)


def schedule(k, device='cpu', dtype=torch.float32):
    """β_0 = 0 < β_1 < ... < β_K = 1 along the sigmoid σ(δ(2t - 1)), rescaled to [0, 1] (Grosse et al. 2015): dense
    at both ends, where the geometric path's distributions change fastest."""
    s = torch.sigmoid(DELTA * (2 * torch.linspace(0, 1, k + 1, device=device, dtype=torch.float64) - 1))
    return ((s - s[0]) / (s[-1] - s[0])).to(dtype)


def evaluator(energy, q):
    """x -> (log p̃, log q, ∇ log p̃, ∇ log q) at x: one evaluation of the energy and its gradient (EBM's written-out
    EBM.log_p_and_score, or autograd for another module), from which log π_β = (1 - β) log q + β log p̃, the
    geometric path from q to p̃, and its gradient follow at every β."""
    def grad_of(fn, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = fn(x)
            return v.detach(), torch.autograd.grad(v.sum(), x)[0]

    def at(x):
        if hasattr(energy, 'log_p_and_score'):
            lp, gp = energy.log_p_and_score(x)
        else:
            lp, gp = grad_of(lambda y: energy(y).squeeze(1), x)
        lq, gq = grad_of(q.log_prob, x)
        return lp + energy.c.detach(), lq, gp, gq
    return at


def on_path(s, beta):
    """log π_β and its gradient from an evaluator's values s."""
    lp, lq, gp, gq = s
    return (1 - beta) * lq + beta * lp, (1 - beta) * gq + beta * gp


def mala(at, x, s, beta, eps, gen):
    """One Metropolis-adjusted Langevin step on π_β (Roberts & Tweedie 1996), which leaves π_β invariant, as AIS's
    weights need (the unadjusted step does not): y = x + ε∇ log π(x) + √(2ε) ξ, accepted with the MH probability.
    s = at(x). Returns the new state, its at(), and the share accepted (a 0-d tensor: no host sync)."""
    log_pi, grad = on_path(s, beta)
    y = x + eps * grad + (2 * eps).sqrt() * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    t = at(y)
    log_pi_y, grad_y = on_path(t, beta)
    fwd = -((y - x - eps * grad) ** 2).sum(1) / (4 * eps)       # log N(y; x + ε∇ log π(x), 2ε), up to a constant
    back = -((x - y - eps * grad_y) ** 2).sum(1) / (4 * eps)
    u = torch.rand(len(x), generator=gen, device=x.device, dtype=x.dtype)
    take = u.log() < log_pi_y - log_pi + back - fwd
    pick = lambda a, b: torch.where(take.view(-1, *[1] * (a.dim() - 1)), a, b)
    return pick(y, x), tuple(pick(a, b) for a, b in zip(t, s, strict=True)), take.to(x.dtype).mean()


def ais(energy, q, k, m, gen=None, x=None, keep=False):
    """Annealed importance sampling (Neal 2001) along the geometric path, K distributions, M chains started from q:

        log w = Σ_{j=1..K} (β_j - β_{j-1}) (log p̃ - log q)(x_{j-1}),   x_j = T_j(x_{j-1}),   log Ẑ = log (1/M) Σ w,

    T_j a MALA step on π_{β_j}. E[w] = Z, so E[log Ẑ] ≤ log Z: a stochastic lower bound. Given x, exact samples of
    p_θ, it runs reverse AIS instead (Grosse et al. 2015): the path from β = 1 down to 0, whose weights estimate 1/Z,
    so log Ẑ = -log (1/M) Σ w is a stochastic upper bound. Each level's step size is the last one's times
    exp(2(acceptance - ACCEPT)), steered by the chains together. keep: also return the chain states' log p̃ - log q
    at each level, (K + 1, M), and the β's, for annealed_nce."""
    reverse = x is not None
    x = sample(q, m, gen) if x is None else x
    betas = schedule(k, x.device, x.dtype)
    betas = betas.flip(0) if reverse else betas
    at = evaluator(energy, q)
    s, eps = at(x), torch.tensor(0.1, device=x.device, dtype=x.dtype)
    log_w, levels = torch.zeros(len(x), device=x.device, dtype=x.dtype), [s[0] - s[1]]
    for j in range(1, k + 1):
        log_w = log_w + (betas[j] - betas[j - 1]) * (s[0] - s[1])
        if j < k or keep:
            x, s, rate = mala(at, x, s, betas[j], eps, gen)
            eps = eps * torch.exp(2 * (rate - ACCEPT))
            levels.append(s[0] - s[1])
    log_z = torch.logsumexp(log_w, 0) - math.log(len(x))
    log_z = -log_z if reverse else log_z
    return (log_z, torch.stack(levels), betas) if keep else log_z


def annealed_nce(levels, betas):
    """Annealed NCE (Chehab, Hyvärinen & Risteski 2023): log Z = Σ_j log Z_{β_{j+1}} / Z_{β_j}, each ratio by NCE
    between neighbouring distributions of the path, the one at β_j the noise and the one at β_{j+1} the model with
    its log normaliser r_j as NCE's one parameter. With equal numbers of each, NCE's loss

        L(r) = Σ_{x ~ π_{j+1}} softplus(r - Δ(x)) + Σ_{x ~ π_j} softplus(Δ(x) - r),   Δ = (β_{j+1} - β_j)(log p̃ - log q),

    is convex in r, and its minimiser is Bennett's (1976) acceptance ratio, the optimal bridge sampler (Meng & Wong
    1996). levels: the chain states' log p̃ - log q at each β, from ais(keep=True). Every r_j by NEWTON Newton steps
    at once, from the IS estimate of the ratio."""
    step = (betas[1:] - betas[:-1]).unsqueeze(1)
    noise, model = step * levels[:-1], step * levels[1:]        # Δ at π_j's samples and at π_{j+1}'s
    r = torch.logsumexp(noise, 1) - math.log(noise.shape[1])
    for _ in range(NEWTON):
        a, b = torch.sigmoid(r[:, None] - model), torch.sigmoid(noise - r[:, None])
        grad, hess = a.sum(1) - b.sum(1), (a * (1 - a)).sum(1) + (b * (1 - b)).sum(1)
        r = r - (grad / hess.clamp_min(1e-12)).clamp(-1.0, 1.0)     # at most a nat a step: levels the chains
                                                                    # separate saturate every sigmoid, and the step blows up
    return r.sum()


# ----------------------------------------------------------------------------------------------------
# exact samples of p_θ, which 2D allows

def grid_sample(regions, n, gen=None):
    """n samples of p_θ from the quadrature's cells (evaluate.plane's regions): a cell drawn by its mass, then a
    point uniform in it. Exact for the piecewise-constant density the midpoint rule integrates; within a cell of
    side 0.025 that is p_θ to the cell's variation."""
    from evaluate import layout
    device = regions[0]['log_p'].device
    log_mass = torch.cat([r['log_p'] + 2 * math.log(r['side']) for r in regions])
    sides = torch.cat([torch.full_like(r['log_p'], r['side']) for r in regions])
    points = torch.cat([layout(r['inner'], r['outer'], r['side'], device)[0] for r in regions])
    cells = torch.multinomial((log_mass - log_mass.max()).exp(), n, replacement=True, generator=gen)
    u = torch.rand(n, 2, generator=gen, device=device) - 0.5
    return points[cells] + u * sides[cells, None]


def sample(q, n, gen):
    """n draws of q from the generator gen: torch.distributions draw from the global RNG, so its state is set from
    gen and put back."""
    import seeds
    with seeds.global_from(gen if gen is not None else torch.Generator()), torch.no_grad():
        return q.sample((n,))


# ----------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument('ckpt', nargs='?', help='a checkpoint train.py wrote')
    p.add_argument('--benchmark', metavar='DIR', help='score every checkpoint (*.pth.tar) in DIR instead, each one\'s '
                   'rows written to --out as it finishes; run again, it skips those already there (with none in DIR, '
                   'the tables of --out alone)')
    p.add_argument('--out', default='logz.csv', help='--benchmark\'s CSV (default %(default)s)')
    p.add_argument('--jobs', type=int, default=os.cpu_count(), help='--benchmark: checkpoints scored at once, each on one thread')
    p.add_argument('--docs', action='store_true', help='--benchmark: also put its tables into docs/logz.md and draw '
                   'images/logz.png (without it, the tables are printed)')
    p.add_argument('--budgets', nargs='+', type=float, default=list(BUDGETS), metavar='N',
                   help='energy evaluations each estimate may spend (default: 1e3 1e4 1e5)')
    p.add_argument('--seed', type=int, help='the estimates\' draws come from this seed\'s stream (default: the run\'s --seed)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'mps'], help='where the estimates run')
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f'argument --jobs: must be at least 1, got {args.jobs}')
    for b in args.budgets:
        if not (math.isfinite(b) and b >= 1):
            p.error(f'argument --budgets: each must be a number of evaluations, at least 1; got {b:g}')
    import files
    import resume
    if (args.ckpt is None) == (args.benchmark is None):
        p.error('give a checkpoint or --benchmark DIR, not both' if args.ckpt else 'give a checkpoint, or --benchmark DIR')
    if args.benchmark:
        args.paths = sorted(glob.glob(os.path.join(args.benchmark, '*.pth.tar')))
        if not args.paths and not os.path.isfile(args.out):     # with --out there, its tables alone
            p.error(f'argument --benchmark: no checkpoint (*.pth.tar) in {args.benchmark}, and no {args.out} to read')
        if problem := files.unwritable(os.path.dirname(os.path.abspath(args.out))) or files.not_a_file(args.out):
            p.error(f'argument --out: cannot write {args.out}: {problem}')
        return args
    try:
        args.loaded = resume.load(args.ckpt)
    except files.CheckpointError as e:
        p.error(f'argument ckpt: {str(e).splitlines()[0]}')
    return args


def model_of(ckpt, device):
    """The checkpoint's EBM and its run's noise q, rebuilt as train.py builds them (the data from the run's 'data'
    stream, a flow's weights from the checkpoint)."""
    import resume
    import seeds
    from data import sample_2d_data
    from model import EBM
    from noise import LEARNED, make_noise
    a = ckpt['args']
    streams = resume.run_streams(types.SimpleNamespace(seed=a['seed']), ckpt)
    energy = EBM(**ckpt['model_kwargs']).to(device)
    energy.load_state_dict(ckpt['energy'])
    energy.requires_grad_(False)
    x = sample_2d_data(a['dataset'], a['samples'], seeds.generator(streams['data'])).to(device)
    noise = make_noise(a.get('noise', 'gaussian'), x, a.get('flow_layers'), a.get('flow_hidden'), a.get('flow_broad', 0.1), streams['mixture'])
    if a.get('noise') in LEARNED:
        noise.flow.load_state_dict(ckpt['flow'])
        noise.flow.requires_grad_(False)
    return energy, noise


def estimates(energy, noise, budgets, gen, regions=None, learns_c=False):
    """Each estimator at each budget: rows of (estimator, budget, log Ẑ, seconds). Annealed NCE reads forward AIS's
    chains, and shares its time; reverse AIS needs exact samples, so the quadrature's regions."""
    rows = [('nce c', 0, energy.c.squeeze().item(), 0.0)] if learns_c else []
    for b in budgets:
        k, m = shape(b)
        t = time.perf_counter()
        rows.append(('is', b, importance(energy, noise, int(b), gen).item(), time.perf_counter() - t))
        t = time.perf_counter()
        forward, levels, betas = ais(energy, noise, k, m, gen, keep=True)
        forward, nce = forward.item(), annealed_nce(levels, betas).item()
        rows += [('ais', b, forward, time.perf_counter() - t), ('annealed nce', b, nce, time.perf_counter() - t)]
        if regions is not None:
            t = time.perf_counter()
            rows.append(('reverse ais', b, ais(energy, noise, k, m, gen, x=grid_sample(regions, m, gen)).item(), time.perf_counter() - t))
    return rows


def score(ckpt, budgets, seed, device):
    """A checkpoint's log Z over the plane (evaluate.plane's dict) and its estimates (estimates' rows)."""
    import evaluate
    import methods
    import seeds
    energy, noise = model_of(ckpt, device)
    gen = seeds.generator(seeds.estimate_stream(ckpt['args']['seed'] if seed is None else seed), device)
    truth = evaluate.plane(energy)
    finite = math.isfinite(truth['log_z'].item())
    return truth, estimates(energy, noise, budgets, gen, regions=truth['regions'] if finite else None,
                            learns_c=ckpt['args'].get('method', 'nce') in methods.LEARNS_C)


def main(args):
    if args.benchmark:
        return benchmark(args)
    ckpt = args.loaded
    truth, rows = score(ckpt, args.budgets, args.seed, torch.device(args.device))
    log_z = truth['log_z'].item()
    finite = math.isfinite(log_z)
    print(f'{args.ckpt}: {ckpt["args"].get("method", "nce")} on {ckpt["args"]["dataset"]}, epoch {ckpt["epoch"]}; log Z '
          'over the plane ' + (f'{log_z:.4f} (quadrature, within {truth["err"]:.0e})' if finite else 'inf: the model is '
                               'not normalisable, so no estimate below has a true value to be scored against'))
    print(f'{"estimator":<14}{"budget":>10}{"log Z":>12}' + (f'{"error":>11}' if finite else ''))
    for name, b, v, _ in rows:
        print(f'{name:<14}{f"{b:.0e}" if b else "trained":>10}{v:>12.4f}' + (f'{v - log_z:>+11.4f}' if finite else ''))


# ----------------------------------------------------------------------------------------------------
# the benchmark: every checkpoint of a folder, a row per (estimator, budget) in a CSV

COLUMNS = ('dataset', 'method', 'seed', 'estimator', 'budget', 'k', 'm', 'log_z_hat', 'log_z', 'log_z_err', 'seconds')


def benchmark(args):
    """Score every checkpoint in args.benchmark, --jobs at a time on one thread each (results.py's workers), writing
    the CSV whole as each one finishes (a killed run keeps every checkpoint it finished, and the same command skips
    them), then print the tables, and with --docs put them in docs/logz.md and draw images/logz.png."""
    from tqdm import tqdm

    import cluster
    import files
    import resume
    import sweep
    rows = read_rows(args.out) if os.path.isfile(args.out) else []
    done = {(r['dataset'], r['method'], r['seed']) for r in rows}
    todo = []
    for path in args.paths:
        try:
            ckpt = resume.load(path)
        except files.CheckpointError as e:
            print(f'skipped: {str(e).splitlines()[0]}')
            continue
        a = ckpt['args']
        if (a['dataset'], a.get('method', 'nce'), a['seed']) not in done:
            todo.append((path, a['dataset'], a.get('method', 'nce'), a['seed']))
    print(f'{len(args.paths)} checkpoints; {len(args.paths) - len(todo)} scored before, in {args.out}: skipped; writing {args.out}')
    t0 = time.time()
    for found in tqdm(cluster.run(score_job, [(*t, args.budgets, args.device) for t in todo], args.jobs), total=len(todo),
                      unit='model', dynamic_ncols=True):
        rows += found
        files.write_text(args.out, sweep.csv_text(rows, COLUMNS))
    import tables
    from evaluate import TOL
    doc = os.path.join(ROOT, 'docs/logz.md')
    models = len({(r['dataset'], r['method'], r['seed']) for r in rows})
    wall = (f'{(time.time() - t0) / 60:.1f} minutes ({models} models on {args.jobs} workers, {os.cpu_count()} CPU cores)'
            if todo and len(todo) == models else None)      # the time of a run that scored every model, or the doc's
    text = '\n\n'.join(filter(None, [tables.logz_tables(rows, TOL), tables.footer(doc, 'python logz.py --benchmark', wall)]))
    print(text)
    if args.docs:
        import plot
        tables.put(doc, 'logz', text)
        plot.logz_figure([r for r in rows if tables.scored(r, TOL)], os.path.join(ROOT, 'images/logz.png'))


def score_job(path, dataset, method, seed, budgets, device):
    """One checkpoint of the benchmark, on one thread: its rows."""
    import resume
    torch.set_num_threads(1)
    truth, found = score(resume.load(path), budgets, None, torch.device(device))
    return [dict(dataset=dataset, method=method, seed=seed, estimator=name, budget=b, log_z_hat=v, log_z=truth['log_z'].item(),
                 log_z_err=truth['err'], seconds=t, **dict(zip('km', shape(b) if b and name != 'is' else (None, None), strict=True)))
            for name, b, v, t in found]


def read_rows(path):
    """logz.csv's rows, numbers as numbers and blanks as None."""
    import sweep
    return sweep.read_rows(path, ('seed', 'k', 'm'), ('dataset', 'method', 'estimator'))


if __name__ == '__main__':
    try:
        main(get_args())
    except KeyboardInterrupt:
        sys.exit(130)
