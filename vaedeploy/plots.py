"""PNG pictures: training curves, sample grids, data beside reconstructions, the latent space by label, bars.

Arrays in, PNG out: nothing here knows a model or a run (``vaedeploy.pictures`` draws a run's pictures with these).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save through a temporary file so a half-written PNG never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    tmp.replace(path)
    return path


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile N×C×H×W images (C = 1 or 3) into one H'×W' (×3) array with a 1-pixel gap."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.ones((c, rows * (h + 1) + 1, columns * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, columns)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def plot_grid(images: np.ndarray, path: str | Path, title: str, columns: int = 10) -> Path:
    plt = pyplot()
    grid = image_grid(images, columns)
    fig, ax = plt.subplots(figsize=(columns * 0.7, max(1.0, grid.shape[0] / grid.shape[1] * columns * 0.7)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return save_figure(fig, path)


def plot_reconstructions(data: np.ndarray, recon: np.ndarray, path: str | Path, title: str) -> Path:
    """Pairs of rows: data on top, its reconstruction underneath."""
    columns = min(10, len(data))
    n = (len(data) // columns) * columns
    pairs = []
    for start in range(0, n, columns):
        pairs += [data[start : start + columns], recon[start : start + columns]]
    return plot_grid(np.concatenate(pairs), path, title, columns)


def plot_latent_space(means: np.ndarray, labels: np.ndarray | None, path: str | Path, title: str) -> Path:
    """Latent means projected to 2-D (the first two principal components when d > 2), coloured by label."""
    plt = pyplot()
    means = np.asarray(means, dtype=np.float64)
    if means.shape[1] > 2:
        from sklearn.decomposition import PCA

        projected, axes = PCA(n_components=2).fit_transform(means), ("PC 1", "PC 2")
    else:
        projected, axes = np.pad(means, ((0, 0), (0, 2 - means.shape[1]))), ("z 1", "z 2")
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(projected[:, 0], projected[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
    if labels is not None:
        fig.colorbar(scatter, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    return save_figure(fig, path)


def plot_training_curve(history: list[dict], path: str | Path, title: str) -> Path:
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    ax.plot(epochs, [row["val_loss"] for row in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per example)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_bars(values: list[float], path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(values)), values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_grouped_bars(series: dict[str, list[float]], path: str | Path, title: str, xlabel: str,
                      ylabel: str) -> Path:
    """One bar per index for each named series, side by side (e.g. KL per latent dimension of several runs)."""
    plt = pyplot()
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.3 * max(len(v) for v in series.values()) * len(series) ** 0.5), 3.8))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(values)) + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
