"""The hierarchical BIVA-style VAE: its contract, noise as input, bounds and per-layer figures."""
import numpy as np
import pytest
import torch
from helpers import n_parameters

from vaedeploy.evaluate import evaluate_model
from vaedeploy.models import build_model
from vaedeploy.models.base import log_normal
from vaedeploy.models.biva import gaussian_kl_between

TINY_BIVA = {"hidden": [32], "latent_dims": [4, 3, 2], "layer_hidden": 16}


def test_kl_between_gaussians_matches_monte_carlo():
    torch.manual_seed(0)
    qm, qlv, pm, plv = torch.tensor([0.5, -1.0]), torch.tensor([-0.3, 0.4]), torch.tensor([0.1, 0.2]), \
        torch.tensor([0.5, -0.2])
    z = qm + torch.exp(0.5 * qlv) * torch.randn(400_000, 2)
    mc = (log_normal(z, qm, qlv) - log_normal(z, pm, plv)).mean(0)
    torch.testing.assert_close(mc, gaussian_kl_between(qm, qlv, pm, plv), atol=0.01, rtol=0)


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_biva_contract_and_noise_as_input(backbone):
    model = build_model("biva", {**TINY_BIVA, "backbone": backbone, "channels": [4, 8]}).eval()  # as exported
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.randn(5, d) for d in (4, 3, 2)]
    outputs = model.encoder(x, *noise)
    assert [o.shape[1] for o in outputs] == [4, 3, 2] * 3  # z, mean, logvar of each layer
    for a, b in zip(outputs, model.encoder(x, *noise)):  # no randomness inside the graph
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(model.decoder(*noise), model.decoder(*noise)))
    assert model.decoder(*noise)[0].shape == x.shape
    loss, metrics = model(x)
    assert {"kl_layer1", "kl_layer2", "kl_layer3"} <= set(metrics)
    total = sum(float(metrics[f"kl_layer{i}"]) for i in (1, 2, 3))
    assert total == pytest.approx(float(metrics["kl"]), rel=1e-5)
    assert model.sample(2).shape == (2, 1, 8, 8) and model.reconstruct(x).shape == x.shape
    assert len({id(t) for t in model.state_dict().values()}) == len(model.state_dict())


def test_biva_dropout_is_on_the_encoder_and_only_while_training():
    model = build_model("biva", {**TINY_BIVA, "dropout": 0.5})
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.zeros(5, d) for d in (4, 3, 2)]
    assert not torch.equal(model.encoder(x, *noise)[0], model.encoder(x, *noise)[0])
    assert all(torch.equal(a, b) for a, b in zip(model.decoder(*noise), model.decoder(*noise)))  # training mode
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.encoder(x, *noise), model.encoder(x, *noise)))


@pytest.mark.parametrize("bound", [2.0, 0.0])
def test_biva_latent_bound_keeps_every_layer_gaussian_in_range(bound):
    model = build_model("biva", {**TINY_BIVA, "latent_bound": bound}).eval()
    with torch.no_grad():  # weights blown up as a drifting run would make them
        for head in [model.encoder.top_head, *model.encoder.posterior_head, *model.decoder.top_down.prior_head]:
            for p in head.parameters():
                p.mul_(1000.0)
        _, q_mean, q_logvar, p_mean, p_logvar = model.encoder.infer(torch.rand(64, 1, 8, 8), model._noise(64))
    means, logvars = torch.cat([*q_mean, *p_mean[:-1]], 1), torch.cat([*q_logvar, *p_logvar[:-1]], 1)
    inside = bool(means.abs().max() <= 2.0 and logvars.abs().max() <= 4.0)
    assert inside == (bound == 2.0)


@pytest.mark.parametrize("bottom_inference", ["bottom_up", "bidirectional"])
def test_biva_bottom_layer_is_inferred_bottom_up_or_from_both_paths(bottom_inference):
    model = build_model("biva", {**TINY_BIVA, "bottom_inference": bottom_inference}).eval()
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.randn(5, d) for d in (4, 3, 2)]
    other = [noise[0], *(torch.randn_like(n) for n in noise[1:])]  # new draws above layer 1
    z1_mean, other_z1_mean = model.encoder(x, *noise)[3], model.encoder(x, *other)[3]
    assert torch.equal(z1_mean, other_z1_mean) == (bottom_inference == "bottom_up")


@pytest.mark.parametrize("option, value, message", [("bottom_inference", "sideways", "bottom_inference must be"),
                                                   ("latent_bound", -1.0, "latent_bound must be >= 0")])
def test_biva_refuses_bad_inference_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_model("biva", {**TINY_BIVA, option: value})


def test_biva_elbo_is_below_the_importance_weighted_bound():
    torch.manual_seed(0)
    model = build_model("biva", TINY_BIVA).eval()
    x = torch.rand(200, 1, 8, 8)
    with torch.no_grad():
        elbo = model.elbo(x, samples=20).mean().item()
        bounds = [model.log_likelihood_iw(x, k=k).mean().item() for k in (1, 50)]
    assert elbo < bounds[1]
    assert abs(bounds[0] - elbo) < 0.05 * abs(elbo) + 1.0


def test_biva_needs_two_layers():
    with pytest.raises(ValueError, match="at least two stochastic layers"):
        build_model("biva", {"latent_dims": [8]})


def test_eval_reports_collapse_figures_per_layer_for_biva(digits, fd_classifier):
    model = build_model("biva", {**TINY_BIVA, "input_shape": [1, 8, 8]})
    results = evaluate_model(model, digits, iw_samples=5, elbo_samples=1, fd_cache=fd_classifier.parent)
    assert results["parameters"] == n_parameters(model)
    assert [layer["latent_dim"] for layer in results["layers"]] == [4, 3, 2]
    assert len(results["kl_per_dim"]) == 9 and results["active_units"] == sum(
        layer["active_units"] for layer in results["layers"])
    assert all(np.isfinite(layer["mutual_information"]) for layer in results["layers"])
    assert np.isfinite(results["sample_fd"])
