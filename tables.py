"""The tables of results.py's rows: mean ± sd over seeds, and a difference claimed only where a paired t-test across
seeds supports it (two-sided, 95%). Each function takes the rows (dicts, as results.read_csv gives them) and returns
a Markdown table or sentence; put() writes one between the markers of a document."""
import numpy as np

import files
from data import DATASETS

LAST = 5    # a run is scored by the mean KL of its last LAST epochs: at a constant learning rate the last one's jitters


def cells(rows, dataset, method, col):
    """A column's values for one dataset and method, seed by seed."""
    return [r[col] for r in sorted(rows, key=lambda r: r['seed']) if r['dataset'] == dataset and r['method'] == method
            and r.get(col) is not None]


def mean_sd(values, digits=3):
    if not values:
        return ''
    return num(values[0], digits) if len(values) == 1 else f'{num(np.mean(values), digits)} ± {num(np.std(values, ddof=1), digits)}'


def num(v, digits=3, sign=''):
    """A number with `digits` decimals, or in e-notation from 1000 on (a diverged run's KL is in the millions); a count
    (digits 0, such as steps a second) in full."""
    return f'{v:{sign}.{digits}f}' if abs(v) < 1000 or not digits else f'{v:{sign}.1e}'


def paired(rows, dataset, a, b, col='kl'):
    """Mean and sd of a − b over the seeds both have, and whether a paired t-test (two-sided, 95%) tells them apart."""
    from scipy import stats
    va = {r['seed']: r[col] for r in rows if r['dataset'] == dataset and r['method'] == a and r.get(col) is not None}
    vb = {r['seed']: r[col] for r in rows if r['dataset'] == dataset and r['method'] == b and r.get(col) is not None}
    d = np.array([va[s] - vb[s] for s in sorted(va.keys() & vb.keys())])
    if len(d) < 2:
        return None
    sd = d.std(ddof=1)
    significant = sd == 0 and d.mean() != 0 or sd > 0 and stats.ttest_1samp(d, 0).pvalue < 0.05
    return d.mean(), sd, bool(significant)


def verdict(rows, a, b, col='kl'):
    """Where a is lower than b, higher, and neither, over the datasets both have, as one sentence."""
    lower, higher, same = [], [], []
    for d in DATASETS:
        p = paired(rows, d, a, b, col)
        if p:
            (lower if p[2] and p[0] < 0 else higher if p[2] else same).append(d)
    parts = [f'lower on {", ".join(lower)}' if lower else '', f'higher on {", ".join(higher)}' if higher else '',
             f'no difference shown on {", ".join(same)}' if same else '']
    return '; '.join(p for p in parts if p)


def results_table(rows, seeds, strong_samples, base_samples, fair_epochs):
    has = lambda m: any(r['method'] == m for r in rows)
    cols = [(m, t) for m, t in (('nce', 'NCE'), ('strong', 'strong'), ('strong-10k', 'strong 10k'), ('mle', 'exact MLE'),
                                ('gmm', 'GMM'), ('kde', 'KDE')) if has(m)]
    head = ['dataset', 'H']
    for m, title in cols:
        head += [title] + (['gap'] if m in ('nce', 'strong') else []) + (['wall'] if m == 'strong' else [])
    table = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for d in DATASETS:
        if not any(r['dataset'] == d for r in rows):
            continue
        line = [d, f'{np.mean(cells(rows, d, cols[0][0], "H")):.3f}']
        for m, _ in cols:
            line += [mean_sd(cells(rows, d, m, 'kl5'))] + ([mean_sd(cells(rows, d, m, 'gap'))] if m in ('nce', 'strong') else [])
            line += [f'{np.mean(cells(rows, d, m, "seconds")):.0f} s'] if m == 'strong' else []
        table.append('| ' + ' | '.join(line) + ' |')
    table += ['', f'KL = test NLL − H, the mean of a run\'s last {LAST} epochs, and gap = |c − log Z| at its last (nats), '
              f'mean ± sd over seeds {seeds} (`train.py --seed s`). '
              f'strong draws {strong_samples} samples; the rest, strong 10k ({fair_epochs} epochs) too, the seed\'s '
              f'{base_samples}. wall: one thread. Claims need a paired t-test across seeds (95%; '
              '[docs/results.md](docs/results.md)):', '']
    for a, b, what in (('nce', 'mle', 'NCE against exact MLE, same network and steps'),
                       ('strong-10k', 'gmm', 'Strong 10k against the GMM'), ('strong-10k', 'kde', 'Strong 10k against the KDE'),
                       ('strong', 'strong-10k', 'Strong on 100000 samples against 10000')):
        if has(a) and has(b):
            table.append(f'- {what}: KL {verdict(rows, a, b, "kl5")}.')
    return '\n'.join(table)


def comparison_rows(rows):
    """The strong preset against the baselines, dataset by dataset: paired KL differences, mean ± sd over seeds."""
    table = ['| dataset | strong (100000) − GMM | strong (10000) − GMM | strong (10000) − KDE |', '|---|---|---|---|']
    for d in DATASETS:
        out = []
        for a, b in (('strong', 'gmm'), ('strong-10k', 'gmm'), ('strong-10k', 'kde')):
            p = paired(rows, d, a, b, 'kl5')
            out.append('' if p is None else f'{p[0]:+.4f} ± {p[1]:.4f}' + (' *' if p[2] else ''))
        if any(out):
            table.append(f'| {d} | ' + ' | '.join(out) + ' |')
    table += ['', f'Differences of the KL (each run\'s mean over its last {LAST} epochs) in nats, paired by seed (mean ± sd); negative: the strong preset is closer to the '
              'data. * marks a difference a paired t-test across seeds finds (two-sided, 95%).']
    return '\n'.join(table)


def base_table(rows):
    """The strong preset with its Gaussian base N(0, 4I) against the same preset without it, as it was: the KL over the
    plane, mean ± sd and the worst seed, on 100000 samples and on 10000, and the paired t-test's verdict."""
    pairs = (('strong-nobase', 'strong'), ('strong-10k-nobase', 'strong-10k'))
    table = ['| dataset | without base | with base | worst seed, without | worst seed, with | 10k without base | '
             '10k with base |', '|---|---|---|---|---|---|---|']
    for d in DATASETS:
        if not all(cells(rows, d, m, 'kl') for pair in pairs for m in pair):
            continue
        worst = [num(max(cells(rows, d, m, 'kl')), 4) for m in pairs[0]]
        table.append(f'| {d} | ' + ' | '.join([*(mean_sd(cells(rows, d, m, 'kl'), 4) for m in pairs[0]), *worst,
                                                *(mean_sd(cells(rows, d, m, 'kl'), 4) for m in pairs[1])]) + ' |')
    table += ['', 'KL over the plane (nats), mean ± sd over seeds; the worst seed\'s KL beside it. Paired t-tests across '
              'seeds (two-sided, 95%):', '',
              f'- With the base against without, 100000 samples: KL {verdict(rows, "strong", "strong-nobase")}.',
              f'- With the base against without, 10000 samples: KL {verdict(rows, "strong-10k", "strong-10k-nobase")}.']
    return '\n'.join(table)


def noise_of(rows, method):
    return next(r['noise'] for r in rows if r['method'] == method)


def noise_table(rows):
    methods = [m for m in ('nce', 'nce-fit', 'nce-gmm') if any(r['method'] == m for r in rows)]
    shown = [d for d in DATASETS if any(r['dataset'] == d and r['method'] in methods for r in rows)]
    table = ['| noise | ' + ' | '.join(shown) + ' |', '|---|' + '---|' * len(shown)]
    for m in methods:
        line = []
        for d in shown:
            p = paired(rows, d, m, 'nce', 'kl5') if m != 'nce' else None
            line.append(mean_sd(cells(rows, d, m, 'kl5')) + (' *' if p and p[2] else ''))
        table.append(f'| `{noise_of(rows, m)}` | ' + ' | '.join(line) + ' |')
    table += ['', f'KL (nats), each run\'s mean over the last {LAST} of the default 50 epochs (ν = 1), mean ± sd over seeds. * marks a noise whose KL differs '
              'from the original N(0, 4I) by a paired t-test across seeds (two-sided, 95%).']
    for m in methods[1:]:
        table.append(f'- `{noise_of(rows, m)}` against `gaussian`: KL {verdict(rows, m, "nce", "kl5")}.')
    return '\n'.join(table)


def flow_tables(rows):
    """The learned-noise tables (docs/flow.md): the EBM's KL and |c - log Z| with each noise, what FCE closes of NCE's
    gap to exact MLE, the broad part's effect, the flows themselves and the wall time; at the original budget and
    with the strong preset's network. Every claim from a paired t-test across seeds."""
    has = lambda m: any(r['method'] == m for r in rows)
    shown = [d for d in DATASETS if any(r['dataset'] == d and r['method'] == 'fce' for r in rows)]
    cell = lambda d, m, col='kl': mean_sd(cells(rows, d, m, col))
    star = lambda d, a, b: ' *' if (p := paired(rows, d, a, b)) and p[2] else ''
    wall = lambda d, m: np.mean(cells(rows, d, m, 'seconds')) if cells(rows, d, m, 'seconds') else float('nan')
    out = ['**The EBM** (original network and budget, 5000 EBM updates): KL (nats); * marks a KL that differs from NCE '
           "with N(0, 4I) by a paired t-test. closed: the share of NCE's KL gap to exact MLE that FCE closes, "
           '(NCE − FCE) / (NCE − MLE) on the means, where that gap is larger than the spread (a paired t-test).', '',
           '| dataset | exact MLE | NCE, N(0, 4I) | NCE, flow | FCE | closed | gap NCE | gap flow | gap FCE |',
           '|---|---|---|---|---|---|---|---|---|']
    for d in shown:
        p = paired(rows, d, 'nce', 'mle')
        gap = p and p[2] and p[0] > 0
        nce_kl, fce_kl, mle_kl = (np.mean(cells(rows, d, m, 'kl')) for m in ('nce', 'fce', 'mle'))
        closed = f'{(nce_kl - fce_kl) / (nce_kl - mle_kl):.0%}' if gap else 'no gap shown'
        out.append(f'| {d} | {cell(d, "mle")} | {cell(d, "nce")} | {cell(d, "nce-flow")}{star(d, "nce-flow", "nce")} | '
                   f'{cell(d, "fce")}{star(d, "fce", "nce")} | {closed} | {cell(d, "nce", "gap")} | {cell(d, "nce-flow", "gap")} | '
                   f'{cell(d, "fce", "gap")} |')
    out += ['', 'gap: |c − log Z| (nats).', '']
    for a, b, what in (('fce', 'nce', 'FCE against NCE with N(0, 4I)'), ('nce-flow', 'nce', 'NCE with the fixed flow against N(0, 4I)'),
                       ('fce', 'nce-flow', 'FCE against NCE with the fixed flow'), ('fce', 'mle', 'FCE against exact MLE')):
        if verdict(rows, a, b):
            out.append(f'- {what}: KL {verdict(rows, a, b)}.')
    if has('nce-flow-narrow'):
        out += ['', "**The broad part**: NCE with the fixed flow mixed with 10% of N(0, 4I) (as shipped) and with the flow "
                'alone (`--flow-broad 0`); KL and gap = |c − log Z| (nats).', '',
                '| dataset | KL, mixed | KL, flow alone | gap, mixed | gap, flow alone |', '|---|---|---|---|---|']
        for d in shown:
            out.append(f'| {d} | {cell(d, "nce-flow")} | {cell(d, "nce-flow-narrow")} | {cell(d, "nce-flow", "gap")} | '
                       f'{cell(d, "nce-flow-narrow", "gap")} |')
        out += ['', f'- The mixture against the flow alone: KL {verdict(rows, "nce-flow", "nce-flow-narrow")}; gap '
                f'{verdict(rows, "nce-flow", "nce-flow-narrow", "gap")}.']
    out += ['', "**The flows and the time**: KL(p_data ‖ q_φ) of the flow alone (nats): fitted by MLE for `--flow-fit` 5000 "
            "steps (NCE, flow), trained by FCE, and the same flow fitted by MLE for as many steps as FCE's flow took. wall: "
            'seconds a run on one thread, FCE against NCE with N(0, 4I) of the same seeds.', '',
            "| dataset | MLE flow | FCE flow | MLE flow, FCE's steps | FCE − that | FCE flow steps | wall NCE | wall flow | wall FCE | FCE / NCE |",
            '|---|---|---|---|---|---|---|---|---|---|']
    for d in shown:
        fce_rows = [r for r in rows if r['dataset'] == d and r['method'] == 'fce']
        diff = [r['flow_kl'] - r['flow_mle_kl'] for r in fce_rows]
        out.append(f'| {d} | {cell(d, "nce-flow", "flow_kl")} | {cell(d, "fce", "flow_kl")} | {cell(d, "fce", "flow_mle_kl")} | '
                   f'{mean_sd(diff)} | {mean_sd(cells(rows, d, "fce", "flow_steps"), 0)} | {wall(d, "nce"):.1f} s | '
                   f'{wall(d, "nce-flow"):.1f} s | {wall(d, "fce"):.1f} s | {wall(d, "fce") / wall(d, "nce"):.1f}x |')
    if has('strong-10k-fce'):
        out += ['', "**The strong preset's network** on the seed's 10000 samples (1280 EBM updates, as the results table's "
                'strong 10k): KL and gap (nats), wall (s).', '',
                '| dataset | N(0, 4I) | flow | FCE | gap N(0, 4I) | gap FCE | FCE flow KL | wall N(0, 4I) | wall FCE |',
                '|---|---|---|---|---|---|---|---|---|']
        for d in shown:
            out.append(f'| {d} | {cell(d, "strong-10k")} | {cell(d, "strong-10k-flow")}{star(d, "strong-10k-flow", "strong-10k")} | '
                       f'{cell(d, "strong-10k-fce")}{star(d, "strong-10k-fce", "strong-10k")} | {cell(d, "strong-10k", "gap")} | '
                       f'{cell(d, "strong-10k-fce", "gap")} | {cell(d, "strong-10k-fce", "flow_kl")} | {wall(d, "strong-10k"):.1f} s | '
                       f'{wall(d, "strong-10k-fce"):.1f} s |')
        out += ['', f'- FCE against N(0, 4I), strong network: KL {verdict(rows, "strong-10k-fce", "strong-10k")}.',
                f'- The fixed flow against N(0, 4I), strong network: KL {verdict(rows, "strong-10k-flow", "strong-10k")}.']
    return '\n'.join(out)

# ----------------------------------------------------------------------------------------------------
# the estimators (docs/estimators.md): each job judged by its mean KL over its last LAST epochs, from its curve

def with_curves(rows, curves, last=LAST):
    """The rows, each job with a curve gaining kl5 (its mean exact KL over its last `last` epochs) and train_seconds
    (its steps alone, without evaluation); a model fitted without epochs (the GMM, the KDE) has its one KL as kl5."""
    jobs = {}
    for c in curves:
        jobs.setdefault((c['dataset'], c['method'], c['seed']), []).append(c)
    out = []
    for r in rows:
        curve = sorted(jobs.get((r['dataset'], r['method'], r['seed']), []), key=lambda c: c['epoch'])
        extra = dict(kl5=float(np.mean([c['kl'] for c in curve[-last:]])), train_seconds=curve[-1]['train_seconds']) if curve \
            else dict(kl5=r['kl']) if r.get('epochs') is None else {}
        out.append({**r, **extra})
    return out


def by_method(rows, methods, shown, cell, name):
    """A table with a row per method and a column per dataset."""
    out = ['| method | ' + ' | '.join(shown) + ' |', '|---|' + '---|' * len(shown)]
    return out + [f'| `{name(m)}` | ' + ' | '.join(cell(d, m) for d in shown) + ' |' for m in methods]


def estimator_tables(rows, methods, reference, efficient, name=str):
    """The benchmark's tables: for each method and dataset the KL (mean over the last LAST epochs), the gap |c - log Z| where the method learns c, its difference from the efficient reference (exact MLE)
    paired by seed, and its time; then each method against `reference` (NCE) and `efficient`, only as far as paired
    t-tests across seeds on the last-LAST mean support. `name` shows a method's name."""
    methods = [m for m in methods if any(r['method'] == m for r in rows)]
    shown = [d for d in DATASETS if any(r['dataset'] == d and r['method'] in methods for r in rows)]
    mark = lambda d, m: '' if m == reference or not (p := paired(rows, d, m, reference, 'kl5')) or not p[2] else ' ↓' if p[0] < 0 else ' ↑'
    out = [f'**KL, mean of the last {LAST} epochs** (nats), mean ± sd over seeds; ↓ or ↑: lower or higher than '
           f'`{name(reference)}` by a paired t-test across seeds (two-sided, 95%).', '']
    out += by_method(rows, methods, shown, lambda d, m: mean_sd(cells(rows, d, m, 'kl5')) + mark(d, m), name)
    def closeness(d, m):
        p = paired(rows, d, m, efficient, 'kl5')
        return '' if p is None else f'{num(p[0], sign="+")} ± {num(p[1])}' + (' *' if p[2] else '')
    others = [m for m in methods if m != efficient]
    out += ['', f'**How close to exact MLE**: the last-{LAST} mean KL less `{name(efficient)}`\'s, paired by seed '
            '(mean ± sd); * marks a difference a paired t-test finds.', '']
    out += by_method(rows, others, shown, closeness, name)
    with_c = [m for m in methods if any(r['method'] == m and r['gap'] is not None for r in rows)]
    if with_c:
        out += ['', '**|c − log Z|** at the last epoch (nats), for the methods that learn c.', '']
        out += by_method(rows, with_c, shown, lambda d, m: mean_sd(cells(rows, d, m, 'gap')), name)
    out += ['', '**Time**, one thread: seconds a job (its steps, and one exact evaluation at the end), and training '
            'steps a second (the steps alone), mean ± sd over every dataset and seed.', '',
            '| method | seconds a job | steps a second |', '|---|---|---|']
    for m in methods:
        mine = [r for r in rows if r['method'] == m]
        rate = [r['steps'] / r['train_seconds'] for r in mine if r.get('train_seconds')]
        out.append(f'| `{name(m)}` | {mean_sd([r["seconds"] for r in mine], 1)} | {mean_sd(rate, 0)} |')
    out += ['', f'Paired t-tests on the last-{LAST} mean KL, across seeds (two-sided, 95%):', '']
    for m in others:
        against = [f'against `{name(b)}` {v}' for b in (reference, efficient) if b != m and (v := verdict(rows, m, b, 'kl5'))]
        out.append(f'- `{name(m)}`: KL ' + '; '.join(against) + '.')
    return '\n'.join(out)


def best_table(rows, methods, reference, efficient, name=str):
    """The README's short version: per dataset, the method of lowest mean last-LAST KL, whether a paired t-test tells
    it from the next best, and NCE's and exact MLE's KL beside it."""
    out = [f'| dataset | lowest KL | KL | next | told apart | `{name(reference)}` | `{name(efficient)}` |',
           '|---|---|---|---|---|---|---|']
    for d in DATASETS:
        mean = {m: np.mean(v) for m in methods if (v := cells(rows, d, m, 'kl5'))}
        if len(mean) < 2:
            continue
        best, nxt = sorted(mean, key=mean.get)[:2]
        p = paired(rows, d, best, nxt, 'kl5')
        kl = lambda m, d=d: mean_sd(cells(rows, d, m, 'kl5'))
        out.append(f'| {d} | `{name(best)}` | {kl(best)} | `{name(nxt)}` | {"yes" if p and p[2] else "no"} | '
                   f'{kl(reference)} | {kl(efficient)} |')
    return '\n'.join(out + ['', f'KL: mean over the last {LAST} epochs (nats), mean ± sd over seeds. told apart: a '
                                 'paired t-test across seeds (two-sided, 95%) finds the lowest below the next.'])


def short(method):
    """A method's name in the estimator tables: the smooth network's as the estimator's own."""
    return method.removeprefix('silu-')


def scored(row, tol):
    """Whether a logz.csv row's model can be scored: it is normalisable and the quadrature's bound is within tol."""
    return bool(np.isfinite(row['log_z']) and row['log_z_err'] <= tol)


def logz_tables(rows, tol):
    """logz.py --benchmark's tables, from its rows (one per model, estimator and budget): |log Ẑ - log Z| by
    estimator and budget as the median and, in brackets, the 90th percentile over the models; the mean signed error
    and its standard error; how often forward and reverse AIS sandwich log Z; and the median |error| by training
    method at 10^4. A model is scored only where the quadrature's own bound is within tol: the others, and those
    that are not normalisable, are named below the tables."""
    key = lambda r: (r['dataset'], r['method'], r['seed'])
    ok = [r for r in rows if scored(r, tol)]
    models, kept = {key(r) for r in rows}, {key(r) for r in ok}
    infinite = sorted({key(r) for r in rows if not np.isfinite(r['log_z'])})
    unbounded = {key(r): r['log_z_err'] for r in rows if np.isfinite(r['log_z']) and not r['log_z_err'] <= tol}
    budgets = sorted({r['budget'] for r in ok if r['budget']})
    names = [n for n in ('is', 'ais', 'reverse ais', 'annealed nce') if any(r['estimator'] == n for r in ok)]
    err = lambda n, b, **kw: [r['log_z_hat'] - r['log_z'] for r in ok if r['estimator'] == n and r['budget'] == b
                              and all(r[k] == v for k, v in kw.items())]
    head = lambda first, cols: f'| {first} | ' + ' | '.join(cols) + ' |\n|' + '---|' * (len(cols) + 1)
    cols = [f'{b:.0e}' for b in budgets]
    text = [f'**|error| of log Z, nats: median [90th percentile] over the {len(kept)} models scored**', '', head('estimator', cols)]
    text += [f'| `{n}` | ' + ' | '.join(f'{num(np.median(np.abs(e)))} [{num(np.percentile(np.abs(e), 90))}]' if (e := err(n, b)) else ''
                                         for b in budgets) + ' |' for n in names]
    if c := err('nce c', 0):
        text += ['', f'NCE\'s own c, which costs no evaluation once trained, on the {len(c)} models that learn one: median '
                 f'|c - log Z| {num(np.median(np.abs(c)))} [{num(np.percentile(np.abs(c), 90))}], mean error {num(np.mean(c), 3, "+")}.']
    text += ['', '**Mean error of log Z (estimate - truth) ± its standard error over the models, nats**', '', head('estimator', cols)]
    text += [f'| `{n}` | ' + ' | '.join(f'{num(np.mean(e), 3, "+")} ± {num(np.std(e, ddof=1) / np.sqrt(len(e)))}' if len(e := err(n, b)) > 1
                                         else '' for b in budgets) + ' |' for n in names]
    text += ['', '**The sandwich, one run of each: forward AIS ≤ log Z ≤ reverse AIS, forward above reverse, and the median '
             'of reverse - forward**', '', head('budget', ['contains log Z', 'forward above reverse', 'reverse - forward (nats)'])]
    for b in budgets:
        hat = {(key(r), r['estimator']): r['log_z_hat'] for r in ok if r['budget'] == b}
        pairs = [(hat[k, 'ais'], hat[k, 'reverse ais'], r['log_z']) for r in ok for k in [key(r)]
                 if r['estimator'] == 'ais' and r['budget'] == b and (k, 'reverse ais') in hat]
        if pairs:
            text.append(f'| {b:.0e} | {np.mean([lo <= t <= hi for lo, hi, t in pairs]):.0%} of {len(pairs)} | '
                        f'{np.mean([lo > hi for lo, hi, _ in pairs]):.0%} | {num(np.median([hi - lo for lo, hi, _ in pairs]), 3, "+")} |')
    if 1e4 in budgets:
        text += ['', '**Median |error| at 10^4 evaluations (AIS: K = 100, M = 100), by the training method**', '',
                 head('method', ['models'] + [f'`{n}`' for n in names])]
        text += [f'| `{m}` | {len({key(r) for r in ok if r["method"] == m})} | ' + ' | '.join(
            num(np.median(np.abs(e))) if (e := err(n, 1e4, method=m)) else '' for n in names) + ' |' for m in sorted({r['method'] for r in ok})]
    text += ['', f'{len(models)} models, {len(kept)} scored. Not normalisable: {seeds_of(infinite)}. Left out because the '
             f'quadrature\'s own bound on log Z is above {tol:g} nats, so no estimate can be scored against it: '
             f'{seeds_of(unbounded)}' + (f' (bounds {min(unbounded.values()):.2g} to {max(unbounded.values()):.2g} nats)' if unbounded else '') + '.']
    return '\n'.join(text)


def seeds_of(models):
    """(dataset, method, seed) triples as a phrase: `cd` on moons (seeds 0-4), rings (seed 2); or 'none'."""
    by = {}
    for d, m, s in sorted(models):
        by.setdefault(m, {}).setdefault(d, []).append(s)
    return '; '.join(f'`{m}` on ' + ', '.join(f'{d} (seed{"s" if len(s) > 1 else ""} {", ".join(map(str, s))})' for d, s in ds.items())
                     for m, ds in by.items()) or 'none'


def footer(path, command, wall):
    """The line under a table that names the command that made its rows and its time: this run's, or for a merge or
    a redraw the one already in the document, since the time of the run that made the rows stays."""
    if wall:
        return f'Regenerated by `{command}` in {wall}.'
    import re
    return next(iter(re.findall(f'Regenerated by `{re.escape(command)}` in [^\n]*', open(path).read())), '')


def put(path, name, text):
    """Replace the text between <!-- name:start --> and <!-- name:end --> in path, if both are there."""
    doc = open(path).read()
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    if start in doc and end in doc:
        head, rest = doc.split(start)
        files.write_text(path, head + start + '\n' + text + '\n' + end + rest.split(end)[1])
