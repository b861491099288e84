"""What a run needs of the machine: its peak memory estimated from its flags, what the machine has free, and glibc's
setting that keeps freed memory for the next epoch's tensors."""
import os

import torch

import evaluate
import flow
from noise import LEARNED


def gb(n):
    return f'{n / 2**30:.1f} GB' if n >= 2**30 else f'{n / 2**20:.0f} MB'


def needed(args):
    """Bytes a run needs at its peak, by part, estimated from its settings before anything is allocated
    (float32 tensors of 4 bytes, indices of 8)."""
    n, rows = args.samples, (1 + args.nu) * args.samples
    width_in, h = 2 + 2 * args.fourier, args.hidden
    params = width_in * h + h + (args.depth - 1) * (h * h + h) + h + 1 + 2 * args.fourier
    activations = width_in + 2 * args.depth * h           # per row: the input, and each layer's output and activation
    return {'training data': 96 * n,                       # drawn in float64, then x, log q and the epoch's order
            # an epoch's data and noise, labels, log q, their reordering and the steps' values: 96 to 420 bytes a
            # row were measured at 4 to 10 million rows, how much depending on how the allocator reuses memory
            "an epoch's noise": 420 * rows,
            'network and Adam state': 16 * params,          # weights, gradients and two moments
            'a step': 8 * (1 + args.nu) * args.batch * activations,   # activations and their gradients
            # a chunk of the grid (the larger), with Fourier features the inputs at every point (fixed_inputs), and
            # a region refined to its finest (evaluate.plane, at most MAX_CELLS): 20 bytes a cell for its points, log p
            # and the masks of its colours and edges
            'evaluation': 4 * evaluate.CHUNK * activations + 2**22 + (4 * width_in * evaluation_points() if args.fourier else 0)
                          + 20 * evaluate.MAX_CELLS if args.eval_every != 0 else 0,
            # a learned noise: the flow's weights, gradients and Adam state, and what its passes keep for the
            # backward, 5 tensors of hidden floats a row and a layer, for a step's rows or a chunk of the grid
            'the flow': 16 * args.flow_layers * (args.flow_hidden ** 2 + 5 * args.flow_hidden + 2)
                        + 20 * args.flow_layers * args.flow_hidden * max((1 + args.nu) * args.batch, flow.CHUNK)
                        if args.noise in LEARNED else 0,
            'the rest': 2**28}                               # torch, matplotlib and the frame


def evaluation_points():
    """The points an evaluation passes through the network: the window's grid, the cells beyond it, the held-out set."""
    return evaluate.GRID_N ** 2 + len(evaluate.ring(evaluate.PLOT_LIM, evaluate.Z_LIM, 8 * evaluate.PLOT_LIM / evaluate.GRID_N)) + evaluate.TEST_SAMPLES


def available(device):
    """Bytes this process may still allocate on device, or None where we cannot tell: a CUDA device's free
    memory; on Linux, MemAvailable, capped by a container's (cgroup's) limit; elsewhere the physical memory."""
    if device == 'cuda':
        return torch.cuda.mem_get_info()[0]
    try:
        with open('/proc/meminfo') as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
        except (AttributeError, ValueError, OSError):
            return None
    try:
        with open('/sys/fs/cgroup/memory.max') as f, open('/sys/fs/cgroup/memory.current') as g:
            limit = f.read().strip()
            if limit != 'max':
                available = min(available, int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return available


def keep_freed_memory():
    """Have glibc keep the memory the process frees for its next tensors, instead of handing every freed
    block over 128 KB back to the system and faulting its pages in again on the next allocation: each epoch
    allocates the same few MB-sized tensors, and on our 2-core VM that cost 35000 to 50000 page faults an
    epoch, a third of its time. The peak memory stays the same. Does nothing where the C library is not
    glibc (macOS, Windows, musl)."""
    import ctypes
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's malloc.h
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)        # blocks up to 32 MB from the heap (glibc's own upper bound)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)         # and the heap's freed top kept, not returned
