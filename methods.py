"""The estimators train.py runs (--method): a line on each, the flags that mean something for it, and its step,
built once per run. docs/estimators.md says where each sits in NCE's family and what it costs.

Most losses touch θ only through log p̃_θ at a set of points (data, noise, chain states, grid nodes): their step
takes dL/d log p̃ at those points from the loss (util.py, likelihood.py) and EBM.log_p_and_backward's written-out
backward carries it to the weights. Score matching differentiates in x, and goes through autograd (score.py)."""
import math
from dataclasses import dataclass, field

import torch

import cli
import optim
from likelihood import cd_loss, langevin, mle_grid, mle_loss, mle_nodes
from score import dsm_loss, sm_loss_mlp
from util import cnce_loss, ence_loss, fce_backward, is_loss, nce_backward, rank_loss, step_values

METHODS = {     # --method: one line each for --help
    'nce': 'noise contrastive estimation (Gutmann & Hyvärinen 2010), the default; learns c',
    'rank': 'ranking NCE (Ma & Collins 2018): a softmax over each point and its ν noise draws',
    'cnce': 'conditional NCE (Ceylan & Gutmann 2018): each point against noisy copies x + εξ',
    'ence': 'eNCE (Liu et al. 2022): NCE with the exponential loss; learns c; pair with --optim ngd',
    'is': 'importance-sampling maximum likelihood (Geyer 1994): log Z from the noise draws',
    'mle': 'exact maximum likelihood: log Z by a shifted quadrature over [-22, 22]² every step',
    'sm': 'score matching (Hyvärinen 2005), exact in 2D; needs a smooth --act',
    'dsm': 'denoising score matching (Vincent 2011) at noise scale --sigma',
    'cd': 'contrastive divergence (Hinton 2002): --langevin-steps Langevin steps from the data',
    'pcd': 'persistent contrastive divergence (Tieleman 2008): Langevin chains kept across steps',
}
LEARNS_C = ('nce', 'ence')                      # a learnable c; the others' c cancels and is never stepped
CLASSIFIES = ('nce', 'rank', 'cnce', 'ence')    # a classifier, with an accuracy in metrics.csv
SERVES = {      # a flag, and the methods it means something for
    'noise': ('nce', 'rank', 'ence', 'is'),
    'nu': ('nce', 'rank', 'cnce', 'ence', 'is'),
    'cnce_eps': ('cnce',),
    'sigma': ('dsm',),
    'langevin_steps': ('cd', 'pcd'), 'langevin_step': ('cd', 'pcd'), 'langevin_noise': ('cd', 'pcd'),
    'alpha': ('cd', 'pcd'), 'buffer': ('pcd',),
}
DEFAULTS = dict(noise='gaussian', sigma=0.1, langevin_steps=10, langevin_step=0.02, alpha=0.0, buffer=0, b1=0.9, b2=0.999)
# the competitors' settings as tune.py chose them on validation seeds (docs/estimators.md): their defaults on the
# original preset, where they were chosen; a test holds them to the committed tune.csv. NCE's defaults stay the original's
TUNED = {'rank': dict(nu=4), 'cnce': dict(cnce_eps=0.5), 'is': dict(nu=16), 'mle': dict(lr=3e-3),
         'cd': dict(alpha=0.1, langevin_steps=20), 'pcd': dict(alpha=0.1)}
REINIT = 0.05   # pcd's replay buffer: the share of a step's chains started afresh from the noise (Du & Mordatch 2019)
SMOOTH = ('silu', 'gelu', 'softplus', 'tanh')


def add_args(p):
    p.add_argument('--method', default='nce', choices=METHODS, metavar='METHOD',
                   help='the estimator (default %(default)s; only nce and ence learn c):\n' + cli.listed(METHODS, METHODS))
    p.add_argument('--optim', choices=['adam', 'ngd'],
                   help='adam (the original, the default), or ngd: normalized gradient descent, θ -= lr g/|g| (eNCE\'s paper)')
    p.add_argument('--cnce-eps', type=float, help='cnce: the noise scale ε of y = x + εξ (default: the authors\' rule, '
                   'from half the data\'s mean std, scaled until the first loss lies in a band; docs/estimators.md)')
    p.add_argument('--sigma', type=float, help=f'dsm: the std σ of the corruption x + σξ (default {DEFAULTS["sigma"]})')
    p.add_argument('--langevin-steps', type=int, help=f'cd, pcd: Langevin steps k a training step (default {DEFAULTS["langevin_steps"]})')
    p.add_argument('--langevin-step', type=float, help='cd, pcd: step size a of x += a ∇ log p̃ + b ξ '
                   f'(default {DEFAULTS["langevin_step"]})')
    p.add_argument('--langevin-noise', type=float, help='cd, pcd: noise scale b (default √(2a), Langevin dynamics proper)')
    p.add_argument('--alpha', type=float, help='cd, pcd: weight α of Du & Mordatch\'s energy penalty α(E(x⁺)² + E(x⁻)²) '
                   f'(default {DEFAULTS["alpha"]})')
    p.add_argument('--buffer', type=int, help='pcd: a replay buffer of this many chain states, the chains of a step drawn '
                   f'from it and {REINIT:.0%}% of them started from the noise (Du & Mordatch 2019); default 0: one chain '
                   'a batch row, kept from step to step')


def tuned(args):
    """Fill the flags the user left out with the settings tune.py chose for --method (TUNED), on the original preset;
    a resume takes its lr from its checkpoint. Then Adam where no optimizer was chosen."""
    for k, v in TUNED.get(args.method, {}).items() if args.preset == 'original' else ():
        if getattr(args, k) is None and not (args.resume and k == 'lr'):
            setattr(args, k, v)
    args.optim = args.optim or 'adam'


def given(args):
    """The method flags the user passed, before a preset or a default fills them."""
    return {k for k in SERVES if getattr(args, k) is not None}


def check(p, args, passed):
    """Refuse, with one line, a flag that means nothing for --method and a bad value of one that does; then fill
    the defaults."""
    dash = lambda k: '--' + k.replace('_', '-')
    for k in sorted(passed):
        if args.method not in SERVES[k]:
            p.error(f'argument {dash(k)}: means nothing for --method {args.method}; it serves {", ".join(SERVES[k])}')
    if args.noise == 'fce' and args.method != 'nce':
        p.error(f'argument --noise: fce trains its flow by NCE\'s own value; it serves --method nce, not {args.method}')
    if args.fce_alternate and args.noise != 'fce':
        p.error('argument --fce-alternate: means nothing without --noise fce')
    if args.optim == 'ngd' and (args.b1 is not None or args.b2 is not None):
        p.error(f'argument {"--b1" if args.b1 is not None else "--b2"}: Adam\'s; means nothing for --optim ngd')
    if args.method == 'sm' and args.act not in SMOOTH:
        p.error(f'argument --act: sm needs a twice-differentiable energy, and {args.act}\'s Laplacian is 0 almost '
                f'everywhere; pass --act {", ".join(SMOOTH)}')
    for k in ('cnce_eps', 'sigma', 'langevin_step'):
        v = getattr(args, k)
        if v is not None and not (math.isfinite(v) and v > 0):
            p.error(f'argument {dash(k)}: must be finite and positive, got {v}')
    if args.langevin_noise is not None and not (math.isfinite(args.langevin_noise) and args.langevin_noise >= 0):
        p.error(f'argument --langevin-noise: must be finite and 0 or more, got {args.langevin_noise}')
    if args.langevin_steps is not None and args.langevin_steps < 1:
        p.error(f'argument --langevin-steps: must be at least 1, got {args.langevin_steps}')
    if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha >= 0):
        p.error(f'argument --alpha: must be finite and 0 or more, got {args.alpha}')
    if args.buffer is not None and args.buffer < 0:
        p.error(f'argument --buffer: must be 0 or more, got {args.buffer}')
    unused = set(unused_flags(args))
    for k, v in DEFAULTS.items():       # the noise for every method: pcd's chains start from it, the frame draws it
        if getattr(args, k) is None and (k not in unused or k == 'noise'):
            setattr(args, k, v)
    if args.method in SERVES['langevin_noise'] and args.langevin_noise is None:
        args.langevin_noise = math.sqrt(2 * args.langevin_step)


def unused_flags(args):
    """The flags that mean nothing for this run's method and optimizer: a resume command leaves them out."""
    return [k for k in SERVES if args.method not in SERVES[k]] + (['b1', 'b2'] if args.optim == 'ngd' else [])


# ----------------------------------------------------------------------------------------------------
# an epoch's batches

def contrast(x, gen, log_q, nu, batch):
    """The batches of an epoch of data x (in its order) against gen, ν rows per data point (those of x_i at rows
    iν..iν+ν-1), with log q at [x; gen]: each step's data then its noise, one slice of the epoch per step. Yields
    (u, s, log_q), labels s = +1 on data and -1 on noise."""
    n, device = len(x), x.device
    u = torch.cat([x, gen])
    s = torch.cat([torch.ones(n, device=device), -torch.ones(nu * n, device=device)])
    step_of = torch.cat([torch.arange(n, device=device), torch.arange(nu * n, device=device) // nu]) // batch
    order = torch.argsort(step_of, stable=True)
    u, s, log_q = u[order], s[order], log_q[order]
    for i in range(0, n, batch):
        rows = slice((1 + nu) * i, (1 + nu) * min(i + batch, n))
        yield u[rows], s[rows], log_q[rows]


def batches(x_train, log_q_train, noise, nu, batch):
    """One epoch of NCE's steps: the data in a fresh random order, ν fresh draws of q per data point, drawn and their
    log q computed once for the whole epoch."""
    perm = torch.randperm(len(x_train), device=x_train.device)
    gen = noise.sample((nu * len(x_train),))
    return contrast(x_train[perm], gen, torch.cat([log_q_train[perm], noise.log_prob(gen)]), nu, batch)


def data_batches(x_train, batch):
    """One epoch's data in a fresh random order, a batch at a time, for the methods that draw as they step."""
    perm = torch.randperm(len(x_train), device=x_train.device)
    for i in range(0, len(x_train), batch):
        yield x_train[perm[i:i + batch]]


def copies(x, eps, nu):
    """cnce's noise: ν copies y = x + εξ of each point, ξ ~ N(0, I), in contrast's order (those of x_i together)."""
    return x.repeat_interleave(nu, 0) + eps * torch.randn(nu * len(x), x.shape[1], device=x.device)


def cnce_eps(energy, x, nu, steps=500):
    """Ceylan & Gutmann's rule for ε (their code, CNCE-matlab's gNoise.m): start from half the data's mean std and,
    with the same draws ξ, scale it until the initial model's loss is neither within 10% of its ε → 0 value log 2
    (ε too small: ×1.2) nor below half of it (too large: ×0.5); at most 500 tries, ε at most 1000 times the std."""
    base, factor = x.std(0).mean().item(), 0.5
    y = copies(x, 1.0, nu) - x.repeat_interleave(nu, 0)          # the fixed ξ, scaled by each try's ε
    with torch.no_grad():
        log_p_x = energy(x).squeeze(1)
        for _ in range(steps):
            loss = cnce_loss(torch.cat([log_p_x, energy(x.repeat_interleave(nu, 0) + factor * base * y).squeeze(1)]), nu)[0].item()
            if abs(1 - loss / math.log(2)) < 0.1 and factor < 1000:
                factor *= 1.2
            elif loss < 0.5 * math.log(2):
                factor *= 0.5
            else:
                break
    return factor * base


# ----------------------------------------------------------------------------------------------------
# a method's step

@dataclass
class Method:
    """A method's step, built once per run: batches() yields an epoch's batches, step(batch, lr) takes one update and
    returns a record of it (no host sync), values(records) gives the epoch's losses and accuracies (None if the
    method has none). state is what the checkpoint keeps besides the weights: pcd's chains, cnce's ε, fce's flow steps."""
    batches: object
    step: object
    values: object
    state: dict = field(default_factory=dict)


def build(args, energy, noise, x_train, log_q_train, adam, flow_adam=None, saved=None):
    """The run's Method for --method and --optim: the EBM energy, the noise q (for NCE's family, pcd's chains'
    start and fce's flow), the training data with log q at it, the optimizer states, and the state a checkpoint
    saved (None for a fresh run). Everything it draws (cnce's ε, pcd's first chains) comes from the global RNG,
    which train.py has seeded with the 'train' stream."""
    params, nu, method = list(energy.parameters()), args.nu, args.method
    state = dict(saved or {})
    if args.optim == 'ngd':
        update = lambda lr: optim.ngd_step(params, lr)
    else:
        update = lambda lr: optim.adam_step(params, adam, lr, args.b1, args.b2)

    learns_c = method in LEARNS_C
    if not learns_c:    # c cancels: its gradient is 0 but for rounding, which Adam would blow up; it stays exactly 0
        energy.c.grad = torch.zeros_like(energy.c)

    def step_on(loss_fn, u, *extra, lr):
        """The written-out step of a loss of log p̃_θ at the points u. Returns the loss, and the accuracy beside it
        where the method has one."""
        log_p, backward = energy.log_p_and_backward(u)
        loss, grad_log_p, *acc = loss_fn(log_p, *extra)
        backward(grad_log_p, c_grad=learns_c)
        update(lr)
        return torch.stack([loss, acc[0]]) if acc and acc[0] is not None else loss

    def step_autograd(loss, lr):
        for p, g in zip(params, torch.autograd.grad(loss, params, materialize_grads=True), strict=True):
            p.grad = g
        update(lr)
        return loss.detach()

    def values(records):
        r = torch.stack(records)
        return (r[:, 0], r[:, 1]) if method in CLASSIFIES else (r, None)

    nce_values = lambda logits: step_values(logits, nu)
    epoch = lambda: batches(x_train, log_q_train, noise, nu, args.batch)
    each = lambda: data_batches(x_train, args.batch)
    if method == 'nce' and args.noise == 'fce':
        state.setdefault('flow_steps', 0)
        flow_params = list(noise.flow.parameters())
        betas = [DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in ('b1', 'b2')]   # the flow's Adam, whatever --optim

        def fce_step(x, lr):
            """fce_backward's gradients; Adam on the EBM and, on the flow's turn, on the flow. With --fce-alternate
            (fce-2d's own scheme) only one of them steps: the flow on its turn, else the EBM."""
            s_logit, flow_turn = fce_backward(energy, noise, x, nu, args.fce_threshold)
            if flow_turn:
                optim.adam_step(flow_params, flow_adam, args.flow_lr, *betas)
                state['flow_steps'] += 1
            if not (flow_turn and args.fce_alternate):
                update(lr)
            return s_logit
        return Method(each, fce_step, nce_values, state)
    if method == 'nce':
        def nce_step(batch, lr):
            s_logit = nce_backward(energy, *batch, nu)
            update(lr)
            return s_logit
        return Method(epoch, nce_step, nce_values, state)
    if method in ('rank', 'ence', 'is'):
        loss_fn = {'rank': rank_loss, 'ence': ence_loss, 'is': is_loss}[method]
        return Method(epoch, lambda batch, lr: step_on(loss_fn, batch[0], batch[2], nu, lr=lr), values, state)
    if method == 'cnce':
        if 'eps' not in state:
            state['eps'] = args.cnce_eps or cnce_eps(energy, x_train, nu)

        def cnce_batches():
            perm = torch.randperm(len(x_train), device=x_train.device)
            x = x_train[perm]
            y = copies(x, state['eps'], nu)
            return contrast(x, y, torch.zeros(len(x) + len(y), device=x.device), nu, args.batch)
        return Method(cnce_batches, lambda batch, lr: step_on(cnce_loss, batch[0], nu, lr=lr), values, state)
    if method == 'mle':
        base = mle_grid(x_train.device)
        return Method(each, lambda x, lr: step_on(mle_loss, torch.cat([x, mle_nodes(base)]), len(x), base[2], lr=lr), values, state)
    if method == 'sm':
        return Method(each, lambda x, lr: step_autograd(sm_loss_mlp(energy, x), lr), values, state)
    if method == 'dsm':
        return Method(each, lambda x, lr: step_autograd(dsm_loss(energy, x, args.sigma), lr), values, state)
    chain = lambda x0: langevin(energy, x0, args.langevin_steps, args.langevin_step, args.langevin_noise)
    c = energy.c.detach()       # the energy penalty's E = -log p̃ - c: c is never stepped here
    if method == 'cd':
        return Method(each, lambda x, lr: step_on(cd_loss, torch.cat([x, chain(x)]), len(x), args.alpha, c, lr=lr), values, state)
    held = 'buffer' if args.buffer else 'chains'
    if held not in state:       # pcd's chains start from the noise, N(0, 4I) by default: one per batch row, or a buffer
        state[held] = noise.sample((args.buffer or args.batch,))
    state[held] = state[held].to(x_train.device, memory_format=torch.contiguous_format, copy=True)

    def pcd_step(x, lr):
        if not args.buffer:
            state['chains'] = chain(state['chains'])
            return step_on(cd_loss, torch.cat([x, state['chains']]), len(x), args.alpha, c, lr=lr)
        # a batch of chain states drawn from the buffer, REINIT of them replaced by fresh noise, and written back
        # after their Langevin steps (draws with replacement: of a state drawn twice, one of its two successors stays)
        i = torch.randint(args.buffer, (args.batch,), device=x.device)
        fresh = torch.rand(args.batch, 1, device=x.device) < REINIT
        chains = chain(torch.where(fresh, noise.sample((args.batch,)), state['buffer'][i]))
        state['buffer'][i] = chains
        return step_on(cd_loss, torch.cat([x, chains]), len(x), args.alpha, c, lr=lr)
    return Method(each, pcd_step, values, state)
