"""Checkpoints that load but do not fit: each is refused with one line naming what is wrong, and nothing is touched;
one with keys this version does not know still resumes."""
import hashlib
import os
import shutil

import pytest
import torch

import resume
import train

RUN = ['--samples', 200, '--batch', 100, '--hidden', 8, '--noise', 'fce', '--flow-layers', 2, '--flow-hidden', 8,
       '--ckpt', 'run/n.pth.tar', '--images', 'run/frames']


def argv(*extra):
    return [str(a) for a in RUN + list(extra)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 2-epoch fce run with its checkpoint, metrics.csv and frames, made once."""
    root = tmp_path_factory.mktemp('trained')
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train.main(train.get_args(argv('--epoch', 2)))
    finally:
        os.chdir(cwd)
    return root / 'run'


@pytest.fixture
def damaged(trained, tmp_path, monkeypatch):
    """Copy the run into tmp_path and return a function that damages its checkpoint and resumes it in this process,
    returning the error line and whether every file of the run is as it was, byte for byte."""
    shutil.copytree(trained, tmp_path / 'run')
    monkeypatch.chdir(tmp_path)

    def digests():
        return {p: hashlib.sha256(open(os.path.join(d, p), 'rb').read()).hexdigest()
                for d, _, names in os.walk('run') for p in names}

    def resume_with(damage, capsys):
        ck = torch.load('run/n.pth.tar', weights_only=True)
        damage(ck)
        torch.save(ck, 'run/n.pth.tar')
        before = digests()
        with pytest.raises(SystemExit) as e:
            train.main(train.get_args(argv('--resume', '--epoch', 1)))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and ': error: ' in err[0], err
        return err[0], digests() == before
    return resume_with


def put(path, value):
    """A damage that sets ck[path[0]][path[1]]... to value."""
    def damage(ck):
        for k in path[:-1]:
            ck = ck[k]
        ck[path[-1]] = value
    return damage


def drop(*path):
    def damage(ck):
        for k in path[:-1]:
            ck = ck[k]
        del ck[path[-1]]
    return damage


def scale(key, index, factor):
    def damage(ck):
        ck['optimizer'][key][index] = ck['optimizer'][key][index] * factor
    return damage


CASES = [   # what the checkpoint holds, and a word the error line must name
    (put(('energy', 'f.0.weight'), torch.zeros(3, 3)), 'shape (3, 3)'),
    (put(('history',), 'a string'), 'history is a str'),
    (put(('args',), [1, 2]), 'args is a list'),
    (drop('rng', 'cpu'), 'no cpu state'),
    (put(('optimizer', 'm'), [torch.zeros(8)]), "optimizer['m'] holds 1 tensors"),
    (put(('flow', 'w2'), torch.zeros(2, 3, 3)), 'flow[w2] has shape'),
    (put(('epoch',), '1'), "epoch is '1'"),
    (put(('epoch',), -5), 'epoch is -5'),
    # and more of the same kinds
    (drop('energy', 'f.2.bias'), 'energy lacks f.2.bias'),
    (put(('energy', 'f.9.weight'), torch.zeros(1)), 'energy has f.9.weight'),
    (lambda ck: ck['energy'].update(c=ck['energy']['c'].double()), 'torch.float64'),
    (lambda ck: ck['energy']['f.0.bias'].__setitem__(0, float('nan')), 'non-finite'),
    (put(('energy', 'c'), [1.0]), 'energy[c] is a list'),
    (put(('energy',), None), 'energy is a NoneType'),
    (put(('model_kwargs',), 'leaky_relu'), 'model_kwargs is a str'),
    (put(('model_kwargs', 'hidden'), '8'), "model_kwargs['hidden'] is a str"),
    (put(('optimizer',), []), 'optimizer is a list'),
    (drop('optimizer', 'v'), "optimizer['v'] holds a NoneType"),
    (scale('v', 0, -1.0), 'negative second moment'),
    (lambda ck: ck['optimizer']['v'][1].__setitem__(0, -1.0), 'negative second moment'),
    (put(('optimizer', 'step', 0), torch.tensor(-3.0)), 'not a count of steps'),
    (put(('optimizer', 'step', 0), torch.tensor(2.5)), 'not a count of steps'),
    (put(('optimizer', 'step', 0), torch.zeros(2)), "optimizer['step'][0] has shape (2,)"),
    (put(('optimizer', 'm', 1), torch.zeros(8, 2, dtype=torch.float16)), 'torch.float16'),
    (put(('optimizer', 'm', 2), 'zeros'), "optimizer['m'][2] is a str"),
    (put(('rng', 'cpu'), torch.zeros(5056, dtype=torch.uint8)), 'not a generator state'),
    (put(('rng', 'cpu'), torch.zeros(10, dtype=torch.uint8)), 'not a generator state'),
    (put(('rng', 'cpu'), torch.zeros(5056)), 'not a generator state'),
    (put(('rng', 'cuda'), 'state'), "rng['cuda'] is a str"),
    (put(('rng',), 7), 'rng is an int'),
    (put(('epoch',), 5), 'history of 2 epochs'),
    (put(('epoch',), True), 'epoch is True'),
    (put(('epoch',), 1.0), 'epoch is 1.0'),
    (drop('history', 1, 'value'), "history[1]['value'] is missing"),
    (put(('history', 0, 'kl'), 'low'), "history[0]['kl'] is a str"),
    (put(('history', 1, 'acc'), None), "history[1]['acc'] is a NoneType"),
    (put(('history', 0, 'epoch'), 1), 'history[0] is epoch 1'),
    (put(('history', 1), [1, 2]), 'history[1] is a list'),
    (put(('history', 1, 'flow_steps'), None), "history[1]['flow_steps'] is None"),
    (put(('history', 1, 'flow_steps'), -2), "history[1]['flow_steps'] is -2"),
    (drop('flow'), 'no flow'),
    (drop('flow_optimizer'), 'no flow_optimizer'),
    (put(('flow',), 'weights'), 'flow is a str'),
    (put(('flow', 'std'), -torch.ones(1, 2)), 'not positive'),
    (put(('flow', 'b3'), torch.full((2, 2), float('inf'))), 'non-finite'),
    (put(('flow_optimizer', 'm'), []), "flow_optimizer['m'] holds 0 tensors"),
    (drop('streams', 'init'), 'streams are not the seeds'),
    (put(('streams',), [1, 2, 3]), 'streams are not the seeds'),
    (put(('streams', 'mixture'), 2**40), 'mixture stream is seeded with'),
    (put(('streams', 'data'), -1), 'data stream is seeded with'),
    (put(('streams', 'test'), 'abc'), 'test stream is seeded with'),
    (put(('args', 'seed'), 1), 'trained with --seed 1, not 0'),
    (put(('args', 'flow_hidden'), 16), 'flow trained with --flow-hidden 16'),
]


@pytest.mark.parametrize('damage, words', CASES, ids=[w for _, w in CASES])
def test_a_checkpoint_that_does_not_fit_is_refused_with_one_line_and_nothing_is_touched(damaged, damage, words, capsys):
    err, untouched = damaged(damage, capsys)
    assert words in err and 'cannot be resumed' in err, err
    assert untouched


def test_a_damaged_checkpoint_run_as_a_script_gets_one_line_and_no_traceback(trained, tmp_path, run):
    shutil.copytree(trained, tmp_path / 'run')
    ck = torch.load(tmp_path / 'run/n.pth.tar', weights_only=True)
    ck['energy']['f.0.weight'] = torch.zeros(3, 3)
    torch.save(ck, tmp_path / 'run/n.pth.tar')
    p = run('train.py', *argv('--resume', '--epoch', 1))
    assert p.returncode == 2 and 'Traceback' not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_checkpoint_with_keys_this_version_does_not_know_resumes_as_it_would_without_them(trained, tmp_path, monkeypatch):
    shutil.copytree(trained, tmp_path / 'run')
    monkeypatch.chdir(tmp_path)
    ck = torch.load('run/n.pth.tar', weights_only=True)
    ck.update(future=dict(notes='from a later version', chains=torch.zeros(3, 2)))
    ck['history'][-1]['future_column'] = 1.5
    torch.save(ck, 'run/n.pth.tar')
    shutil.copytree('run', 'plain')
    train.main(train.get_args(argv('--resume', '--epoch', 1)))
    train.main(train.get_args(argv('--resume', '--epoch', 1, '--ckpt', 'plain/n.pth.tar', '--images', 'plain/frames')))
    a, b = torch.load('run/n.pth.tar', weights_only=True), torch.load('plain/n.pth.tar', weights_only=True)
    assert a['epoch'] == 2 and all(torch.equal(a['energy'][k], b['energy'][k]) for k in a['energy'])


def test_adam_moments_that_share_memory_in_the_file_are_restored_apart(trained):
    ck = torch.load(trained / 'n.pth.tar', weights_only=True)
    ck['optimizer']['v'] = ck['optimizer']['m']                 # loads, and would make Adam's two moments one tensor
    state = resume.adam_state(ck['optimizer'], 'cpu')
    state['m'][0].add_(1)
    assert not torch.equal(state['m'][0], state['v'][0])


def test_every_reader_of_checkpoints_checks_them(trained, tmp_path):
    ck = torch.load(trained / 'n.pth.tar', weights_only=True)
    ck['history'] = 'a string'
    torch.save(ck, tmp_path / 'bad.pth.tar')
    with pytest.raises(resume.Unfit, match='history is a str'):
        resume.load(tmp_path / 'bad.pth.tar')      # as results.py reads the checkpoint of each job
