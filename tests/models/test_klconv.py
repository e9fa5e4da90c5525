"""The KL-conv VAE: spatial latents at any size the config allows, its bounds, its export spec, and the eval figures and
pictures the other kinds get."""
import math

import pytest
import torch

from vaedeploy.errors import ConfigError
from vaedeploy.evaluate import evaluate_run
from vaedeploy.models import build_model
from vaedeploy.models.base import gaussian_kl
from vaedeploy.pictures import PICTURES, plot_run

TINY = {"latent_channels": 3, "channels": [4, 8], "max_size": 32}


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("size", [(8, 8), (12, 28), (32, 16)])
def test_one_model_takes_every_size_a_multiple_of_its_downsampling(likelihood, size):
    model = build_model("klconv", {**TINY, "input_shape": (1, 28, 28), "likelihood": likelihood})
    x = torch.rand(3, 1, *size).round()
    mean, logvar = model.encoder(x)
    assert mean.shape == logvar.shape == (3, 3, size[0] // 4, size[1] // 4)
    params = model.decoder(mean)
    assert [p.shape for p in params] == [(3, 1, *size)] * (2 if likelihood == "gaussian" else 1)
    assert model.elbo(x, samples=2).shape == (3,)
    assert model.log_importance_weights(x, 5).shape == (5, 3)
    assert model.sample(2).shape == (2, 1, 28, 28)  # the prior at the training size


def test_the_kl_term_sums_every_latent_element():
    model = build_model("klconv", TINY)
    x = torch.rand(2, 1, 28, 28)
    torch.manual_seed(0)
    _, figures = model(x, kl_weight=1.0)
    mean, logvar = model.encoder(x)
    assert figures["kl"].item() == pytest.approx(gaussian_kl(mean, logvar).sum((1, 2, 3)).mean().item(), rel=1e-5)


def test_the_importance_weighted_bound_of_one_sample_is_the_elbos_expectation():
    model = build_model("klconv", TINY).eval()
    x = torch.rand(2, 1, 8, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        iw = model.log_importance_weights(x, 4000).double().mean(0)
        elbo = model.elbo(x, samples=4000).double()
    assert torch.allclose(iw, elbo, rtol=0.02)


@pytest.mark.parametrize("config, message", [
    ({"input_shape": (1, 30, 28)}, r"must be multiples of the downsampling factor 4"),
    ({"min_size": 6}, r"min_size \(6\)"),
    ({"min_size": 64, "max_size": 32}, r"min_size ≤ max_size"),
    ({"scaling_factor": 0.0}, r"scaling_factor must be a number > 0, got 0.0"),
    ({"channels": []}, r"channels: expected sizes of at least 1"),
])
def test_a_config_that_cannot_take_its_sizes_is_refused_in_one_sentence(config, message):
    with pytest.raises(ConfigError, match=message):
        build_model("klconv", {**TINY, **config})


def test_the_export_spec_declares_the_spatial_latent_its_sizes_and_its_scaling():
    model = build_model("klconv", {**TINY, "input_shape": (1, 8, 12), "scaling_factor": 0.2}).eval()
    spec = model.export_spec(torch.rand(3, 1, 8, 12).numpy(), 4)
    assert spec.latent == {"type": "gaussian", "shape": [3, 2, 3], "downsample": 4,
                           "scaling": {"scaling_factor": 0.2, "shift_factor": 0.0}}
    assert spec.size.manifest() == {"min": [8, 8], "max": [32, 32], "multiple": 4}
    encoder, decoder = spec.graphs
    assert encoder.spatial == {"x": "image", "mean": "latent", "logvar": "latent"}
    assert [a.shape for a in encoder.at_size(16, 28)] == [(2, 1, 16, 28)]
    assert [a.shape for a in decoder.at_size(16, 28)] == [(2, 3, 4, 7)]
    assert "scaling" not in build_model("klconv", TINY).export_spec(torch.rand(2, 1, 28, 28).numpy(), 2).latent


def test_eval_and_plot_report_the_figures_and_pictures_of_every_kind(exported):
    run, _ = exported("klconv")
    results = evaluate_run(run, iw_samples=3, elbo_samples=2)
    for name in ("elbo", "log_likelihood_iw", "recon_error", "active_units", "mutual_information"):
        assert math.isfinite(results[name]), name
    assert len(results["kl_per_dim"]) == 2 * 2 * 2  # one per latent element of the 8×8 digits' 2×2×2 latent
    written = plot_run(run, n_samples=4)
    assert {p.name for p in written} >= {name for name in PICTURES} and all(p.stat().st_size > 0 for p in written)
