"""Choose each estimator's settings on validation seeds that no table reports: every method gets a grid of the same
size (GRIDS, its first configuration what train.py ran before), each configuration is trained on the smooth network
(the original widths with SiLU) on all 8 datasets with seeds 1000 and 1001, and the one of lowest mean exact KL
(the mean of its last 5 epochs, over the whole plane) is chosen. The chosen settings of the competitors are train.py's
defaults (methods.TUNED); NCE's own defaults stay the original's, and its chosen configuration is what the benchmark
runs (results.py).

Each finished job is kept on disk at once (tune-jobs/), so a sweep stopped at any moment loses only the jobs in
flight, and the same command run again skips those done.

$ python tune.py                   # every grid: tune.csv, and the scores and choices printed
$ python tune.py --docs            # also put them into docs/estimators.md
$ python tune.py --merge tune.csv  # the tables again from the CSV, running nothing
"""
import math
import os
import time

import numpy as np

import cli
import cluster
import files
import results
import sweep
from data import DATASETS
from tables import LAST, footer, num, put

ROOT = os.path.dirname(os.path.abspath(__file__))
VALIDATION = (1000, 1001)       # never reported: the tables report seeds 0-4
SIZE = 3                        # configurations a method
GRIDS = {   # method: its configurations, as train.py flags; the first is what the benchmark ran before tuning
    'nce': [dict(nu=1), dict(nu=4), dict(nu=1, noise='fit')],
    'rank': [dict(nu=1), dict(nu=4), dict(nu=16)],
    'cnce': [dict(), dict(cnce_eps=0.1), dict(cnce_eps=0.5)],        # {}: Ceylan & Gutmann's rule for ε
    'ence': [dict(optim='adam'), dict(optim='ngd'), dict(optim='ngd', lr=1e-2)],
    'is': [dict(nu=1), dict(nu=4), dict(nu=16)],
    'mle': [dict(lr=1e-3), dict(lr=3e-3), dict(lr=3e-4)],     # no setting of its own: its learning rate
    'sm': [dict(lr=1e-3), dict(lr=3e-3), dict(lr=3e-4)],
    'dsm': [dict(sigma=0.1), dict(sigma=0.05), dict(sigma=0.3)],
    'cd': [dict(alpha=0.1), dict(alpha=0.01), dict(alpha=0.1, langevin_steps=20)],
    'pcd': [dict(alpha=0.1), dict(alpha=0.01), dict(alpha=0.1, buffer=10000)],
}
COLUMNS = ('dataset', 'method', 'config', 'seed', 'kl5', 'kl', 'seconds', 'note')
COST = {'mle': 27, 'sm': 18, 'pcd': 15, 'cd': 15, 'dsm': 10}      # seconds a job on one thread (SiLU, moons)


def label(config):
    """A configuration as its flags: --nu 4 --noise fit; the defaults for an empty one."""
    return ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in config.items()) or 'the defaults'


def job(dataset, method, config, seed, cfg):
    """Train one configuration on one dataset and seed, on one thread, as results.py trains a job; its KL is the mean of
    its last LAST epochs. A run stopped by a non-finite loss has diverged: its KL is inf. The configuration is run on
    train.py's untuned defaults, so that tune.csv means the same before and after its choice became the defaults."""
    import torch

    import methods
    threads, tuned = torch.get_num_threads(), dict(methods.TUNED)
    torch.set_num_threads(1)
    methods.TUNED.clear()       # each configuration as listed, on train.py's own defaults, whatever tuning chose
    t = time.perf_counter()
    spec = dict(preset='original', method=method, act='silu', **GRIDS[method][config])
    epochs = max(1, round(50 * cfg['budget']))
    row = dict(dataset=dataset, method=method, config=config, seed=seed, note=None)
    try:
        _, _, history = results.nce(dataset, seed, spec, cfg['samples'], epochs, every=0)
        kl = [h['kl'] for h in history if h['kl'] is not None]
        row.update(kl5=float(np.mean(kl[-LAST:])), kl=kl[-1])
    except SystemExit:      # train.py stopped the run (non-finite loss)
        row.update(kl5=math.inf, kl=math.inf, note='non-finite loss')
    finally:
        torch.set_num_threads(threads)
        methods.TUNED.update(tuned)
    row['seconds'] = time.perf_counter() - t
    return row


def scores(rows):
    """{(method, config): (mean KL over every dataset and seed, the worst dataset's mean, jobs)}"""
    out = {}
    for m, grid in GRIDS.items():
        for i in range(len(grid)):
            mine = [r for r in rows if r['method'] == m and r['config'] == i]
            if mine:
                per = [np.mean([r['kl5'] for r in mine if r['dataset'] == d]) for d in DATASETS if any(r['dataset'] == d for r in mine)]
                out[m, i] = (float(np.mean([r['kl5'] for r in mine])), float(max(per)), len(mine))
    return out


def chosen(rows):
    """Each method's configuration of lowest mean KL, among those run on every dataset and validation seed."""
    s = scores(rows)
    full = len(DATASETS) * len(VALIDATION)
    return {m: GRIDS[m][min((i for i in range(len(g)) if s.get((m, i), (0, 0, 0))[2] == full), key=lambda i: s[m, i][0])]
            for m, g in GRIDS.items() if any(s.get((m, i), (0, 0, 0))[2] == full for i in range(len(g)))}


def table(rows):
    """The grid, each configuration's validation score and the choice, as Markdown."""
    s, pick = scores(rows), chosen(rows)
    out = ['| method | configuration | mean KL | worst dataset | runs at inf | chosen |', '|---|---|---|---|---|---|']
    for m, grid in GRIDS.items():
        for i, config in enumerate(grid):
            if (m, i) in s:
                mean, worst, n = s[m, i]
                inf = sum(not math.isfinite(r['kl5']) for r in rows if r['method'] == m and r['config'] == i)
                out.append(f'| `{m}` | `{label(config)}` | {num(mean)} | {num(worst)} | {inf} of {n} | {"yes" if pick.get(m) == config else ""} |')
    out += ['', f'KL: the mean of each run\'s last {LAST} epochs (nats, over the whole plane), averaged over the 8 datasets '
            f'and validation seeds {" and ".join(map(str, VALIDATION))}; worst dataset: the highest of the 8 dataset means; '
            'runs at inf: runs whose model is not normalisable or whose loss turned non-finite. '
            f'The smooth network (SiLU, the original widths), 50 epochs, 10000 samples.']
    diverged = [f'`{m}` {label(GRIDS[m][r["config"]])} on {r["dataset"]} (seed {r["seed"]})' for m in GRIDS for r in rows
                if r['method'] == m and r['note']]
    out += [f'Stopped by a non-finite loss: {", ".join(diverged)}.'] if diverged else []
    return '\n'.join(out)


def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument('--methods', nargs='+', default=list(GRIDS), choices=list(GRIDS), metavar='METHOD',
                   help='methods to tune (default: all), of: ' + ' '.join(GRIDS))
    p.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=DATASETS, metavar='DATASET', help='datasets, of ' + ' '.join(DATASETS))
    p.add_argument('--jobs', type=int, default=os.cpu_count(), help='jobs in parallel, each on one torch thread')
    p.add_argument('--out', default='tune.csv', help='the CSV to write (rows already there are kept unless rerun)')
    p.add_argument('--merge', metavar='CSV', help='the tables from this CSV; run nothing')
    p.add_argument('--docs', action='store_true', help='also put the table into docs/estimators.md')
    p.add_argument('--samples', type=int, default=10000, help='training samples (smaller for tests)')
    p.add_argument('--budget', type=float, default=1.0, help='fraction of the 50 epochs (smaller for tests)')
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f'argument --jobs: must be at least 1, got {args.jobs}')
    if not (math.isfinite(args.budget) and 0 < args.budget <= 1):
        p.error(f'argument --budget: must be in (0, 1], got {args.budget}')
    if args.samples < 100:
        p.error(f'argument --samples: at least 100 (a batch), got {args.samples}')
    if problem := files.unwritable(os.path.dirname(os.path.abspath(args.out))) or files.not_a_file(args.out):
        p.error(f'cannot write {args.out}: {problem}')
    if args.merge:
        try:
            read_csv(args.merge)
        except (OSError, ValueError, KeyError) as e:
            p.error(f'argument --merge: cannot read {args.merge}: {e}')
    return args


def read_csv(path):
    rows = sweep.read_rows(path, ('seed', 'config'), ('dataset', 'method', 'note'))
    if not rows or set(rows[0]) != set(COLUMNS) or any(r['method'] not in GRIDS for r in rows):
        raise ValueError(f'{path} is not a tune.py CSV')
    return rows


def write(rows, path):
    rows = sorted(rows, key=lambda r: (list(GRIDS).index(r['method']), r['config'], DATASETS.index(r['dataset']), r['seed']))
    files.write_text(path, sweep.csv_text(rows, COLUMNS))


def main(args):
    t0 = time.time()
    if args.merge:
        rows, wall = read_csv(args.merge), None
    else:
        cfg = dict(samples=args.samples, budget=args.budget)
        jobs = sorted(((d, m, i, s) for m in args.methods for i in range(len(GRIDS[m])) for d in args.datasets for s in VALIDATION),
                      key=lambda j: -COST.get(j[1], 7))
        journal = sweep.journal(args.out, cfg)
        key = lambda j: (j[0], f'{j[1]}-{j[2]}', j[3])
        done, before = sweep.finished(journal, [key(j) for j in jobs])
        todo = [j for j in jobs if key(j) not in done]
        print(f'{len(jobs)} jobs; writing {args.out}' + (f'; {len(done)} finished in an earlier run of this sweep ({journal}): skipped' if done else ''))
        new = list(done.values())
        for row in cluster.run(job, [(*j, cfg) for j in todo], args.jobs):
            sweep.record(journal, key((row['dataset'], row['method'], row['config'], row['seed'])), row, before + time.time() - t0)
            new.append(row)
            print(f'{len(new)}/{len(jobs)} {row["method"]} {label(GRIDS[row["method"]][row["config"]])} {row["dataset"]} '
                  f'seed {row["seed"]}: KL {row["kl5"]:.4f}, {row["seconds"]:.1f} s', flush=True)
        old = read_csv(args.out) if os.path.isfile(args.out) else []
        made = {(r['dataset'], r['method'], r['config'], r['seed']) for r in new}
        rows = [r for r in old if (r['dataset'], r['method'], r['config'], r['seed']) not in made] + new
        write(rows, args.out)
        sweep.close(journal)
        wall = before + time.time() - t0
        for m in args.methods:
            s = [r['seconds'] for r in new if r['method'] == m]
            print(f'{m}: {len(s)} jobs, {sum(s) / 60:.1f} job-minutes, {np.mean(s):.1f} s each')
        wall = f'{wall / 60:.1f} minutes ({len(new)} jobs on {args.jobs} workers, {os.cpu_count()} CPU cores)' if set(args.methods) == set(GRIDS) and len(args.datasets) == len(DATASETS) else None
    text = '\n\n'.join(filter(None, [table(rows), footer(os.path.join(ROOT, 'docs/estimators.md'), 'python tune.py', wall)]))
    print(text)
    if args.docs:
        put(os.path.join(ROOT, 'docs/estimators.md'), 'tuning', text)


if __name__ == '__main__':
    main(get_args())
