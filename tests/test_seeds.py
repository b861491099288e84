"""One --seed, independent streams: no purpose draws another's numbers, no run seeds two generators alike, and a
checkpoint of the release before the streams resumes on the data it was trained on."""
import math
import os
import re
import shutil

import pytest
import sklearn.mixture
import torch

import seeds
import train
from conftest import ROOT
from files import load_checkpoint

SEEDS = (0, 1, 2, 7, 123456789, -1, 2**32, 2**63)


def first_draws(stream_seed, n=8):
    return torch.rand(n, generator=torch.Generator().manual_seed(stream_seed), dtype=torch.float64)


def test_each_purpose_draws_numbers_no_other_purpose_or_seed_draws():
    streams = {(s, p): v for s in SEEDS for p, v in seeds.streams(s).items()}
    assert len(set(streams.values())) == len(streams)           # no two purposes, of one seed or of two, share a seed
    draws = {k: first_draws(v) for k, v in streams.items()}
    for s in SEEDS:
        raw = first_draws(s % 2**64)                             # what torch.manual_seed(s) would draw: the old defect
        for p in seeds.PURPOSES:
            assert not torch.isin(draws[s, p], raw).any(), (s, p)
            for (t, q), other in draws.items():
                if (t, q) != (s, p):
                    assert not torch.isin(draws[s, p], other).any(), ((s, p), (t, q))
    # scikit-learn's mixtures draw from numpy with their own 32-bit seed, not one of torch's
    assert all(0 <= seeds.streams(s)['mixture'] < 2**32 for s in SEEDS)


def test_the_streams_are_fixed_by_the_seed_and_documented():
    assert seeds.streams(5) == seeds.streams(5) and seeds.streams(5) != seeds.streams(6)
    assert seeds.streams(-1) != seeds.streams(2**64 - 1) and seeds.streams(-(2**32)) != seeds.streams(2**32)
    doc = open(os.path.join(ROOT, 'docs/runs.md')).read()
    assert 'SeedSequence' in doc and all(f'`{p}`' in doc for p in seeds.PURPOSES)


class Recorded:
    """Every seed a run hands to a generator: torch's global RNG, a torch.Generator, a scikit-learn mixture."""

    def __init__(self, monkeypatch):
        self.seeds = []
        seen = self.seeds
        manual_seed = torch.manual_seed

        class Generator(torch.Generator):
            def manual_seed(self, s):
                seen.append(('generator', s))
                return super().manual_seed(s)

        class GaussianMixture(sklearn.mixture.GaussianMixture):
            def fit(self, x, y=None):
                seen.append(('mixture', self.random_state))
                return super().fit(x, y)

        monkeypatch.setattr(torch, 'Generator', Generator)
        monkeypatch.setattr(torch, 'manual_seed', lambda s: seen.append(('global', s)) or manual_seed(s))
        monkeypatch.setattr(sklearn.mixture, 'GaussianMixture', GaussianMixture)
        train.held_out.cache_clear()        # a held-out set an earlier run of this process drew is not drawn again


@pytest.mark.parametrize('noise', ['gmm', 'flow'])
def test_a_run_never_seeds_two_generators_alike(noise, monkeypatch, tmp_path):
    rec = Recorded(monkeypatch)
    argv = ['--seed', 3, '--samples', 300, '--epoch', 1, '--noise', noise, '--flow-fit', 5, '--no-plot', '--ckpt', tmp_path / 'c.pth.tar']
    train.main(train.get_args([str(a) for a in argv]))
    used = [s for _, s in rec.seeds]
    streams = seeds.streams(3)
    purposes = [p for p in seeds.PURPOSES if p != 'mixture' or noise == 'gmm']     # only gmm fits a mixture
    assert len(used) == len(set(used)) == len(purposes)         # each purpose seeded once, none like another
    assert set(used) == {streams[p] for p in purposes} and 3 not in used
    assert load_checkpoint(tmp_path / 'c.pth.tar')['streams'] == seeds.streams(3)


@pytest.mark.parametrize('method', ['mle', 'gmm', 'fce'])
def test_results_jobs_seed_every_generator_from_its_own_stream(method, monkeypatch):
    import results
    rec = Recorded(monkeypatch)
    results.run_job('8gaussians', method, 2, dict(samples=300, strong_samples=300, budget=0.004, gmm_max_k=2, curves=False))
    streams = seeds.streams(2)
    assert {s for _, s in rec.seeds} <= set(streams.values()) and 2 not in {s for _, s in rec.seeds}
    # a purpose is seeded again only by a second model of the same job (fce's reference flow), never by another purpose
    for kind, s in rec.seeds:
        purpose = next(p for p, v in streams.items() if v == s)
        assert (kind, purpose) in {('generator', 'data'), ('generator', 'test'), ('global', 'init'), ('global', 'train'),
                                   ('mixture', 'mixture')}


def test_no_script_seeds_a_generator_but_seeds_py():
    scripts = [f for f in os.listdir(ROOT) if f.endswith('.py')] + ['images/create_gif.py']
    for name in scripts:
        text = open(os.path.join(ROOT, name)).read()
        if name != 'seeds.py':
            assert not re.search(r'manual_seed\(|random_state=\d', text), name


def test_a_checkpoint_of_the_previous_release_resumes_as_it_was_written(run, tmp_path):
    """tests/data holds a run of the release before the streams (--samples 500 --hidden 16 --seed 3 --noise gmm):
    its epoch-0 checkpoint and, from a straight 2-epoch run, its epoch-1 checkpoint. Resumed here for one epoch,
    the first must become the second: same data, same mixture, same held-out set. Bit for bit on the CPU that wrote
    them; on another, MKL's matrix products may round in another order, which moves a weight by an ulp (1.5e-8 seen
    on an Intel CPU, for files written on an AMD one), so the weights are compared to float32's precision."""
    data = os.path.join(ROOT, 'tests/data')
    shutil.copy(os.path.join(data, 'previous-release-epoch0.pth.tar'), tmp_path / 'nce.pth.tar')
    shutil.copy(os.path.join(data, 'previous-release-epoch0.metrics.csv'), tmp_path / 'metrics.csv')
    p = run('train.py', '--resume', '--epoch', 1, '--samples', 500, '--hidden', 16, '--seed', 3, '--noise', 'gmm',
            '--no-plot', '--ckpt', tmp_path / 'nce.pth.tar')
    assert p.returncode == 0, p.stderr
    got, want = load_checkpoint(tmp_path / 'nce.pth.tar'), load_checkpoint(os.path.join(data, 'previous-release-epoch1.pth.tar'))
    assert all(torch.allclose(got['energy'][k], want['energy'][k], rtol=1e-6, atol=1e-7) for k in want['energy'])
    # its KL was written over [-8, 8]²; over the whole plane this barely trained 16-wide network is not normalisable
    # (its energy does not grow in some direction), and says so rather than give a finite figure
    assert want['history'][-1]['kl'] == pytest.approx(2.68128312112093, rel=1e-9)
    assert got['history'][-1]['log_z'] == got['history'][-1]['kl'] == math.inf and got['history'][-1]['outside'] == 1.0
    assert got['streams'] == seeds.legacy_streams(3)            # it goes on with the streams it was written with
