"""The model registry: configs round trip, unknown kinds and options are refused."""
import dataclasses

import pytest
import torch

from vaedeploy.models import MODELS, build_model

TINY = {"hidden": [32], "channels": [4, 8], "latent_dim": 4}


# kinds whose options differ from the VAE's: biva sizes several latent layers
TINY_CONFIG_OF_KIND = {
    "biva": {"hidden": [32], "channels": [4, 8], "latent_dims": [4, 2], "layer_hidden": 8, "backbone": "conv"},
}


def test_config_round_trip_rebuilds_the_same_model():
    for kind, cls in MODELS.items():
        fields = {f.name for f in dataclasses.fields(cls.Config)}  # each kind takes the tiny options it has
        options = TINY_CONFIG_OF_KIND.get(kind, {**TINY, "backbone": "conv"})
        a = build_model(kind, {k: v for k, v in options.items() if k in fields})
        b = build_model(kind, a.config_dict())
        assert a.config == b.config
        b.load_state_dict(a.state_dict())
        a.eval(), b.eval()  # dropout (biva) draws afresh at every training-mode call
        x = torch.rand(2, 1, 8, 8)
        torch.testing.assert_close(a.reconstruct(x), b.reconstruct(x), rtol=0, atol=0)


def test_unknown_kind_and_unknown_option_are_refused():
    with pytest.raises(ValueError, match="unknown model kind 'gan'"):
        build_model("gan", {})
    with pytest.raises(ValueError, match="unknown option"):
        build_model("vae", {"latent_size": 3})
    with pytest.raises(ValueError, match="backbone must be"):
        build_model("vae", {"backbone": "resnet"})
