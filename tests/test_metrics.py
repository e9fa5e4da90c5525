"""The figures evaluation reports, each against an independent truth.

- IW log-likelihood and ELBO of a 1-D-latent VAE against the integrals computed on a grid (numpy, no library code);
- the IW combination against a numpy logsumexp, where exp underflows (28×28 inputs) or overflows;
- bits per dimension at non-zero log-likelihoods against the discrete probability they stand for;
- active units, KL per dimension and the mutual information on posteriors built with a known answer, and the
  mutual information against a grid integral;
- codebook perplexity, the Fréchet distance and the sample-FD ranking against their closed forms.
"""
import math

import numpy as np
import pytest
import torch
from helpers import dataset

from vaedeploy import fid
from vaedeploy.fid import frechet_distance, sample_fd
from vaedeploy.models import Model, build_model
from vaedeploy.models.vae import posterior_collapse_figures
from vaedeploy.models.vqvae import perplexity

LOG_2PI = math.log(2 * math.pi)


def logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp(a) along ``axis`` with the maximum shifted out, in float64."""
    a = np.asarray(a, dtype=np.float64)
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def log_normal(x, mean, var):
    return -0.5 * (LOG_2PI + np.log(var) + (x - mean) ** 2 / var)


# ---- a VAE with a 1-D latent, whose log p(x) and ELBO are integrals on a grid ---------------------------------------

Q_MEAN, Q_VAR = 0.3, 2.0  # q(z|x) = N(0.3, 2) for every x: neither prior nor posterior, with heavier tails than
# both, so the importance weights have a finite variance


def one_dimensional_vae() -> Model:
    torch.manual_seed(0)
    model = build_model("vae", {"input_shape": (1, 1, 3), "latent_dim": 1, "hidden": [8], "activation": "tanh"})
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)  # p(x|z) changes a lot over z ∈ [-2, 2], so the posterior is far from the prior
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.copy_(torch.tensor([Q_MEAN, math.log(Q_VAR)]))
    return model.eval()


def grid_integrals(model: Model, x: torch.Tensor) -> dict:
    """Per example, on a fine grid of z: log p(x), the ELBO, the standard deviation of log p(x|z) under q and the
    relative variance Var_q[w] / E_q[w]² of the importance weights w = p(x, z) / q(z).

    Everything after the decoder call is numpy: log p(x|z) is written out from the decoder's (mean, logvar).
    """
    z = np.linspace(-12.0, 12.0, 8001)
    dz = z[1] - z[0]
    with torch.no_grad():
        params = model.decoder(torch.from_numpy(z[:, None]).float())
    mean, logvar = (p.double().numpy().reshape(len(z), -1) for p in params)
    xs = x.double().numpy().reshape(len(x), 1, -1)
    log_px_given_z = log_normal(xs, mean[None], np.exp(logvar)[None]).sum(-1)  # N × grid
    log_prior = log_normal(z, 0.0, 1.0)
    log_q = log_normal(z, Q_MEAN, Q_VAR)
    q = np.exp(log_q) * dz
    recon = (q * log_px_given_z).sum(1)
    log_joint = log_px_given_z + log_prior
    log_px = logsumexp(log_joint, axis=1) + math.log(dz)
    return {
        "log_px": log_px,
        "weight_relative_variance": np.exp(logsumexp(2 * log_joint - log_q, axis=1) + math.log(dz) - 2 * log_px) - 1,
        "elbo": (q * (log_px_given_z + log_prior - log_q)).sum(1),
        "recon_sd": np.sqrt((q * (log_px_given_z - recon[:, None]) ** 2).sum(1)),
    }


def three_examples(model: Model) -> torch.Tensor:
    """Inputs near what the decoder makes at z = -1, 0.5 and 1.5, so each has its own posterior."""
    with torch.no_grad():
        mean, _ = model.decoder(torch.tensor([[-1.0], [0.5], [1.5]]))
    return (mean + 0.05 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def test_importance_weighted_log_likelihood_converges_to_the_grid_integral():
    model = one_dimensional_vae()
    x = three_examples(model)
    truth = grid_integrals(model, x)
    k = 50000
    torch.manual_seed(2)
    iw = model.log_likelihood_iw(x, k=k, chunk=10000).numpy()
    # log of a mean of k weights: its standard error is about sqrt(relative variance / k), its bias far smaller
    standard_error = np.sqrt(truth["weight_relative_variance"] / k)
    assert (standard_error < 0.01).all(), "premise: q's tails are heavier than the posterior's"
    assert (np.abs(iw - truth["log_px"]) < 5 * standard_error).all(), (iw, truth["log_px"], standard_error)
    assert (truth["log_px"] - truth["elbo"] > 0.2).all(), "premise: q is not the posterior, so the ELBO is loose"


def test_elbo_matches_the_grid_integral_within_its_monte_carlo_error():
    model = one_dimensional_vae()
    x = three_examples(model)
    truth = grid_integrals(model, x)
    copies, samples = 2000, 2  # the ELBO averages its S draws: 4000 draws per example in all
    torch.manual_seed(3)
    with torch.no_grad():
        elbo = model.elbo(x.repeat_interleave(copies, 0), samples=samples).double().view(len(x), copies).mean(1)
    elbo = elbo.numpy()
    tolerance = 5 * truth["recon_sd"] / math.sqrt(copies * samples) + 1e-4
    assert (np.abs(elbo - truth["elbo"]) < tolerance).all(), (elbo, truth["elbo"], tolerance)


# ---- a BIVA with two 1-D layers, whose log p(x) and ELBO are integrals on a 2-D grid ---------------------------------

# q(z_2|x) = N(0.2, 2) and q(z_1|x) = N(-0.3, 4) for every x: broader than the prior layers, as above
BIVA_Q = {"top": (0.2, 2.0), "bottom": (-0.3, 4.0)}


def two_layer_biva() -> Model:
    torch.manual_seed(0)
    model = build_model("biva", {"input_shape": (1, 1, 3), "latent_dims": [1, 1], "hidden": [8], "layer_hidden": 8,
                                 "activation": "tanh", "latent_bound": 0.0})
    with torch.no_grad():
        for p in model.decoder.x_decoder.parameters():
            p.mul_(3.0)
        for head, (mean, var) in ((model.encoder.top_head, BIVA_Q["top"]),
                                  (model.encoder.posterior_head[0], BIVA_Q["bottom"])):
            head.weight.zero_()
            head.bias.copy_(torch.tensor([mean, math.log(var)]))
    return model.eval()


def biva_grid_integrals(model: Model, x: torch.Tensor) -> dict:
    """log p(x), the ELBO, the standard deviation of one ELBO draw and the weights' relative variance, on a grid of
    (z_1, z_2); p(z_1 | z_2) comes from the model's top-down step, every density after it is numpy."""
    grid = np.linspace(-10.0, 10.0, 401)
    dz = grid[1] - grid[0]
    z1, z2 = np.meshgrid(grid, grid, indexing="ij")  # [i, j] = (z_1 = grid[i], z_2 = grid[j])
    with torch.no_grad():
        _, p_mean, p_logvar = model.decoder.top_down.step(0, torch.from_numpy(grid[:, None]).float(), None)
        latents = [torch.from_numpy(z1.reshape(-1, 1)).float(), torch.from_numpy(z2.reshape(-1, 1)).float()]
        mean, logvar = (p.double().numpy().reshape(z1.size, -1) for p in model.decoder.decode_latents(latents))
    p_mean, p_var = p_mean.double().numpy()[:, 0], np.exp(p_logvar.double().numpy()[:, 0])  # per z_2
    log_prior = log_normal(z2, 0.0, 1.0) + log_normal(z1, p_mean[None, :], p_var[None, :])
    log_q = log_normal(z2, *BIVA_Q["top"]) + log_normal(z1, *BIVA_Q["bottom"])
    xs = x.double().numpy().reshape(len(x), 1, -1)
    log_px_given_z = log_normal(xs, mean[None], np.exp(logvar)[None]).sum(-1).reshape(len(x), *z1.shape)
    log_joint = log_px_given_z + log_prior
    log_px = logsumexp(log_joint.reshape(len(x), -1), axis=1) + 2 * math.log(dz)
    q = np.exp(log_q) * dz * dz
    # one ELBO draw is log p(x|z) - KL(q(z_1|x) ‖ p(z_1|z_2)) at z ~ q, minus the fixed KL of the top layer
    (q1_mean, q1_var), (q2_mean, q2_var) = BIVA_Q["bottom"], BIVA_Q["top"]
    kl_bottom = 0.5 * (np.log(p_var / q1_var) + (q1_var + (q1_mean - p_mean) ** 2) / p_var - 1.0)[None, :]
    kl_top = 0.5 * (q2_mean**2 + q2_var - 1.0 - math.log(q2_var))
    draw = log_px_given_z - kl_bottom - kl_top
    elbo = (q * draw).sum((1, 2))
    return {
        "log_px": log_px,
        "elbo": elbo,
        "elbo_draw_sd": np.sqrt((q * (draw - elbo[:, None, None]) ** 2).sum((1, 2))),
        "weight_relative_variance": np.exp(logsumexp((2 * log_joint - log_q).reshape(len(x), -1), axis=1)
                                           + 2 * math.log(dz) - 2 * log_px) - 1,
    }


def biva_examples(model: Model) -> torch.Tensor:
    with torch.no_grad():
        mean, _ = model.decoder.decode_latents([torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.5], [-0.5]])])
    return mean.clamp(0, 1)


def test_biva_importance_weighted_log_likelihood_converges_to_the_2d_grid_integral():
    model = two_layer_biva()
    x = biva_examples(model)
    truth = biva_grid_integrals(model, x)
    k = 50000
    torch.manual_seed(4)
    iw = model.log_likelihood_iw(x, k=k, chunk=10000).numpy()
    standard_error = np.sqrt(truth["weight_relative_variance"] / k)
    assert (standard_error < 0.02).all(), "premise: q's tails are heavier than the posterior's"
    assert (truth["log_px"] - truth["elbo"] > 0.2).all(), "premise: q is not the posterior"
    assert (np.abs(iw - truth["log_px"]) < 5 * standard_error).all(), (iw, truth["log_px"], standard_error)


def test_biva_elbo_matches_the_2d_grid_integral_within_its_monte_carlo_error():
    model = two_layer_biva()
    x = biva_examples(model)
    truth = biva_grid_integrals(model, x)
    copies, samples = 2000, 2
    torch.manual_seed(5)
    with torch.no_grad():
        elbo = model.elbo(x.repeat_interleave(copies, 0), samples=samples).double().view(len(x), copies).mean(1)
    tolerance = 5 * truth["elbo_draw_sd"] / math.sqrt(copies * samples) + 1e-4
    assert (np.abs(elbo.numpy() - truth["elbo"]) < tolerance).all(), (elbo, truth["elbo"], tolerance)


class ListedWeights(Model):
    """A model whose log importance weights are given rows, handed out in the order they are asked for."""

    kind = "listed-weights"

    def __init__(self, weights: torch.Tensor):
        super().__init__(None)
        self.weights, self.drawn = weights, 0

    def log_importance_weights(self, x, k):
        rows = self.weights[self.drawn : self.drawn + k]
        self.drawn += k
        return rows


def test_importance_weights_combine_with_logsumexp_where_exp_underflows_and_overflows():
    rng = np.random.default_rng(0)
    # per example: far below exp's float64 range (about -745), far above it (about +709), and ordinary
    centres = np.array([-5000.0, -900.0, 1200.0, 3.0])
    weights = (centres + 4.0 * rng.standard_normal((250, 4))).astype(np.float32)
    model = ListedWeights(torch.from_numpy(weights))
    iw = model.log_likelihood_iw(torch.zeros(4, 1), k=250, chunk=100).numpy()  # chunks of 100, 100 and 50
    assert model.drawn == 250
    np.testing.assert_allclose(iw, logsumexp(weights, axis=0) - math.log(250), rtol=1e-12)
    with pytest.raises(ValueError, match="k must be at least 1"):
        model.log_likelihood_iw(torch.zeros(4, 1), k=0)


def test_importance_weighted_log_likelihood_on_28x28_inputs_is_the_logsumexp_of_its_weights():
    model = build_model("vae", {"input_shape": (1, 28, 28), "latent_dim": 2, "hidden": [16]}).eval()
    x = torch.ones(3, 1, 28, 28)
    torch.manual_seed(0)
    with torch.no_grad():
        weights = model.log_importance_weights(x, 50).double().numpy()
    assert weights.max() < -745, "premise: exp of every weight is 0 in float64"
    torch.manual_seed(0)  # the same draws again: k ≤ chunk is one call of log_importance_weights
    iw = model.log_likelihood_iw(x, k=50).numpy()
    assert np.isfinite(iw).all()
    np.testing.assert_allclose(iw, logsumexp(weights, axis=0) - math.log(50), rtol=1e-12)


# ---- bits per dimension ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_likelihood", [-120.0, 35.5])
def test_bits_per_dim_is_the_discrete_probability_in_bits_per_pixel(log_likelihood):
    dequantized = dataset((1, 8, 8), 17, "dequantize")
    # a density p on [0, 1)^64 puts probability p(x)·17^-64 on each pixel's bin: log2 P = ll/ln 2 - 64 log2 17
    log2_probability = log_likelihood / math.log(2) - 64 * math.log2(17)
    assert dequantized.bits_per_dim(log_likelihood) == pytest.approx(-log2_probability / 64, rel=1e-12)
    binarized = dataset((1, 8, 8), 17, "binarize")  # a probability already: no bin width
    assert binarized.bits_per_dim(log_likelihood) == pytest.approx(-log_likelihood / (64 * math.log(2)), rel=1e-12)


# ---- posterior-collapse figures -----------------------------------------------------------------------------------


def test_a_posterior_with_exactly_two_informative_dimensions_has_two_active_units():
    rng = np.random.default_rng(0)
    n, d = 500, 6
    mean = rng.normal(0.0, 0.05, (n, d))  # E_q[z] varies by 0.0025 in the collapsed dimensions: below 0.01
    mean[:, 0] = rng.normal(0.0, 1.0, n)
    mean[:, 1] = rng.normal(0.5, 0.3, n)
    logvar = rng.normal(0.0, 0.01, (n, d))  # collapsed dimensions: q(z_d|x) ≈ N(0, 1), the prior
    logvar[:, :2] = math.log(0.1)
    figures = posterior_collapse_figures(torch.from_numpy(mean), torch.from_numpy(logvar))
    assert figures["active_units"] == 2
    np.testing.assert_allclose(figures["active_unit_variance"], mean.var(0), rtol=1e-12)
    kl = (0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar)).mean(0)
    np.testing.assert_allclose(figures["kl_per_dim"], kl, rtol=1e-12)
    assert (kl[:2] > 0.5).all() and (kl[2:] < 0.01).all()


def test_mutual_information_is_zero_when_every_posterior_is_the_prior():
    torch.manual_seed(0)
    zeros = torch.zeros(300, 3, dtype=torch.float64)
    figures = posterior_collapse_figures(zeros, zeros)
    assert abs(figures["mutual_information"]) < 1e-9
    assert figures["active_units"] == 0 and figures["kl_per_dim"] == [0.0, 0.0, 0.0]


def test_mutual_information_is_log_n_when_the_posteriors_do_not_overlap():
    torch.manual_seed(0)
    n = 300  # more than one block of 256 rows
    mean = torch.zeros(n, 2, dtype=torch.float64)
    mean[:, 0] = 20.0 * torch.arange(n)  # 200 standard deviations apart
    figures = posterior_collapse_figures(mean, torch.full((n, 2), math.log(0.01), dtype=torch.float64))
    assert figures["mutual_information"] == pytest.approx(math.log(n), abs=1e-9)


def test_mutual_information_lies_between_zero_and_log_n():
    torch.manual_seed(0)
    mean, logvar = torch.randn(400, 4, dtype=torch.float64), torch.randn(400, 4, dtype=torch.float64) - 1.0
    mi = posterior_collapse_figures(mean, logvar)["mutual_information"]
    assert 0.0 < mi <= math.log(400)


def test_mutual_information_of_two_posteriors_matches_the_grid_integral():
    # half the examples have q(z|x) = N(0, 0.3²), half N(1, 1.5²): I(x; z) = ½ Σ_n KL(q_n ‖ q_agg). Standard
    # deviations far from 1 make a draw with exp(logvar) in place of exp(logvar / 2) move the estimate by 0.1 nats.
    components = [(0.0, 0.09), (1.0, 2.25)]
    z = np.linspace(-15.0, 15.0, 30001)
    dz = z[1] - z[0]
    log_q = np.stack([log_normal(z, m, v) for m, v in components])
    log_agg = logsumexp(log_q, axis=0) - math.log(2)
    ratio = log_q - log_agg
    weight = np.exp(log_q) * dz / 2  # the joint of (example type, z)
    truth = float((weight * ratio).sum())
    sd = math.sqrt(float((weight * (ratio - truth) ** 2).sum()))
    n = 6000  # the estimator draws one z per example: its error is about sd / sqrt(n), 0.007 here
    mean = torch.tensor([m for m, _ in components], dtype=torch.float64).repeat_interleave(n // 2)[:, None]
    logvar = torch.tensor([math.log(v) for _, v in components], dtype=torch.float64).repeat_interleave(n // 2)[:, None]
    torch.manual_seed(0)
    mi = posterior_collapse_figures(mean, logvar)["mutual_information"]
    assert 0.3 < truth < math.log(2)  # premise: the posteriors overlap, so the estimator's mixture term matters
    assert mi == pytest.approx(truth, abs=5 * sd / math.sqrt(n)), (mi, truth, sd)


# ---- codebook perplexity, Fréchet distance, sample-FD ranking ---------------------------------------------------


def test_codebook_perplexity_is_the_exponentiated_entropy_of_the_code_counts():
    assert float(perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(perplexity(torch.tensor([10.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert float(perplexity(torch.tensor([2.0, 1.0, 1.0]))) == pytest.approx(2**1.5)  # entropy 1.5 bits
    assert float(perplexity(torch.zeros(3))) == pytest.approx(1.0)


def _symmetric_root(a: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(a)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def test_frechet_distance_of_correlated_gaussians_is_the_wasserstein_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3000, 3)) @ np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 2.0]])
    b = rng.standard_normal((3000, 3)) @ np.array([[0.5, 0.5, 0.0], [0.0, 1.5, 0.0], [0.3, 0.0, 1.0]]) + 1.0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _symmetric_root(cov_a)
    # W2² between Gaussians, in the symmetric form (Σa^½ Σb Σa^½)^½ rather than the code's (Σa Σb)^½
    cross = _symmetric_root(root_a @ cov_b @ root_a)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-4)
    assert frechet_distance(b, a) == pytest.approx(expected, abs=1e-4)


class FlatFeatures(torch.nn.Module):
    """A feature classifier whose features are the pixels themselves."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Flatten()


def test_sample_fd_ranks_a_sampler_of_the_data_above_one_of_noise(monkeypatch):
    rng = np.random.default_rng(0)
    test = rng.beta(2.0, 5.0, (400, 1, 1, 4)).astype(np.float32)
    data = dataset((1, 1, 4), None, "scale", test, labels=np.zeros(400, np.int64))
    monkeypatch.setattr(fid, "load_or_train_classifier", lambda data, cache_dir: (FlatFeatures(), 0.75))
    asked = []

    def like_the_data(n, generator):
        asked.append(n)
        seed = int(torch.randint(2**31, (1,), generator=generator))
        return torch.from_numpy(np.random.default_rng(seed).beta(2.0, 5.0, (n, 1, 1, 4))).float()

    def uniform_noise(n, generator):
        return torch.rand((n, 1, 1, 4), generator=generator)

    results = sample_fd({"close": like_the_data, "far": uniform_noise}, data, n_samples=500, seed=3)
    assert asked == [500]
    assert results["close"] < 0.1 * results["far"]
    expected_far = frechet_distance(uniform_noise(500, torch.Generator().manual_seed(3)).flatten(1).numpy(),
                                    test.reshape(400, -1))
    assert results["far"] == pytest.approx(expected_far, rel=1e-9)
    assert results["sample_fd_samples"] == 500 and results["sample_fd_classifier_test_accuracy"] == 0.75
