"""Regenerate the results table and figure of the README: NCE against exact maximum likelihood, a Gaussian
mixture and a kernel density estimate, every number exact (quadrature, true densities).

$ python results.py               # all datasets, about 8 minutes on a 2-core CPU
$ python results.py --datasets rings moons --no-readme
"""
import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch

import train
import util
from data import DATASETS, log_density, sample_2d_data
from model import EBM

p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
p.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=DATASETS, help='datasets to run')
p.add_argument('--no-readme', action='store_true', help='print the table only; leave README.md as it is')
p.add_argument('--figure', default='images/results.png', help='where to write the density figure')
args = p.parse_args()
t_start = time.time()
ROOT = os.path.dirname(os.path.abspath(__file__))


def nce(dataset, tmp):
    """NCE with the original defaults, run by train.py itself; its last evaluation is exact."""
    a = train.get_args(['--dataset', dataset, '--no-plot', '--ckpt', os.path.join(tmp, dataset, 'nce.pth.tar')])
    train.main(a)
    ck = util.load_checkpoint(a.ckpt)
    energy = EBM(**ck['model_kwargs'])
    energy.load_state_dict(ck['energy'])
    return energy, ck['history'][-1]


def mle(x_train, steps, batch=100, lr=1e-3, n=48, lim=5.5, seed=0):
    """Exact maximum likelihood with the same network, data, steps and Adam: -mean log p_θ(x), with log Z(θ) by
    the midpoint rule on an n×n grid over [-lim, lim]², shifted at random each step so that the estimate of Z is
    unbiased and the model cannot hide mass between fixed nodes."""
    torch.manual_seed(seed)
    energy = EBM()
    params = list(energy.parameters())
    adam = util.adam_init(params)
    h = 2 * lim / n
    base = util.grid(lim, n)
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
        util.adam_step(params, adam, lr, 0.9, 0.999)
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
window = util.grid(util.PLOT_LIM, n_img)
with tempfile.TemporaryDirectory() as tmp:
    for d in args.datasets:
        t0 = time.time()
        x_train = sample_2d_data(d, 10000, torch.Generator().manual_seed(0))
        x_test = sample_2d_data(d, train.TEST_SAMPLES, torch.Generator().manual_seed(train.TEST_SEED))
        H = -log_density(d, x_test).double().mean().item()
        e_nce, last = nce(d, tmp)
        e_mle = mle(x_train, steps=50 * 100)
        m_mle, _ = util.evaluate(e_mle, x_test, H)
        nll_gmm, k = gmm(x_train.numpy(), x_test.numpy())
        nll_kde, kd = kde(x_train.numpy(), x_test.numpy())
        rows.append(dict(dataset=d, H=H, nce=last, mle=m_mle, gmm=nll_gmm, k=k, kde=nll_kde, bw=kd.bandwidth))
        norm = lambda e, m: (util.log_p_on(e, window) + m['c'] - m['log_z']).exp().view(n_img, n_img)
        images.append([log_density(d, window).exp().view(n_img, n_img), norm(e_nce, last), norm(e_mle, m_mle),
                       torch.as_tensor(np.exp(kd.score_samples(window.numpy()))).view(n_img, n_img)])
        print(f'{d}: {time.time() - t0:.0f} s')

f = lambda v: f'{v:.3f}'
table = ['| dataset | H (true) | NCE NLL | NCE KL | NCE \\|c − log Z\\| | exact MLE NLL | MLE KL | GMM NLL (k by BIC) | GMM KL | KDE NLL (bandwidth by CV) | KDE KL |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
for r in rows:
    table.append(f"| {r['dataset']} | {f(r['H'])} | {f(r['nce']['nll'])} | {f(r['nce']['kl'])} | "
                 f"{f(abs(r['nce']['c'] - r['nce']['log_z']))} | {f(r['mle']['nll'])} | {f(r['mle']['kl'])} | "
                 f"{f(r['gmm'])} (k={r['k']}) | {f(r['gmm'] - r['H'])} | {f(r['kde'])} ({r['bw']:.3f}) | {f(r['kde'] - r['H'])} |")
wall = time.time() - t_start
table.append('')
table.append(f'All in nats, on {train.TEST_SAMPLES} held-out samples; KL = NLL − H. '
             f'Regenerated by `python results.py` in {wall / 60:.1f} minutes ({torch.get_num_threads()} CPU threads).')
text = '\n'.join(table)
print(text)

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
fig, axs = plt.subplots(len(rows), 4, figsize=(8, 2 * len(rows)), squeeze=False)
for i, (r, ims) in enumerate(zip(rows, images)):
    for j, (im, title) in enumerate(zip(ims, ('truth', 'NCE', 'exact MLE', 'KDE'))):
        axs[i, j].imshow(im.numpy(), cmap='jet', origin='lower', extent=(-4, 4, -4, 4))
        axs[i, j].set_axis_off()
        if i == 0:
            axs[i, j].set_title(title)
    axs[i, 0].text(-4.3, 0, r['dataset'], rotation=90, va='center', ha='right')
fig.tight_layout()
util.atomic_write(args.figure, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
print(f'figure: {args.figure}')

if not args.no_readme:
    path = os.path.join(ROOT, 'README.md')
    readme = open(path).read()
    start, end = '<!-- results:start -->', '<!-- results:end -->'
    if start in readme and end in readme:
        head, rest = readme.split(start)
        readme = head + start + '\n' + text + '\n' + end + rest.split(end)[1]
        util.write_text(path, readme)
        print('README.md updated')
