"""Safe on a shared machine: files get the caller's modes, nothing that is not a regular file is replaced,
one run per path, and impossible sizes are refused before anything is allocated or written."""
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error, refused
from files import atomic_write, load_checkpoint
from test_train import start, wait_for

SMALL = ('--samples', 200, '--hidden', 16, '--eval-every', 0)
mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for a test, and restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize('mask,expect', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expect):
    umask(mask)
    atomic_write(str(tmp_path / 'new.txt'), lambda tmp: open(tmp, 'w').write('x'))
    assert mode(tmp_path / 'new.txt') == expect
    # an existing file keeps its own mode, whatever the umask
    (tmp_path / 'old.txt').write_text('old')
    os.chmod(tmp_path / 'old.txt', 0o640)
    atomic_write(str(tmp_path / 'old.txt'), lambda tmp: open(tmp, 'w').write('new'))
    assert mode(tmp_path / 'old.txt') == 0o640 and (tmp_path / 'old.txt').read_text() == 'new'


def test_a_link_to_a_file_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / 'real.txt').write_text('old')
    os.symlink(tmp_path / 'real.txt', tmp_path / 'link.txt')
    atomic_write(str(tmp_path / 'link.txt'), lambda tmp: open(tmp, 'w').write('new'))
    assert os.path.islink(tmp_path / 'link.txt') and (tmp_path / 'real.txt').read_text() == 'new'


@pytest.mark.parametrize('mask', [0o077])
def test_every_file_of_a_run_and_its_gif_gets_the_callers_mode(run, tmp_path, mask):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    for script, *args in (('train.py', '--epoch', 2, *SMALL[:4], '--eval-every', 1), ('images/create_gif.py', '--images', 'images')):
        p = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, preexec_fn=lambda: os.umask(mask))
        assert p.returncode == 0, p.stderr
    written = ['ckpts/nce.pth.tar', 'ckpts/metrics.csv', 'images/epoch_0.png', 'images/epoch_1.png', 'images/curves.png', 'images/nce.gif']
    assert {f: mode(tmp_path / f) for f in written} == {f: 0o666 & ~mask for f in written}


def make_fifo(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)


@pytest.mark.parametrize('where', ['ckpt', 'metrics', 'frame', 'curves', 'link to fifo', 'images', 'lock'])
def test_a_fifo_is_refused_up_front_and_left_a_fifo(run, tmp_path, where, monkeypatch, capsys):
    """A FIFO stands in for /dev/null: as --ckpt, as the metrics.csv beside it, as a frame or curves.png in
    --images, behind a link, as --images itself, or as a lock file. The run is refused with one line before
    it writes anything, and the FIFO is still a FIFO. The argument checks run in-process; the two that end
    to end also show the CLI's exit (the lock is taken in main, after the arguments)."""
    import train
    fifo = tmp_path / 'ckpts' / 'fifo'
    target = {'ckpt': 'ckpts/fifo', 'metrics': 'ckpts/metrics.csv', 'frame': 'images/epoch_3.png',
              'curves': 'images/curves.png', 'link to fifo': 'ckpts/nce.pth.tar', 'images': 'images',
              'lock': 'ckpts/.nce.pth.tar.lock'}[where]
    make_fifo(fifo)
    if target != 'ckpts/fifo':
        os.makedirs(tmp_path / os.path.dirname(target), exist_ok=True) if os.path.dirname(target) else None
        os.symlink(fifo, tmp_path / target) if where == 'link to fifo' else os.mkfifo(tmp_path / target)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))
    args = ['--epoch', '1', *map(str, SMALL), *(['--ckpt', 'ckpts/fifo'] if where == 'ckpt' else [])]
    if where in ('ckpt', 'lock'):
        p = run('train.py', *args, timeout=60)
        err = assert_one_line_error(p)
    else:
        monkeypatch.chdir(tmp_path)
        err = refused(train.get_args, args, capsys)
    assert ': error: ' in err and 'FIFO' in err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(tmp_path / target).st_mode)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')) == before


@pytest.mark.parametrize('out', ['fifo.gif', 'dangling.gif'])
def test_create_gif_refuses_an_out_that_is_not_a_regular_file(tmp_path, out, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'images'))
    import create_gif

    from test_gif import frames
    frames(tmp_path / 'run', [0, 1])
    os.mkfifo(tmp_path / 'fifo.gif')
    os.symlink(tmp_path / 'nowhere', tmp_path / 'dangling.gif')
    monkeypatch.chdir(tmp_path)
    refused(create_gif.main, ['--images', 'run', '--out', out], capsys)
    assert stat.S_ISFIFO(os.stat(tmp_path / 'fifo.gif').st_mode) and not os.path.exists(tmp_path / 'nowhere')


def test_one_run_per_path_and_a_killed_runs_lock_does_not_block(run, tmp_path):
    first = start(tmp_path, '--epoch', 10000, *SMALL, '--ckpt', 'a/nce.pth.tar', '--images', 'a', '--seed', 1)
    try:
        wait_for(tmp_path / 'a/nce.pth.tar')
        wait_for(tmp_path / 'a/epoch_0.png')
        # the same checkpoint, or the same frames folder, is refused, naming the first run's process
        for paths in (('--ckpt', 'a/nce.pth.tar', '--images', 'b'), ('--ckpt', 'b/nce.pth.tar', '--images', 'a')):
            p = run('train.py', '--epoch', 1, *SMALL, '--seed', 2, *paths, timeout=60)
            assert_one_line_error(p)
            assert f'process {first.pid}' in p.stderr
        assert not (tmp_path / 'b').exists()                   # the second run touched nothing
        assert load_checkpoint(tmp_path / 'a/nce.pth.tar')['args']['seed'] == 1
        # a GIF of a folder still being written is refused, saying so
        p = run('images/create_gif.py', '--images', 'a', '--out', 'a.gif')
        assert_one_line_error(p)
        assert f'process {first.pid}' in p.stderr and not (tmp_path / 'a.gif').exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel dropped the killed run's locks: the next run at the same paths goes ahead
    p = run('train.py', '--epoch', 1, *SMALL, '--ckpt', 'a/nce.pth.tar', '--images', 'a', '--seed', 2, timeout=60)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(tmp_path / 'a/nce.pth.tar')['args']['seed'] == 2


@pytest.mark.parametrize('args', [
    ('--noise', 'fit', '--samples', 2, '--batch', 2), ('--noise', 'gmm', '--samples', 15, '--batch', 10),
    ('--samples', 10_000_000_000), ('--nu', 100_000_000), ('--hidden', 10_000_000), ('--fourier', 100_000_000),
    ('--depth', 100_000), ('--hidden', 100_000, '--depth', 3), ('--batch', 10_000_000, '--samples', 10_000_000, '--nu', 1000),
    ('--ckpt', ''), ('--ckpt', 'ckpts/'), ('--ckpt', 'ckpts/metrics.csv'), ('--images', ''), ('--ckpt', 'same', '--images', 'same'),
    ('--ckpt', '/dev/null'), ('--ckpt', 'afolder'), ('--ckpt', 'dangling'), ('--images', 'dangling'),
    ('--seed', 2**64), ('--seed', -2**63 - 1),
])
def test_impossible_inputs_are_one_line_errors_that_write_nothing(args, tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'afolder').mkdir()
    os.symlink(tmp_path / 'nowhere', tmp_path / 'dangling')
    err = refused(train.get_args, args, capsys)
    if '--seed' not in args and any(isinstance(a, int) and a >= 10**5 for a in args):    # names what it needs and what there is
        assert 'GB of memory' in err and 'available' in err
    assert sorted(os.listdir(tmp_path)) == ['afolder', 'dangling'] and os.listdir(tmp_path / 'afolder') == []


def test_the_memory_estimate_passes_the_presets_and_tracks_the_sizes():
    import memory
    import train
    for preset in ('original', 'strong'):
        need = sum(memory.needed(train.get_args(['--preset', preset])).values())
        assert need < 2**30, preset              # well under 1 GB: 0.3 to 0.35 GB is measured for the default run
    small, big = (sum(memory.needed(train.get_args(['--samples', n])).values()) for n in ('10000', '1000000'))
    assert big - small > 990000 * 2 * 4 * 10    # at least the data, its noise and their labels


@pytest.mark.parametrize('args', [('--samples', 10_000_000_000)])
def test_impossible_inputs_end_to_end(run, tmp_path, args):
    p = run('train.py', *args)
    assert_one_line_error(p)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(run, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: the checkpoint write fails with a one-line error."""
    import resource
    assert run('train.py', '--epoch', 1, *SMALL, '--no-plot').returncode == 0
    before = open(tmp_path / 'ckpts/nce.pth.tar', 'rb').read()
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--resume', '--epoch', '1', *map(str, SMALL), '--no-plot'],
                       cwd=tmp_path, capture_output=True, text=True,
                       preexec_fn=lambda: (signal.signal(signal.SIGXFSZ, signal.SIG_IGN), resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))))
    assert_one_line_error(p)
    assert open(tmp_path / 'ckpts/nce.pth.tar', 'rb').read() == before
    assert not [f for f in os.listdir(tmp_path / 'ckpts') if f.endswith('.tmp')]
    assert torch.load(tmp_path / 'ckpts/nce.pth.tar', weights_only=True)['epoch'] == 0


def test_a_fifo_among_the_frames_or_the_csvs_to_merge_is_refused_not_read(tmp_path, monkeypatch, capsys):
    """Reading a FIFO would block for ever: create_gif.py and results.py --merge refuse one before reading."""
    sys.path.insert(0, os.path.join(ROOT, 'images'))
    import create_gif

    import results
    from test_gif import frames
    frames(tmp_path / 'run', [0, 1])
    os.mkfifo(tmp_path / 'run/epoch_2.png')
    os.mkfifo(tmp_path / 'in.csv')
    monkeypatch.chdir(tmp_path)
    assert 'epoch_2.png' in refused(create_gif.main, ['--images', 'run', '--out', 'x.gif'], capsys)
    assert 'in.csv' in refused(results.get_args, ['--merge', 'in.csv', '--out', 'm.csv'], capsys)
    assert not (tmp_path / 'x.gif').exists() and not (tmp_path / 'm.csv').exists()
