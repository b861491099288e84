"""The files a run writes and reads: atomic writes, checkpoints, metrics, RNG state, Ctrl-C during a save."""
import contextlib
import os
import signal
import tempfile
import threading

import torch


def atomic_write(path, write):
    """Call write(tmp_path) on a temporary file in path's folder, then rename it over path: whoever reads
    path (or a run killed at any moment) sees the old file or the new one, never a half-written one."""
    folder = os.path.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def ctrl_c_held():
    """Run the block with Ctrl-C (SIGINT) held back, then raise the KeyboardInterrupt it would have raised:
    what the block writes and what the run records of it change together. Only the main thread can set a
    signal handler; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def leftovers(name_pattern):
    """The names of the temporary files atomic_write makes for files named name_pattern (a regular
    expression): what a process killed mid-write leaves behind."""
    return r'\.(' + name_pattern + r')\.\w+\.tmp'


def remove_matching(folder, pattern):
    """Remove the files in folder whose whole name matches the regular expression pattern, and nothing else."""
    import re
    for f in os.listdir(folder) if os.path.isdir(folder) else []:
        if re.fullmatch(pattern, f):
            os.remove(os.path.join(folder, f))


def save_checkpoint(state, path):
    atomic_write(path, lambda tmp: torch.save(state, tmp))


class CheckpointError(Exception):
    pass


CHECKPOINT_KEYS = ('energy', 'model_kwargs', 'optimizer', 'epoch', 'args', 'rng', 'history')


def load_checkpoint(path):
    """Load a checkpoint with the restricted unpickler (weights_only=True): tensors and plain types only, so
    a file from elsewhere cannot run code. Raises CheckpointError with a one-line reason."""
    import pickle
    if not os.path.isfile(path):
        raise CheckpointError(f'no checkpoint at {path}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f'{path} holds objects other than tensors and plain types; refused to load it '
                              f'({str(e).splitlines()[0][:120]})') from None
    except Exception as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}') from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f'{path} is not a checkpoint of this repo (missing {", ".join(missing)})')
    return ckpt


def unwritable(folder):
    """Why files cannot be written into folder (created if missing), or None if they can."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f'{path} is a file, not a folder'
    if not os.access(path, os.W_OK | os.X_OK):
        return f'permission denied on {path}'
    return None


def write_metrics(history, path):
    """metrics.csv: one row per epoch, blank where an epoch was not evaluated; full precision, so two runs
    with the same seed give identical files but for the seconds column."""
    cols = ('epoch', 'value', 'acc', 'c', 'log_z', 'nll', 'kl', 'seconds')
    lines = [','.join(cols)] + [','.join('' if h[k] is None else repr(h[k]) for k in cols) for h in history]
    write_text(path, '\n'.join(lines) + '\n')


def write_text(path, text):
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def get_rng_state():
    """Every RNG the loop draws from (data order, noise), so that a resumed run continues bit for bit."""
    state = dict(cpu=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state['mps'] = torch.mps.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    if 'mps' in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state['mps'])
