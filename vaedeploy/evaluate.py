"""`vaedeploy eval`: density, reconstruction and posterior-collapse figures of a trained run, on its test split.

Densities are nats per example of the prepared test data (log-densities on [0, 1]^D for dequantized data, so they
can be positive); ``*_bits_per_dim`` turn them into bits per dimension on the discrete pixel grid (lower is better).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .data import Dataset, load_from_spec
from .io import write_json
from .models import Model
from .runs import load_run


def _batches(x: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start : start + size]


def ppca_baseline(data: Dataset, n_components: int) -> float:
    """Test log-likelihood (nats per example) of scikit-learn's probabilistic PCA fitted on the training split."""
    from sklearn.decomposition import PCA

    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    pca = PCA(n_components=min(n_components, data.dim - 1)).fit(flat(data.evaluation_inputs("train")))
    return float(pca.score(flat(data.evaluation_inputs("test"))))


@torch.no_grad()
def evaluate_model(model: Model, data: Dataset, *, iw_samples: int = 1000, elbo_samples: int = 10,
                   batch_size: int = 200, seed: int = 0, fd_cache: str | os.PathLike | None = None) -> dict:
    """Evaluation figures of ``model`` on the test split of ``data`` (prepared with a fixed seed).

    ``fd_cache`` is where the sample-FD feature classifier is cached (the run directory); None trains it afresh.
    """
    model.eval()
    torch.manual_seed(seed)
    x = torch.from_numpy(data.evaluation_inputs("test"))
    recon = torch.cat([model.reconstruct(b) for b in _batches(x, batch_size)])
    results: dict = {
        "kind": model.kind,
        "data": data.name,
        "split": "test",
        "examples": len(x),
        "parameters": sum(p.numel() for p in model.parameters()),
        "recon_error": float(((recon - x) ** 2).mean()),
    }
    if model.has_density:
        elbo = float(torch.cat([model.elbo(b, samples=elbo_samples) for b in _batches(x, batch_size)]).mean())
        ll = float(torch.cat([model.log_likelihood_iw(b, k=iw_samples) for b in _batches(x, batch_size)]).mean())
        results.update({
            "elbo": elbo,
            "elbo_bits_per_dim": data.bits_per_dim(elbo),
            "log_likelihood_iw": ll,
            "log_likelihood_iw_bits_per_dim": data.bits_per_dim(ll),
            "iw_samples": iw_samples,
        })
    results.update(model.diagnostics(x))
    if model.samplers() and data.train.labels is not None:
        from .fid import sample_fd

        results.update(sample_fd(model.samplers(), data, cache_dir=fd_cache, seed=seed))
    latent_dim = getattr(model.config, "latent_dim", None)
    if latent_dim:
        baseline = ppca_baseline(data, latent_dim)
        results["baseline_ppca_log_likelihood"] = baseline
        results["baseline_ppca_bits_per_dim"] = data.bits_per_dim(baseline)
    results["units"] = ("densities in nats per test example of the prepared data; *_bits_per_dim on the discrete "
                        "pixel grid; recon_error is the mean squared error per pixel")
    return results


def evaluate_run(run_dir: str | os.PathLike, *, iw_samples: int = 1000, elbo_samples: int = 10) -> dict:
    """Evaluate a run directory and write ``eval.json`` beside its weights."""
    model, config = load_run(run_dir)
    results = {"run": str(run_dir), **evaluate_model(model, load_from_spec(config["data"]),
                                                      iw_samples=iw_samples, elbo_samples=elbo_samples,
                                                      fd_cache=run_dir)}
    write_json(Path(run_dir) / "eval.json", results)
    return results

