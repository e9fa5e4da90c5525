"""`vaedeploy plot`: the pictures of a trained run, drawn from its best weights on its test split."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import load_from_spec
from .plots import plot_bars, plot_grid, plot_latent_space, plot_reconstructions
from .runs import PICTURES, load_run


@torch.no_grad()
def plot_run(run_dir: str | Path, *, n_samples: int = 100, seed: int = 0) -> list[Path]:
    """Write samples (where the model has a prior), reconstructions, the latent space and the model's own bar charts
    (``Model.bar_charts``) into ``run_dir``; returns the files written."""
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    data = load_from_spec(config["data"])
    x = data.evaluation_inputs("test")
    title = f"{config['kind']} on {data.name}"
    samples, reconstructions, latents = (run_dir / name for name in PICTURES)
    written = []
    if model.has_prior:
        drawn = model.sample(n_samples, generator=torch.Generator().manual_seed(seed)).numpy()
        written.append(plot_grid(drawn, samples, f"{title}: samples"))
    recon = model.reconstruct(torch.from_numpy(x[:50])).numpy()
    written.append(plot_reconstructions(x[:50], recon, reconstructions,
                                        f"{title}: data (odd rows) and reconstructions (even rows)"))
    means = model.latent_means(torch.from_numpy(x)).flatten(1).numpy()
    written.append(plot_latent_space(means, data.test.labels, latents, f"{title}: latent means of the test split"))
    for stem, chart in model.bar_charts(torch.from_numpy(x)).items():
        written.append(plot_bars(chart["values"], run_dir / f"{stem}.png", f"{title}: {chart['title']}",
                                 chart["xlabel"], chart["ylabel"]))
    return written
