"""The sample Fréchet distance and its cached feature classifier."""
import shutil

import numpy as np
import pytest
import torch

from vaedeploy.data import load_dataset
from vaedeploy.fid import frechet_distance, load_or_train_classifier


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a * 2.0 + np.array([1.0, 0.0, -1.0])  # mean shift 2, every std doubled: (2 - 1)² per dimension
    assert frechet_distance(a, b) == pytest.approx(2.0 + 3.0, rel=0.02)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :2])


def test_fd_classifier_is_accurate_and_cached_per_data_set(tmp_path, digits, fd_classifier):
    shutil.copy(fd_classifier, tmp_path)
    model, accuracy = load_or_train_classifier(digits, tmp_path)
    assert accuracy > 0.85
    cached, cached_accuracy = load_or_train_classifier(digits, tmp_path)
    x = torch.from_numpy(digits.evaluation_inputs("test"))
    assert cached_accuracy == accuracy and torch.equal(model.features(x), cached.features(x))
    other = load_dataset("digits", split_seed=1)  # another split must not reuse the cache: it retrains
    retrained, _ = load_or_train_classifier(other, tmp_path, epochs=1)
    assert not torch.equal(retrained.features(x), model.features(x))
