"""train.py end to end in a subprocess: outputs, resume, exactness, and every way a run can go wrong."""
import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, assert_one_line_error, error_line
from files import load_checkpoint
from model import EBM

SMALL = ('--samples', 400, '--batch', 100)


def digest(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def metrics(path):
    """metrics.csv rows without the wall-time column."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != 'seconds'} for row in csv.DictReader(f)]


def test_two_epochs_write_frames_checkpoint_metrics_and_resume_continues(run, tmp_path):
    p = run('train.py', '--epoch', 2, *SMALL)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path / 'images')) == ['curves.png', 'epoch_0.png', 'epoch_1.png']
    assert p.stdout.strip().splitlines()[-1].startswith('done: 8gaussians')
    ck = load_checkpoint(tmp_path / 'ckpts/nce.pth.tar')
    assert ck['epoch'] == 1 and ck['args']['dataset'] == '8gaussians'
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    assert [type(m).__name__ for m in energy.f] == ['Linear', 'LeakyReLU', 'Linear', 'LeakyReLU', 'Linear']
    with open(tmp_path / 'ckpts/metrics.csv') as f:
        assert f.readline().strip() == 'epoch,value,acc,c,log_z,nll,kl,outside,log_z_err,flow_nll,flow_kl,flow_steps,seconds,changes'
    rows = metrics(tmp_path / 'ckpts/metrics.csv')
    assert [r['epoch'] for r in rows] == ['0', '1'] and all(r['kl'] and r['nll'] for r in rows)
    assert float(rows[-1]['c']) == pytest.approx(energy.c.item())

    p = run('train.py', '--resume', '--epoch', 2, *SMALL)
    assert p.returncode == 0, p.stderr
    assert {f'epoch_{i}.png' for i in range(4)} <= set(os.listdir(tmp_path / 'images'))
    assert load_checkpoint(tmp_path / 'ckpts/nce.pth.tar')['epoch'] == 3
    assert [r['epoch'] for r in metrics(tmp_path / 'ckpts/metrics.csv')] == ['0', '1', '2', '3']


def train_here(*argv):
    """python train.py ARGV, in this process (the tests that run it as a script are above and below)."""
    import train
    train.main(train.get_args([str(a) for a in argv]))


def test_resume_is_exact_and_the_seed_fixes_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b, c = (['--ckpt', f'{d}/nce.pth.tar', '--images', d, *SMALL] for d in ('a', 'b', 'c'))
    train_here('--epoch', 3, *a)
    train_here('--epoch', 2, *b)
    train_here('--resume', '--epoch', 1, *b)
    train_here('--epoch', 3, *c)
    ka, kb = load_checkpoint(tmp_path / 'a/nce.pth.tar'), load_checkpoint(tmp_path / 'b/nce.pth.tar')
    assert all(torch.equal(ka['energy'][k], kb['energy'][k]) for k in ka['energy'])
    assert metrics(tmp_path / 'a/metrics.csv') == metrics(tmp_path / 'b/metrics.csv') == metrics(tmp_path / 'c/metrics.csv')
    for i in range(3):
        assert digest(tmp_path / f'a/epoch_{i}.png') == digest(tmp_path / f'b/epoch_{i}.png')
    train_here('--ckpt', 'd/nce.pth.tar', '--images', 'd', '--seed', 1, '--epoch', 3, *SMALL)
    assert metrics(tmp_path / 'a/metrics.csv') != metrics(tmp_path / 'd/metrics.csv')


def test_a_cpu_run_flushes_subnormal_floats_to_zero(tmp_path, monkeypatch, capsys):
    """train.py on the CPU rounds float32 numbers below 1.2e-38 to zero, which many x86 CPUs compute slowly
    (docs/estimators.md). On a CPU without the mode (set_flush_denormal returns False) there is nothing to check."""
    monkeypatch.chdir(tmp_path)
    if not torch.set_flush_denormal(False):
        pytest.skip('this CPU has no flush-to-zero mode')
    small = torch.tensor([1e-30])                        # normal in float32, as is 1e-10; their product is not
    try:
        assert (small * 1e-10).item() > 0                # subnormal, kept
        train_here('--epoch', 1, '--no-plot', '--device', 'cpu', *SMALL)
        assert (small * 1e-10).item() == 0
    finally:
        torch.set_flush_denormal(False)


def test_a_fresh_run_removes_the_frames_of_an_earlier_run(run, tmp_path):
    (tmp_path / 'images').mkdir()
    for name in ('epoch_7.png', 'epoch_12.png', 'notes.txt'):
        (tmp_path / 'images' / name).write_text('old')
    assert run('train.py', '--epoch', 1, '--eval-every', 0, '--no-plot', *SMALL).returncode == 0
    assert len(os.listdir(tmp_path / 'images')) == 3          # a run that writes no frames leaves them
    assert run('train.py', '--epoch', 1, '--eval-every', 0, *SMALL).returncode == 0
    assert sorted(os.listdir(tmp_path / 'images')) == ['epoch_0.png', 'notes.txt']


@pytest.mark.parametrize('args', [
    ('--dataset', 'spirals'), ('--noise', 'uniform'), ('--epoch', 0), ('--batch', 0), ('--samples', 0),
    ('--nu', 0), ('--samples', 50, '--batch', 100), ('--lr', 'nan'), ('--lr', 'inf'), ('--lr', 0), ('--lr', -1e-3),
    ('--b1', 1.0), ('--b2', -0.1), ('--b1', 'x'), ('--device', 'cuda'), ('--device', 'mps'), ('--images', 'afile/sub'),
    ('--ckpt', 'afile/nce.pth.tar'), ('--resume', 'False'), ('--eval-every', -1), ('--fourier', -1), ('--fourier-std', 0),
    ('--fourier-std', 'nan'), ('--base', -1), ('--base', 'inf'),
])
def test_bad_arguments_are_one_line_errors(args, tmp_path, monkeypatch, capsys):
    """Checked in-process: get_args exits 2 with one 'error:' line before main, the only writer, could run."""
    import train
    if '--device' in args and (torch.cuda.is_available() if 'cuda' in args else torch.backends.mps.is_available()):
        pytest.skip('that device is present here')
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'afile').write_text('a file, not a folder')
    with pytest.raises(SystemExit) as e:
        train.get_args([str(a) for a in args])
    assert e.value.code == 2
    error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ['afile']


@pytest.mark.parametrize('args', [('--dataset', 'spirals'), ('--lr', 'nan')])
def test_bad_arguments_end_to_end_write_nothing(run, tmp_path, args):
    p = run('train.py', *args)
    assert_one_line_error(p)
    assert os.listdir(tmp_path) == []


def refused_here(capsys, *argv):
    """train.py ARGV in this process: exit 2 and one 'error:' line; returns it."""
    capsys.readouterr()     # what ran before
    with pytest.raises(SystemExit) as e:
        train_here(*argv)
    assert e.value.code == 2
    return error_line(capsys.readouterr().err)


def test_resume_refuses_missing_corrupt_and_mismatched_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert 'no checkpoint at ckpts/nce.pth.tar' in refused_here(capsys, '--resume')
    train_here('--epoch', 1, '--eval-every', 0, '--no-plot', *SMALL)
    ck = tmp_path / 'ckpts/nce.pth.tar'
    before = digest(ck)
    for args, word in ((('--dataset', 'rings'), 'dataset'), (('--hidden', 64), 'network'), (('--preset', 'strong'), 'preset'),
                       (('--samples', 500, '--batch', 100), 'samples'), (('--method', 'rank'), 'method'), (('--optim', 'ngd'), 'optim')):
        err = refused_here(capsys, '--resume', '--epoch', 1, '--no-plot', *SMALL[2:], *(SMALL[:2] if '--samples' not in args else ()), *args)
        assert word in err and 'nce.pth.tar' in err
        assert digest(ck) == before
    (tmp_path / 'ckpts/broken.pth.tar').write_bytes(b'not a checkpoint at all')
    assert 'broken.pth.tar' in refused_here(capsys, '--resume', '--ckpt', 'ckpts/broken.pth.tar', *SMALL)


class Exploit:
    def __reduce__(self):
        return (os.system, ('touch PWNED',))


def test_a_checkpoint_with_pickled_code_is_refused_and_nothing_runs(run, tmp_path):
    (tmp_path / 'ckpts').mkdir()
    torch.save({'energy': {}, 'payload': Exploit()}, tmp_path / 'ckpts/nce.pth.tar')
    p = run('train.py', '--resume', *SMALL)
    assert_one_line_error(p)
    assert 'refused' in p.stderr
    assert not (tmp_path / 'PWNED').exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(run, tmp_path):
    assert run('train.py', '--epoch', 1, '--eval-every', 0, '--no-plot', *SMALL).returncode == 0
    before = digest(tmp_path / 'ckpts/nce.pth.tar')
    p = run('train.py', '--resume', '--epoch', 3, '--lr', 1e30, '--eval-every', 0, '--no-plot', *SMALL)
    assert p.returncode != 0 and 'Traceback' not in p.stderr
    assert 'non-finite loss at epoch 1, step' in p.stderr
    assert digest(tmp_path / 'ckpts/nce.pth.tar') == before


def start(tmp_path, *args):
    """train.py ARGS in the background, with Ctrl-C's default meaning restored: a shell that starts the tests in the
    background (or a test runner's worker) may ignore SIGINT, and its children would inherit that."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'train.py'), *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, timeout=60):
    t = time.time()
    while not path.exists():
        assert time.time() - t < timeout
        time.sleep(0.02)


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    ck = tmp_path / 'ckpts/nce.pth.tar'
    for delay in (0.0, 0.13, 0.37):
        proc = start(tmp_path, '--epoch', 10000, '--samples', 200, '--batch', 100, '--eval-every', 0, '--no-plot')
        wait_for(ck)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        assert load_checkpoint(ck)['epoch'] >= 0
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--resume', '--epoch', '1', '--samples', '200',
                            '--batch', '100', '--eval-every', '0', '--no-plot'], cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def test_ctrl_c_ends_cleanly_and_says_how_to_resume(tmp_path):
    proc = start(tmp_path, '--epoch', 10000, '--samples', 200, '--batch', 100, '--eval-every', 0, '--hidden', 16,
                 '--ckpt', 'run/n.pth.tar', '--images', 'run')
    wait_for(tmp_path / 'run/n.pth.tar')
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'Traceback' not in err
    assert not [f for f in os.listdir(tmp_path / 'run') if f.endswith('.tmp')]
    done = load_checkpoint(tmp_path / 'run/n.pth.tar')['epoch']
    assert (tmp_path / f'run/epoch_{done}.png').exists()
    # the command it prints continues the run
    command = err.strip().splitlines()[-1].split('continue with: python train.py ')[1]
    assert command.startswith(f'--resume --epoch {10000 - done - 1} ')     # the epochs it had left
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *command.split(), '--epoch', '1'], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(tmp_path / 'run/n.pth.tar')['epoch'] == done + 1


def test_a_cosine_run_interrupted_and_resumed_by_the_printed_command_is_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """Ctrl-C after epoch 0 of 3; the command it prints resumes with the 2 epochs left, so the cosine schedule
    keeps its length and the run ends exactly where the uninterrupted one does."""
    import shlex

    import files
    import train
    monkeypatch.chdir(tmp_path)
    common = ['--samples', '300', '--batch', '64', '--schedule', 'cosine', '--lr', '0.01', '--hidden', '16', '--nu', '3',
              '--fourier', '4', '--eval-every', '0', '--no-plot', '--epoch', '3']
    train.main(train.get_args([*common, '--ckpt', 'a.pth.tar']))
    write_metrics = files.write_metrics
    def interrupt(*a):                   # Ctrl-C just after the first checkpoint is written
        monkeypatch.setattr(files, 'write_metrics', write_metrics)
        raise KeyboardInterrupt
    monkeypatch.setattr(files, 'write_metrics', interrupt)
    with pytest.raises(SystemExit) as e:
        train.main(train.get_args([*common, '--ckpt', 'b.pth.tar']))
    assert e.value.code == 130 and load_checkpoint(tmp_path / 'b.pth.tar')['epoch'] == 0
    command = capsys.readouterr().err.strip().splitlines()[-1].split('continue with: python train.py ')[1]
    assert command.startswith('--resume --epoch 2 ')
    train.main(train.get_args(shlex.split(command)))
    whole, split = load_checkpoint(tmp_path / 'a.pth.tar'), load_checkpoint(tmp_path / 'b.pth.tar')
    assert split['epoch'] == whole['epoch'] == 2
    assert all(torch.equal(whole['energy'][k], split['energy'][k]) for k in whole['energy'])


def test_ctrl_c_while_the_checkpoint_is_written_names_the_epoch_it_holds(tmp_path, monkeypatch, capsys):
    """A Ctrl-C that arrives during the second epoch's save is held until the save ends: the run then stops
    saying the checkpoint holds epoch 1, which it does, and its command resumes with the 1 epoch left."""
    import files
    import train
    monkeypatch.chdir(tmp_path)
    save, saves = files.save_checkpoint, []
    def save_interrupted(state, path):
        saves.append(state['epoch'])
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        save(state, path)
    monkeypatch.setattr(files, 'save_checkpoint', save_interrupted)
    with pytest.raises(SystemExit) as e:
        train.main(train.get_args(['--samples', '200', '--hidden', '16', '--eval-every', '0', '--no-plot', '--epoch', '3']))
    err = capsys.readouterr().err
    assert e.value.code == 130 and saves == [0, 1]
    assert load_checkpoint(tmp_path / 'ckpts/nce.pth.tar')['epoch'] == 1
    assert 'holds epoch 1' in err and 'continue with: python train.py --resume --epoch 1 ' in err


def test_an_epoch_of_batches_uses_every_point_once_with_nu_noise_samples_each():
    import methods
    from data import sample_2d_data
    from noise import make_noise
    torch.manual_seed(0)
    x = sample_2d_data('moons', 250, torch.Generator().manual_seed(0))
    noise = make_noise('gaussian', x)
    steps = list(methods.batches(x, noise.log_prob(x), noise, 3, 100))
    assert [(len(u), len(s), len(q)) for u, s, q in steps] == [(400, 400, 400), (400, 400, 400), (200, 200, 200)]
    for u, s, log_q in steps:          # n data, then 3n noise samples, with their labels and log q
        n = len(u) // 4
        assert torch.equal(s, torch.cat([torch.ones(n), -torch.ones(3 * n)]))
        assert torch.allclose(log_q, noise.log_prob(u))
    seen = torch.cat([u[:len(u) // 4] for u, _, _ in steps])
    assert torch.equal(seen[seen[:, 0].argsort()], x[x[:, 0].argsort()])          # a permutation of the data
    gens = torch.cat([u[len(u) // 4:] for u, _, _ in steps])
    assert gens.std().item() == pytest.approx(2.0, rel=0.1)                        # fresh draws from N(0, 4I)


def test_a_run_removes_the_temporary_files_a_killed_run_left_and_nothing_else(run, tmp_path):
    (tmp_path / 'ckpts').mkdir()
    (tmp_path / 'images').mkdir()
    leftovers = ['ckpts/.nce.pth.tar.k3j_x9a1.tmp', 'ckpts/.metrics.csv.0abc.tmp', 'images/.epoch_3.png.zz12.tmp',
                 'images/.curves.png.q1.tmp']
    others = ['ckpts/.other.pth.tar.k3j_x9a1.tmp', 'ckpts/notes.tmp', 'images/.epoch_3.png.txt', 'images/.mine.tmp']
    for f in leftovers + others:
        (tmp_path / f).write_text('x')
    assert run('train.py', '--epoch', 1, '--eval-every', 0, '--no-plot', *SMALL).returncode == 0
    assert [f for f in leftovers if (tmp_path / f).exists()] == []
    assert all((tmp_path / f).exists() for f in others)


FAULTS = """import resource, sys, torch
import memory
from evaluate import evaluate
from model import EBM
if sys.argv[1] == 'keep':
    memory.keep_freed_memory()
energy, x_test = EBM(), torch.randn(20000, 2)
for _ in range(3):
    evaluate(energy, x_test)
rounds = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        evaluate(energy, x_test)
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
print(min(rounds))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_keep_freed_memory_stops_the_page_faults_of_each_evaluation():
    """Each evaluation allocates and frees MB-sized tensors; with glibc's defaults their pages are handed back
    and faulted in again every time, after memory.keep_freed_memory() they are reused. The faults an evaluation are
    the least of 4 rounds of 3: under the other test workers' load one round once took 2090, the steady state 0 to 51."""
    faults = {how: float(subprocess.run([sys.executable, '-c', FAULTS, how], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout) for how in ('default', 'keep')}
    assert faults['keep'] < 1000 and faults['keep'] * 10 < faults['default'], faults
