"""Where results.py's jobs run: joblib's own worker processes on this machine, or a Dask cluster through joblib's
dask backend (pip install -r requirements-cluster.txt; docs/results.md measures Dask against Ray)."""
import contextlib


def problem(address):
    """Why the Dask scheduler at `address` cannot be used, in one line (Dask missing, or none answering there);
    None if it can."""
    try:
        from distributed import Client
    except ImportError:
        return 'Dask is not installed; pip install -r requirements-cluster.txt'
    try:
        Client(address, timeout='3s').close()
    except (OSError, ValueError, TypeError) as e:
        return f'no Dask scheduler at {address!r}: {str(e).splitlines()[0][:120]}'
    return None


def run(fn, tasks, jobs, scheduler=None):
    """fn(*task) for every task, yielded as each finishes: on `jobs` processes of this machine or, given a
    scheduler's address, on its cluster, as many at once as the cluster has worker threads."""
    from joblib import Parallel, delayed
    with contextlib.ExitStack() as stack:
        if scheduler:
            import joblib
            from distributed import Client
            stack.callback(Client(scheduler).close)
            stack.enter_context(joblib.parallel_config(backend='dask'))
            jobs = -1
        yield from Parallel(n_jobs=jobs, return_as='generator_unordered')(delayed(fn)(*t) for t in tasks)
