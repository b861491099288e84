"""results.py: a row per (dataset, method, seed), reproducible per seed, shardable and mergeable, with its
tables read from the rows."""
import csv
import os

import pytest

from conftest import refused

TINY = ['--datasets', '8gaussians', '--samples', 400, '--strong-samples', 512, '--budget', 0.01, '--gmm-max-k', 3]


def main(*argv):
    import results
    results.main(results.get_args([str(a) for a in argv]))


def rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def without_seconds(table):
    return [{k: v for k, v in r.items() if k != 'seconds'} for r in table]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Every default method on one dataset with 2 seeds at a tiny budget, on 2 workers."""
    out = tmp_path_factory.mktemp('tiny') / 'r.csv'
    main(*TINY, '--seeds', 2, '--jobs', 2, '--out', out)
    return out


def test_a_tiny_run_writes_a_row_per_dataset_method_and_seed(tiny):
    import results
    import tables
    table = rows(tiny)
    assert list(table[0]) == list(results.COLUMNS)
    assert [(r['method'], r['seed']) for r in table] == [(m, s) for m in results.DEFAULT_METHODS for s in ('0', '1')]
    for r in table:
        assert float(r['kl']) == pytest.approx(float(r['nll']) - float(r['H']), abs=1e-9)
        assert float(r['seconds']) > 0 and r['samples'] == ('512' if r['method'] == 'strong' else '400')
        # |c - log Z| only where the method learns a c; k and the bandwidth only for their methods
        assert (r['gap'] != '') == (r['method'] in ('nce', 'strong', 'strong-10k'))
        assert (r['k'] != '') == (r['method'] == 'gmm') and (r['bandwidth'] != '') == (r['method'] == 'kde')
    # the seeds are different runs: other data, another test set
    assert table[0]['nll'] != table[1]['nll'] and table[0]['H'] != table[1]['H']
    # the README's table is read from the rows: mean ± sd over the two seeds of each method
    kl = [float(r['kl']) for r in table if r['method'] == 'kde']
    scored = tables.with_curves(results.read_csv(tiny), results.read_curves(results.curves_path(str(tiny))))     # the last-5 KL
    line = next(line for line in tables.results_table(scored, '0 to 1', 256, 16, 1).splitlines() if line.startswith('| 8gaussians'))
    assert line.count('±') == 8 and line.rstrip(' |').endswith(f'{sum(kl) / 2:.3f} ± {abs(kl[0] - kl[1]) / 2**0.5:.3f}')


def test_the_same_seed_gives_the_same_row_in_this_process(tiny, tmp_path, capsys):
    """Seed 1 again, on one job at a time in this process: every column but the seconds is the same. Before it
    starts, the run says what it will write."""
    out = tmp_path / 'again.csv'
    main(*TINY, '--seeds', 2, '--methods', 'nce', 'mle', 'gmm', 'kde', '--jobs', 1, '--out', out)
    assert capsys.readouterr().out.splitlines()[0] == f'8 jobs; writing {out} and {tmp_path / "again-curves.csv"}'
    again = without_seconds(rows(out))
    assert again == [r for r in without_seconds(rows(tiny)) if r['method'] in ('nce', 'mle', 'gmm', 'kde')]


def test_two_shards_merged_are_the_unsharded_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = [*TINY, '--methods', 'nce', 'gmm', '--seeds', 3, '--jobs', 1]
    main(*quick, '--out', 'whole.csv')
    main(*quick, '--shard', '0/2')
    main(*quick, '--shard', '1/2')
    assert len(rows('results-0-of-2.csv')) == 3 and len(rows('results-1-of-2.csv')) == 3
    main('--merge', 'results-1-of-2.csv', 'results-0-of-2.csv', '--out', 'merged.csv')
    assert without_seconds(rows('merged.csv')) == without_seconds(rows('whole.csv'))


def test_the_tables_mark_only_differences_the_seeds_support():
    import tables
    row = lambda m, s, kl: dict(dataset='rings', method=m, seed=s, kl=kl)
    clear = [row('strong-10k', s, 0.01 + 0.001 * s) for s in range(5)] + [row('gmm', s, 0.30 + 0.002 * s) for s in range(5)]
    noisy = [row('strong-10k', s, 0.1 + 0.05 * (-1) ** s) for s in range(5)] + [row('kde', s, 0.1) for s in range(5)]
    assert tables.paired(clear, 'rings', 'strong-10k', 'gmm')[2]
    assert not tables.paired(noisy, 'rings', 'strong-10k', 'kde')[2]
    assert tables.verdict(clear + noisy, 'strong-10k', 'gmm') == 'lower on rings'
    assert tables.verdict(clear + noisy, 'strong-10k', 'kde') == 'no difference shown on rings'


@pytest.mark.parametrize('args', [('--shard', '2/2'), ('--shard', '1'), ('--shard', 'a/b'), ('--shard', '-1/2'),
                                  ('--seeds', 0), ('--seeds', 'x'), ('--jobs', 0), ('--budget', 0), ('--merge', 'nothing.csv'),
                                  ('--merge', 'bad.csv'), ('--out', '/dev/null')])
def test_bad_arguments_are_one_line_errors(args, tmp_path, monkeypatch, capsys):
    import results
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'bad.csv').write_text('a,b\n1,2\n')
    refused(results.get_args, args, capsys)
    assert sorted(os.listdir(tmp_path)) == ['bad.csv']


def test_estimators_write_their_rows_and_a_curve_per_job_that_merge_like_the_rows(tmp_path, monkeypatch):
    """nce and cd on one dataset, 2 seeds, 10 epochs: a row per job and a curve row per evaluated epoch (every
    CURVE_EVERY-th, then each of the last LAST), the training seconds growing; the run is the one train.py makes in one
    go; two shards merged give the unsharded run's rows and curves, but for the seconds."""
    import results
    import resume
    import train
    monkeypatch.chdir(tmp_path)
    quick = [*TINY[:6], '--budget', 0.2, '--methods', 'nce', 'cd', '--seeds', 2, '--jobs', 1]
    main(*quick, '--out', 'results.csv')
    table, curves = rows('results.csv'), rows('curves.csv')
    assert [(r['method'], r['seed']) for r in table] == [('nce', '0'), ('nce', '1'), ('cd', '0'), ('cd', '1')]
    assert [(r['method'], r['seed'], r['epoch']) for r in curves] == [(m, s, str(e)) for m in ('nce', 'cd') for s in '01' for e in range(4, 10)]
    for r in curves:
        assert float(r['kl']) > 0 and (r['gap'] != '') == (r['method'] == 'nce')
    assert all(float(a['train_seconds']) < float(b['train_seconds']) for a, b in zip(curves[:-1], curves[1:], strict=True) if a['seed'] == b['seed'] and a['method'] == b['method'])
    last = {(r['method'], r['seed']): r['kl'] for r in curves if r['epoch'] == '9'}
    assert all(last[r['method'], r['seed']] == r['kl'] for r in table)      # the row is the curve's last epoch
    train.main(train.get_args(['--dataset', '8gaussians', '--samples', '400', '--method', 'cd', '--seed', '1', '--epoch', '10',
                               '--no-plot', '--ckpt', str(tmp_path / 'cd.pth.tar')]))
    assert resume.load(str(tmp_path / 'cd.pth.tar'))['history'][-1]['kl'] == float(last['cd', '1'])     # as one run of train.py
    main(*quick, '--shard', '0/2')
    main(*quick, '--shard', '1/2')
    main('--merge', 'results-0-of-2.csv', 'results-1-of-2.csv', '--out', 'merged.csv')
    strip = lambda t, col: [{k: v for k, v in r.items() if k != col} for r in t]
    assert strip(rows('merged.csv'), 'seconds') == strip(table, 'seconds')
    assert strip(rows('merged-curves.csv'), 'train_seconds') == strip(curves, 'train_seconds')
    assert results.curves_path('a/results-1-of-2.csv') == 'a/curves-1-of-2.csv'


def test_a_tiny_table_on_a_local_dask_cluster_is_the_one_of_jobs_1(tiny, tmp_path, monkeypatch):
    """--scheduler: the jobs on a Dask cluster of 2 worker processes that this test starts, through joblib's dask
    backend; the rows are those of the run on this machine, but for the seconds."""
    distributed = pytest.importorskip('distributed')
    from conftest import ROOT
    monkeypatch.setenv('PYTHONPATH', ROOT)          # the workers import results.py, as a cluster's must
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / 'dask.csv'
        main(*TINY, '--seeds', 2, '--methods', 'nce', 'gmm', '--scheduler', cluster.scheduler_address, '--out', out)
    assert without_seconds(rows(out)) == [r for r in without_seconds(rows(tiny)) if r['method'] in ('nce', 'gmm')]


@pytest.mark.parametrize('address', ['tcp://127.0.0.1:9', 'nonsense://here'])
def test_a_bad_scheduler_is_a_one_line_error(address, capsys):
    pytest.importorskip('distributed')
    import results
    assert '--scheduler' in refused(results.get_args, ['--scheduler', address], capsys)


def synthetic(methods, level, seeds=5, epochs=6):
    """Rows and curves of jobs whose KL falls to `level[m]` by their last epochs, each seed a hair apart."""
    from tables import short
    rows, curves = [], []
    for m in methods:
        for s in range(seeds):
            kl = [level[short(m)] + 0.5 / (e + 1) ** 2 + 0.002 * ((3 * s + ord(short(m)[0])) % 5) for e in range(epochs)]
            gap = 0.01 if short(m) == 'nce' else None
            rows.append(dict(dataset='rings', method=m, seed=s, kl=kl[-1], gap=gap, seconds=2.0 + s, steps=600, H=2.6))
            curves += [dict(dataset='rings', method=m, seed=s, epoch=e, train_seconds=0.2 * (e + 1), kl=k, gap=gap)
                       for e, k in enumerate(kl)]
    return rows, curves


def test_the_estimator_tables_judge_each_job_by_its_last_epochs_and_claim_only_what_the_seeds_support():
    import tables
    rows, curves = synthetic(('nce', 'rank', 'mle'), dict(nce=0.10, rank=0.30, mle=0.02))
    rows += [dict(dataset='rings', method='is', seed=s, kl=0.1 + 0.05 * (-1) ** s, gap=None, seconds=1.0, steps=600) for s in range(5)]
    curves += [dict(dataset='rings', method='is', seed=s, epoch=0, train_seconds=1.0, kl=0.1 + 0.05 * (-1) ** s, gap=None) for s in range(5)]
    scored = tables.with_curves(rows, curves)
    nce0 = [c['kl'] for c in curves if c['method'] == 'nce' and c['seed'] == 0]
    assert next(r for r in scored if r['method'] == 'nce' and r['seed'] == 0)['kl5'] == pytest.approx(sum(nce0[-5:]) / 5)
    assert next(r for r in scored if r['method'] == 'nce')['train_seconds'] == pytest.approx(1.2)
    text = tables.estimator_tables(scored, ('nce', 'rank', 'is', 'mle'), 'nce', 'mle')
    first = text.split('**How close to exact MLE**')[0]
    assert '**KL at the last epoch**' not in text       # one statistic: the last-5 mean
    assert '| `rank` | ' in first and first.split('| `rank` | ')[1].split('\n')[0].endswith('↑ |')      # higher than NCE
    assert first.split('| `mle` | ')[1].split('\n')[0].endswith('↓ |')
    assert first.split('| `is` | ')[1].split('\n')[0].endswith('0.055 |')       # jitter by seed: no claim
    assert '- `is`: KL against `nce` no difference shown on rings' in text
    assert '- `rank`: KL against `nce` higher on rings; against `mle` higher on rings.' in text
    assert '| `nce` | 4.0 ± 1.6 | 500 ± 0 |' in text         # seconds a job; 600 steps in 1.2 training seconds
    gap = text.split('**|c − log Z|**')[1].split('**Time**')[0]
    assert '| `nce` |' in gap and '`rank`' not in gap       # the gap only for nce, which learns c
    best = tables.best_table(scored, ('nce', 'rank', 'mle'), 'nce', 'mle')
    assert '| rings | `mle` | 0.073 ± 0.003 | `nce` | yes |' in best


def test_the_estimator_docs_and_figures_are_drawn_from_the_rows_and_curves(tmp_path, monkeypatch):
    """write_docs puts the benchmark's tables between their markers (docs/estimators.md, the README's short version)
    and draws the figure of the curves, here into a copy of the repo's documents."""
    import shutil

    import results
    from conftest import ROOT
    for f in ('README.md', 'docs/estimators.md', 'docs/strong-preset.md'):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / 'images').mkdir()
    monkeypatch.setattr(results, 'ROOT', str(tmp_path))
    rows, curves = synthetic(('silu-nce', 'silu-rank', 'silu-mle'), dict(nce=0.10, rank=0.30, mle=0.02))
    results.write_docs(rows, results.SILU, '1.0 minutes', curves)
    doc, readme = (tmp_path / 'docs/estimators.md').read_text(), (tmp_path / 'README.md').read_text()
    block = doc.split('<!-- benchmark:start -->')[1].split('<!-- benchmark:end -->')[0]
    assert '| `rank` | ' in block and 'Regenerated by `python results.py --methods silu-nce silu-rank' in block and '1.0 minutes' in block
    assert '| rings | `mle` |' in readme.split('<!-- best:start -->')[1].split('<!-- best:end -->')[0]
    assert (tmp_path / 'images/estimators.png').stat().st_size > 10000
    assert not (tmp_path / 'images/estimators-leaky.png').exists()      # no job on the LeakyReLU network ran
    results.write_docs(rows, ('silu-rank',), '2.0 minutes', curves)      # a part of the table keeps the time of the whole
    assert '1.0 minutes' in (tmp_path / 'docs/estimators.md').read_text().split('<!-- benchmark:end -->')[0]


def test_a_sweep_killed_mid_run_keeps_its_finished_jobs_and_the_same_command_skips_them(tmp_path, capsys):
    """SIGKILL a sweep once two of its jobs are done: each finished job is a whole file in its journal, the rerun of
    the same command takes them as they are (their seconds too) and runs only the rest, and the journal then goes."""
    import pickle
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    out = tmp_path / 'r.csv'
    argv = [*TINY, '--methods', 'nce', 'kde', '--seeds', 3, '--jobs', 1, '--out', out]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'results.py'), *map(str, argv)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = tmp_path / 'r-jobs'
    for _ in range(1200):
        if len(list(jobs.glob('*/*.pkl'))) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {}
    for f in jobs.glob('*/*.pkl'):
        with open(f, 'rb') as fh:
            row = pickle.load(fh)['result'][0]
        kept[row['method'], str(row['seed'])] = repr(row['seconds'])
    assert 2 <= len(kept) < 6 and not out.exists()
    main(*argv)
    assert f'{len(kept)} of them finished in an earlier run of this sweep' in capsys.readouterr().out
    table = rows(out)
    assert sorted((r['method'], r['seed']) for r in table) == sorted((m, s) for m in ('nce', 'kde') for s in '012')
    assert all(r['seconds'] == kept[r['method'], r['seed']] for r in table if (r['method'], r['seed']) in kept)
    assert not jobs.exists()


def test_the_docs_are_rewritten_only_with_docs(tmp_path, monkeypatch, capsys):
    """A merge prints its tables and leaves README.md and docs/ as they are; with --docs it puts them in place."""
    import shutil

    import results
    from conftest import ROOT
    for f in ('README.md', 'docs/strong-preset.md', 'docs/estimators.md', 'docs/flow.md'):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    monkeypatch.setattr(results, 'ROOT', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    rows_ = [dict(dataset='8gaussians', method=m, seed=s, nll=3.0 + s, kl=0.25 + s / 100, c=None, log_z=None, gap=None,
                  H=2.75, seconds=1.0, samples=100, epochs=None, steps=1, preset=None, noise=None, k=None, bandwidth=None,
                  flow_kl=None, flow_steps=None, flow_mle_kl=None) for m in results.DEFAULT_METHODS for s in (0, 1)]
    results.write_csv(rows_, 'in.csv')
    before = (tmp_path / 'README.md').read_text()
    main('--merge', 'in.csv', '--out', 'out.csv')
    assert '| 8gaussians |' in capsys.readouterr().out and (tmp_path / 'README.md').read_text() == before
    main('--merge', 'in.csv', '--out', 'out.csv', '--docs')
    assert (tmp_path / 'README.md').read_text() != before and '0.255 ±' in (tmp_path / 'README.md').read_text()


def test_merging_the_committed_csvs_reproduces_the_readme_and_docs_to_the_byte(tmp_path, monkeypatch):
    """--merge results.csv --docs on the committed CSVs rewrites results.csv, curves.csv, README.md and docs/ as they
    are committed: every table there comes from the CSVs by this command."""
    import shutil

    import results
    from conftest import ROOT
    docs = ('README.md', 'docs/strong-preset.md', 'docs/estimators.md', 'docs/flow.md')
    for f in docs:
        (tmp_path / f).parent.mkdir(exist_ok=True)
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    (tmp_path / 'images').mkdir()
    monkeypatch.setattr(results, 'ROOT', str(tmp_path))
    main('--merge', os.path.join(ROOT, 'results.csv'), '--out', tmp_path / 'results.csv', '--docs')
    for f in (*docs, 'results.csv', 'curves.csv'):
        assert (tmp_path / f).read_bytes() == open(os.path.join(ROOT, f), 'rb').read(), f


def test_keep_saves_each_trained_jobs_checkpoint_for_logz(tmp_path):
    import resume
    main(*TINY, '--methods', 'nce', 'gmm', '--seeds', 1, '--jobs', 1, '--out', tmp_path / 'r.csv', '--keep', tmp_path / 'keep')
    assert os.listdir(tmp_path / 'keep') == ['8gaussians_nce_0.pth.tar']       # gmm trains no EBM
    ck = resume.load(str(tmp_path / 'keep/8gaussians_nce_0.pth.tar'))
    assert ck['args']['dataset'] == '8gaussians' and ck['args']['seed'] == 0 and ck['history'][-1]['kl'] is not None
