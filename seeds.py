"""One --seed, independent random streams: a stream of its own for each purpose a run draws for.

Seeding two generators with the same integer gives them the same stream (torch.Generator().manual_seed(s) and
torch.manual_seed(s) draw identical numbers), so the integer a user passes is never handed to a generator. numpy's
SeedSequence hashes it into one child per purpose, each child's first 64-bit word seeds that purpose's generator,
and no purpose draws from another's (docs/runs.md).
"""
import contextlib

import numpy as np
import torch

PURPOSES = (
    'data',     # the training data (torch.Generator)
    'init',     # the initialisation: the EBM's weights and Fourier frequencies, a flow's weights (the global RNG)
    'train',    # the training's own draws: data order, noise samples, a flow's fit, anything a method samples
    'test',     # the held-out set the exact evaluation scores on (torch.Generator)
    'mixture',  # the k-means start of scikit-learn's Gaussian mixtures (--noise gmm, results.py's GMM)
)


def entropy(seed):
    """The seed as SeedSequence's entropy, which takes non-negative words only: the seed's two's-complement low and
    high 32 bits and its sign, one-to-one on every seed train.py accepts ([-2^63, 2^64))."""
    return [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, int(seed < 0)]


def streams(seed):
    """The seed of each purpose's generator, by name: 64-bit integers, but 32-bit for scikit-learn's 'mixture'."""
    children = np.random.SeedSequence(entropy(seed)).spawn(len(PURPOSES))
    out = {p: int(child.generate_state(1, np.uint64)[0]) for p, child in zip(PURPOSES, children, strict=True)}
    out['mixture'] = int(children[PURPOSES.index('mixture')].generate_state(1, np.uint32)[0])
    return out


def legacy_streams(seed):
    """The previous release's seeds, for resuming its checkpoints on the data they were trained on: it seeded the data,
    the initialisation and the training alike with the seed itself (the very defect these streams remove), the
    held-out set with s + 2**32 and the mixtures with 0."""
    return dict(data=seed, init=seed, train=seed, test=seed + 2**32, mixture=0)


def generator(stream_seed, device='cpu'):
    """A fresh torch.Generator on device, seeded with one purpose's seed from streams()."""
    return torch.Generator(device).manual_seed(stream_seed)


def seed_global(stream_seed):
    """Seed torch's global RNG (CPU and every GPU), from which the initialisation and the training draw."""
    torch.manual_seed(stream_seed)


def estimate_stream(seed):
    """The seed of logz.py's draws for `seed`: the SeedSequence's next child after PURPOSES, so that they share no
    stream with training, and a checkpoint's streams stay the five it keeps."""
    child = np.random.SeedSequence(entropy(seed)).spawn(len(PURPOSES) + 1)[-1]
    return int(child.generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def global_from(gen):
    """A context in which torch's global RNG, from which torch.distributions draw, is seeded from the generator gen,
    and after which it is as it was: for draws that must come from gen's stream."""
    device = gen.device
    seed = int(torch.randint(2**62, (), generator=gen, device=device))
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == 'cuda' else [], device_type=device.type):
        torch.manual_seed(seed)
        yield
