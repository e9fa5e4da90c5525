"""The two-stage VAE of Dai & Wipf (2019): a second VAE learns the distribution of the first one's latents.

Stage 1 is the Gaussian ``vae`` on x with its learned decoder variance. Its aggregate posterior q(z) usually does
not match the N(0, I) it is sampled from, which is where blurry or broken samples come from. Stage 2 is a small VAE
on the stage-1 latents z ~ q(z|x), with a learned output variance γ (one per dimension), trained after stage 1 in
the same run directory; its own latents u then follow N(0, I) far more closely. Sampling is u ~ N(0, I) →
z ~ p(z|u) (Dai & Wipf take the mean; γ is small once trained, and drawing keeps the model honest where it is not)
→ stage-1 decoder mean.

``encoder`` and ``decoder`` are stage 1's (x ↔ z); ``stage2.encoder`` (z → u) and ``stage2.decoder`` (u → z) are
separate modules, so export can ship u → z and z → x as two graphs. ``elbo`` and ``log_likelihood_iw`` are stage 1's
density with its N(0, I) prior; eval reports stage 2 under ``stage2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .backbones import mlp
from .base import GaussianLikelihood, register
from .spec import NORMAL_SEED, ExportSpec, GraphSpec, encoder_decoder_spec, normal_draws, validation_rows
from .vae import VAE, GaussianEncoder, VAEConfig


@dataclass
class TwoStageConfig(VAEConfig):
    """Everything that rebuilds a two-stage VAE: stage 1 takes ``VAEConfig``'s fields (``activation`` serves both
    stages), and these describe stage 2.

    Args:
        stage2_latent_dim: size of u; 0 means the same as ``latent_dim`` (Dai & Wipf). Default 0.
        stage2_hidden: stage-2 dense widths, both directions. Default (256, 256).
        stage2_min_logvar: floor of the stage-2 log γ, so z's density stays bounded. Default -10.
        stage2_init_log_gamma: starting value of the stage-2 log γ. Small, so stage 2 must first explain z through
            u; started at γ = 1 it settles at once on p(z|u) = N(constant, I) and ignores u (collapse). Default -4.
    """

    stage2_latent_dim: int = 0
    stage2_hidden: tuple[int, ...] = (256, 256)
    stage2_min_logvar: float = -10.0
    stage2_init_log_gamma: float = -4.0


class LatentDecoder(nn.Module):
    """u → (mean, log γ) of p(z|u): an unbounded mean and a learned variance γ_d per dimension of z.

    Dai & Wipf share one γ; with a stage 1 whose unused dimensions carry pure N(0, 1) noise, one γ cannot be small on
    the used dimensions and 1 on the others, and stage 2 collapses. One γ per dimension can.
    """

    def __init__(self, latent_dim: int, out_dim: int, hidden, act: str, min_logvar: float, init_log_gamma: float):
        super().__init__()
        self.likelihood = GaussianLikelihood(min_logvar)  # for log_prob and mean; its sigmoid is not used here
        self.body = nn.Sequential(mlp([latent_dim, *reversed(hidden)], act), nn.Linear(hidden[0], out_dim))
        self.log_gamma = nn.Parameter(torch.full((out_dim,), float(init_log_gamma)))
        self.min_logvar = min_logvar

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.body(u)
        log_gamma = self.min_logvar + nn.functional.softplus(self.log_gamma - self.min_logvar)
        return mean, log_gamma.expand_as(mean)


class LatentVAE(VAE):
    """Stage 2: a Gaussian VAE on flat latent vectors (N × d); training, ELBO and diagnostics are the VAE's."""

    kind = "twostage.stage2"

    def __init__(self, config: TwoStageConfig):
        d = config.latent_dim
        inner = VAEConfig(input_shape=(1, 1, d), latent_dim=config.stage2_latent_dim or d, backbone="mlp",
                          hidden=config.stage2_hidden, activation=config.activation)
        super(VAE, self).__init__(inner)  # Model.__init__: the decoder is the latent one below, not the image one
        self.encoder = GaussianEncoder(inner)
        self.decoder = LatentDecoder(inner.latent_dim, d, config.stage2_hidden, config.activation,
                                     config.stage2_min_logvar, config.stage2_init_log_gamma)


class Stage2Objective(nn.Module):
    """What ``fit`` trains in stage 2: holds it as ``stage2`` so the stage's weights file loads into ``TwoStage``."""

    def __init__(self, stage2: LatentVAE):
        super().__init__()
        self.stage2 = stage2

    def forward(self, z: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        return self.stage2(z, kl_weight=kl_weight, free_bits=free_bits)


@register
class TwoStage(VAE):
    """Stage 1 is this VAE itself (``encoder``, ``decoder``, ``forward``); ``stage2`` is the VAE on its latents."""

    kind = "twostage"
    Config = TwoStageConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"hidden": (32,), "latent_dim": 4, "stage2_hidden": (16,)}

    extra_stages = ("stage2",)

    def __init__(self, config: TwoStageConfig):
        super().__init__(config)
        self.stage2 = LatentVAE(config)
        # Trained in its own stage: frozen here so stage 1's optimizer and DDP leave it alone.
        self.stage2.requires_grad_(False)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """u ~ N(0, T² I) → z ~ p(z|u) = N(mean, γ) → stage-1 decoder mean."""
        u = temperature * torch.randn(n, self.stage2.config.latent_dim, generator=generator)
        mean, log_gamma = self.stage2.decoder(u)
        z = mean + temperature * torch.exp(0.5 * log_gamma) * torch.randn(mean.shape, generator=generator)
        return self.decoder.likelihood.mean(self.decoder(z))

    def sample_stage1(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Stage 1 alone, z ~ N(0, T² I): the baseline that stage 2 should beat."""
        return super().sample(n, generator=generator, temperature=temperature)

    def samplers(self) -> dict:
        return {"sample_fd": self.sample, "stage1_sample_fd": self.sample_stage1}

    @torch.no_grad()
    def stage2_inputs(self, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Stage-1 posterior parameters [mean, logvar] (N × 2d) of prepared inputs, what stage 2 trains on."""
        was_training = self.training
        self.eval()
        rows = [torch.cat(self.encoder(torch.from_numpy(x[i : i + batch_size])), 1)
                for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(rows).numpy()

    def stage_objective(self, stage: str, data):
        """Stage 2 trains on fresh draws z ~ q(z|x) of the best stage-1 weights' posteriors, as Dai & Wipf do."""
        if stage != "stage2":
            return super().stage_objective(stage, data)
        d = self.config.latent_dim

        def draw_latents(params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return params[:, :d] + np.exp(0.5 * params[:, d:]) * rng.standard_normal((len(params), d))

        train, val = (self.stage2_inputs(data.evaluation_inputs(split)) for split in ("train", "val"))
        self.stage2.requires_grad_(True)
        return Stage2Objective(self.stage2), train, val, draw_latents

    @torch.no_grad()
    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """Stage 1 as a Gaussian VAE plus ``stage2_decoder`` (u → mean, log γ of p(z|u)), the learned prior the
        runtime samples through: u ~ N(0, T² I) → z = mean + T·exp(log γ / 2)·eps → decoder."""
        u_dim = self.stage2.config.latent_dim
        z_means = self.encoder(torch.from_numpy(validation_rows(data, max_batch)))[0]
        u_means = self.stage2.encoder(z_means)[0].numpy()
        stage2 = GraphSpec("stage2_decoder", self.stage2.decoder, ["u"],
                           {"encodings": [u_means], "normal": [normal_draws((max_batch, u_dim), NORMAL_SEED + 1)]},
                           ["mean", "log_gamma"], module_path="stage2.decoder")
        latent = {"type": "gaussian", "shape": [self.config.latent_dim],
                  "prior": {"type": "two_stage", "graph": "stage2_decoder", "dim": u_dim}}
        return encoder_decoder_spec(self.encoder, self.decoder, latent, self.decoder.likelihood.spec(), data,
                                    max_batch, extra_graphs=(stage2,))

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict:
        """Stage 1's collapse figures, and under ``stage2`` the same for stage 2 plus its density of the latents."""
        figures = super().diagnostics(x)
        mean, _ = self.encoder(x)
        stage2 = self.stage2.diagnostics(mean)
        stage2["elbo_of_latent_means"] = float(self.stage2.elbo(mean, samples=10).mean())
        stage2["log_likelihood_iw_of_latent_means"] = float(self.stage2.log_likelihood_iw(mean, k=100).mean())
        figures["stage2"] = stage2
        return figures
