"""The files a run writes and reads: atomic writes, locks, checkpoints, metrics, RNG state, Ctrl-C during a save."""
import contextlib
import os
import signal
import stat
import tempfile
import threading

import torch


def atomic_write(path, write):
    """Call write(tmp_path) on a temporary file in path's folder, then rename it over path: whoever reads
    path (or a run killed at any moment) sees the old file or the new one, never a half-written one.

    The file gets the mode a plain open(path, 'w') would give: an existing file's own, else 0o666 less the
    umask (mkstemp makes its file 0o600, and a rename keeps the mode). A link to a file is written through,
    so the link stays; a path that is not a regular file (a device, a FIFO, a socket, a folder) is refused."""
    problem = not_a_file(path)
    if problem:
        raise FileExistsError(problem)
    path = os.path.realpath(path) if os.path.islink(path) else path
    folder = os.path.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask():
    umask = os.umask(0o022)     # the only way to read it is to set it; set it straight back
    os.umask(umask)
    return umask


def not_a_file(path):
    """Why a written file may not replace path, or None if it may: path is a regular file, a link to one, or
    nothing yet. Anything else (a device such as /dev/null, a FIFO, a socket, a folder, a link to one of
    these or to nothing) is not ours to replace."""
    what = kind(path)
    if what in (None, 'a regular file'):
        return None
    return f'{path} is {what}, not a regular file; it is left as it is'


def kind(path):
    """What path is, following links, in words; None if there is nothing there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 'a link to nothing' if os.path.islink(path) else None
    except OSError as e:
        return f'unreadable ({e.strerror})'
    return ('a regular file' if stat.S_ISREG(mode) else 'a folder' if stat.S_ISDIR(mode) else 'a FIFO' if stat.S_ISFIFO(mode)
            else 'a socket' if stat.S_ISSOCK(mode) else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'not a regular file')


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


def matching(folder, pattern):
    """The paths of the entries in folder whose whole name matches the regular expression pattern."""
    import re
    return [os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else []) if re.fullmatch(pattern, f)]


def remove_matching(folder, pattern):
    """Remove the regular files (or links) in folder whose whole name matches pattern, and nothing else."""
    for path in matching(folder, pattern):
        if os.path.islink(path) or stat.S_ISREG(os.lstat(path).st_mode):
            os.remove(path)


def save_checkpoint(state, path):
    def write(tmp):
        try:
            torch.save(state, tmp)
        except RuntimeError as e:       # torch reports a failed write, a full disk say, as a RuntimeError
            raise OSError(f'cannot write {path}: {str(e).splitlines()[0][:160]}') from None
    atomic_write(path, write)


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
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f'{path} is {kind(path)}, not a folder'
    if not os.access(path, os.W_OK | os.X_OK):
        return f'permission denied on {path}'
    return None


def write_metrics(history, path):
    """metrics.csv: one row per epoch, blank where an epoch was not evaluated; full precision, so two runs
    with the same seed give identical files but for the seconds column."""
    cols = ('epoch', 'value', 'acc', 'c', 'log_z', 'nll', 'kl', 'outside', 'log_z_err', 'flow_nll', 'flow_kl', 'flow_steps', 'seconds', 'changes')
    cell = lambda v: '' if v is None else v.replace(',', ';') if isinstance(v, str) else repr(v)   # changes: a resume's
    lines = [','.join(cols)] + [','.join(cell(h.get(k)) for k in cols) for h in history]
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
    if 'cuda' in state and torch.cuda.is_available():     # as many GPUs as both machines have
        for i, s in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if 'mps' in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state['mps'])


# ----------------------------------------------------------------------------------------------------
# one run per path: an OS lock (flock) on a hidden file beside what the run writes, which the kernel
# releases when the process ends, however it ends; the file holds the holder's process id

class Locked(Exception):
    pass


def lock_file(path, folder=False):
    """The lock file of a checkpoint path, or of a folder of frames (folder=True)."""
    if folder:
        return os.path.join(path, '.run.lock')
    return os.path.join(os.path.dirname(path), '.' + os.path.basename(path) + '.lock')


def holder(lock):
    """The process id held in lock, as text, if a live process holds it; None if nobody does."""
    import fcntl
    if not os.path.isfile(lock):
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
    finally:
        os.close(fd)      # closing releases a shared lock we may just have taken


@contextlib.contextmanager
def locked(*locks):
    """Hold each (lock file, what it guards) exclusively for the block, and remove the lock files after it.
    Raises Locked with a one-line reason, naming the process that holds it, if another process does. Where
    the OS has no flock (Windows), the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    busy = lambda what, pid: Locked(f'{what} is in use by another run (process {pid}); wait for it to end or choose another path')
    for lock, what in locks:        # all checked before any is made, so that a refused run creates nothing
        if problem := not_a_file(lock):
            raise Locked(f'cannot lock {what}: {problem}')
        if pid := holder(lock):
            raise busy(what, pid)
    held = []
    try:
        for lock, what in locks:
            os.makedirs(os.path.dirname(lock) or '.', exist_ok=True)
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)     # 0o666 less the umask, as open() gives
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
                    os.close(fd)
                    raise busy(what, pid) from None
                # the holder before us removes its file when it ends; if it did so after we opened it, our lock
                # is on a file nobody else will find, so take the one now at that path instead
                if os.path.exists(lock) and os.path.samestat(os.fstat(fd), os.stat(lock)):
                    break
                os.close(fd)
            held.append((fd, lock))
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        for fd, lock in held:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)     # while still locked, so that no one takes a lock on it in between
            os.close(fd)
