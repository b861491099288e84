"""What a sweep of results.py or tune.py keeps on disk: a journal with a file per finished job, so that a sweep
killed at any moment (or a Dask worker lost) loses only the jobs in flight and the same command, run again, goes on
where it stopped; and the curves CSV beside the results CSV."""
import csv
import hashlib
import io
import json
import os
import pickle
import shutil

import files

CURVE_COLUMNS = ('dataset', 'method', 'seed', 'epoch', 'train_seconds', 'kl', 'gap')


def journal(out, cfg):
    """The folder where a sweep writing `out` with settings `cfg` (what every job is trained with) keeps its finished
    jobs: <out's stem>-jobs/<a hash of cfg>, so that only the same sweep picks them up."""
    folder, name = os.path.split(os.path.abspath(out))
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(folder, (name[:-4] if name.endswith('.csv') else name) + '-jobs', key)


def job_file(folder, job):
    dataset, method, seed = job
    return os.path.join(folder, f'{dataset}_{method}_{seed}.pkl')


def record(folder, job, result, wall):
    """Keep a finished job's result (its row, image, curve and seconds) and the sweep's wall time so far, in one file
    written atomically: a killed sweep leaves it whole or absent."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            pickle.dump(dict(job=job, result=result, wall=wall), f)
    files.atomic_write(job_file(folder, job), write)


def finished(folder, jobs):
    """The results of the jobs an earlier run of this sweep finished, by job, and that run's wall time up to its last
    finished job (seconds). A file that does not read back is taken as not finished: its job runs again."""
    done, wall = {}, 0.0
    for job in jobs:
        try:
            with open(job_file(folder, job), 'rb') as f:
                kept = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            continue
        if kept.get('job') == job:
            done[job], wall = kept['result'], max(wall, kept['wall'])
    return done, wall


def close(folder):
    """The sweep's results are in its CSV: its journal goes, and the jobs folder with it once empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))
    except OSError:     # another sweep's journal is still there
        pass


def csv_text(rows, columns):
    """A CSV of the rows (dicts), in `columns`: a float as repr writes it, which reads back to the same float, and
    None as a blank."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator='\n')
    w.writerow(columns)
    for r in rows:
        w.writerow(['' if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in columns])
    return text.getvalue()


def read_rows(path, ints, texts):
    """The rows of a CSV that csv_text wrote: a blank as None, the columns in `ints` as ints, those in `texts` as
    strings and the rest as floats."""
    typed = lambda k, v: None if v == '' else int(v) if k in ints else v if k in texts else float(v)
    with open(path, newline='') as f:
        return [{k: typed(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def curves_path(path):
    """Where the curves of a results CSV go: results.csv's in curves.csv, results-0-of-2.csv's in curves-0-of-2.csv,
    x.csv's in x-curves.csv."""
    folder, name = os.path.split(path)
    stem = name[:-4] if name.endswith('.csv') else name
    return os.path.join(folder, 'curves' + stem[len('results'):] + '.csv' if stem.startswith('results') else stem + '-curves.csv')


def read_curves(path):
    """The rows of a curves CSV (empty if there is none)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        lines = csv.reader(f)
        header, first = next(lines, []), next(lines, None)
    if first is not None and set(header) != set(CURVE_COLUMNS):
        raise ValueError(f'{path} is not a curves CSV of this repo')
    return read_rows(path, ('seed', 'epoch'), ('dataset', 'method'))


def combine_curves(*tables):
    """Curve rows of several tables, a later table's curve of a (dataset, method, seed) replacing an earlier one's."""
    out = {}
    for rows in tables:
        jobs = {}
        for r in rows:
            jobs.setdefault((r['dataset'], r['method'], r['seed']), []).append(r)
        out.update(jobs)
    return [r for rows in out.values() for r in rows]
