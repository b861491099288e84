"""Regenerate the README's results over several seeds, in parallel: NCE (the original defaults, other noises, the
strong preset on its own 100000 samples and on the baselines' 10000) against exact maximum likelihood, a Gaussian
mixture and a kernel density estimate, and the estimator benchmark; every number exact (quadrature, true
densities), each run scored by the mean KL of its last 5 epochs.

Each job is kept on disk as it finishes (results-jobs/), so a sweep stopped at any moment loses only the jobs in
flight: the same command, run again, skips those done and runs the rest. The tables are printed; --docs also puts
them into README.md and docs/ and redraws the figures.

$ python results.py --docs                            # every dataset, 5 seeds: results.csv, README.md, the figure
$ python results.py --methods nce-fit nce-gmm         # the noise-family table (docs/strong-preset.md), same CSV
$ python results.py --methods strong-nobase strong-10k-nobase   # the strong preset without its base (same doc)
$ python results.py --methods nce nce-flow nce-flow-narrow fce mle strong-10k strong-10k-flow strong-10k-fce
                                                      # learned noise: the flow and FCE tables (docs/flow.md)
$ python results.py --methods silu-nce silu-rank silu-cnce silu-ence silu-is silu-mle silu-sm silu-dsm silu-cd silu-pcd
                                                      # the estimator benchmark on the smooth network (docs/estimators.md)
$ python results.py --methods nce rank cnce ence is mle dsm cd pcd   # the same on the original LeakyReLU network
$ python results.py --shard 0/3 --out a.csv           # a third of the jobs, e.g. on another machine
$ python results.py --merge a.csv b.csv c.csv --docs  # assemble results.csv and the tables from the shards
$ python results.py --scheduler tcp://host:8786       # the jobs on a Dask cluster (pip install -r requirements-cluster.txt)
"""
import contextlib
import io
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch

import cli
import cluster
import files
import resume
import seeds
import sweep
import train
from baselines import gmm, kde
from data import DATASETS, sample_2d_data
from evaluate import PLOT_LIM, evaluate_flow, grid, log_p_on
from model import EBM
from sweep import CURVE_COLUMNS, combine_curves, curves_path, read_curves
from tables import LAST, base_table, best_table, comparison_rows, estimator_tables, flow_tables, footer, noise_table, put, results_table, short, with_curves

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
    'strong-nobase': dict(preset='strong', noise='gaussian', base=0.0),     # as it was, without its base (docs/strong-preset.md)
    'strong-10k-nobase': dict(preset='strong', noise='gaussian', epoch=FAIR_EPOCHS, base=0.0),
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
# The estimator benchmark (docs/estimators.md): every estimator at the original budget with the settings tune.py chose
# on validation seeds (methods.TUNED, train.py's defaults for the competitors; NCE's choice is NCE_TUNED, since its
# defaults stay the original's), on the smooth network (SiLU at the original widths) and on the original LeakyReLU
# network, where sm cannot run. Each job is evaluated every CURVE_EVERY epochs and at its last LAST, for its curve.
ESTIMATORS = ('nce', 'rank', 'cnce', 'ence', 'is', 'mle', 'sm', 'dsm', 'cd', 'pcd')
NCE_TUNED = dict(nu=4)
METHODS.update({m: dict(preset='original', method=m) for m in ESTIMATORS if m not in ('nce', 'mle', 'sm')})
METHODS.update({f'silu-{m}': dict(preset='original', method=m, act='silu', **(NCE_TUNED if m == 'nce' else {})) for m in ESTIMATORS})
METHODS['sm'] = dict(preset='original', method='sm', act='silu')    # = silu-sm: the models of logz.py's benchmark
SILU = tuple(f'silu-{m}' for m in ESTIMATORS)
LEAKY = tuple(m for m in ESTIMATORS if m != 'sm')
CURVE_EVERY = 5
# seconds a job on one thread, as measured (the silu- ones by tune.py's sweep): the longest go first
COST = {'strong': 37, 'strong-nobase': 45, 'mle': 45, 'pcd': 36, 'cd': 34, 'sm': 30, 'dsm': 16, 'strong-10k-fce': 20, 'strong-10k-flow': 16,
        'fce': 14, 'nce-flow': 9, 'nce-flow-narrow': 9, 'strong-10k': 8, 'kde': 7, 'gmm': 4, 'silu-mle': 36, 'silu-cd': 28, 'silu-is': 27,
        'silu-sm': 21, 'silu-pcd': 17, 'silu-dsm': 10, 'silu-nce': 9, 'silu-rank': 9}
COLUMNS = ('dataset', 'method', 'seed', 'nll', 'kl', 'c', 'log_z', 'gap', 'H', 'seconds',
           'samples', 'epochs', 'steps', 'preset', 'noise', 'k', 'bandwidth', 'flow_kl', 'flow_steps', 'flow_mle_kl')
N_IMG = 160     # the figure's grid


# ----------------------------------------------------------------------------------------------------
# one job: a method on a dataset with a seed

def job(dataset, method, seed, cfg):
    """Train and score one (dataset, method, seed) on one thread. Seed s draws the training data, the initialisation,
    the data order and the noise from its own streams (seeds.py) as `python train.py --seed s` does; every method of a
    seed sees the same training data and is scored on the same held-out set. Returns the row, for seed 0 the density on
    the figure's grid, and for an estimator its curve: a row per epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_job(dataset, method, seed, cfg)
    finally:
        torch.set_num_threads(threads)      # as it was, where the job ran in this process (--jobs 1)


def run_job(dataset, method, seed, cfg):
    t = start = time.perf_counter()
    spec = METHODS[method]
    n = cfg['strong_samples'] if method in ('strong', 'strong-nobase') else cfg['samples']
    streams = seeds.streams(seed)
    x_train = sample_2d_data(dataset, n, seeds.generator(streams['data']))
    x_test, H = train.held_out(dataset, streams['test'])
    row = dict(dataset=dataset, method=method, seed=seed, H=H, samples=n)
    energy, curve = None, []
    if 'preset' in spec:
        preset = train.PRESETS[spec['preset']]
        epochs = max(1, round(spec.get('epoch', preset['epoch']) * cfg['budget']))
        curved = method in SILU + LEAKY
        keep = os.path.join(cfg['keep'], f'{dataset}_{method}_{seed}.pth.tar') if cfg.get('keep') else None
        energy, m, history = nce(dataset, seed, spec, n, epochs, every=CURVE_EVERY if curved else 0, keep=keep)
        curve = curve_rows(dataset, method, seed, history)      # its evaluated epochs: the last LAST, and a curve's
        t += sum(h['seconds'] - h['train_seconds'] for h in history[:-1])     # its time as evaluated once, at the end
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
    return {k: row.get(k) for k in COLUMNS}, image, curve, time.perf_counter() - start     # the last: as it ran


def nce(dataset, seed, spec, n, epochs, every, keep=None):
    """`python train.py --dataset D --seed S --preset P [--FLAG V for the rest of spec]`, in this process, evaluated
    exactly at each of its last LAST epochs and, for a curve, every `every` epochs before them (0: not before): the
    run's first epochs, then a --resume for the last LAST, which trains as one run would (the evaluation draws
    nothing). keep: where to copy its checkpoint, or None."""
    head = max(0, epochs - LAST)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, 'nce.pth.tar')
        argv = ['--dataset', dataset, '--seed', str(seed), '--preset', spec['preset'], '--samples', str(n), '--no-plot', '--ckpt', ckpt]
        for k, v in spec.items():
            argv += [f'--{k.replace("_", "-")}', str(v)] if k not in ('preset', 'epoch') else []
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if head:
                train.main(train.get_args(argv + ['--epoch', str(head), '--eval-every', str(every)]))
            train.main(train.get_args(argv + ['--epoch', str(epochs - head), '--eval-every', '1'] + ['--resume'] * bool(head)))
        ck = resume.load(ckpt)
        if keep:
            files.atomic_write(keep, lambda tmp: shutil.copyfile(ckpt, tmp))
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    last = ck['history'][-1]
    return energy, {k: last.get(k) for k in ('nll', 'c', 'log_z', 'flow_kl', 'flow_steps')}, ck['history']


def curve_rows(dataset, method, seed, history):
    """A job's evaluated epochs: at each, its exact KL, its |c - log Z| where it learns c, and the training seconds so
    far, the steps alone (train.py's train_seconds: no evaluation, frame or checkpoint)."""
    seconds, out = 0.0, []
    for h in history:
        seconds += h['train_seconds']
        if h['kl'] is not None:
            out.append(dict(dataset=dataset, method=method, seed=seed, epoch=h['epoch'], train_seconds=seconds, kl=h['kl'],
                            gap=abs(h['c'] - h['log_z']) if h['c'] is not None else None))
    return out


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


# ----------------------------------------------------------------------------------------------------
# results.csv: a row per (dataset, method, seed)

def write_csv(rows, path, columns=COLUMNS):
    rows = sorted(rows, key=lambda r: (DATASETS.index(r['dataset']), list(METHODS).index(r['method']), int(r['seed']), r.get('epoch', 0)))
    files.write_text(path, sweep.csv_text(rows, columns))


def read_csv(path):
    """The rows of a results CSV, numbers as numbers and blanks as None."""
    rows = sweep.read_rows(path, ('seed', 'samples', 'epochs', 'steps', 'k', 'flow_steps'), ('dataset', 'method', 'preset', 'noise'))
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


def write_docs(rows, ran, wall=None, curves=(), write=True):
    """The tables of the methods that ran (`ran`), from every row: the results table and the comparison rows if a
    method of the results table ran, the noise table if a noise did, the flow tables if a flow did, and each
    estimator table, with its figure of the curves, if one of its estimators did. Returns them as text and, with
    `write`, puts each in its place in README.md and docs/ and draws the figures. A table's time (`wall`) is this
    run's only if the run made all of its methods; otherwise the one in the document stays."""
    save = put if write else lambda *a: None
    seeds = sorted({r['seed'] for r in rows})
    seeds = f'{seeds[0]} to {seeds[-1]}' if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1 else str(seeds)
    readme, text = os.path.join(ROOT, 'README.md'), ''
    scored = with_curves(rows, curves)
    if set(ran) & set(DEFAULT_METHODS):
        text = results_table(scored, seeds, STRONG_SAMPLES, BASE_SAMPLES, FAIR_EPOCHS)
        text += '\n\n' + footer(readme, 'python results.py', wall if set(DEFAULT_METHODS) <= set(ran) else None)
        save(readme, 'results', text)
        save(os.path.join(ROOT, 'docs/strong-preset.md'), 'strong', comparison_rows(scored))
    if set(ran) & {'strong', 'strong-10k', 'strong-nobase', 'strong-10k-nobase'} and any(r['method'] == 'strong-nobase' for r in rows):
        text += '\n\n' + base_table(rows)
        save(os.path.join(ROOT, 'docs/strong-preset.md'), 'base', base_table(rows))
    if set(ran) & {'nce-fit', 'nce-gmm'}:
        text += '\n\n' + noise_table(scored)
        save(os.path.join(ROOT, 'docs/strong-preset.md'), 'noise', noise_table(scored))
    if set(ran) & {'nce-flow', 'fce', 'strong-10k-fce'} and any(r['method'] == 'fce' for r in rows):
        text += '\n\n' + flow_tables(rows)
        save(os.path.join(ROOT, 'docs/flow.md'), 'flow', flow_tables(rows))
    doc = os.path.join(ROOT, 'docs/estimators.md')
    for block, table, reference, efficient, image in (('benchmark', SILU, 'silu-nce', 'silu-mle', 'images/estimators.png'),
                                                      ('leaky-benchmark', LEAKY, 'nce', 'mle', 'images/estimators-leaky.png')):
        if set(ran) & set(table) - set(DEFAULT_METHODS) and any(r.get('kl5') is not None for r in scored if r['method'] in table):
            made = estimator_tables(scored, table, reference, efficient, short) + '\n\n' + footer(doc, 'python results.py --methods ' + ' '.join(table), wall if set(table) <= set(ran) else None)
            text += '\n\n' + made
            save(doc, block, made)
            if block == 'benchmark':
                save(readme, 'best', best_table(scored, table, reference, efficient, short))
            if write:
                import plot  # matplotlib, only where a figure is drawn
                plot.estimators_figure([c for c in curves if c['method'] in table], table, os.path.join(ROOT, image), short, order=ESTIMATORS)
    return text


# ----------------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=DATASETS, metavar='DATASET', help='datasets to run, of ' + ' '.join(DATASETS))
    p.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS), choices=list(METHODS), metavar='METHOD',
                   help=f'methods to run (default: {" ".join(DEFAULT_METHODS)}), of: {" ".join(METHODS)}')
    p.add_argument('--seeds', type=int, default=5, help='seeds 0..N-1, each a run of every method')
    p.add_argument('--jobs', type=int, default=os.cpu_count(), help='jobs in parallel, each on one torch thread')
    p.add_argument('--shard', default='0/1', help='i/N: run only every N-th job, from the i-th (0-based)')
    p.add_argument('--scheduler', metavar='ADDRESS', help='run the jobs on the Dask cluster of this scheduler (e.g. '
                   'tcp://host:8786) through joblib\'s dask backend, as many at once as it has worker threads; needs '
                   'pip install -r requirements-cluster.txt, and the repo on every worker (docs/results.md)')
    p.add_argument('--merge', nargs='+', metavar='CSV', help='assemble these CSVs into --out and the tables; run nothing')
    p.add_argument('--out', help='the CSV to write (default results.csv, or results-<i>-of-<N>.csv for a shard); '
                   'rows already in results.csv are kept unless rerun')
    p.add_argument('--keep', metavar='DIR', help='also keep each trained job\'s last checkpoint in DIR, as '
                   'DATASET_METHOD_SEED.pth.tar (for logz.py --benchmark DIR)')
    p.add_argument('--docs', action='store_true', help='also put the tables in README.md and docs/ and redraw the '
                   'figures (without it, the tables are printed and nothing else is written but the CSVs)')
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
    for path in [args.out, curves_path(args.out)] + ([args.figure, os.path.join(ROOT, 'README.md')] if args.docs else []):
        if problem := files.unwritable(os.path.dirname(os.path.abspath(path))) or files.not_a_file(path):
            p.error(f'cannot write {path}: {problem}')
    if args.keep and (problem := files.unwritable(args.keep if os.path.isdir(args.keep) else os.path.dirname(os.path.abspath(args.keep)))):
        p.error(f'argument --keep: cannot write {args.keep}: {problem}')
    if args.scheduler and (problem := cluster.problem(args.scheduler)):
        p.error(f'argument --scheduler: {problem}')
    for path in args.merge or []:
        if not os.path.isfile(path):        # a FIFO or /dev/stdin would block the read
            p.error(f'argument --merge: {path} is not a regular file')
        try:
            read_csv(path)
            read_curves(curves_path(path))
        except (OSError, ValueError, KeyError) as e:
            p.error(f'argument --merge: cannot read {path}: {e}')
    return args


def main(args):
    t0 = time.time()
    docs = ', the tables in README.md and docs/' if args.docs else ''
    if args.merge:
        print(f'writing {args.out} and {curves_path(args.out)}{docs}')
        rows = combine(*(read_csv(f) for f in args.merge))
        write_csv(rows, args.out)
        curves = combine_curves(*(read_curves(curves_path(f)) for f in args.merge))
        if curves:
            write_csv(curves, curves_path(args.out), CURVE_COLUMNS)
        print(f'{len(rows)} rows from {len(args.merge)} files: {args.out}' + (f', curves {curves_path(args.out)}' if curves else ''))
        print(write_docs(rows, {r['method'] for r in rows}, curves=curves, write=args.docs))
        return
    cfg = dict(samples=args.samples, strong_samples=args.strong_samples, budget=args.budget, gmm_max_k=args.gmm_max_k,
               keep=args.keep and os.path.abspath(args.keep))
    jobs = [(d, m, s) for d in args.datasets for m in METHODS if m in args.methods for s in range(args.seeds)]
    i, n = args.shard
    jobs = sorted(jobs[i::n], key=lambda j: -COST.get(j[1], 3))    # the longest first, so the last ones are short
    journal = sweep.journal(args.out, cfg)
    done, before = sweep.finished(journal, jobs)       # those an earlier, stopped run of this sweep finished
    todo = [j for j in jobs if j not in done]
    from tqdm import tqdm
    print(f'{len(jobs)} jobs; writing {args.out} and {curves_path(args.out)}' + (f'{docs}, {args.figure}' if n == 1 and docs else ''))
    if done:
        print(f'{len(done)} of them finished in an earlier run of this sweep ({journal}): skipped')
    results = list(done.values())
    for result in tqdm(cluster.run(job, [(*j, cfg) for j in todo], args.jobs, args.scheduler), total=len(todo), unit='job', dynamic_ncols=True):
        row = result[0]
        sweep.record(journal, (row['dataset'], row['method'], row['seed']), result, before + time.time() - t0)
        results.append(result)
    wall = before + time.time() - t0
    rows, images, curves, spent = [], {}, [], {}
    for row, image, curve, seconds in results:
        rows.append(row)
        spent.setdefault(row['method'], []).append(seconds)
        curves += curve
        if image is not None:
            images[row['dataset'], row['method']] = image
    old = read_csv(args.out) if os.path.isfile(args.out) and n == 1 else []
    write_csv(combine(old, rows), args.out)
    if curves:
        curves = combine_curves(read_curves(curves_path(args.out)) if n == 1 else [], curves)
        write_csv(curves, curves_path(args.out), CURVE_COLUMNS)
    sweep.close(journal)
    for m, s in spent.items():     # as they ran: a curve's evaluation at every epoch included
        print(f'{m}: {len(s)} jobs, {sum(s) / 60:.1f} job-minutes, {np.mean(s):.1f} s each')
    print(f'{len(rows)} jobs in {wall / 60:.1f} minutes on {args.jobs} workers: {args.out}')
    if n == 1:
        print(write_docs(combine(old, rows), args.methods, f'{wall / 60:.1f} minutes ({len(rows)} jobs on {args.jobs} '
                                                         f'workers, {os.cpu_count()} CPU cores)', curves, write=args.docs))
        if args.docs:
            import plot
            if plot.results_figure(images, args.figure, N_IMG):
                print(f'figure: {args.figure}')

if __name__ == '__main__':
    main(get_args())
