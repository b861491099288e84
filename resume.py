"""Resuming a run: every part of its checkpoint checked against the run its flags build, before anything is built or written."""
import shlex

import torch

import cli
import files
import methods
import seeds
from flow import Flow, fit
from model import ACTIVATIONS, EBM
from noise import LEARNED
from optim import adam_init

RUN_KEYS = ('dataset', 'samples', 'seed', 'noise', 'preset', 'method', 'optim')  # what must match to --resume a checkpoint
# and, where the checkpoint records them, the rest of what defines the run; cli.MUTABLE may change
FIXED = ('nu', 'batch', 'b1', 'b2', 'schedule', 'cnce_eps', 'sigma', 'langevin_steps', 'langevin_step', 'langevin_noise', 'alpha', 'buffer',
         'flow_lr', 'flow_fit', 'fce_threshold', 'fce_alternate')
OLD = dict(method='nce', optim='adam')      # what a checkpoint from before --method and --optim was trained with
FLOW_KEYS = ('flow_layers', 'flow_hidden', 'flow_broad')      # and, with a learned noise, its flow
# a history row: the columns every row has, and those a row may leave blank (None) or, from an older run, lack
NUMBERS, BLANKS, OPTIONAL = ('value', 'acc', 'seconds'), ('c', 'log_z', 'nll', 'kl'), ('flow_nll', 'flow_kl', 'train_seconds', 'outside', 'log_z_err')
KWARGS = dict(dim=int, hidden=int, depth=int, act=str, fourier=int, fourier_std=float, base=float)   # EBM's arguments


class Unfit(files.CheckpointError):
    """A checkpoint that loads but that this run cannot use; the message names the first thing wrong."""


def load(path, args=None, model_kwargs=None):
    """The checkpoint at path, with every part checked: against this run's flags (args) and network (model_kwargs)
    where they are given, else against the network it names itself. Raises files.CheckpointError (Unfit for one
    that loads but does not fit) with a one-line reason; reads and writes nothing else."""
    ckpt = files.load_checkpoint(path)
    try:
        check(ckpt, args, model_kwargs)
    except Unfit as e:
        raise Unfit(f'{path} cannot be resumed: {e}; it is left as it is') from None
    return ckpt


def check(ckpt, args, model_kwargs):
    kinds = dict(energy=dict, model_kwargs=dict, optimizer=dict, args=dict, rng=dict, history=list)
    for k, kind in kinds.items():
        if not isinstance(ckpt[k], kind):
            raise Unfit(f'{k} is {what(ckpt[k])}, not a {kind.__name__}')
    check_kwargs(ckpt['model_kwargs'])
    if args is not None:
        for k in RUN_KEYS:
            if ckpt['args'].get(k, OLD.get(k)) != getattr(args, k):
                raise Unfit(f'it was trained with --{k} {ckpt["args"].get(k, OLD.get(k))}, not {getattr(args, k)}; pass the '
                            'same value or start a fresh run with another --ckpt')
        for k in FIXED:
            if k in ckpt['args'] and ckpt['args'][k] != getattr(args, k):
                raise Unfit(f'it was trained with --{k.replace("_", "-")} {ckpt["args"][k]}, not {getattr(args, k)}; only '
                            f'{", ".join("--" + m.replace("_", "-") for m in cli.MUTABLE)} may change on a resume')
        for k in ('lr', 'eval_every'):
            v = ckpt['args'].get(k)
            if v is not None and not (is_number(v) and v >= 0):
                raise Unfit(f'its args give --{k.replace("_", "-")} {v!r}, not a number')
        if ckpt['model_kwargs'] != model_kwargs:
            raise Unfit(f'it holds another network, {ckpt["model_kwargs"]}, not {model_kwargs}')
    noise = args.noise if args is not None else ckpt['args'].get('noise')
    learned = noise in LEARNED
    for k in FLOW_KEYS if learned and args is not None else ():
        if ckpt['args'].get(k) != getattr(args, k):
            raise Unfit(f'it holds a flow trained with --{k.replace("_", "-")} {ckpt["args"].get(k)}, not {getattr(args, k)}; '
                        'pass the same value or start a fresh run with another --ckpt')
    with torch.device('meta'):      # shapes and dtypes only: nothing is allocated and no random number is drawn
        energy = EBM(**ckpt['model_kwargs'])
    check_tensors('energy', ckpt['energy'], energy.state_dict())
    check_adam('optimizer', ckpt['optimizer'], list(energy.parameters()))
    if learned:
        for k in ('flow', 'flow_optimizer'):
            if k not in ckpt:
                raise Unfit(f'it has no {k}, which --noise {noise} needs')
        layers, hidden = ckpt['args'].get('flow_layers'), ckpt['args'].get('flow_hidden')
        if not (is_int(layers) and is_int(hidden) and layers > 0 and hidden > 0):
            raise Unfit(f'its args give no flow size (flow_layers {layers!r}, flow_hidden {hidden!r})')
        with torch.device('meta'):
            flow = Flow(torch.zeros(2), torch.ones(2), layers, hidden)
        check_tensors('flow', ckpt['flow'], flow.state_dict())
        if not (ckpt['flow']['std'] > 0).all():
            raise Unfit('flow[std] holds a scale that is not positive')
        check_adam('flow_optimizer', ckpt['flow_optimizer'], list(flow.parameters()))
    check_rng(ckpt['rng'])
    method = args.method if args is not None else ckpt['args'].get('method', 'nce')
    check_history(ckpt['epoch'], ckpt['history'], fce=noise == 'fce', acc=method in methods.CLASSIFIES)
    batch, buffer = (args.batch, args.buffer) if args is not None else (ckpt['args'].get('batch'), ckpt['args'].get('buffer'))
    check_method_state(ckpt.get('method_state', {}), method, noise, batch, buffer or 0)
    if 'streams' in ckpt:
        check_streams(ckpt['streams'])


def what(v):
    name = type(v).__name__
    return f'an {name}' if name[0] in 'aeiou' else f'a {name}'


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_kwargs(kwargs):
    for k, v in kwargs.items():
        if k not in KWARGS:
            raise Unfit(f'model_kwargs has {k!r}, which the network does not take')
        if not (isinstance(v, KWARGS[k]) and not isinstance(v, bool) or KWARGS[k] is float and is_number(v)):
            raise Unfit(f'model_kwargs[{k!r}] is {what(v)}, not {what(KWARGS[k]())}')
    if kwargs.get('act', 'leaky_relu') not in ACTIVATIONS:
        raise Unfit(f'model_kwargs names the activation {kwargs["act"]!r}, not one of {", ".join(ACTIVATIONS)}')
    if any(kwargs.get(k, 1) < 1 for k in ('dim', 'hidden', 'depth')) or kwargs.get('fourier', 0) < 0:
        raise Unfit(f'model_kwargs gives a network of no size: {kwargs}')


def check_tensor(name, v, want):
    if not isinstance(v, torch.Tensor):
        raise Unfit(f'{name} is {what(v)}, not a tensor')
    if v.layout != torch.strided or v.is_quantized:
        raise Unfit(f'{name} is a {v.layout} tensor, not a dense one')
    if v.shape != want.shape:
        raise Unfit(f'{name} has shape {tuple(v.shape)}, but this network needs {tuple(want.shape)}')
    if v.dtype != want.dtype:
        raise Unfit(f'{name} is {v.dtype}, not {want.dtype}')
    if not torch.isfinite(v).all():
        raise Unfit(f'{name} holds non-finite values')


def check_tensors(name, got, want):
    """A state dict against the module that the run's flags build (want: its state_dict, on the meta device)."""
    if not isinstance(got, dict):
        raise Unfit(f'{name} is {what(got)}, not a dict of tensors')
    if missing := sorted(set(want) - set(got)):
        raise Unfit(f'{name} lacks {", ".join(missing)}')
    if extra := sorted(set(got) - set(want), key=str):
        raise Unfit(f'{name} has {", ".join(map(str, extra))}, which this network does not')
    for k, t in want.items():
        check_tensor(f'{name}[{k}]', got[k], t)


def check_adam(name, state, params):
    """optim.adam_init's state for these parameters: a step count and two moments each, the second never negative."""
    if not isinstance(state, dict):
        raise Unfit(f'{name} is {what(state)}, not a dict')
    for part in ('step', 'm', 'v'):
        tensors = state.get(part)
        if not isinstance(tensors, list) or len(tensors) != len(params):
            size = f'{len(tensors)} tensors' if isinstance(tensors, list) else what(tensors)
            raise Unfit(f'{name}[{part!r}] holds {size}, not a list of {len(params)}, one per parameter')
        for i, (t, p) in enumerate(zip(tensors, params, strict=True)):
            want = torch.empty((), device='meta') if part == 'step' else p
            check_tensor(f'{name}[{part!r}][{i}]', t, want)
            if part == 'step' and (t < 0 or t != t.round()):
                raise Unfit(f'{name}[\'step\'][{i}] is {t.item()}, not a count of steps')
            if part == 'v' and (t < 0).any():
                raise Unfit(f'{name}[\'v\'][{i}] holds a negative second moment')


def check_rng(rng):
    """The generator states, each tried on a throwaway generator, which refuses any that is not one."""
    if 'cpu' not in rng:
        raise Unfit('rng has no cpu state')
    if not isinstance(rng.get('cuda', []), (list, tuple)):
        raise Unfit(f'rng[\'cuda\'] is {what(rng["cuda"])}, not a list of states')
    devices = [('cpu', rng['cpu'])] + [('cuda', s) for s in rng.get('cuda', [])] + ([('mps', rng['mps'])] if 'mps' in rng else [])
    for device, state in devices:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise Unfit(f'rng[{device!r}] is not a generator state (a 1-D uint8 tensor)')
        if device == 'cpu' or device == 'cuda' and torch.cuda.is_available() or device == 'mps' and torch.backends.mps.is_available():
            try:
                torch.Generator(device).set_state(state)
            except RuntimeError as e:
                raise Unfit(f'rng[{device!r}] is not a generator state: {str(e).splitlines()[0][:100]}') from None


def check_history(epoch, history, fce, acc=True):
    """The epoch the checkpoint holds is the last of its history, whose rows are epochs 0, 1, ... with a number in
    every column of metrics.csv (blank only where an epoch was not evaluated)."""
    if not is_int(epoch) or epoch < 0:
        raise Unfit(f'its epoch is {epoch!r}, not a count from 0')
    if len(history) != epoch + 1:
        raise Unfit(f'it holds epoch {epoch} but a history of {len(history)} epochs')
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise Unfit(f'history[{i}] is {what(row)}, not a dict')
        if row.get('epoch') != i or not is_int(row['epoch']):
            raise Unfit(f'history[{i}] is epoch {row.get("epoch")!r}, not {i}')
        for k in NUMBERS + BLANKS + OPTIONAL:
            if k not in row and k in OPTIONAL:
                continue
            if k not in row or not (is_number(row[k]) or row[k] is None and (k not in NUMBERS or k == 'acc' and not acc)):
                raise Unfit(f'history[{i}][{k!r}] is {what(row.get(k)) if k in row else "missing"}, not a number')
        if not isinstance(row.get('changes'), (str, type(None))):
            raise Unfit(f"history[{i}]['changes'] is {what(row['changes'])}, not a line of text")
        steps = row.get('flow_steps')
        if fce and not (is_int(steps) and steps >= 0) or not fce and steps is not None and not is_int(steps):
            raise Unfit(f'history[{i}][\'flow_steps\'] is {steps!r}, not a count of steps')


def check_method_state(state, method, noise, batch, buffer=0):
    """What a method keeps beyond the weights (methods.Method.state): pcd's chains, one per batch row, or its replay
    buffer, cnce's ε and fce's count of flow steps. A checkpoint from before --method has none, and needs none: it
    is an NCE run."""
    if not isinstance(state, dict):
        raise Unfit(f'its method_state is {what(state)}, not a dict')
    if method == 'pcd':
        held = 'buffer' if buffer else 'chains'
        if held not in state:
            raise Unfit(f'it has no {held} in method_state, which --method pcd{" --buffer" if buffer else ""} needs')
        check_tensor(f"method_state['{held}']", state[held], torch.empty(buffer or batch, 2, device='meta'))
    if method == 'cnce' and not (is_number(state.get('eps')) and 0 < state['eps'] < float('inf')):
        raise Unfit(f"its method_state['eps'] is {state.get('eps')!r}, not cnce's positive noise scale")
    if noise == 'fce' and 'flow_steps' in state and not (is_int(state['flow_steps']) and state['flow_steps'] >= 0):
        raise Unfit(f"its method_state['flow_steps'] is {state['flow_steps']!r}, not a count of steps")


def check_streams(streams):
    if not isinstance(streams, dict) or set(streams) != set(seeds.PURPOSES):
        raise Unfit(f'its streams are not the seeds of {", ".join(seeds.PURPOSES)}')
    for p, v in streams.items():
        top = 2**32 if p == 'mixture' else 2**64
        if not (is_int(v) and 0 <= v < top):
            raise Unfit(f'its {p} stream is seeded with {v!r}, not an integer in [0, {top})')


def run_streams(args, ckpt):
    """The seeds of the run's streams: the seed's own for a fresh run, the checkpoint's for a resumed one. A
    checkpoint of the release before the streams has none: it drew everything from the one integer, and resumes
    on the data it was trained on with those seeds (seeds.legacy_streams)."""
    if ckpt is None:
        return seeds.streams(args.seed)
    return ckpt.get('streams') or seeds.legacy_streams(args.seed)


def changed(args, ckpt, lr):
    """A resumed run's lr and eval-every, where not given, are its checkpoint's (lr: `lr` where that has none). The
    flags it changes (cli.MUTABLE) are printed, a line each, and returned as one string for the history, or None."""
    for k, v in (('lr', lr), ('eval_every', 1)):
        if getattr(args, k) is None:
            setattr(args, k, ckpt['args'].get(k, v))
    lines = cli.changes(ckpt['args'], args, ckpt['epoch'] + 1)
    print('\n'.join(lines), end='\n' if lines else '')
    return '; '.join(lines) or None


def command(args, epochs_left):
    """The command that finishes this run exactly as if it had not stopped: every flag that defines the run, and
    the epochs it had left, so that a cosine schedule keeps its length; lr, eval-every, no-plot and device as they
    are now."""
    skip = ('epoch', 'resume', *methods.unused_flags(args))
    flags = [f'--{k.replace("_", "-")}' + ('' if v is True else f' {shlex.quote(str(v))}')
             for k, v in vars(args).items() if k not in skip and v is not None and v is not False]
    return f'python train.py --resume --epoch {epochs_left} ' + ' '.join(flags)


def adam_state(state, device):
    """A checked Adam state on device, each tensor a fresh contiguous copy (a file may make two of them share memory)."""
    return {k: [t.clone(memory_format=torch.contiguous_format).to(device) for t in state[k]] for k in ('step', 'm', 'v')}


def restore(ckpt, energy, device):
    """Load a checked checkpoint's weights, Adam state and RNG states; returns the epoch to start at, the history
    and the Adam state."""
    energy.load_state_dict(ckpt['energy'])
    files.set_rng_state(ckpt['rng'])
    return ckpt['epoch'] + 1, ckpt['history'], adam_state(ckpt['optimizer'], device)


def restore_flow(args, ckpt, noise, x_train, device):
    """The flow's weights and Adam state: from the checkpoint, or fresh; --noise flow fits a fresh flow to the data
    by maximum likelihood and fixes it. Returns the Adam state of the flow's steps in fce."""
    if ckpt:
        noise.flow.load_state_dict(ckpt['flow'])
        adam = adam_state(ckpt['flow_optimizer'], device)
    else:
        adam = adam_init(list(noise.flow.parameters()))
        if args.noise == 'flow':
            fit(noise.flow, x_train, args.flow_fit, args.batch, args.flow_lr)
    noise.flow.requires_grad_(False)    # its gradients are written out (flow.py)
    return adam
