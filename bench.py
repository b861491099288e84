"""Benchmark this repo against the original script's loop, on the same machine, in one run.

$ python bench.py                 # CPU
$ python bench.py --device cuda
$ python bench.py --estimators    # only each --method's step against NCE's
$ python bench.py --floor         # only the estimator table's matrix products, replayed alone

Prints ms per training step (default and strong configurations) next to the matmul floor, ms per frame and
per evaluation, the epoch of `python train.py` as it runs (checkpoint and metrics included), start-up time
and peak memory, each against the original script's loop run the same way (DataLoader, two forward passes,
a host sync and a print per batch, torch.optim.Adam, a checkpoint and a pcolormesh plot on a 1000x1000 grid
each epoch).
"""
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributions as D

import cli
import memory
import methods
import optim
import resume
import seeds
import train
from data import sample_2d_data
from evaluate import evaluate, log_p_on, log_z_in_window, plane, window_log_p
from likelihood import mle_grid, mle_nodes, step_log_z
from model import EBM
from noise import LEARNED, make_noise

p = cli.parser(__doc__)
p.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'mps'], help='device to benchmark')
p.add_argument('--steps', type=int, default=500, help='timed steps per configuration')
p.add_argument('--estimators', action='store_true', help='only time each --method\'s step against NCE\'s (docs/estimators.md)')
p.add_argument('--floor', action='store_true', help='only the estimator table\'s matrix products, replayed alone: the '
               'least its arithmetic can take here (docs/estimators.md)')
p.add_argument('--zuko', action='store_true', help='only time the flow of --noise fce against zuko\'s MAF and NSF '
               '(pip install zuko==1.6.0; docs/flow.md)')
p.add_argument('--mle-log-z', metavar='CKPT', help='only the log Z --method mle\'s step sees against the evaluation\'s, CKPT\'s model (docs/exact.md)')
args = p.parse_args()
device = torch.device(args.device)

def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elif device.type == 'mps':
        torch.mps.synchronize()

def timed(fn, n, burn=20):
    """Seconds per call of fn, after a burn-in."""
    for _ in range(burn):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n

STREAMS = seeds.streams(0)      # train.py --seed 0's streams: its data, initialisation, draws and held-out set
x_train = sample_2d_data('8gaussians', 10000, seeds.generator(STREAMS['data'])).to(device)
print(f'device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}')


def flow_against_zuko():
    """What an fce step asks of its flow, for a batch of 100 data points and 100 draws (10 of them broad): the draws
    and log q at all 200 rows, and, on the flow's turn, its gradient too; ours (flow.py) against zuko's flows."""
    try:
        import zuko
    except ImportError:
        p.error('--zuko: zuko is not installed; pip install zuko==1.6.0')
    x = x_train[:100]
    noise = make_noise('fce', x_train)
    noise.flow.requires_grad_(False)
    def ours(grad):
        u, log_q, backward = noise.contrast_and_backward(x, 100)
        if grad:
            backward(torch.ones_like(u), torch.ones_like(log_q))
    print(f'ours, {noise.flow.layers} affine couplings of {noise.flow.w2.shape[-1]} hidden: draws and log q '
          f'{timed(lambda: ours(False), args.steps) * 1e3:.3f} ms, with the flow gradient {timed(lambda: ours(True), args.steps) * 1e3:.3f} ms')
    g = 2 * torch.randn(10, 2, device=device)
    for name, flow in (('MAF, 4 transforms of (64, 64)', zuko.flows.MAF(2, transforms=4, hidden_features=(64, 64))),
                       ('MAF, 5 of (100, 100), as fce-2d', zuko.flows.MAF(2, transforms=5, hidden_features=(100, 100))),
                       ('NSF, 4 transforms of (64, 64)', zuko.flows.NSF(2, transforms=4, hidden_features=(64, 64)))):
        flow.to(device)
        def theirs(grad, flow=flow):
            with torch.set_grad_enabled(grad):
                q = flow()
                gen, log_q = q.rsample_and_log_prob((90,))
                log_q_xg = q.log_prob(torch.cat([x, g]))
                if grad:
                    (gen.sum() + log_q.sum() + log_q_xg.sum()).backward()
        print(f'zuko {zuko.__version__} {name}: draws and log q {timed(lambda: theirs(False), args.steps // 5) * 1e3:.3f} ms, '
              f'with the flow gradient {timed(lambda: theirs(True), args.steps // 5) * 1e3:.3f} ms')


def mle_log_z(path, draws=1000):
    """How far the log Z in --method mle's loss lies from the evaluation's over the plane, over `draws` steps' nodes."""
    ck = resume.load(path)
    energy = EBM(**ck['model_kwargs']).to(device)
    energy.load_state_dict(ck['energy'])
    seeds.seed_global(STREAMS['train'])
    base, exact = mle_grid(device), plane(energy)
    diff = torch.stack([step_log_z(energy, base) for _ in range(draws)]).double() - exact['log_z'].double()
    print(f'{path}: log Z {exact["log_z"].item():.4f} over the plane (bound {exact["err"]:.1e}, {exact["outside"]:.2%} outside [-4, 4]²); the step\'s '
          f'log Z minus it over {draws} draws: mean {diff.mean().item():+.4f}, sd {diff.std().item():.4f}, largest |.| {diff.abs().max().item():.4f}')


if args.mle_log_z:
    sys.exit(mle_log_z(args.mle_log_z))
if args.zuko:
    flow_against_zuko()
    sys.exit()

# the floor: the three (batch·(1+ν)) x 128 x 128 matrix products of a step (forward, and two in backward)
a, w = torch.randn(200, 128, device=device), torch.randn(128, 128, device=device)
floor = timed(lambda: (a @ w, a @ w, a.T @ a), args.steps)

# ours, exactly the steps train.py runs: methods.build's step of the method on the batches of its epochs, and the
# steps' values when an epoch ends. flags are train.py's; set overrides arguments after parsing (fce's threshold)
def step_of(*flags, **set):
    step, energy = build_step(*flags, **set)
    return timed(step, args.steps), energy

def build_step(*flags, **set):
    a = train.get_args(['--no-plot', '--eval-every', '0', '--device', args.device, *flags])
    vars(a).update(set)
    seeds.seed_global(STREAMS['init'])
    energy = EBM(**train.network_kwargs(vars(a))).to(device)
    noise = make_noise(a.noise, x_train, a.flow_layers, a.flow_hidden, a.flow_broad, STREAMS['mixture'])
    seeds.seed_global(STREAMS['train'])
    adam = optim.adam_init(list(energy.parameters()))
    flow_adam = resume.restore_flow(a, None, noise, x_train, device) if a.noise in LEARNED else None
    log_q = noise.log_prob(x_train) if a.noise != 'fce' else None
    method = methods.build(a, energy, noise, x_train, log_q, adam, flow_adam)
    epoch, records = iter(()), []
    def step():
        nonlocal epoch, records
        batch = next(epoch, None)
        if batch is None:       # a new epoch: its data order and draws are made here, as in train.py
            if records:
                method.values(records)
            epoch, records = method.batches(), []
            batch = next(epoch)
        records.append(method.step(batch, a.lr))
    return step, energy

# exact MLE as results.py ran it before --method: autograd through the network at the data and the shifted nodes,
# then Adam; the written-out step of --method mle must be no slower
def mle_autograd():
    seeds.seed_global(STREAMS['init'])
    energy = EBM().to(device)
    params, base = list(energy.parameters()), mle_grid(device)
    adam = optim.adam_init(params)
    def step():
        x = x_train[torch.randint(len(x_train), (100,), device=device)]
        neg_f = energy(torch.cat([x, mle_nodes(base)])).squeeze(1) + energy.c
        loss = -neg_f[:100].mean() + torch.logsumexp(neg_f[100:] + base[2], 0)
        energy.zero_grad(set_to_none=True)
        loss.backward()
        optim.adam_step(params, adam, 1e-3, 0.9, 0.999)
    return timed(step, args.steps)

# each estimator's step against an NCE step of the same network and batch, with the target for the ratio
ESTIMATORS = [  # name, flags, the NCE step it is measured against, the target ratio
    ('rank', ['--method', 'rank'], 'nce', 1.5), ('cnce', ['--method', 'cnce'], 'nce', 1.5), ('ence', ['--method', 'ence'], 'nce', 1.5),
    ('ence, ngd', ['--method', 'ence', '--optim', 'ngd'], 'nce', 1.5), ('is', ['--method', 'is'], 'nce', 1.5), ('dsm', ['--method', 'dsm'], 'nce', 3),
    ('sm, softplus', ['--method', 'sm', '--act', 'softplus'], 'nce, softplus', 4), ('cd, k = 10', ['--method', 'cd'], 'nce', 6),
    ('pcd, k = 10', ['--method', 'pcd'], 'nce', 6), ('cd, k = 1', ['--method', 'cd', '--langevin-steps', '1'], 'nce', 1.5),
    ('mle', ['--method', 'mle'], None, None)]

def against_nce(flags, ref_flags=(), repeats=5):
    """Seconds a step of a method and of the NCE step it is measured against, each the least of `repeats` timings
    taken in turn, so that the shared machine's drift falls on both alike."""
    mine, ref = [], []
    for _ in range(repeats):
        mine.append(step_of(*flags)[0] if flags else mle_autograd())
        ref.append(step_of(*ref_flags)[0])
    return min(mine), min(ref)

def estimators():
    """On one thread, as results.py runs each job: two threads on a shared 2-core machine time steps this small with twice the noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train.flush_subnormals(device)      # as train.py runs them
    print('each --method\'s step against NCE\'s, one thread:')
    for name, flags, against, target in ESTIMATORS:
        ref_flags = ['--act', 'softplus'] if 'softplus' in flags else []
        t, ref = against_nce(flags, ref_flags)
        if against is None:
            before, _ = against_nce([], ref_flags)
            print(f'{name}: {t * 1e3:.3f} ms a step, {t / ref:.1f}x NCE; the autograd step results.py ran before '
                  f'{before * 1e3:.3f} ms: {before / t:.2f}x')
        else:
            print(f'{name}: {t * 1e3:.3f} ms a step, {t / ref:.2f}x {against} ({ref * 1e3:.3f} ms; target at most {target}x: '
                  f'{"met" if t / ref <= target else "missed"})')
    torch.set_num_threads(threads)


if args.estimators:
    estimators()
    sys.exit()

PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.linear.default, torch.ops.aten.bmm.default}

def products(fn):
    """The matrix products that fn() calls, {(op, the (shape, stride) of each tensor argument): how many times}."""
    from torch.utils._python_dispatch import TorchDispatchMode
    calls = {}
    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kwargs=None):
            if func in PRODUCTS:
                key = (func, tuple((tuple(t.shape), t.stride()) for t in a if isinstance(t, torch.Tensor)))
                calls[key] = calls.get(key, 0) + 1
            return func(*a, **(kwargs or {}))
    with Log():
        fn()
    return calls

def replay(calls, n):
    """Seconds those products take alone, on random tensors of the same shapes and strides."""
    made = [(f, [torch.empty_strided(*shape, device=device).normal_() for shape in shapes], k) for (f, shapes), k in calls.items()]
    return timed(lambda: [f(*ts) for f, ts, k in made for _ in range(k)], n, burn=2)

def table_floor(seeds=5):
    """The estimator table's matrix products alone, on one thread: each method's step's and an evaluation's, taken
    from the code as it runs and replayed, times a job's steps and evaluations (the original budget: 5000 and 50)
    and the table's jobs a method (8 datasets, 5 seeds): what the table would take if everything but its products,
    as this torch computes them, cost nothing."""
    import results
    torch.set_num_threads(1)
    preset = train.PRESETS['original']
    evaluations = preset['epoch']
    steps, jobs = evaluations * -(-preset['samples'] // preset['batch']), len(results.DATASETS) * seeds
    x_test = train.held_out('8gaussians', STREAMS['test'])[0].to(device)
    total = 0
    for name in results.ESTIMATORS:
        spec = results.METHODS[name]        # the flags results.py runs it with (sm on SiLU)
        step, energy = build_step('--method', spec.get('method', 'nce'), *(['--act', spec['act']] if 'act' in spec else []))
        for _ in range(3):
            step()
        t_step = replay(products(step), args.steps)
        t_eval = replay(products(lambda e=energy: evaluate(e, x_test)), 5)
        job = steps * t_step + evaluations * t_eval
        total += jobs * job
        print(f'{name}: products {t_step * 1e3:.3f} ms a step, {t_eval * 1e3:.1f} ms an evaluation: {job:.1f} s a job')
    print(f'the estimator table\'s products alone: {total / 60:.1f} worker-minutes, {total / 120:.1f} minutes on 2 workers')


if args.floor:
    table_floor()
    sys.exit()

# the original: DataLoader, MultivariateNormal, separate passes, a host sync and a print every batch
def original_loop():
    seeds.seed_global(STREAMS['init'])
    energy = EBM().to(device)
    opt = torch.optim.Adam(energy.parameters(), lr=1e-3, betas=(0.9, 0.999))
    seeds.seed_global(STREAMS['train'])
    noise = D.MultivariateNormal(torch.zeros(2, device=device), 4 * torch.eye(2, device=device))
    loader = torch.utils.data.DataLoader(x_train.cpu(), batch_size=100, shuffle=True)
    out = io.StringIO()
    def epoch():
        for i, x in enumerate(loader):
            x = x.to(device)
            gen = noise.sample((100,))
            lp_x, lq_x = energy(x), noise.log_prob(x).unsqueeze(1)
            lp_g, lq_g = energy(gen), noise.log_prob(gen).unsqueeze(1)
            v = (lp_x - torch.logsumexp(torch.cat([lp_x, lq_x], 1), 1, keepdim=True)).mean() \
                + (lq_g - torch.logsumexp(torch.cat([lp_g, lq_g], 1), 1, keepdim=True)).mean()
            acc = ((torch.sigmoid(lp_x - lq_x) > 0.5).sum() + (torch.sigmoid(lq_g - lp_g) > 0.5).sum()).cpu().numpy() / 200
            opt.zero_grad()
            (-v).backward()
            opt.step()
            print(f'[Epoch 0] [Batch {i}/{len(loader)}] [Value: {-v.item():f}] [Accuracy: {acc:f}]', file=out)
    return epoch, energy, noise

def original_plot(energy, noise, path):
    import matplotlib.pyplot as plt
    t = torch.linspace(-4, 4, 1000)
    xx, yy = torch.meshgrid(t, t, indexing='ij')
    zz = torch.stack([xx.flatten(), yy.flatten()], 1).to(device)
    fig, axs = plt.subplots(1, 3, figsize=(12, 4.3), subplot_kw={'aspect': 'equal'})
    xs = x_train.cpu().numpy()
    axs[0].hist2d(xs[:, 0], xs[:, 1], range=[[-4, 4], [-4, 4]], bins=1000, cmap='jet')
    with torch.no_grad():
        axs[1].pcolormesh(xx, yy, noise.log_prob(zz).exp().cpu().view(1000, 1000), cmap='jet')
        axs[2].pcolormesh(xx, yy, energy(zz).exp().cpu().view(1000, 1000), cmap='jet')
    for ax in axs:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# the original first, in the process as Python starts it; then ours, with the process set up as train.py sets it
import plot  # here: matplotlib's import is not part of any timing

orig_epoch, orig_energy, orig_noise = original_loop()

def time_original():
    """Seconds per step of the original loop, per plot, and per whole epoch as its script runs one (100 steps, checkpoint, plot)."""
    step = timed(orig_epoch, max(1, args.steps // 100), burn=1) / 100
    with tempfile.TemporaryDirectory() as tmp:
        def whole_epoch():
            orig_epoch()
            torch.save(dict(energy=orig_energy.state_dict(), epoch=0), os.path.join(tmp, 'nce.pth.tar'))
            original_plot(orig_energy, orig_noise, os.path.join(tmp, 'o.png'))
        plot_s = timed(lambda: original_plot(orig_energy, orig_noise, os.path.join(tmp, 'o.png')), 1, burn=0)
        return step, plot_s, timed(whole_epoch, 2, burn=0)

def time_train_epoch(short=5, long=25, *flags):
    """Seconds per epoch of train.main with the default flags, as a user runs it: batches, steps, the steps' values, the
    evaluation, the frame, the checkpoint and metrics.csv. Two runs, of `short` and `long` epochs, so that the set-up
    of a run (data, noise, the frame's fixed panels, the test set) cancels out."""
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in (short, long):
            run = os.path.join(tmp, str(epochs))
            argv = ['--epoch', str(epochs), '--ckpt', os.path.join(run, 'nce.pth.tar'), '--images', run, '--device', args.device, *flags]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                t = time.perf_counter()
                train.main(train.get_args(argv))
                seconds[epochs] = time.perf_counter() - t
    return (seconds[long] - seconds[short]) / (long - short)

orig_step, t_orig_plot, epoch_orig = time_original()
memory.keep_freed_memory()
train.flush_subnormals(device)
# the same settings help the original too: measured again, so the ratios can be read with and without it
orig_step_kept, t_orig_plot_kept, epoch_orig_kept = time_original()
step_default, energy = step_of()
step_strong, _ = step_of('--preset', 'strong')
epoch_ours = time_train_epoch()
fce_ebm, fce_both = (step_of('--noise', 'fce', fce_threshold=t)[0] for t in (1.0, 0.0))   # the flow never, always stepping
epoch_fce = time_train_epoch(5, 25, '--noise', 'fce')
x_test = train.held_out('8gaussians', STREAMS['test'])[0].to(device)
# the evaluation as it was before it covered the plane: log Z over [-8, 8]² alone, and the held-out set
in_window = lambda e: (log_p_on(e, x_test).mean() - log_z_in_window(e)).item()
frame = plot.Frame(x_train, make_noise('gaussian', x_train))
with tempfile.TemporaryDirectory() as tmp:
    log_p = window_log_p(energy)
    t_eval, t_window = timed(lambda: evaluate(energy, x_test), 10, burn=2), timed(lambda: in_window(energy), 10, burn=2)
    t_plot = timed(lambda: frame.save(log_p, os.path.join(tmp, 'f.png')), 10, burn=2)
step, run_energy, per_epoch = *build_step(), []
for _ in range(50):     # the same on the default run's model after each epoch's 100 steps: the cost per epoch of a run
    timed(step, 100, burn=0)
    per_epoch.append([timed(lambda: evaluate(run_energy, x_test), 3, burn=1), timed(lambda: in_window(run_energy), 3, burn=1)])
per_epoch = torch.tensor(per_epoch).mean(0)
print(f'matmul floor (3 products 200x128x128): {floor * 1e3:.3f} ms')
print(f'step, default (batch 100, nu 1):  {step_default * 1e3:.3f} ms, {1 / step_default:.0f} steps/s, '
      f'floor/step {floor / step_default:.0%}; original loop {orig_step * 1e3:.3f} ms: {orig_step / step_default:.1f}x faster')
print(f'step, strong (batch 256, nu 4, 3x128 on 64 Fourier features): {step_strong * 1e3:.3f} ms, {1 / step_strong:.0f} steps/s')
print(f'frame: {t_plot * 1e3:.1f} ms (original plot {t_orig_plot * 1e3:.0f} ms: {t_orig_plot / t_plot:.0f}x); '
      f'evaluation (quadrature log Z over the plane, test NLL, KL): {t_eval * 1e3:.1f} ms, {t_eval / t_window:.2f}x the same '
      f'over [-8, 8]² alone ({t_window * 1e3:.1f} ms), on the model after 520 steps; over the 50 epochs of the default run, '
      f'{per_epoch[0] * 1e3:.1f} ms against {per_epoch[1] * 1e3:.1f} ms an epoch, {per_epoch[0] / per_epoch[1]:.2f}x')
print(f'epoch as train.py runs it (100 steps, evaluation, frame, checkpoint, metrics): {epoch_ours * 1e3:.0f} ms, '
      f'of which steps + evaluation + frame {(100 * step_default + t_eval + t_plot) * 1e3:.0f} ms; '
      f'original epoch (100 steps, checkpoint, plot) {epoch_orig * 1e3:.0f} ms: {epoch_orig / epoch_ours:.1f}x faster')
print(f'fce step (original network, batch 100): EBM step alone {fce_ebm * 1e3:.3f} ms ({fce_ebm / step_default:.1f}x the NCE step), '
      f'with a flow step {fce_both * 1e3:.3f} ms ({fce_both / step_default:.1f}x); an fce epoch as train.py runs it '
      f'{epoch_fce * 1e3:.0f} ms ({epoch_fce / epoch_ours:.1f}x the NCE epoch)')
print(f'original with the same settings (memory.keep_freed_memory, train.flush_subnormals): step {orig_step_kept * 1e3:.3f} ms '
      f'({orig_step_kept / step_default:.1f}x ours), epoch {epoch_orig_kept * 1e3:.0f} ms ({epoch_orig_kept / epoch_ours:.1f}x ours)')
estimators()

# start-up and memory of the real script, in a fresh process each; the child reports its own peak (VmHWM),
# since a child's ru_maxrss also counts the pages it shared with this process at fork
REPORT = """import atexit, os, resource, runpy, sys
def peak():
    try:
        kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    except OSError:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == 'darwin' else 1)
    print('peak_kb', kb)
atexit.register(peak)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name='__main__')
"""
with tempfile.TemporaryDirectory() as tmp:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')
    def run(*a):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, '-c', REPORT, script, '--device', args.device, *a], cwd=tmp,
                             capture_output=True, text=True, check=True).stdout
        return time.perf_counter() - t, int(out.split('peak_kb')[-1]) / 1024
    startup, _ = run('--epoch', '1', '--samples', '100', '--eval-every', '0', '--no-plot')
    full, peak = run()
print(f'start-up (a whole 1-step run, from process start to exit): {startup:.2f} s')
print(f'python train.py (50 epochs, evaluation and frames every epoch): {full:.1f} s, peak memory {peak:.0f} MB')
