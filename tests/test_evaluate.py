"""``evaluate_model``'s bookkeeping and the PPCA baseline, against figures computed here.

A stand-in model with deterministic densities shows that every test example is counted once, that each figure goes
under its own name (the ELBO's bits are the ELBO's, not the IW bound's) and that the sample counts reach the model.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vaedeploy.data import Dataset, DataSplit
from vaedeploy.evaluate import evaluate_model, ppca_baseline
from vaedeploy.models import Model


class DeterministicDensities(Model):
    """ELBO -Σx, IW bound -Σx + 1, reconstruction x / 2; records the sample counts it is asked for."""

    kind = "deterministic-densities"
    has_prior = False

    def __init__(self):
        super().__init__(SimpleNamespace())  # no latent_dim: no PPCA baseline
        self.scale = nn.Parameter(torch.ones(3))
        self.asked: dict[str, list] = {"elbo": [], "iw": [], "diagnostics": []}

    def reconstruct(self, x):
        return 0.5 * x

    def elbo(self, x, samples=1):
        self.asked["elbo"].append(samples)
        return -x.flatten(1).sum(1)

    def log_likelihood_iw(self, x, k=1000, chunk=100):
        self.asked["iw"].append(k)
        return -x.flatten(1).sum(1) + 1.0

    def diagnostics(self, x):
        self.asked["diagnostics"].append(len(x))
        return {"examples_seen_by_diagnostics": len(x)}


def _dataset(test: np.ndarray, train: np.ndarray | None = None, levels=None, preprocessing="scale") -> Dataset:
    train = test if train is None else train
    return Dataset("constructed", test.shape[1:], levels, DataSplit(train, None), DataSplit(train, None),
                   DataSplit(test, None), preprocessing=preprocessing)


def test_evaluate_model_counts_every_test_example_once_and_names_each_figure():
    test = np.random.default_rng(0).random((450, 1, 1, 2)).astype(np.float32)  # batches of 200, 200 and 50
    data = _dataset(test)
    model = DeterministicDensities()
    results = evaluate_model(model, data, iw_samples=7, elbo_samples=3, batch_size=200)
    total = test.reshape(450, -1).sum(1).astype(np.float64)
    assert results["examples"] == 450 and results["parameters"] == 3
    assert results["recon_error"] == pytest.approx(float((0.25 * test.astype(np.float64) ** 2).mean()), rel=1e-6)
    assert results["elbo"] == pytest.approx(-total.mean(), rel=1e-6)
    assert results["log_likelihood_iw"] == pytest.approx(1.0 - total.mean(), rel=1e-6)
    assert results["elbo_bits_per_dim"] == pytest.approx(total.mean() / (2 * math.log(2)), rel=1e-6)
    assert results["log_likelihood_iw_bits_per_dim"] == pytest.approx((total.mean() - 1) / (2 * math.log(2)), rel=1e-6)
    assert model.asked == {"elbo": [3, 3, 3], "iw": [7, 7, 7], "diagnostics": [450]}
    assert results["iw_samples"] == 7 and results["examples_seen_by_diagnostics"] == 450
    assert "baseline_ppca_log_likelihood" not in results and "sample_fd" not in results


def test_ppca_baseline_is_the_test_log_likelihood_of_tipping_and_bishops_maximum_likelihood_model():
    rng = np.random.default_rng(0)
    mixing = np.array([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.3, 0.2]])
    # float32, as the data set prepares them
    train = (rng.standard_normal((600, 3)) @ mixing + [1.0, -2.0, 0.5]).reshape(600, 1, 1, 3).astype(np.float32)
    test = (rng.standard_normal((200, 3)) @ mixing + [1.0, -2.0, 0.5]).reshape(200, 1, 1, 3).astype(np.float32)
    flat_train, flat_test = train.reshape(600, 3).astype(np.float64), test.reshape(200, 3).astype(np.float64)
    # one component: C = λ1 u1 u1ᵀ + σ² (I - u1 u1ᵀ), σ² the mean of the discarded eigenvalues of the sample covariance
    values, vectors = np.linalg.eigh(np.cov(flat_train, rowvar=False))
    u1 = vectors[:, -1:]
    noise = values[:-1].mean()
    covariance = values[-1] * u1 @ u1.T + noise * (np.eye(3) - u1 @ u1.T)
    centred = flat_test - flat_train.mean(0)
    _, log_det = np.linalg.slogdet(covariance)
    expected = -0.5 * (3 * math.log(2 * math.pi) + log_det
                       + np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred)).mean()
    assert ppca_baseline(_dataset(test, train), n_components=1) == pytest.approx(expected, rel=1e-9)
    # asked for more components than the data have dimensions: the full-covariance Gaussian
    full = np.cov(flat_train, rowvar=False)
    _, log_det = np.linalg.slogdet(full)
    expected_full = -0.5 * (3 * math.log(2 * math.pi) + log_det
                            + np.einsum("ni,ij,nj->n", centred, np.linalg.inv(full), centred)).mean()
    assert ppca_baseline(_dataset(test, train), n_components=16) == pytest.approx(expected_full, rel=1e-9)
