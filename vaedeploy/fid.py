"""Sample quality: the Fréchet distance between generated and test images in a small classifier's feature space.

This is *not* the FID of Heusel et al. and is not comparable with any published FID: the features come from a small
MLP classifier trained on the same data set's training split (Inception features mean nothing on 8×8 digits), and
the test splits are small. It ranks samplers of the same data set against each other, which is what the two-stage
VAE needs: two-stage sampling against its own stage 1 sampled from N(0, I).

The classifier is trained once per data set and preprocessing and cached as safetensors in the run directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import Dataset
from .io import load_tensors, save_tensors
from .models.backbones import mlp

NOTE = ("sample_fd: Fréchet distance between generated and test images in the feature space of a small MLP "
        "classifier trained on this data set's training split; NOT comparable with Inception FID or across data sets")
CACHE_NAME = "fd_classifier.safetensors"
FEATURES = 32  # few features: the covariance must be estimated from a test split of 180 (digits) images


class FeatureClassifier(nn.Module):
    """Image → ``FEATURES`` penultimate features → class logits."""

    def __init__(self, input_dim: int, classes: int, hidden: int = 256):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), mlp([input_dim, hidden, FEATURES], "relu"))
        self.classify = nn.Linear(FEATURES, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def _cache_key(data: Dataset) -> str:
    return f"{data.name}|{data.preprocessing}|{data.split_seed}|{list(data.fractions)}"


@torch.enable_grad()  # evaluation runs under no_grad; the classifier is trained the first time it is needed
def train_classifier(data: Dataset, *, epochs: int = 30, seed: int = 0) -> tuple[FeatureClassifier, float]:
    """Fit the feature classifier on the training split; returns it with its test accuracy."""
    if data.train.labels is None:
        raise ValueError(f"{data.name}: sample_fd needs class labels to train its feature classifier; the data "
                         "set has none (expected an .npz with 'y')")
    labels = np.concatenate([data.train.labels, data.val.labels, data.test.labels])
    classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    model = FeatureClassifier(data.dim, classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(np.asarray(data.train.labels, dtype=np.int64))
    for _ in range(epochs):
        # fresh dequantization noise every epoch, as the generative models see it
        x = torch.from_numpy(data.prepare(data.train.raw, rng).astype(np.float32))
        for idx in torch.from_numpy(rng.permutation(len(x))).split(128):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.evaluation_inputs("test"))).argmax(1).numpy()
    return model, float((predicted == data.test.labels).mean())


def load_or_train_classifier(data: Dataset, cache_dir: str | Path | None, *,
                             epochs: int = 30) -> tuple[FeatureClassifier, float]:
    """The cached classifier of ``cache_dir`` when it was trained on this data set, else one trained for ``epochs``."""
    path = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    if path is not None and path.exists():
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("data") == _cache_key(data):
            tensors = load_tensors(path)
            model = FeatureClassifier(data.dim, tensors["classify.weight"].shape[0])
            model.load_state_dict(tensors)
            return model.eval(), float(meta["test_accuracy"])
    model, accuracy = train_classifier(data, epochs=epochs)
    if path is not None:
        save_tensors(path, model.state_dict(), {"data": _cache_key(data), "test_accuracy": repr(accuracy)})
    return model, accuracy


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy.linalg import sqrtm

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two N×D feature arrays of the same D, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    # a feature that never fires (ReLU) makes a covariance singular; a 1e-6 ridge keeps sqrtm well posed
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = sqrtm(cov_a @ cov_b).real  # tiny imaginary parts come from round-off
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


@torch.no_grad()
def sample_fd(samplers: dict[str, Callable], data: Dataset, *, cache_dir: str | Path | None = None,
              n_samples: int = 1000, seed: int = 0) -> dict:
    """``{name: FD}`` for every sampler (``fn(n, generator=) -> images``) against the test split, with the note."""
    classifier, accuracy = load_or_train_classifier(data, cache_dir)
    test_features = classifier.features(torch.from_numpy(data.evaluation_inputs("test"))).numpy()
    results: dict = {}
    for name, sample in samplers.items():
        images = sample(n_samples, generator=torch.Generator().manual_seed(seed))
        results[name] = frechet_distance(classifier.features(images.float()).numpy(), test_features)
    results["sample_fd_note"] = NOTE
    results["sample_fd_classifier_test_accuracy"] = accuracy
    results["sample_fd_samples"] = n_samples
    return results
