"""The NCE objective, exact evaluation by quadrature on a grid, and safe file writing and loading."""
import contextlib
import math
import os
import signal
import tempfile
import threading

import torch
import torch.nn.functional as F


def value(energy, noise, x, gen, nu=1, log_q=None):
    """-V(θ) and the classification accuracy, for ν = len(gen) / len(x) noise samples per data sample:

        V(θ) = E_data log σ(G(x)) + ν E_noise log σ(-G(x̃)),   G(u) = log p_θ(u) - log q(u) - log ν,

    the logistic-regression log-likelihood of telling data from noise (Gutmann & Hyvärinen 2012); at
    ν = 1 this is the original E log p/(p+q) + E log q/(p+q). With n data and νn noise samples both
    averages weigh each term by 1/n, so V = (1/n) Σ_u log σ(s_u G(u)) over the whole batch, with the label
    s = +1 on data and -1 on noise. log σ keeps it finite for any logit. Data and noise go through the
    network in one pass; `log_q` may pass log q at [x; gen] where it is already known (the training loop
    computes it once an epoch). The accuracy stays a tensor (no host sync)."""
    u = torch.cat([x, gen])
    if log_q is None:
        log_q = noise.log_prob(u)
    logit = energy(u).squeeze(1) - log_q - math.log(nu)
    s_logit = torch.cat([logit[:len(x)], -logit[len(x):]])
    return -F.logsigmoid(s_logit).sum() / len(x), (s_logit > 0).sum() / len(u)


def nce_backward(energy, u, s, log_q, nu):
    """Store the gradient of -V(θ) in each parameter's .grad, bit for bit as value(...)[0].backward() would,
    for a batch u = [x; gen] of n data and νn noise samples with labels s = +1 on data and -1 on noise and
    log q at u. Returns s·G(u), from which step_values gets -V and the accuracy. As d log σ(t)/dt = σ(-t),

        d(-V)/d log p_θ(u) = -s σ(-s G(u)) / n,

    which EBM.log_p_and_backward carries back to the weights (autograd's own kernel for log σ's derivative
    keeps the bits equal)."""
    n = len(u) // (1 + nu)
    log_p, backward = energy.log_p_and_backward(u)
    s_logit = s * (log_p - log_q - math.log(nu))
    _, buffer = torch.ops.aten.log_sigmoid_forward(s_logit)
    backward(s * torch.ops.aten.log_sigmoid_backward(torch.full_like(s_logit, -1 / n), s_logit, buffer))
    return s_logit


def step_values(logits, nu):
    """-V(θ) and the accuracy of each step, as value() computes them, from the s·G(u) of each step's batch
    (a list of 1-D tensors): for a whole epoch at once, rather than a few small ops in every step."""
    s_logit = torch.nn.utils.rnn.pad_sequence(logits, batch_first=True)    # (steps, longest); a last, short batch is padded
    sizes = torch.tensor([len(l) for l in logits], device=s_logit.device)
    real = torch.arange(s_logit.shape[1], device=s_logit.device) < sizes[:, None]
    return (-(F.logsigmoid(s_logit) * real).sum(1) * (1 + nu) / sizes,
            ((s_logit > 0) & real).sum(1) / sizes)


NOISES = ('gaussian', 'fit', 'gmm')


def make_noise(kind, data):
    """The noise distribution q, on data's device. NCE needs q > 0 wherever the data has mass, its log
    density in closed form, and cheap samples; every choice here is a torch.distributions object."""
    import torch.distributions as D
    # validate_args=False: validation would check every log_prob's input with a host sync, once a step
    no_check = dict(validate_args=False)
    device = data.device
    if kind == 'gaussian':          # the original N(0, 4I), as a product of two N(0, 2²): closed form, no Cholesky
        return D.Independent(D.Normal(torch.zeros(2, device=device), torch.full((2,), 2.0, device=device), **no_check), 1, **no_check)
    mean, cov = data.mean(0), torch.cov(data.T)
    if kind == 'fit':               # the data's mean and covariance, each std doubled: every data point sits well inside
        return D.MultivariateNormal(mean, 4 * cov, **no_check)
    if kind == 'gmm':
        from sklearn.mixture import GaussianMixture
        gm = GaussianMixture(16, covariance_type='full', random_state=0).fit(data.cpu().double().numpy())
        w = torch.as_tensor(gm.weights_, dtype=torch.float32)
        mu = torch.as_tensor(gm.means_, dtype=torch.float32)
        # widen each component (covariance x 2, plus 0.05² I) and mix in 10% of a broad Gaussian over the whole
        # data, so q has heavy enough tails where the data has no mass and the model can be told apart there
        sigma = 2 * torch.as_tensor(gm.covariances_, dtype=torch.float32) + 0.0025 * torch.eye(2)
        w = torch.cat([0.9 * w, torch.tensor([0.1])])
        mu = torch.cat([mu, mean.cpu()[None]])
        sigma = torch.cat([sigma, 4 * cov.cpu()[None]])
        return D.MixtureSameFamily(D.Categorical(probs=w.to(device), **no_check),
                                   D.MultivariateNormal(mu.to(device), sigma.to(device), **no_check), **no_check)
    raise ValueError(f'unknown noise {kind!r}; choose from {", ".join(NOISES)}')


FUSED_ADAM = getattr(torch, '_fused_adam_', None)   # the kernel behind torch.optim.Adam(fused=True)


def adam_init(params):
    """Adam's state for these parameters: step count and first and second moments (plain tensors, so a
    checkpoint holds it without pickled objects)."""
    return dict(step=[torch.zeros((), device=p.device) for p in params],
                m=[torch.zeros_like(p) for p in params], v=[torch.zeros_like(p) for p in params])


def adam_step(params, state, lr, b1, b2, eps=1e-8):
    """One Adam update (Kingma & Ba 2015), the same arithmetic as torch.optim.Adam(fused=True): we call its
    fused kernel directly, which skips the optimizer's per-step Python work and the 1.3 s import of
    torch._dynamo that torch.optim triggers. Where the kernel is missing, the same update in plain ops."""
    grads = [p.grad for p in params]
    torch._foreach_add_(state['step'], 1)
    if FUSED_ADAM is not None:
        FUSED_ADAM(params, grads, state['m'], state['v'], [], state['step'], lr=lr, beta1=b1, beta2=b2,
                   weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        return
    for p, g, m, v, t in zip(params, grads, state['m'], state['v'], state['step']):
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        # p -= lr m̂ / (sqrt(v̂) + eps), with m̂ = m / (1 - b1^t) and v̂ = v / (1 - b2^t)
        p.data.sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))


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


def lr_schedule(kind, lr, total):
    """The learning rate at each step: constant (the original), or a cosine decay to 0 over `total` steps."""
    if kind == 'cosine':
        return lambda step: lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return lambda step: lr


# ----------------------------------------------------------------------------------------------------
# exact evaluation: in 2D the integral over x can be done on a grid

PLOT_LIM = 4.0   # the data lives in [-4, 4]²; the plots show this window
GRID_N = 320     # cells across that window, for the plot and the quadrature alike (side 0.025)


def grid(lim, n, device='cpu'):
    """Midpoints of an n×n grid of square cells on [-lim, lim]², shape (n*n, 2); row i of the image is y_i."""
    t = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (2 * lim / n) - lim
    y, x = torch.meshgrid(t, t, indexing='ij')
    return torch.stack([x.flatten(), y.flatten()], 1)


@torch.inference_mode()
def log_p_on(energy, points, chunk=8192):
    """log p_θ at many points, in chunks so that the activations stay a few MB, shape (N,)."""
    return torch.cat([energy(p).squeeze(1) for p in points.split(chunk)])


def window_log_p(energy, n=GRID_N):
    """log p_θ on the n×n grid of the data window [-4, 4]², shape (n, n): the plot's image."""
    return log_p_on(energy, grid(PLOT_LIM, n, energy.c.device)).view(n, n)


@torch.inference_mode()
def log_partition(energy, lim=8.0, n=GRID_N, log_p=None):
    """log Z(θ) = log ∫ exp(-f_θ(x)) dx over [-lim, lim]², by the midpoint rule.

    Cells of side h = 8/n on the data window [-4, 4]² (n = 320: h = 0.025, a third of the rings' noise
    std 0.08), and of side 4h on the rest, where no data is and the model is smooth and small. `log_p`
    may pass log p_θ on the fine grid, shape (n, n), as computed for the plot, to evaluate it only once.
    Everything is float32 (mps has no float64); the sum is a logsumexp, so no precision is lost."""
    h = 2 * PLOT_LIM / n
    m = 2 * lim / (4 * h)
    if lim < PLOT_LIM or abs(m - round(m)) > 1e-6 or n % 8:
        raise ValueError(f'need lim >= {PLOT_LIM}, n a multiple of 8 and (lim - {PLOT_LIM}) a multiple of 4·8/n; got lim={lim}, n={n}')
    if log_p is None:
        log_p = window_log_p(energy, n)
    outer = grid(lim, round(m), energy.c.device)
    outer = outer[(outer.abs() > PLOT_LIM).any(1)]
    # log p_θ = -f_θ - c, so ∫ exp(-f_θ) = exp(c) ∫ p_θ
    return torch.logsumexp(torch.cat([log_p.flatten() + 2 * math.log(h),
                                      log_p_on(energy, outer) + 2 * math.log(4 * h)]), 0) + energy.c.detach().squeeze()


@torch.inference_mode()
def evaluate(energy, x_test, entropy=None, n=GRID_N):
    """Exact metrics of the model: c, log_z (quadrature), the test NLL of the normalised model and, given the
    true density's entropy estimate H = mean -log p_data on the same x_test, KL(p_data || p_θ) = NLL - H.
    Also returns log p_θ on the plot's grid, so the plot reuses this evaluation."""
    log_p = window_log_p(energy, n)
    log_z = log_partition(energy, n=n, log_p=log_p)
    c = energy.c.detach().squeeze()
    nll = -(log_p_on(energy, x_test).mean() + c - log_z)
    out = dict(c=c.item(), log_z=log_z.item(), nll=nll.item())
    out['kl'] = out['nll'] - entropy if entropy is not None else None
    return out, log_p


# ----------------------------------------------------------------------------------------------------
# files: written whole or not at all, read without running anything

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
