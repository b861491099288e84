"""Figures: the per-epoch density frame (data, noise, model), the training curves, and results.py's densities."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import torch

from data import DATASETS, log_density
from evaluate import GRID_N, PLOT_LIM, grid
from files import atomic_write

EXTENT = (-PLOT_LIM, PLOT_LIM, -PLOT_LIM, PLOT_LIM)


def _panel(ax, image, title):
    im = ax.imshow(image, cmap='jet', origin='lower', extent=EXTENT, interpolation='nearest',
                   vmin=0, vmax=max(float(image.max()), 1e-30))
    ax.set_title(title)
    ax.set_axis_off()
    return im


class Frame:
    """The three-panel figure of the original script: a 2D histogram of the training data, the noise
    density and the learned density exp(log p_θ), on [-4, 4]², jet, equal aspect, no axes. The first two
    panels are drawn once per run; each epoch only replaces the third panel's n×n image."""

    def __init__(self, data, noise, n=GRID_N):
        edges = np.linspace(-PLOT_LIM, PLOT_LIM, n + 1)
        x = data.cpu().numpy()
        hist = np.histogram2d(x[:, 1], x[:, 0], bins=(edges, edges))[0]    # rows are y
        self.window = grid(PLOT_LIM, n, data.device)
        self.fig, axs = plt.subplots(1, 3, figsize=(12, 4.3))
        _panel(axs[0], hist, 'Data')
        self.noise_im = _panel(axs[1], self.density(noise), 'Noise density')
        self.im = _panel(axs[2], np.zeros((n, n)), 'Model density')
        self.fig.tight_layout()
        self.title = axs[2].set_title('', y=1.0)     # where 'Model density' stood; y fixed, as it is drawn alone
        self.fig.canvas.draw()      # everything but the model's image and title is drawn once and kept
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def density(self, noise):
        n = int(len(self.window) ** 0.5)
        with torch.inference_mode():
            return noise.log_prob(self.window).exp().view(n, n).cpu().numpy()

    def save(self, log_p, path, noise=None, outside=None):
        """Draw exp(log_p), an (n, n) tensor on the grid of grid(PLOT_LIM, n), and write it to path; given a
        noise that learns (fce), its current density too, and given the share of the model's mass outside the
        window (evaluate.plane), that share in the model panel's title: mass the panel cannot show. Only those
        panels are redrawn (blitting), and the PNG is compressed lightly: 4x faster than savefig, the same pixels."""
        from PIL import Image
        p = log_p.exp().cpu().numpy()
        self.im.set_data(p)
        self.im.set_clim(0, max(float(p.max()), 1e-30))
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        self.im.axes.draw_artist(self.im)
        self.title.set_text('Model density' if outside is None else f'Model density, {share(outside)} of its mass outside')
        self.im.axes.draw_artist(self.title)
        if noise is not None:
            q = self.density(noise)
            self.noise_im.set_data(q)
            self.noise_im.set_clim(0, max(float(q.max()), 1e-30))
            self.noise_im.axes.draw_artist(self.noise_im)
        pixels = Image.fromarray(np.asarray(canvas.buffer_rgba()))
        atomic_write(path, lambda tmp: pixels.save(tmp, format='png', compress_level=1))

    def close(self):
        plt.close(self.fig)


def share(outside):
    """The share of mass outside the window, for a title: '0.3%', or '<0.1%' below what a title needs to show."""
    return f'{outside:.1%}' if outside >= 1e-3 else '<0.1%'


def plot_curves(history, path):
    """The run over epochs: the objective and accuracy; c against the quadrature's log Z, with the gap between
    them shaded and, on a log scale, |c - log Z|; and the exact KL on a log scale, where its tail shows (a learned
    noise's flow's too); and the share of the model's mass outside the window the frames show."""
    ep = np.array([h['epoch'] for h in history])
    col = lambda k: np.array([np.nan if h.get(k) is None else h[k] for h in history], dtype=float)
    fig, axs = plt.subplots(1, 5, figsize=(20, 3.6))
    axs[0].plot(ep, col('value'), label='-V(θ), the loss (nats)')
    axs[0].plot(ep, col('acc'), label='accuracy (fraction)')
    axs[0].set_title('NCE objective')
    c, log_z = col('c'), col('log_z')
    axs[1].plot(ep, c, label='c (learned)')
    axs[1].plot(ep, log_z, '--', label='log Z (quadrature)')
    axs[1].fill_between(ep, c, log_z, color='C3', alpha=0.3, label='c - log Z')
    axs[1].set(title='c against the true log Z', ylabel='nats')
    axs[2].plot(ep, np.abs(c - log_z), color='C3')
    axs[2].set(title='|c - log Z|, log scale', ylabel='nats')
    axs[3].plot(ep, col('kl'), color='C2', label='KL(data || model)')
    if not np.isnan(col('flow_kl')).all():      # a learned noise: the flow as a density model of its own
        axs[3].plot(ep, col('flow_kl'), color='C1', label='KL(data || flow)')
    axs[3].set(title=f'KL, log scale (final test NLL {col("nll")[-1]:.4f})', ylabel='nats')
    axs[4].plot(ep, col('outside'), color='C4')
    axs[4].set(title='mass outside [-4, 4]², log scale', ylabel='share of the model\'s mass')
    for ax in axs[2:]:
        ax.set_yscale('log', nonpositive='mask')    # a KL estimate a hair below 0, on a finite test set, is left out
    for ax in axs:
        ax.set_xlabel('epoch')
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def results_figure(images, path, n):
    """results.py's figure: a row per dataset, the true density beside NCE's, the strong preset's, exact MLE's and
    the KDE's on the n × n grid of the data window (their seed-0 images); False if no dataset has all four."""
    shown = [d for d in DATASETS if all((d, m) in images for m in ('nce', 'strong', 'mle', 'kde'))]
    if not shown:
        return False
    window = grid(PLOT_LIM, n)
    fig, axs = plt.subplots(len(shown), 5, figsize=(10, 2 * len(shown)), squeeze=False)
    for i, d in enumerate(shown):
        ims = [log_density(d, window).exp().view(n, n).numpy()] + [images[d, m] for m in ('nce', 'strong', 'mle', 'kde')]
        for j, (im, title) in enumerate(zip(ims, ('truth', 'NCE', 'NCE strong', 'exact MLE', 'KDE'), strict=True)):
            axs[i, j].imshow(im, cmap='jet', origin='lower', extent=(-4, 4, -4, 4))
            axs[i, j].set_axis_off()
            if i == 0:
                axs[i, j].set_title(title)
        axs[i, 0].text(-4.3, 0, d, rotation=90, va='center', ha='right')
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)
    return True


def estimators_figure(curves, methods, path, name=str, floor=1e-3, top=10.0, order=()):
    """The benchmark's figure: a panel per dataset, exact KL (log axis) against training seconds on one thread (log
    axis), a line per method through its mean over seeds at each epoch, and a band from the least to the largest
    seed. A KL below `floor` (the test set's own error can make it a hair negative) is drawn at the floor, and one
    above `top` nats, a run that diverged, leaves the panel at its top. A method's colour is its name's place in
    `order` where it is there, so that figures of different tables agree. False if no curve is there."""
    shown = [d for d in DATASETS if any(c['dataset'] == d for c in curves)]
    methods = [m for m in methods if any(c['method'] == m for c in curves)]
    if not shown:
        return False
    cols = min(4, len(shown))
    fig, axs = plt.subplots(-(-len(shown) // cols), cols, figsize=(3.6 * cols, 3.1 * -(-len(shown) // cols)), squeeze=False)
    colors = plt.get_cmap('tab10')
    for ax, d in zip(axs.flat, shown, strict=False):
        for j, m in enumerate(methods):
            i = order.index(name(m)) if name(m) in order else j
            at = {}         # epoch: its (training seconds, KL) over the seeds
            for c in curves:
                if c['dataset'] == d and c['method'] == m:
                    at.setdefault(c['epoch'], []).append((c['train_seconds'], min(max(c['kl'], floor), 2 * top)))
            if not at:
                continue
            t, kl = (np.array([[p[j] for p in at[e]] for e in sorted(at)]) for j in (0, 1))    # (epochs, seeds)
            ax.fill_between(t.mean(1), kl.min(1), kl.max(1), color=colors(i % 10), alpha=0.15, lw=0)
            ax.plot(t.mean(1), kl.mean(1), color=colors(i % 10), lw=1.3, label=name(m))
        ax.set(xscale='log', yscale='log', title=d, xlabel='training seconds, one thread', ylabel='KL (nats)')
        ax.set_ylim(top=min(ax.get_ylim()[1], top))
        ax.grid(True, which='major', alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in list(axs.flat)[len(shown):]:
        ax.set_axis_off()
    handles, labels = axs.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 10), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)
    return True


def logz_figure(rows, path, floor=1e-4):
    """logz.py --benchmark's figure: a panel per dataset, |log Ẑ - log Z| (log axis) against the energy evaluations
    spent (log axis), a line per estimator through the median over models and seeds and a band from the 10th to the
    90th percentile; NCE's c, which costs no evaluation once trained, as a dashed level. An error below `floor` is
    drawn at it."""
    shown = [d for d in DATASETS if any(r['dataset'] == d for r in rows)]
    names = list(dict.fromkeys(r['estimator'] for r in rows))
    cols = min(4, len(shown))
    fig, axs = plt.subplots(-(-len(shown) // cols), cols, figsize=(3.6 * cols, 3.1 * -(-len(shown) // cols)), squeeze=False)
    colors = plt.get_cmap('tab10')
    for ax, d in zip(axs.flat, shown, strict=False):
        for i, name in enumerate(names):
            at = {}
            for r in rows:
                if r['dataset'] == d and r['estimator'] == name:
                    at.setdefault(r['budget'], []).append(max(abs(r['log_z_hat'] - r['log_z']), floor))
            b = sorted(at)
            lo, mid, hi = (np.array([np.percentile(at[x], p) for x in b]) for p in (10, 50, 90))
            if b == [0]:
                ax.axhline(mid[0], color=colors(i), ls='--', lw=1.2, label=name)
                continue
            ax.fill_between(b, lo, hi, color=colors(i), alpha=0.15, lw=0)
            ax.plot(b, mid, color=colors(i), lw=1.3, marker='.', label=name)
        ax.set(xscale='log', yscale='log', title=d, xlabel='energy evaluations', ylabel='|error of log Z| (nats)')
        ax.grid(True, which='major', alpha=0.3)
    for ax in list(axs.flat)[len(shown):]:
        ax.set_axis_off()
    handles, labels = axs.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=80))
    plt.close(fig)
