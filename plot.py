"""Figures: the per-epoch density frame (data, noise, model) and the training curves."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import torch

from util import GRID_N, PLOT_LIM, atomic_write, grid

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
        with torch.inference_mode():
            q = noise.log_prob(grid(PLOT_LIM, n, noise.mean.device)).exp().view(n, n).cpu().numpy()
        self.fig, axs = plt.subplots(1, 3, figsize=(12, 4.3))
        _panel(axs[0], hist, 'Data')
        _panel(axs[1], q, 'Noise density')
        self.im = _panel(axs[2], np.zeros((n, n)), 'Model density')
        self.fig.tight_layout()
        self.fig.canvas.draw()      # everything but the model's image is drawn once and kept
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def save(self, log_p, path):
        """Draw exp(log_p), an (n, n) tensor on the grid of util.grid(PLOT_LIM, n), and write it to path.
        Only the model panel is redrawn (blitting), and the PNG is compressed lightly: 4x faster than
        savefig, with the same pixels."""
        from PIL import Image
        p = log_p.exp().cpu().numpy()
        self.im.set_data(p)
        self.im.set_clim(0, max(float(p.max()), 1e-30))
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        self.im.axes.draw_artist(self.im)
        pixels = Image.fromarray(np.asarray(canvas.buffer_rgba()))
        atomic_write(path, lambda tmp: pixels.save(tmp, format='png', compress_level=1))

    def close(self):
        plt.close(self.fig)


def plot_curves(history, path):
    """value and accuracy, c against the quadrature's log Z, and test NLL / KL, over epochs."""
    ep = [h['epoch'] for h in history]
    col = lambda k: [np.nan if h[k] is None else h[k] for h in history]
    fig, axs = plt.subplots(1, 3, figsize=(13, 3.6))
    axs[0].plot(ep, col('value'), label='-V(θ) (loss)')
    axs[0].plot(ep, col('acc'), label='accuracy')
    axs[0].set_title('NCE objective')
    axs[1].plot(ep, col('c'), label='c (learned)')
    axs[1].plot(ep, col('log_z'), '--', label='log Z (quadrature)')
    axs[1].set_title('c against the true log Z')
    axs[2].plot(ep, col('nll'), label='test NLL')
    axs[2].plot(ep, col('kl'), label='KL(data || model)')
    axs[2].set_title('Exact test metrics (nats)')
    for ax in axs:
        ax.set_xlabel('epoch')
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)
