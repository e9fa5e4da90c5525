"""The Gaussian VAE: its contract, closed forms and bounds."""
import pytest
import torch

from vaedeploy.models import build_model
from vaedeploy.models.base import gaussian_kl, log_normal, log_standard_normal

TINY = {"hidden": [32], "channels": [4, 8], "latent_dim": 4}


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.tensor([0.7, -1.2, 0.0]), torch.tensor([-0.5, 0.3, -2.0])
    z = mean + torch.exp(0.5 * logvar) * torch.randn(400_000, 3)
    mc = (log_normal(z, mean, logvar) - log_standard_normal(z)).mean(0)
    torch.testing.assert_close(mc, gaussian_kl(mean, logvar), atol=0.01, rtol=0.0)


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_contract_shapes(backbone, shape, likelihood):
    model = build_model("vae", {**TINY, "input_shape": shape, "backbone": backbone, "likelihood": likelihood})
    x = torch.rand(3, *shape).round()
    mean, logvar = model.encoder(x)
    assert mean.shape == logvar.shape == (3, 4)
    params = model.decoder(mean)
    assert len(params) == (2 if likelihood == "gaussian" else 1)
    assert all(p.shape == (3, *shape) for p in params)
    assert model.elbo(x, samples=2).shape == (3,)
    assert model.log_likelihood_iw(x, k=5, chunk=2).dtype == torch.float64
    assert model.sample(2).shape == (2, *shape)


def test_decoder_variance_has_a_floor():
    model = build_model("vae", {**TINY, "min_logvar": -5.0})
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.fill_(-50.0)
        _, logvar = model.decoder(torch.zeros(2, 4))
    assert logvar.min() >= -5.0


def test_elbo_is_below_the_importance_weighted_bound_which_tightens_with_k():
    torch.manual_seed(0)
    model = build_model("vae", {**TINY, "input_shape": (1, 8, 8)})
    x = torch.rand(300, 1, 8, 8)
    with torch.no_grad():
        elbo = model.elbo(x, samples=20).mean().item()
        bounds = [model.log_likelihood_iw(x, k=k).mean().item() for k in (1, 10, 100)]
    assert elbo < bounds[1] < bounds[2]
    assert bounds[0] < bounds[1]
    assert abs(bounds[0] - elbo) < 0.05 * abs(elbo) + 1.0  # k = 1 is the ELBO itself


def test_free_bits_raise_the_loss_of_a_collapsed_posterior():
    model = build_model("vae", TINY)
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.zero_()  # q(z|x) = N(0, I): KL is exactly 0
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(1)
    plain, _ = model(x)
    torch.manual_seed(1)
    guarded, _ = model(x, free_bits=0.5)
    assert guarded.item() == pytest.approx(plain.item() + 4 * 0.5, abs=1e-4)
