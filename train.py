"""Train an energy-based model on 2D toy data by Noise Contrastive Estimation, or by one of its competitors.

$ python train.py                              # 8gaussians, the original defaults
$ python train.py --dataset rings --preset strong
$ python train.py --resume --epoch 20          # 20 more epochs of the run in --ckpt
$ python train.py --method cd                   # contrastive divergence; --help lists every method
"""
import functools
import math
import os
import re
import sys
import time

import torch

import cli
import files
import flow
import memory
import methods
import optim
import resume
import seeds
from data import DATASETS, log_density, sample_2d_data
from evaluate import FAR, TEST_SAMPLES, evaluate, evaluate_flow, fixed_inputs, window_log_p
from model import ACTIVATIONS, EBM
from noise import LEARNED, MIN_SAMPLES, NOISES, make_noise

PRESETS = {
    # the original script
    'original': dict(samples=10000, hidden=128, depth=2, act='leaky_relu', fourier=0, fourier_std=0.25, base=0.0, nu=1,
                     batch=100, epoch=50, lr=1e-3, schedule='constant'),
    # measured to reach the true density on every dataset in well under a minute of a 2-core CPU (see README)
    'strong': dict(samples=100000, hidden=128, depth=3, act='silu', fourier=64, fourier_std=0.25, base=2.0, nu=4,
                   batch=256, epoch=16, lr=2e-3, schedule='cosine'),
}
TEST_SEED = 2**32      # only bounds --seed, as it always has
NOT_NORMALISABLE = (f'the model is not normalisable: exp(-f) still carries mass {FAR:.0f} units out (its energy does not '
                    'grow in some direction), so log Z, the test NLL and the KL are inf')
FRAMES = r'epoch_\d+\.png|curves\.png'                      # what a run writes into --images


def get_args(argv=None):
    p = cli.parser(__doc__)
    # data
    p.add_argument('--dataset', default='8gaussians', choices=DATASETS, metavar='DATASET',
                   help='2D toy dataset (default %(default)s), one of: ' + ', '.join(DATASETS))
    p.add_argument('--samples', type=int, help='number of training samples (preset; original 10000)')
    p.add_argument('--seed', type=int, default=0, help='one seed, hashed into independent streams for the data, the initialisation, the training\'s draws and the held-out set')
    # model and objective (defaults come from --preset)
    p.add_argument('--preset', default='original', choices=PRESETS,
                   help='original: the original script; strong: ' + ', '.join(f'{k}={v}' for k, v in PRESETS['strong'].items()))
    p.add_argument('--hidden', type=int, help='width of the energy MLP (preset)')
    p.add_argument('--depth', type=int, help='hidden layers of the energy MLP (preset)')
    p.add_argument('--act', choices=list(ACTIVATIONS), metavar='ACT', help='activation, one of ' + ', '.join(ACTIVATIONS) + ' (preset)')
    p.add_argument('--fourier', type=int, help='random Fourier features of the input, 0 for none (preset)')
    p.add_argument('--fourier-std', type=float, help='std of their frequencies, in cycles per unit (preset)')
    p.add_argument('--base', type=float, help='std s of a fixed Gaussian base, p(x) ∝ N(x; 0, s²I) exp(-f(x)), which keeps '
                   'the model normalisable and its mass where the noise can see it; 0 for none (preset; original 0)')
    p.add_argument('--nu', type=int, help='noise samples per data sample, ν (preset; original 1)')
    p.add_argument('--noise', choices=NOISES, metavar='NOISE', help='noise q: gaussian = N(0, 4I) of the original; '
                   'fit = a Gaussian with the data mean and covariance, std doubled; gmm = a 16-component mixture fitted to the data, '
                   'widened; flow = a normalizing flow fitted to the data by maximum likelihood, then fixed; fce = a flow trained '
                   'with the EBM to make its samples hard to tell from the data (Flow Contrastive Estimation). Default gaussian')
    # the flow of --noise flow and fce
    p.add_argument('--flow-layers', type=int, default=flow.LAYERS, help='affine coupling layers of the flow (default %(default)s)')
    p.add_argument('--flow-hidden', type=int, default=flow.HIDDEN, help='width of each coupling\'s two-layer MLP (default %(default)s)')
    p.add_argument('--flow-lr', type=float, default=flow.LR, help='Adam learning rate of the flow, for its fit and its steps in fce (default %(default)s)')
    p.add_argument('--flow-fit', type=int, default=5000, help='--noise flow: maximum-likelihood steps that fit the flow before training (default %(default)s)')
    p.add_argument('--flow-broad', type=float, default=0.1,
                   help='weight w of N(0, 4I) in the noise q = (1 - w) flow + w N(0, 4I), which keeps q broad where the flow has no mass; 0 for the flow alone (default %(default)s)')
    p.add_argument('--fce-threshold', type=float, default=0.6,
                   help='--noise fce: the flow takes a step on a batch where the classifier\'s accuracy, balanced between data and noise, is above this (default %(default)s)')
    p.add_argument('--fce-alternate', action='store_true', help='--noise fce as fce-2d runs it: on each batch either '
                   'the flow steps (accuracy above --fce-threshold) or the EBM, not both')
    # the estimator
    methods.add_args(p)
    # optimisation
    p.add_argument('--epoch', type=int, help='number of epochs to train (preset; original 50)')
    p.add_argument('--batch', type=int, help='data samples per step (preset; original 100)')
    p.add_argument('--lr', type=float, help='Adam learning rate (preset; original 1e-3)')
    p.add_argument('--b1', type=float, help='Adam beta1, decay of the first moment (default 0.9)')
    p.add_argument('--b2', type=float, help='Adam beta2, decay of the second moment (default 0.999)')
    p.add_argument('--schedule', choices=['constant', 'cosine'], help='learning-rate schedule over the run (preset)')
    # system and output
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'], help='auto: cuda, then mps, then cpu')
    p.add_argument('--ckpt', default='ckpts/nce.pth.tar', help='checkpoint, rewritten after every epoch; metrics.csv goes beside it')
    p.add_argument('--images', default='images', help='folder for the per-epoch frames epoch_<N>.png and curves.png')
    p.add_argument('--resume', action='store_true', help='continue the run in --ckpt for --epoch more epochs; it may change '
                   '--lr, --eval-every, --no-plot and --device, which it records, and keeps the rest (lr and eval-every: the run\'s own unless given)')
    p.add_argument('--eval-every', type=int, help='exact evaluation every N epochs; 0 turns it off (default 1)')
    p.add_argument('--no-plot', action='store_true', help='write no frames and no curves')
    args = p.parse_args(argv)

    passed = methods.given(args)
    methods.tuned(args)
    # a resume's lr and eval-every, where not given, are its checkpoint's: filled by resume.changed, not here
    for k, v in [*PRESETS[args.preset].items(), ('eval_every', 1)]:
        if getattr(args, k) is None and not (args.resume and k in ('lr', 'eval_every')):
            setattr(args, k, v)
    methods.check(p, args, passed)
    for k in ('epoch', 'batch', 'samples', 'nu', 'hidden', 'depth'):
        if getattr(args, k) < 1:
            p.error(f'argument --{k}: must be at least 1, got {getattr(args, k)}')
    if args.fourier < 0:
        p.error(f'argument --fourier: must be 0 or more, got {args.fourier}')
    if not (math.isfinite(args.fourier_std) and args.fourier_std > 0):
        p.error(f'argument --fourier-std: must be finite and positive, got {args.fourier_std}')
    if not (math.isfinite(args.base) and args.base >= 0):
        p.error(f'argument --base: must be finite and 0 or more, got {args.base}')
    if args.batch > args.samples:
        p.error(f'argument --batch: {args.batch} is larger than --samples {args.samples}')
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        p.error(f'argument --lr: must be finite and positive, got {args.lr}')
    for k in ('b1', 'b2'):
        if getattr(args, k) is not None and not 0 <= getattr(args, k) < 1:
            p.error(f'argument --{k}: must be in [0, 1), got {getattr(args, k)}')
    for k in ('flow_layers', 'flow_hidden', 'flow_fit'):
        if getattr(args, k) < 1:
            p.error(f'argument --{k.replace("_", "-")}: must be at least 1, got {getattr(args, k)}')
    if not (math.isfinite(args.flow_lr) and args.flow_lr > 0):
        p.error(f'argument --flow-lr: must be finite and positive, got {args.flow_lr}')
    if not 0 <= args.flow_broad < 1:
        p.error(f'argument --flow-broad: must be in [0, 1), got {args.flow_broad}')
    if not 0 < args.fce_threshold < 1:
        p.error(f'argument --fce-threshold: must be in (0, 1), got {args.fce_threshold}')
    if args.eval_every is not None and args.eval_every < 0:
        p.error(f'argument --eval-every: must be 0 or more, got {args.eval_every}')
    if args.device == 'auto':
        args.device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    elif args.device == 'cuda' and not torch.cuda.is_available():
        p.error('argument --device: cuda requested but no CUDA device is available')
    elif args.device == 'mps' and not torch.backends.mps.is_available():
        p.error('argument --device: mps requested but no MPS device is available')
    if args.samples < MIN_SAMPLES[args.noise]:
        p.error(f'argument --samples: --noise {args.noise} needs at least {MIN_SAMPLES[args.noise]} samples, got {args.samples}')
    if not -2**63 <= args.seed <= 2**64 - 1 - TEST_SEED:
        p.error(f'argument --seed: must be in [-2^63, 2^64 - 2^32 - 1], got {args.seed}')
    check_paths(p, args)
    need, available = memory.needed(args), memory.available(args.device)
    if available is not None and sum(need.values()) > available:
        part = max(need, key=need.get)
        lower = '--flow-hidden or --flow-layers' if part == 'the flow' else '--samples, --nu, --batch, --hidden, --depth or --fourier'
        p.error(f'this run needs about {memory.gb(sum(need.values()))} of memory ({part} {memory.gb(need[part])}), more than the '
                f'{memory.gb(available)} available; lower {lower}')
    return args


def check_paths(p, args):
    """Refuse, before anything is written, outputs that are not ours to write: a path that is not a regular
    file (a device such as /dev/null, a FIFO, a socket, a folder, a link to one), or a folder we cannot write."""
    if not os.path.basename(args.ckpt):
        p.error(f'argument --ckpt: {args.ckpt!r} names no file')
    if not args.images:
        p.error("argument --images: '' names no folder")
    if os.path.basename(args.ckpt) == 'metrics.csv':
        p.error('argument --ckpt: metrics.csv is the name of the metrics file written beside the checkpoint')
    for flag, folder in (('--ckpt', os.path.dirname(args.ckpt)), ('--images', args.images)):
        problem = files.unwritable(folder or '.')
        if problem:
            p.error(f'argument {flag}: cannot write to {folder or "."}: {problem}')
    outputs = [('--ckpt', args.ckpt), ('--ckpt', metrics_path(args))]
    outputs += [] if args.no_plot else [('--images', path) for path in files.matching(args.images, FRAMES)]
    for flag, path in outputs:
        if problem := files.not_a_file(path):
            p.error(f'argument {flag}: {problem}')
    if os.path.abspath(args.ckpt) == os.path.abspath(args.images):
        p.error('argument --images: the same path as --ckpt')


def fail(msg):
    print(f'{os.path.basename(sys.argv[0])}: error: {msg}', file=sys.stderr)
    sys.exit(2)


def metrics_path(args):
    return os.path.join(os.path.dirname(args.ckpt), 'metrics.csv')


def frame_path(args, epoch):
    return os.path.join(args.images, f'epoch_{epoch}.png')


def check_resume(args, model_kwargs):
    """The checkpoint to resume, read and checked in every part before anything else is done; exits 2 if it does not fit."""
    try:
        return resume.load(args.ckpt, args, model_kwargs)
    except files.CheckpointError as e:       # resume.Unfit too
        fail(str(e))


def learned(args):
    """Whether the noise is a flow, with weights of its own to fit, save and restore."""
    return args.noise in LEARNED


def network_kwargs(cfg):
    """EBM's arguments for a run's or a preset's settings (a dict). The Fourier ones appear only where the
    network has features, so a checkpoint of a plain network keeps the original's model_kwargs."""
    kwargs = dict(dim=2, hidden=cfg['hidden'], depth=cfg['depth'], act=cfg['act'])
    if cfg['fourier']:
        kwargs.update(fourier=cfg['fourier'], fourier_std=cfg['fourier_std'])
    if cfg.get('base'):
        kwargs.update(base=float(cfg['base']))
    return kwargs


def clear_paths(args):
    """A fresh run that plots owns --images: it removes an earlier run's frames, so a GIF never mixes two runs.
    A run killed while writing leaves a temporary file beside the one it wrote; this run's paths are ours."""
    if not args.resume and not args.no_plot:
        files.remove_matching(args.images, FRAMES)
    folder = os.path.dirname(args.ckpt) or '.'
    files.remove_matching(folder, files.leftovers(re.escape(os.path.basename(args.ckpt)) + r'|metrics\.csv'))
    files.remove_matching(args.images, files.leftovers(FRAMES))


def flush_subnormals(device):
    """On a CPU `device`, have it round float32 results below 1.2e-38 to zero, for the whole process: such numbers
    (exp of a very negative log p, as at an mle node far from the data) take a slow path on many x86 CPUs, up to 5
    times a step's time, and as zeros they changed no row of the tables (docs/estimators.md). Does nothing on a CPU
    without the mode."""
    if device.type == 'cpu':
        torch.set_flush_denormal(True)


@functools.lru_cache(maxsize=1)
def held_out(dataset, test_seed):
    """A run's held-out set, TEST_SAMPLES points drawn from the seed's 'test' stream (on the CPU), and the true
    density's entropy estimate H = mean -log p_data on it. Kept for the last (dataset, stream): results.py asks for
    it before the run it scores, and pinwheel's exact density takes 0.5 s on 20000 points."""
    x_test = sample_2d_data(dataset, TEST_SAMPLES, seeds.generator(test_seed))
    return x_test, -log_density(dataset, x_test).double().mean().item()


def evaluator(args, energy, test_seed):
    """The exact evaluation of the run's model `energy` (and of a learned noise's flow, a density model too), a
    function that returns (metrics, log p_θ on the plot's grid), or None if the run does not evaluate: the held-out
    set and the true density's entropy H on it (held_out), and the network's inputs at the evaluation's points
    (fixed_inputs), made once."""
    if args.eval_every == 0:
        return None
    x_test, entropy = held_out(args.dataset, test_seed)
    x_test = x_test.to(energy.c.device)
    fixed = fixed_inputs(energy, x_test)

    def exact(q_flow=None):
        metrics, log_p = evaluate(energy, x_test, entropy, fixed=fixed)
        if q_flow is not None:
            metrics.update(evaluate_flow(q_flow, x_test, entropy))
        return metrics, log_p
    return exact


def stop_interrupted(args, history, end):
    done = history[-1]['epoch'] if history else None
    print(f'\ninterrupted: {args.ckpt} holds epoch {done}' if done is not None else '\ninterrupted before the first epoch ended',
          file=sys.stderr)
    if done is not None:
        print('continue with: ' + resume.command(args, end - done - 1), file=sys.stderr)
    sys.exit(130)


def summary(args, history, start, end):
    last = history[-1]
    out = f'done: {args.dataset}, epochs {start}..{end - 1}, value {last["value"]:.4f}'
    out += f', acc {last["acc"]:.3f}' if last['acc'] is not None else ''
    if last['nll'] is not None:
        out += f', c {last["c"]:.3f}' if last['c'] is not None else ''
        out += f', log Z {last["log_z"]:.3f}, test NLL {last["nll"]:.4f}'
        out += f', {last["outside"]:.2%} of its mass outside [-4, 4]²' if last.get('outside') is not None else ''
        out += f', KL {last["kl"]:.4f}' if last['kl'] is not None else ''
        out += f', flow KL {last["flow_kl"]:.4f}' if last.get('flow_kl') is not None else ''
        out += f', flow steps {last["flow_steps"]}' if last.get('flow_steps') is not None else ''
    return out + f'; checkpoint {args.ckpt}' + ('' if args.no_plot else f', frames in {args.images}/')


def main(args):
    """One run, holding its checkpoint path and its frames folder against other runs while it lasts."""
    locks = [(files.lock_file(args.ckpt), args.ckpt)] + ([] if args.no_plot else [(files.lock_file(args.images, folder=True), args.images)])
    try:
        with files.locked(*locks):
            run(args)
    except files.Locked as e:
        fail(str(e))


def run(args):
    memory.keep_freed_memory()
    model_kwargs = network_kwargs(vars(args))
    ckpt = check_resume(args, model_kwargs) if args.resume else None
    changed = resume.changed(args, ckpt, PRESETS[args.preset]['lr']) if ckpt else None
    from tqdm import tqdm
    device = torch.device(args.device)
    flush_subnormals(device)
    # a stream per purpose (seeds.py); a checkpoint keeps the streams it was trained with
    streams = resume.run_streams(args, ckpt)
    x_train = sample_2d_data(args.dataset, args.samples, seeds.generator(streams['data'])).to(device)
    seeds.seed_global(streams['init'])
    energy = EBM(**model_kwargs).to(device)          # first: the same initialisation whatever the noise
    try:
        noise = make_noise(args.noise, x_train, args.flow_layers, args.flow_hidden, args.flow_broad, streams['mixture'])
    except (ValueError, RuntimeError) as e:          # e.g. a covariance that is not positive definite
        fail(f'cannot fit --noise {args.noise} to the training data: {str(e).splitlines()[0][:160]}')
    seeds.seed_global(streams['train'])              # data order, noise draws, the flow's fit; a resume restores it
    params = list(energy.parameters())
    start, history, adam = resume.restore(ckpt, energy, device) if ckpt else (0, [], optim.adam_init(params))
    flow_adam = resume.restore_flow(args, ckpt, noise, x_train, device) if learned(args) else None
    with torch.no_grad():
        log_q_train = noise.log_prob(x_train) if args.noise != 'fce' else None   # once: neither the data nor q changes
    if not args.resume and (line := cli.replaced(args.ckpt, [] if args.no_plot else files.matching(args.images, FRAMES))):
        print(line)
    clear_paths(args)
    steps, end = math.ceil(args.samples / args.batch), start + args.epoch   # steps per epoch; the last batch may be smaller
    lr_at = optim.lr_schedule(args.schedule, args.lr, total=end * steps)
    exact = evaluator(args, energy, streams['test'])
    if not args.no_plot:
        import plot
        frame = plot.Frame(x_train, noise)
    q_flow = noise.flow if learned(args) else None
    saved = ckpt.get('method_state') or {} if ckpt else {}
    if ckpt and args.noise == 'fce' and 'flow_steps' not in saved:     # a checkpoint from before --method
        saved = dict(flow_steps=history[-1]['flow_steps'])
    method = methods.build(args, energy, noise, x_train, log_q_train, adam, flow_adam, saved)
    about = f'nu={args.nu}, noise={args.noise}' if args.method in methods.SERVES['noise'] else f'method {args.method}'
    print(f'{"NCE" if args.method == "nce" else args.method} on {args.dataset}: {args.samples} samples, '
          f'{sum(p.numel() for p in params)} parameters, {about}, device={device}, epochs {start}..{end - 1}')

    pbar = tqdm(range(start, end), unit='epoch', dynamic_ncols=True)
    try:
        for epoch in pbar:
            t0 = time.time()
            records = [method.step(batch, lr_at(epoch * steps + i)) for i, batch in enumerate(method.batches())]
            losses, accs = method.values(records)
            # one host sync per epoch: the step losses are checked here, not in the step
            bad = (~losses.isfinite()).nonzero()
            if len(bad):
                kept = f'{args.ckpt} still holds epoch {history[-1]["epoch"]}' if history else 'this run wrote no checkpoint'
                fail(f'non-finite loss at epoch {epoch}, step {bad[0].item()}; stopped ({kept})')
            train_seconds = time.time() - t0            # the steps alone: the check above waited for them
            row = dict(epoch=epoch, value=losses.mean().item(), acc=None if accs is None else accs.mean().item(), c=None,
                       log_z=None, nll=None, kl=None, outside=None, log_z_err=None, flow_nll=None, flow_kl=None,
                       flow_steps=method.state.get('flow_steps'), changes=changed if epoch == start else None)
            log_p = None
            if exact and (epoch - start + 1) % args.eval_every == 0:
                metrics, log_p = exact(q_flow)
                row.update(metrics, c=metrics['c'] if args.method in methods.LEARNS_C else None)   # a c that is not learned is blank
                if metrics['log_z'] == math.inf and not any(h['log_z'] == math.inf for h in history):
                    pbar.write(f'epoch {epoch}: {NOT_NORMALISABLE}')
            if not args.no_plot:
                frame.save(log_p if log_p is not None else window_log_p(energy), frame_path(args, epoch),
                           noise if args.noise == 'fce' else None, row['outside'])
            row.update(seconds=time.time() - t0, train_seconds=train_seconds)
            with files.ctrl_c_held():       # so that history[-1] is always the epoch the checkpoint holds
                history.append(row)
                state = dict(energy=energy.state_dict(), model_kwargs=model_kwargs, optimizer=adam,
                             epoch=epoch, args=vars(args), rng=files.get_rng_state(), history=history, streams=streams,
                             method_state=method.state)
                if q_flow is not None:
                    state.update(flow=q_flow.state_dict(), flow_optimizer=flow_adam)
                files.save_checkpoint(state, args.ckpt)
                files.write_metrics(history, metrics_path(args))
            pbar.set_postfix({k: f'{v:.3f}' for k, v in row.items() if k not in ('epoch', 'seconds', 'train_seconds', 'log_z_err', 'changes') and v is not None})
    except KeyboardInterrupt:
        pbar.close()
        stop_interrupted(args, history, end)
    pbar.close()
    if not args.no_plot:
        frame.close()
        if exact:
            plot.plot_curves([h for h in history if h['nll'] is not None], os.path.join(args.images, 'curves.png'))
    print(summary(args, history, start, end))


if __name__ == '__main__':
    try:
        main(get_args())
    except KeyboardInterrupt:       # before the loop started: nothing was written yet
        print('\ninterrupted before training started; nothing was written', file=sys.stderr)
        sys.exit(130)
    except OSError as e:            # a full disk, a read-only file system: what was written stays whole
        fail(f'{e.strerror or e}{": " + e.filename if e.filename else ""}')
    except (MemoryError, torch.OutOfMemoryError):
        fail('out of memory; lower --samples, --nu, --batch, --hidden, --depth or --fourier')
