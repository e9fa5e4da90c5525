"""Training objectives and the sampling inside the models, against closed forms written here in numpy.

- the likelihoods' log-probabilities and the Gaussian KLs;
- the free-bits objective: the clamp acts on each dimension's batch-average KL, not per example;
- the KL weight's place in the loss, and the metrics beside it;
- the reparameterization scale exp(logvar / 2) in ``base.reparameterize``, inside BIVA (posterior and prior
  layers), in the two-stage sampler and in the two-stage training draws.
"""
import math

import numpy as np
import pytest
import torch
from helpers import dataset
from torch import nn

from vaedeploy.models import build_model
from vaedeploy.models.base import BernoulliLikelihood, GaussianLikelihood, gaussian_kl, reparameterize
from vaedeploy.models.biva import gaussian_kl_between
from vaedeploy.models.twostage import Stage2Objective

LOG_2PI = math.log(2 * math.pi)


def kl_to_standard_normal(mean, var):
    return 0.5 * (mean**2 + var - 1.0 - np.log(var))


def kl_between(q_mean, q_var, p_mean, p_var):
    return 0.5 * (np.log(p_var / q_var) + (q_var + (q_mean - p_mean) ** 2) / p_var - 1.0)


# ---- likelihoods and KLs ----------------------------------------------------------------------------------------


def test_likelihoods_are_the_gaussian_and_bernoulli_log_probabilities_summed_over_pixels():
    rng = np.random.default_rng(0)
    x = rng.random((3, 1, 2, 2))
    mean, logvar = rng.random((3, 1, 2, 2)), rng.normal(-1.0, 1.0, (3, 1, 2, 2))
    gaussian = GaussianLikelihood.log_prob(torch.from_numpy(x), (torch.from_numpy(mean), torch.from_numpy(logvar)))
    expected = (-0.5 * (LOG_2PI + logvar + (x - mean) ** 2 / np.exp(logvar))).reshape(3, -1).sum(1)
    np.testing.assert_allclose(gaussian.numpy(), expected, rtol=1e-12)
    binary, logits = (x > 0.5).astype(np.float64), rng.normal(0.0, 2.0, x.shape)
    p = 1 / (1 + np.exp(-logits))
    bernoulli = BernoulliLikelihood.log_prob(torch.from_numpy(binary), (torch.from_numpy(logits),))
    expected = (binary * np.log(p) + (1 - binary) * np.log(1 - p)).reshape(3, -1).sum(1)
    np.testing.assert_allclose(bernoulli.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(BernoulliLikelihood.mean((torch.from_numpy(logits),)).numpy(), p, rtol=1e-12)


def test_gaussian_likelihood_parameters_are_a_sigmoid_mean_and_a_softly_floored_logvar():
    raw = torch.tensor([[[[-2.0, 0.0]], [[10.0, -50.0]]]], dtype=torch.float64)  # channel 0: mean, 1: logvar
    mean, logvar = GaussianLikelihood(min_logvar=-5.0).params(raw)
    np.testing.assert_allclose(mean.numpy().ravel(), 1 / (1 + np.exp([2.0, 0.0])), rtol=1e-12)
    # -5 + softplus(raw + 5): the raw value well above the floor, the floor well below it
    np.testing.assert_allclose(logvar.numpy().ravel(), -5 + np.log1p(np.exp([15.0, -45.0])), rtol=1e-12)


def test_gaussian_kls_are_the_closed_forms():
    rng = np.random.default_rng(1)
    qm, qv, pm, pv = rng.normal(size=50), rng.uniform(0.1, 3, 50), rng.normal(size=50), rng.uniform(0.1, 3, 50)
    t = torch.from_numpy
    np.testing.assert_allclose(gaussian_kl(t(qm), t(np.log(qv))).numpy(), kl_to_standard_normal(qm, qv), rtol=1e-12)
    np.testing.assert_allclose(gaussian_kl_between(t(qm), t(np.log(qv)), t(pm), t(np.log(pv))).numpy(),
                               kl_between(qm, qv, pm, pv), rtol=1e-10, atol=1e-14)


# ---- free bits and the KL weight ------------------------------------------------------------------------------

# Two examples, three dimensions, unit posterior variances: KL_nd = m²/2. Dimension 0 is informative for one example
# only: its batch-average KL (1.0) is below the 1.5 nats of free bits although one example's KL (2.0) is above.
POSTERIOR_MEANS = np.array([[0.0, 0.0, 2.0], [2.0, 0.6, 2.0]])
FREE_BITS = 1.5
KL = POSTERIOR_MEANS**2 / 2
CLAMPED_BATCH_KL = np.maximum(KL.mean(0), FREE_BITS).sum()  # 1.5 + 1.5 + 2.0
CLAMPED_PER_EXAMPLE = np.maximum(KL, FREE_BITS).mean(0).sum()  # the wrong rule: 1.75 + 1.5 + 2.0


class FixedPosterior(nn.Module):
    """An encoder that gives the same (mean, logvar) whatever the input."""

    def __init__(self, mean: np.ndarray, logvar: np.ndarray):
        super().__init__()
        self.mean, self.logvar = torch.tensor(mean, dtype=torch.float32), torch.tensor(logvar, dtype=torch.float32)

    def forward(self, x):
        return self.mean, self.logvar


def _loss_and_metrics(model, x, **options):
    torch.manual_seed(0)  # the same posterior draw in every call, so losses differ only in their KL term
    loss, metrics = model(x, **options)
    return float(loss.detach()), {k: float(v) for k, v in metrics.items()}


def test_vae_free_bits_clamp_each_dimensions_batch_average_kl():
    model = build_model("vae", {"hidden": [8], "latent_dim": 3})
    model.encoder = FixedPosterior(POSTERIOR_MEANS, np.zeros((2, 3)))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reconstruction_only, plain = _loss_and_metrics(model, x, kl_weight=0.0)
    assert CLAMPED_PER_EXAMPLE - CLAMPED_BATCH_KL > 0.2, "premise: the two rules differ here"
    full, metrics = _loss_and_metrics(model, x, kl_weight=1.0, free_bits=FREE_BITS)
    assert full - reconstruction_only == pytest.approx(CLAMPED_BATCH_KL, abs=1e-5)
    weighted, _ = _loss_and_metrics(model, x, kl_weight=0.25, free_bits=FREE_BITS)
    assert weighted - reconstruction_only == pytest.approx(0.25 * CLAMPED_BATCH_KL, abs=1e-5)
    unguarded, _ = _loss_and_metrics(model, x)
    assert unguarded - reconstruction_only == pytest.approx(KL.sum(1).mean(), abs=1e-5)
    # the reported figures are the model's, free bits or not: recon, KL and ELBO = recon - KL
    assert metrics["recon"] == pytest.approx(-reconstruction_only, abs=1e-5) == pytest.approx(plain["recon"])
    assert metrics["kl"] == pytest.approx(KL.sum(1).mean(), abs=1e-6)
    assert metrics["elbo"] == pytest.approx(metrics["recon"] - metrics["kl"], abs=1e-5)


def _fixed_biva_layers(model):
    """Patch ``model.encoder.infer`` to return two fixed layers: (z, q mean, q logvar, p mean, p logvar) lists."""
    top_mean = np.array([[0.0, 2.0], [2.0, 2.0]])  # the top layer's prior is N(0, I); dimension 0 as in the VAE test
    bottom = dict(q_mean=POSTERIOR_MEANS, q_logvar=np.zeros((2, 3)),
                  p_mean=np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0]]), p_logvar=np.log(np.full((2, 3), 2.0)))
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    layers = ([t(bottom["q_mean"]), t(top_mean)], [t(bottom["q_mean"]), t(top_mean)],
              [t(bottom["q_logvar"]), t(np.zeros((2, 2)))], [t(bottom["p_mean"]), t(np.zeros((2, 2)))],
              [t(bottom["p_logvar"]), t(np.zeros((2, 2)))])
    model.encoder.infer = lambda x, noise: layers
    return [kl_between(POSTERIOR_MEANS, 1.0, bottom["p_mean"], 2.0), kl_to_standard_normal(top_mean, 1.0)]


def test_biva_free_bits_clamp_each_layers_batch_average_kl_and_the_elbo_pays_every_layer():
    model = build_model("biva", {"hidden": [8], "latent_dims": [3, 2], "layer_hidden": 8}).eval()
    kl = _fixed_biva_layers(model)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reconstruction_only, _ = _loss_and_metrics(model, x, kl_weight=0.0)
    full, metrics = _loss_and_metrics(model, x, kl_weight=1.0, free_bits=FREE_BITS)
    clamped = sum(np.maximum(k.mean(0), FREE_BITS).sum() for k in kl)
    assert sum(np.maximum(k, FREE_BITS).mean(0).sum() for k in kl) - clamped > 0.1, "premise: the rules differ"
    assert full - reconstruction_only == pytest.approx(clamped, abs=1e-5)
    half, _ = _loss_and_metrics(model, x, kl_weight=0.5)
    assert half - reconstruction_only == pytest.approx(0.5 * sum(k.sum(1).mean() for k in kl), abs=1e-5)
    assert metrics["kl_layer1"] == pytest.approx(kl[0].sum(1).mean(), abs=1e-5)
    assert metrics["kl_layer2"] == pytest.approx(kl[1].sum(1).mean(), abs=1e-5)
    assert metrics["elbo"] == pytest.approx(metrics["recon"] - metrics["kl"], abs=1e-5)
    with torch.no_grad():
        elbo = model.elbo(x, samples=3).double().numpy()
    np.testing.assert_allclose(elbo, _per_example_recon(model, x) - kl[0].sum(1) - kl[1].sum(1), atol=1e-4)


def _per_example_recon(model, x) -> np.ndarray:
    z = model.encoder.infer(x, None)[0]
    with torch.no_grad():
        return model.decoder.likelihood.log_prob(x, model.decoder.decode_latents(z)).double().numpy()


def test_the_two_stage_objective_passes_kl_weight_and_free_bits_to_stage_two():
    model = build_model("twostage", {"hidden": [8], "latent_dim": 3, "stage2_hidden": [8]})
    objective = Stage2Objective(model.stage2)
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    direct, _ = model.stage2(z, kl_weight=0.3, free_bits=2.0)
    torch.manual_seed(1)
    through, _ = objective(z, kl_weight=0.3, free_bits=2.0)
    torch.manual_seed(1)
    default, _ = objective(z)
    assert float(through) == float(direct) and float(default) != float(direct)


# ---- the reparameterization scale -------------------------------------------------------------------------------


def test_reparameterize_draws_with_standard_deviation_exp_half_logvar():
    torch.manual_seed(0)
    n = 200_000
    mean, logvar = torch.tensor([1.5, -2.0]).expand(n, 2), torch.log(torch.tensor([4.0, 0.09])).expand(n, 2)
    z = reparameterize(mean, logvar).double()
    np.testing.assert_allclose(z.mean(0).numpy(), [1.5, -2.0], atol=0.02)
    # sample variances 4 and 0.09 to within 2% (their standard error is 0.3%); exp(logvar) would give 16 and 0.0081
    np.testing.assert_allclose(z.var(0).numpy(), [4.0, 0.09], rtol=0.02)


@pytest.mark.parametrize("bottom_inference", ["bottom_up", "bidirectional"])
def test_biva_posterior_layers_are_mean_plus_exp_half_logvar_times_their_noise(bottom_inference):
    model = build_model("biva", {"hidden": [16], "latent_dims": [4, 3, 2], "layer_hidden": 8,
                                 "bottom_inference": bottom_inference, "latent_bound": 0.0}).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = [torch.randn(5, d, generator=torch.Generator().manual_seed(d)) for d in (4, 3, 2)]
    with torch.no_grad():
        z, q_mean, q_logvar, _, _ = model.encoder.infer(x, noise)
    for zi, mean, logvar, eps in zip(z, q_mean, q_logvar, noise):
        assert logvar.abs().max() > 0.05, "premise: logvar is far enough from 0 to tell the scales apart"
        np.testing.assert_allclose(zi.numpy(), mean.numpy() + np.exp(logvar.numpy() / 2) * eps.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_biva_prior_layers_are_drawn_with_standard_deviation_exp_half_logvar():
    model = build_model("biva", {"hidden": [16], "latent_dims": [4, 3, 2], "layer_hidden": 8}).eval()
    with torch.no_grad():  # a prior log-variance far from 0 in every layer
        for head in model.decoder.top_down.prior_head:
            head.bias[head.out_features // 2 :] = -1.2
    seen = []
    decode = model.decoder.decode_latents
    model.decoder.decode_latents = lambda z: seen.append(z) or decode(z)
    noise = [torch.randn(6, d, generator=torch.Generator().manual_seed(d)) for d in (4, 3, 2)]
    with torch.no_grad():
        model.decoder(*noise)
        z = seen[0]
        np.testing.assert_array_equal(z[2].numpy(), noise[2].numpy())  # the top layer is its own noise: N(0, I)
        t = None
        for i in (1, 0):  # each layer given the one above: N(prior mean, exp(prior logvar))
            t, mean, logvar = model.decoder.top_down.step(i, z[i + 1], t)
            assert logvar.max() < -0.5
            np.testing.assert_allclose(z[i].numpy(), (mean + torch.exp(logvar / 2) * noise[i]).numpy(), rtol=1e-5,
                                       atol=1e-6)


def test_two_stage_samples_draw_u_then_z_with_standard_deviation_exp_half_log_gamma():
    model = build_model("twostage", {"hidden": [8], "latent_dim": 3, "stage2_hidden": [8]}).eval()
    seen = []
    decode = model.decoder.forward
    model.decoder.forward = lambda z: seen.append(z) or decode(z)
    with torch.no_grad():
        images = model.sample(7, generator=torch.Generator().manual_seed(5), temperature=0.5)
        g = torch.Generator().manual_seed(5)
        u = 0.5 * torch.randn(7, 3, generator=g)
        mean, log_gamma = model.stage2.decoder(u)
        assert log_gamma.max() < -2, "premise: γ is far from 1 (it starts at exp(-4))"
        z = mean + 0.5 * torch.exp(log_gamma / 2) * torch.randn(mean.shape, generator=g)
    np.testing.assert_allclose(seen[0].numpy(), z.numpy(), rtol=1e-6, atol=1e-7)
    assert images.shape == (7, 1, 8, 8)


def test_two_stage_training_draws_stage_one_latents_with_standard_deviation_exp_half_logvar():
    model = build_model("twostage", {"hidden": [8], "latent_dim": 2, "stage2_hidden": [8]})
    data = dataset((1, 8, 8), 17, "dequantize", np.zeros((4, 1, 8, 8)))
    _, _, _, draw_latents = model.stage_objective("stage2", data)
    params = np.tile([1.0, -1.0, math.log(4.0), math.log(0.25)], (100_000, 1))  # [mean, logvar] per row
    z = draw_latents(params, np.random.default_rng(0))
    np.testing.assert_allclose(z.mean(0), [1.0, -1.0], atol=0.02)
    np.testing.assert_allclose(z.var(0), [4.0, 0.25], rtol=0.03)
