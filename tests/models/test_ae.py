"""The deterministic autoencoder."""
import math

import torch

from vaedeploy.models import build_model

TINY = {"hidden": [32], "channels": [4, 8], "latent_dim": 4}


def test_autoencoder_reconstructs_but_has_no_density():
    model = build_model("ae", TINY)
    x = torch.rand(4, 1, 8, 8)
    loss, metrics = model(x)
    assert math.isfinite(loss.item()) and "recon" in metrics
    assert model.reconstruct(x).shape == x.shape
    assert not model.has_density and not model.has_prior
