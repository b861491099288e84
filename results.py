"""Regenerate the results table and figure of the README: NCE (the original defaults and --preset strong)
against exact maximum likelihood, a Gaussian mixture and a kernel density estimate, every number exact
(quadrature, true densities).

$ python results.py               # all datasets, about 13 minutes on a 2-core CPU
$ python results.py --datasets rings moons --no-readme
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import files
import optim
import train
from data import DATASETS, log_density, sample_2d_data
from evaluate import PLOT_LIM, evaluate, grid, log_p_on
from model import EBM

p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
p.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=DATASETS, help='datasets to run')
p.add_argument('--no-readme', action='store_true', help='print the table only; leave README.md as it is')
p.add_argument('--figure', default='images/results.png', help='where to write the density figure')
args = p.parse_args()
ROOT = os.path.dirname(os.path.abspath(__file__))
for path in [args.figure] + ([] if args.no_readme else [os.path.join(ROOT, 'README.md')]):
    if problem := files.unwritable(os.path.dirname(os.path.abspath(path))) or files.not_a_file(path):
        p.error(f'cannot write {path}: {problem}')
t_start = time.time()
SAMPLES = {k: v['samples'] for k, v in train.PRESETS.items()}


def nce(dataset, tmp, preset):
    """NCE run as a user runs it, `python train.py --dataset D --preset P` with its frames and an evaluation
    every epoch, timed from process start to exit; its last evaluation is exact."""
    run = os.path.join(tmp, dataset, preset)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', dataset, '--preset', preset,
                        '--ckpt', os.path.join(run, 'nce.pth.tar'), '--images', run], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if p.returncode:
        sys.exit(f'results.py: train.py --dataset {dataset} --preset {preset} failed:\n{p.stderr}')
    ck = files.load_checkpoint(os.path.join(run, 'nce.pth.tar'))
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    return energy, dict(ck['history'][-1], seconds=seconds)


def mle(x_train, steps, batch=100, lr=1e-3, n=48, lim=5.5, seed=0):
    """Exact maximum likelihood with the same network, data, steps and Adam: -mean log p_θ(x), with log Z(θ) by
    the midpoint rule on an n×n grid over [-lim, lim]², shifted at random each step so that the estimate of Z is
    unbiased and the model cannot hide mass between fixed nodes."""
    torch.manual_seed(seed)
    energy = EBM()
    params = list(energy.parameters())
    adam = optim.adam_init(params)
    h = 2 * lim / n
    base = grid(lim, n)
    for i in range(steps):
        if i % (len(x_train) // batch) == 0:
            xs = x_train[torch.randperm(len(x_train))]
        x = xs[(i % (len(x_train) // batch)) * batch:][:batch]
        nodes = base + (torch.rand(2) - 0.5) * h
        neg_f = energy(torch.cat([x, nodes])).squeeze(1) + energy.c      # -f_θ; c plays no part in MLE
        loss = -neg_f[:batch].mean() + torch.logsumexp(neg_f[batch:], 0) + 2 * math.log(h)
        for q in params:
            q.grad = None
        loss.backward()
        optim.adam_step(params, adam, lr, 0.9, 0.999)
    return energy


def gmm(x_train, x_test):
    from sklearn.mixture import GaussianMixture
    fits = [GaussianMixture(k, covariance_type='full', random_state=0).fit(x_train) for k in range(1, 31)]
    best = min(fits, key=lambda g: g.bic(x_train))
    return -best.score(x_test), best.n_components


def kde(x_train, x_test):
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
    search = GridSearchCV(KernelDensity(), {'bandwidth': np.geomspace(0.02, 0.5, 12)}, cv=3).fit(x_train)
    return -search.best_estimator_.score_samples(x_test).mean(), search.best_estimator_


rows, images = [], []
n_img = 160
window = grid(PLOT_LIM, n_img)
with tempfile.TemporaryDirectory() as tmp:
    for d in args.datasets:
        t0 = time.time()
        x_train = sample_2d_data(d, SAMPLES['original'], torch.Generator().manual_seed(0))   # train.py's, seed 0
        x_test = sample_2d_data(d, train.TEST_SAMPLES, torch.Generator().manual_seed(train.TEST_SEED))
        H = -log_density(d, x_test).double().mean().item()
        e_nce, last = nce(d, tmp, 'original')
        e_strong, strong = nce(d, tmp, 'strong')
        e_mle = mle(x_train, steps=50 * 100)
        m_mle, _ = evaluate(e_mle, x_test, H)
        nll_gmm, k = gmm(x_train.numpy(), x_test.numpy())
        nll_kde, kd = kde(x_train.numpy(), x_test.numpy())
        rows.append(dict(dataset=d, H=H, nce=last, strong=strong, mle=m_mle, gmm=nll_gmm, k=k, kde=nll_kde, bw=kd.bandwidth))
        norm = lambda e, m: (log_p_on(e, window) + m['c'] - m['log_z']).exp().view(n_img, n_img)
        images.append([log_density(d, window).exp().view(n_img, n_img), norm(e_nce, last), norm(e_strong, strong), norm(e_mle, m_mle),
                       torch.as_tensor(np.exp(kd.score_samples(window.numpy()))).view(n_img, n_img)])
        print(f'{d}: {time.time() - t0:.0f} s')

f = lambda nll, h: f'{nll:.3f} ({nll - h:.3f})'
gap = lambda m: f"{abs(m['c'] - m['log_z']):.3f}"
table = ['| dataset | H (true) | NCE | NCE \\|c − log Z\\| | NCE strong | strong \\|c − log Z\\| | strong wall | exact MLE '
         '| GMM (k by BIC) | KDE (bandwidth by CV) |', '|---|---|---|---|---|---|---|---|---|---|']
for r in rows:
    h = r['H']
    table.append(f"| {r['dataset']} | {h:.3f} | {f(r['nce']['nll'], h)} | {gap(r['nce'])} | {f(r['strong']['nll'], h)} | "
                 f"{gap(r['strong'])} | {r['strong']['seconds']:.0f} s | {f(r['mle']['nll'], h)} | "
                 f"{f(r['gmm'], h)}, k={r['k']} | {f(r['kde'], h)}, {r['bw']:.3f} |")
wall = time.time() - t_start
table.append('')
table.append(f'Test NLL (KL = NLL − H) in nats, on {train.TEST_SAMPLES} held-out samples. NCE, exact MLE, GMM and KDE '
             f'see the same {SAMPLES["original"]} training samples; NCE strong draws its own {SAMPLES["strong"]}. "strong wall" is the whole '
             f'`python train.py --preset strong` run, frames and evaluation every epoch included. Regenerated by '
             f'`python results.py` in {wall / 60:.1f} minutes ({torch.get_num_threads()} CPU threads).')
text = '\n'.join(table)
print(text)

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt

fig, axs = plt.subplots(len(rows), 5, figsize=(10, 2 * len(rows)), squeeze=False)
for i, (r, ims) in enumerate(zip(rows, images, strict=True)):
    for j, (im, title) in enumerate(zip(ims, ('truth', 'NCE', 'NCE strong', 'exact MLE', 'KDE'), strict=True)):
        axs[i, j].imshow(im.numpy(), cmap='jet', origin='lower', extent=(-4, 4, -4, 4))
        axs[i, j].set_axis_off()
        if i == 0:
            axs[i, j].set_title(title)
    axs[i, 0].text(-4.3, 0, r['dataset'], rotation=90, va='center', ha='right')
fig.tight_layout()
files.atomic_write(args.figure, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
print(f'figure: {args.figure}')

if not args.no_readme:
    path = os.path.join(ROOT, 'README.md')
    readme = open(path).read()
    start, end = '<!-- results:start -->', '<!-- results:end -->'
    if start in readme and end in readme:
        head, rest = readme.split(start)
        readme = head + start + '\n' + text + '\n' + end + rest.split(end)[1]
        files.write_text(path, readme)
        print('README.md updated')
