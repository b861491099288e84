"""What the command line says: an error in at most two lines from every script, the notice of a run it replaces, the
record of a resumed run's changed flags, and help that reads."""
import csv
import os
import subprocess
import sys

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--epoch', '1', '--samples', '200', '--batch', '50']


@pytest.mark.parametrize('script, argv', [
    ('train.py', ['--lr', '-1']),
    ('train.py', ['--dataset', 'nope']),
    ('train.py', ['--method', 'cd', '--nu', '3']),
    ('results.py', ['--seeds', '0']),
    ('results.py', ['--methods', 'nope']),
    ('bench.py', ['--steps', 'x']),
    ('images/create_gif.py', ['--scale', '2']),
])
def test_every_script_errs_in_one_line_and_a_pointer_to_help(script, argv, tmp_path):
    """As a user runs them, in a fresh process: exit 2, the error first in argparse's words, then one line."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and out.stdout == '' and len(lines) == 2
    assert lines[0].startswith(f'{os.path.basename(script)}: error: argument ')
    assert lines[1] == f'try: python {os.path.join(ROOT, script)} --help'
    assert not os.listdir(tmp_path)


def run(tmp_path, *argv):
    args = train.get_args([*SMALL, '--ckpt', str(tmp_path / 'c/n.pt'), '--images', str(tmp_path / 'im'), *map(str, argv)])
    train.main(args)
    return args


def test_a_fresh_run_says_what_it_replaces_and_a_first_run_says_nothing(tmp_path, capsys):
    run(tmp_path)
    assert 'replacing' not in capsys.readouterr().out
    kl = train.resume.load(str(tmp_path / 'c/n.pt'))['history'][-1]['kl']
    run(tmp_path, '--dataset', 'rings')
    out = capsys.readouterr().out
    line, = [s for s in out.splitlines() if s.startswith('replacing')]
    assert line.startswith(f'replacing {tmp_path / "c/n.pt"} (nce on 8gaussians, 1 epoch, last KL {kl:.4f}) and ')
    assert f'2 frames in {tmp_path / "im"}/' in line       # epoch_0.png and curves.png
    assert out.index('replacing') < out.index('NCE on rings')


def test_a_damaged_checkpoint_is_named_as_such_and_nothing_else_is_said_of_it(tmp_path, capsys):
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c/n.pt').write_bytes(b'not a checkpoint')
    run(tmp_path, '--no-plot')
    assert f'replacing {tmp_path / "c/n.pt"} (not a checkpoint this script can read)' in capsys.readouterr().out


def test_a_resume_that_changes_the_lr_says_so_and_records_it_in_history_and_metrics(tmp_path, capsys):
    run(tmp_path, '--no-plot')
    capsys.readouterr()
    run(tmp_path, '--no-plot', '--resume', '--lr', '0.002', '--eval-every', '1')
    out = capsys.readouterr().out
    assert out.splitlines()[0] == 'lr 0.001 -> 0.002 from epoch 1' and out.count(' -> ') == 1
    ckpt = train.resume.load(str(tmp_path / 'c/n.pt'))
    assert [h.get('changes') for h in ckpt['history']] == [None, 'lr 0.001 -> 0.002 from epoch 1']
    assert ckpt['args']['lr'] == 0.002
    with open(tmp_path / 'c/metrics.csv') as f:
        assert [r['changes'] for r in csv.DictReader(f)] == ['', 'lr 0.001 -> 0.002 from epoch 1']
    # a resume that names no lr keeps the run's own, 0.002, and says nothing
    run(tmp_path, '--no-plot', '--resume')
    assert ' -> ' not in capsys.readouterr().out
    assert train.resume.load(str(tmp_path / 'c/n.pt'))['args']['lr'] == 0.002


def test_a_resume_that_changes_what_defines_the_run_is_refused_and_leaves_it(tmp_path, capsys):
    from conftest import refused
    run(tmp_path, '--no-plot')
    before = (tmp_path / 'c/n.pt').read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tmp_path, '--no-plot', '--resume', '--nu', '2')
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'it was trained with --nu 1, not 2; only --lr, --eval-every, --no-plot, --device may change' in err
    assert (tmp_path / 'c/n.pt').read_bytes() == before
    assert refused(train.get_args, ['--resume', '--lr', 'nan'], capsys).endswith('must be finite and positive, got nan')


def test_the_resume_command_carries_the_current_values():
    args = train.get_args(['--lr', '0.002', '--eval-every', '3', '--no-plot', '--device', 'cpu'])
    command = train.resume.command(args, 7)
    for flag in ('--epoch 7', '--lr 0.002', '--eval-every 3', '--no-plot', '--device cpu'):
        assert flag in command
    assert train.get_args(command.split()[2:]).lr == 0.002


def test_help_is_whole_and_lists_long_choices_once(capsys):
    import results
    for parse in (train.get_args, results.get_args):
        with pytest.raises(SystemExit):
            parse(['--help'])
        text = capsys.readouterr().out
        usage, rest = text.split('\n\n', 1)
        description = rest.split('\n\n')[0]
        assert description.rstrip().endswith('.') and 'options:' not in description
        assert 'swissroll' not in usage and text.count('swissroll') == 1
    with pytest.raises(SystemExit):
        train.get_args(['--help'])
    text = capsys.readouterr().out
    options = text[text.index('options:'):]
    method = options[options.index('--method METHOD'):options.index('\n  --optim')].splitlines()
    assert [s.split()[0] for s in method if s.startswith(' ' * 26) and not s.startswith(' ' * 27)] == list(train.methods.METHODS)
    assert '--method METHOD' in text.split('\n\n')[0]
