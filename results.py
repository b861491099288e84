"""Regenerate the README's results over several seeds, in parallel: NCE (the original defaults, other noises, the
strong preset on its own 100000 samples and on the baselines' 10000) against exact maximum likelihood, a Gaussian
mixture and a kernel density estimate, every number exact (quadrature, true densities).

$ python results.py                                   # every dataset, 5 seeds: results.csv, README.md, the figure
$ python results.py --methods nce-fit nce-gmm         # the noise-family table (docs/strong-preset.md), same CSV
$ python results.py --methods nce nce-flow nce-flow-narrow fce mle strong-10k strong-10k-flow strong-10k-fce
                                                      # learned noise: the flow and FCE tables (docs/flow.md)
$ python results.py --shard 0/3 --out a.csv           # a third of the jobs, e.g. on another machine
$ python results.py --merge a.csv b.csv c.csv         # assemble results.csv and the tables from the shards
"""
import argparse
import contextlib
import csv
import io
import math
import os
import tempfile
import time

import numpy as np
import torch

import files
import resume
import seeds
import train
from data import DATASETS, log_density, sample_2d_data
from evaluate import PLOT_LIM, evaluate_flow, grid, log_p_on
from model import EBM

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_SAMPLES, STRONG_SAMPLES = train.PRESETS['original']['samples'], train.PRESETS['strong']['samples']
# the strong preset on the baselines' 10000 samples: twice its 16 epochs (1280 steps, a fifth of its steps on 100000).
# As many steps as on 100000 (157 epochs) would cost 37 s a job and put 5 seeds over 30 minutes (docs/results.md)
FAIR_EPOCHS = 32
METHODS = {     # name: how it is trained; NCE methods are `python train.py` runs with these flags
    'nce': dict(preset='original', noise='gaussian'),
    'nce-fit': dict(preset='original', noise='fit'),
    'nce-gmm': dict(preset='original', noise='gmm'),
    'strong': dict(preset='strong', noise='gaussian'),     # on --strong-samples, the rest on --samples
    'strong-10k': dict(preset='strong', noise='gaussian', epoch=FAIR_EPOCHS),
    'nce-flow': dict(preset='original', noise='flow'),              # a flow fitted by MLE, fixed, mixed with N(0, 4I)
    'nce-flow-narrow': dict(preset='original', noise='flow', flow_broad=0),     # the same flow alone
    'fce': dict(preset='original', noise='fce'),                    # the flow trained against the EBM
    'strong-10k-flow': dict(preset='strong', noise='flow', epoch=FAIR_EPOCHS),
    'strong-10k-fce': dict(preset='strong', noise='fce', epoch=FAIR_EPOCHS),
    'mle': dict(preset='original', method='mle'),     # exact maximum likelihood, the same network, data and steps
    'gmm': dict(),                      # k = 1..--gmm-max-k (30) by BIC
    'kde': dict(),
}
DEFAULT_METHODS = ('nce', 'strong', 'strong-10k', 'mle', 'gmm', 'kde')
COST = {'strong': 37, 'mle': 27, 'strong-10k-fce': 20, 'strong-10k-flow': 16, 'fce': 14, 'nce-flow': 9, 'nce-flow-narrow': 9,
        'strong-10k': 8, 'kde': 7, 'gmm': 4}     # seconds a job on one thread: the longest go first
COLUMNS = ('dataset', 'method', 'seed', 'nll', 'kl', 'c', 'log_z', 'gap', 'H', 'seconds',
           'samples', 'epochs', 'steps', 'preset', 'noise', 'k', 'bandwidth', 'flow_kl', 'flow_steps', 'flow_mle_kl')
N_IMG = 160     # the figure's grid


# ----------------------------------------------------------------------------------------------------
# one job: a method on a dataset with a seed

def job(dataset, method, seed, cfg):
    """Train and score one (dataset, method, seed) on one thread. Seed s draws the training data, the initialisation,
    the data order and the noise from its own streams (seeds.py) as `python train.py --seed s` does; every method of a
    seed sees the same training data and is scored on the same held-out set. Returns the row and, for seed 0, the density on the figure's grid."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_job(dataset, method, seed, cfg)
    finally:
        torch.set_num_threads(threads)      # as it was, where the job ran in this process (--jobs 1)


def run_job(dataset, method, seed, cfg):
    t = time.perf_counter()
    spec = METHODS[method]
    n = cfg['strong_samples'] if method == 'strong' else cfg['samples']
    streams = seeds.streams(seed)
    x_train = sample_2d_data(dataset, n, seeds.generator(streams['data']))
    x_test = sample_2d_data(dataset, train.TEST_SAMPLES, seeds.generator(streams['test']))
    H = -log_density(dataset, x_test).double().mean().item()
    row = dict(dataset=dataset, method=method, seed=seed, H=H, samples=n)
    energy = None
    if 'preset' in spec:
        preset = train.PRESETS[spec['preset']]
        epochs = max(1, round(spec.get('epoch', preset['epoch']) * cfg['budget']))
        energy, m = nce(dataset, seed, spec, n, epochs)
        row.update(m, epochs=epochs, steps=epochs * math.ceil(n / preset['batch']), preset=spec['preset'], noise=spec.get('noise'))
        if spec.get('noise') == 'fce':      # the reference for FCE's flow, not part of its time: the same flow fitted by MLE for as many steps
            reference = time.perf_counter()
            row['flow_mle_kl'] = flow_mle(x_train, x_test, H, streams, row['flow_steps'], preset['batch'])
            t += time.perf_counter() - reference
    elif method == 'gmm':
        row['nll'], row['k'] = gmm(x_train.numpy(), x_test.numpy(), cfg['gmm_max_k'], streams['mixture'])
    else:
        row['nll'], kd = kde(x_train.numpy(), x_test.numpy())
        row['bandwidth'] = float(kd.bandwidth)
    row['nll'] = float(row['nll'])
    row['kl'] = row['nll'] - H
    if row.get('c') is not None:
        row['gap'] = abs(row['c'] - row['log_z'])
    row['seconds'] = time.perf_counter() - t
    image = None
    if seed == 0:
        window = grid(PLOT_LIM, N_IMG)
        if energy is not None:      # the normalised model, exp(-f_θ - log Z)
            image = (log_p_on(energy, window) + energy.c.detach() - row['log_z']).exp().view(N_IMG, N_IMG).numpy()
        elif method == 'kde':
            image = np.exp(kd.score_samples(window.numpy())).reshape(N_IMG, N_IMG)
    return {k: row.get(k) for k in COLUMNS}, image


def nce(dataset, seed, spec, n, epochs):
    """`python train.py --dataset D --seed S --preset P [--method M] [--noise Q]`, in this process, evaluated exactly at
    its last epoch (the evaluation draws nothing, so the training is the same as with an evaluation every epoch)."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, 'nce.pth.tar')
        argv = ['--dataset', dataset, '--seed', str(seed), '--preset', spec['preset'], '--samples', str(n),
                '--epoch', str(epochs), '--eval-every', str(epochs), '--no-plot', '--ckpt', ckpt]
        for k in ('method', 'noise', 'flow_broad'):
            argv += [f'--{k.replace("_", "-")}', str(spec[k])] if k in spec else []
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train.main(train.get_args(argv))
        ck = resume.load(ckpt)
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    last = ck['history'][-1]
    return energy, {k: last.get(k) for k in ('nll', 'c', 'log_z', 'flow_kl', 'flow_steps')}


def flow_mle(x_train, x_test, H, streams, steps, batch):
    """KL(p_data || q_φ) of train.py's flow, fitted by maximum likelihood for `steps` steps as --noise flow fits it:
    its weights from the seed's 'init' stream, its batches from the 'train' stream."""
    from flow import LR, fit
    from noise import make_noise
    seeds.seed_global(streams['init'])
    start = make_noise('flow', x_train).flow
    seeds.seed_global(streams['train'])
    flow = fit(start, x_train, steps, batch, LR)
    return evaluate_flow(flow, x_test, H)['flow_kl']


def gmm(x_train, x_test, max_k, mixture_seed):
    """A Gaussian mixture with full covariances, its number of components k = 1..max_k chosen by BIC; k-means starts
    it from the seed's 'mixture' stream."""
    from sklearn.mixture import GaussianMixture
    fits = [GaussianMixture(k, covariance_type='full', random_state=mixture_seed).fit(x_train) for k in range(1, max_k + 1)]
    best = min(fits, key=lambda g: g.bic(x_train))
    return -best.score(x_test), best.n_components


def kde(x_train, x_test):
    """A Gaussian KDE, its bandwidth chosen among 12 from 0.02 to 0.5 by 3-fold cross-validation. Each density is
    summed over the tree to a relative error of 1e-6 (rtol), 4x faster than exactly and within 1e-6 nats of it."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
    search = GridSearchCV(KernelDensity(rtol=1e-6), {'bandwidth': np.geomspace(0.02, 0.5, 12)}, cv=3).fit(x_train)
    return -search.best_estimator_.score_samples(x_test).mean(), search.best_estimator_


# ----------------------------------------------------------------------------------------------------
# results.csv: a row per (dataset, method, seed)

def key(row):
    return (DATASETS.index(row['dataset']), list(METHODS).index(row['method']), int(row['seed']))


def write_csv(rows, path):
    rows = sorted(rows, key=key)
    text = io.StringIO()
    w = csv.writer(text, lineterminator='\n')
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(['' if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in COLUMNS])
    files.write_text(path, text.getvalue())


def read_csv(path):
    """The rows of a results CSV, numbers as numbers and blanks as None."""
    def value(k, v):
        if v == '':
            return None
        if k in ('seed', 'samples', 'epochs', 'steps', 'k', 'flow_steps'):
            return int(v)
        return v if k in ('dataset', 'method', 'preset', 'noise') else float(v)
    with open(path, newline='') as f:
        rows = [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]
    bad = [r for r in rows if r.get('dataset') not in DATASETS or r.get('method') not in METHODS]
    if not rows or set(rows[0]) != set(COLUMNS) or bad:
        raise ValueError(f'{path} is not a results CSV of this repo')
    return rows


def combine(*tables):
    """Rows of several tables, later ones replacing earlier ones of the same (dataset, method, seed)."""
    out = {}
    for rows in tables:
        out.update({(r['dataset'], r['method'], r['seed']): r for r in rows})
    return list(out.values())


# ----------------------------------------------------------------------------------------------------
# tables: mean ± sd over seeds; a difference is claimed where a paired t-test across seeds supports it

def cells(rows, dataset, method, col):
    return [r[col] for r in sorted(rows, key=key) if r['dataset'] == dataset and r['method'] == method and r[col] is not None]


def mean_sd(values, digits=3):
    if not values:
        return ''
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def paired(rows, dataset, a, b, col='kl'):
    """Mean and sd of a − b over the seeds both have, and whether a paired t-test (two-sided, 95%) tells them apart."""
    from scipy import stats
    va = {r['seed']: r[col] for r in rows if r['dataset'] == dataset and r['method'] == a}
    vb = {r['seed']: r[col] for r in rows if r['dataset'] == dataset and r['method'] == b}
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


def results_table(rows, seeds):
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
            line += [mean_sd(cells(rows, d, m, 'kl'))] + ([mean_sd(cells(rows, d, m, 'gap'))] if m in ('nce', 'strong') else [])
            line += [f'{np.mean(cells(rows, d, m, "seconds")):.0f} s'] if m == 'strong' else []
        table.append('| ' + ' | '.join(line) + ' |')
    table += ['', f'KL = test NLL − H and gap = |c − log Z| (nats), mean ± sd over seeds {seeds} (`train.py --seed s`). '
              f'strong draws {STRONG_SAMPLES} samples; the rest, strong 10k ({FAIR_EPOCHS} epochs) too, the seed\'s '
              f'{BASE_SAMPLES}. wall: one thread. Claims need a paired t-test across seeds (95%; '
              '[docs/results.md](docs/results.md)):', '']
    for a, b, what in (('nce', 'mle', 'NCE against exact MLE, same network and steps'),
                       ('strong-10k', 'gmm', 'Strong 10k against the GMM'), ('strong-10k', 'kde', 'Strong 10k against the KDE'),
                       ('strong', 'strong-10k', 'Strong on 100000 samples against 10000')):
        if has(a) and has(b):
            table.append(f'- {what}: KL {verdict(rows, a, b)}.')
    return '\n'.join(table)


def comparison_rows(rows):
    """The strong preset against the baselines, dataset by dataset: paired KL differences, mean ± sd over seeds."""
    table = ['| dataset | strong (100000) − GMM | strong (10000) − GMM | strong (10000) − KDE |', '|---|---|---|---|']
    for d in DATASETS:
        out = []
        for a, b in (('strong', 'gmm'), ('strong-10k', 'gmm'), ('strong-10k', 'kde')):
            p = paired(rows, d, a, b)
            out.append('' if p is None else f'{p[0]:+.4f} ± {p[1]:.4f}' + (' *' if p[2] else ''))
        if any(out):
            table.append(f'| {d} | ' + ' | '.join(out) + ' |')
    table += ['', 'KL differences in nats, paired by seed (mean ± sd); negative: the strong preset is closer to the '
              'data. * marks a difference a paired t-test across seeds finds (two-sided, 95%).']
    return '\n'.join(table)


def noise_table(rows):
    methods = [m for m in ('nce', 'nce-fit', 'nce-gmm') if any(r['method'] == m for r in rows)]
    shown = [d for d in DATASETS if any(r['dataset'] == d and r['method'] in methods for r in rows)]
    table = ['| noise | ' + ' | '.join(shown) + ' |', '|---|' + '---|' * len(shown)]
    for m in methods:
        line = []
        for d in shown:
            p = paired(rows, d, m, 'nce') if m != 'nce' else None
            line.append(mean_sd(cells(rows, d, m, 'kl')) + (' *' if p and p[2] else ''))
        table.append(f'| `{METHODS[m]["noise"]}` | ' + ' | '.join(line) + ' |')
    table += ['', 'KL (nats) after the default 50 epochs (ν = 1), mean ± sd over seeds. * marks a noise whose KL differs '
              'from the original N(0, 4I) by a paired t-test across seeds (two-sided, 95%).']
    for m in methods[1:]:
        table.append(f'- `{METHODS[m]["noise"]}` against `gaussian`: KL {verdict(rows, m, "nce")}.')
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


def put(path, name, text):
    """Replace the text between <!-- name:start --> and <!-- name:end --> in path, if both are there."""
    doc = open(path).read()
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    if start in doc and end in doc:
        head, rest = doc.split(start)
        files.write_text(path, head + start + '\n' + text + '\n' + end + rest.split(end)[1])


def write_docs(rows, ran, wall=None):
    """The tables of the methods that ran (`ran`), from every row: the results table and the comparison rows if a
    method of the results table ran, the noise table if a noise did."""
    seeds = sorted({r['seed'] for r in rows})
    seeds = f'{seeds[0]} to {seeds[-1]}' if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1 else str(seeds)
    text = ''
    if set(ran) & set(DEFAULT_METHODS):
        footer = f'Regenerated by `python results.py` in {wall}.' if wall else None
        if footer is None:      # a merge, or tables redrawn from the CSV: the time of the run that made the rows stays
            import re
            footer = next(iter(re.findall(r'Regenerated by `python results.py` in [^\n]*', open(os.path.join(ROOT, 'README.md')).read())), '')
        text = results_table(rows, seeds) + ('\n\n' + footer if footer else '')
        put(os.path.join(ROOT, 'README.md'), 'results', text)
        put(os.path.join(ROOT, 'docs/strong-preset.md'), 'strong', comparison_rows(rows))
    if set(ran) & {'nce-fit', 'nce-gmm'}:
        text += '\n\n' + noise_table(rows)
        put(os.path.join(ROOT, 'docs/strong-preset.md'), 'noise', noise_table(rows))
    if set(ran) & {'nce-flow', 'fce', 'strong-10k-fce'} and any(r['method'] == 'fce' for r in rows):
        text += '\n\n' + flow_tables(rows)
        put(os.path.join(ROOT, 'docs/flow.md'), 'flow', flow_tables(rows))
    return text


def figure(rows, images, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = [d for d in DATASETS if all((d, m) in images for m in ('nce', 'strong', 'mle', 'kde'))]
    if not shown:
        return False
    window = grid(PLOT_LIM, N_IMG)
    fig, axs = plt.subplots(len(shown), 5, figsize=(10, 2 * len(shown)), squeeze=False)
    for i, d in enumerate(shown):
        ims = [log_density(d, window).exp().view(N_IMG, N_IMG).numpy()] + [images[d, m] for m in ('nce', 'strong', 'mle', 'kde')]
        for j, (im, title) in enumerate(zip(ims, ('truth', 'NCE', 'NCE strong', 'exact MLE', 'KDE'), strict=True)):
            axs[i, j].imshow(im, cmap='jet', origin='lower', extent=(-4, 4, -4, 4))
            axs[i, j].set_axis_off()
            if i == 0:
                axs[i, j].set_title(title)
        axs[i, 0].text(-4.3, 0, d, rotation=90, va='center', ha='right')
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=DATASETS, help='datasets to run')
    p.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS), choices=list(METHODS),
                   help=f'methods to run (default: {" ".join(DEFAULT_METHODS)}; nce-fit and nce-gmm make the noise table)')
    p.add_argument('--seeds', type=int, default=5, help='seeds 0..N-1, each a run of every method')
    p.add_argument('--jobs', type=int, default=os.cpu_count(), help='jobs in parallel, each on one torch thread')
    p.add_argument('--shard', default='0/1', help='i/N: run only every N-th job, from the i-th (0-based)')
    p.add_argument('--merge', nargs='+', metavar='CSV', help='assemble these CSVs into --out and the tables; run nothing')
    p.add_argument('--out', help='the CSV to write (default results.csv, or results-<i>-of-<N>.csv for a shard); '
                   'rows already in results.csv are kept unless rerun')
    p.add_argument('--no-readme', action='store_true', help='leave README.md, docs/ and the figure as they are')
    p.add_argument('--figure', default='images/results.png', help='where to write the density figure (seed 0)')
    # smaller budgets, for tests and quick looks
    p.add_argument('--samples', type=int, default=BASE_SAMPLES, help='training samples of every method but strong')
    p.add_argument('--strong-samples', type=int, default=STRONG_SAMPLES, help='training samples of the strong preset')
    p.add_argument('--budget', type=float, default=1.0, help='fraction of every trained method\'s epochs and steps')
    p.add_argument('--gmm-max-k', type=int, default=30, help='largest number of mixture components tried')
    args = p.parse_args(argv)
    try:
        i, n = (int(v) for v in args.shard.split('/'))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        p.error(f'argument --shard: expected i/N with 0 <= i < N, got {args.shard!r}')
    args.shard = (i, n)
    args.out = args.out or ('results.csv' if n == 1 or args.merge else f'results-{i}-of-{n}.csv')
    if args.seeds < 1:
        p.error(f'argument --seeds: must be at least 1, got {args.seeds}')
    if args.jobs < 1:
        p.error(f'argument --jobs: must be at least 1, got {args.jobs}')
    if not (math.isfinite(args.budget) and 0 < args.budget <= 1):
        p.error(f'argument --budget: must be in (0, 1], got {args.budget}')
    if not 1 <= args.gmm_max_k <= 100:
        p.error(f'argument --gmm-max-k: must be in 1..100, got {args.gmm_max_k}')
    if args.samples < 16 or args.strong_samples < 256:
        p.error('argument --samples: at least 16 (the gmm noise), --strong-samples at least 256 (a strong batch)')
    for path in [args.out] + ([] if args.no_readme else [args.figure, os.path.join(ROOT, 'README.md')]):
        if problem := files.unwritable(os.path.dirname(os.path.abspath(path))) or files.not_a_file(path):
            p.error(f'cannot write {path}: {problem}')
    for path in args.merge or []:
        if not os.path.isfile(path):        # a FIFO or /dev/stdin would block the read
            p.error(f'argument --merge: {path} is not a regular file')
        try:
            read_csv(path)
        except (OSError, ValueError, KeyError) as e:
            p.error(f'argument --merge: cannot read {path}: {e}')
    return args


def main(args):
    t0 = time.time()
    if args.merge:
        rows = combine(*(read_csv(f) for f in args.merge))
        write_csv(rows, args.out)
        print(f'{len(rows)} rows from {len(args.merge)} files: {args.out}')
        if not args.no_readme:
            print(write_docs(rows, {r['method'] for r in rows}))
        return
    cfg = dict(samples=args.samples, strong_samples=args.strong_samples, budget=args.budget, gmm_max_k=args.gmm_max_k)
    jobs = [(d, m, s) for d in args.datasets for m in METHODS if m in args.methods for s in range(args.seeds)]
    i, n = args.shard
    jobs = sorted(jobs[i::n], key=lambda j: -COST.get(j[1], 3))    # the longest first, so the last ones are short
    from joblib import Parallel, delayed
    from tqdm import tqdm
    rows, images = [], {}
    run = Parallel(n_jobs=args.jobs, return_as='generator_unordered')(delayed(job)(*j, cfg) for j in jobs)
    for row, image in tqdm(run, total=len(jobs), unit='job', dynamic_ncols=True):
        rows.append(row)
        if image is not None:
            images[row['dataset'], row['method']] = image
    wall = time.time() - t0
    old = read_csv(args.out) if os.path.isfile(args.out) and n == 1 else []
    write_csv(combine(old, rows), args.out)
    for m in METHODS:
        spent = [r['seconds'] for r in rows if r['method'] == m]
        if spent:
            print(f'{m}: {len(spent)} jobs, {sum(spent) / 60:.1f} job-minutes, {np.mean(spent):.1f} s each')
    print(f'{len(rows)} jobs in {wall / 60:.1f} minutes on {args.jobs} workers: {args.out}')
    if not args.no_readme and n == 1:
        text = write_docs(combine(old, rows), args.methods, f'{wall / 60:.1f} minutes ({len(rows)} jobs on {args.jobs} '
                                                            f'workers, {os.cpu_count()} CPU cores)')
        print(text)
        if figure(rows, images, args.figure):
            print(f'figure: {args.figure}')


if __name__ == '__main__':
    main(get_args())
