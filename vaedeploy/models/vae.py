"""The Gaussian VAE of Kingma & Welling (2014): q(z|x) = N(mean, diag(exp(logvar))), prior N(0, I)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .backbones import DecoderTrunk, EncoderTrunk, check_sizes
from .base import (
    Model,
    gaussian_kl,
    log_normal,
    log_standard_normal,
    make_likelihood,
    register,
    reparameterize,
)
from .spec import ExportSpec, encoder_decoder_spec


@dataclass
class VAEConfig:
    """Everything that rebuilds a VAE (stored in the run's config.json and the bundle).

    Args:
        input_shape: (C, H, W) of one example; ``vaedeploy train`` sets it from the data. Default (1, 8, 8).
        latent_dim: number of latent dimensions. Default 16.
        backbone: ``mlp`` or ``conv`` (see ``backbones.py``). Default ``mlp``.
        hidden: widths of the dense layers. Default (256, 256).
        channels: channels of the convolutional stages, ``conv`` only. Default (32, 64).
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``. Default ``silu``.
        likelihood: ``gaussian`` (learned diagonal variance) or ``bernoulli`` (binary data). Default ``gaussian``.
        min_logvar: soft floor of the decoder's log-variance, ``gaussian`` only. Default -8 (std ≈ 0.018).
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)
    latent_dim: int = 16
    backbone: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (32, 64)
    activation: str = "silu"
    likelihood: str = "gaussian"
    min_logvar: float = -8.0


class GaussianEncoder(nn.Module):
    """x → (mean, logvar) of q(z|x)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        check_sizes(latent_dim=cfg.latent_dim)
        self.trunk = EncoderTrunk(cfg.input_shape, cfg.backbone, cfg.hidden, cfg.channels, cfg.activation)
        self.head = nn.Linear(self.trunk.out_features, 2 * cfg.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(self.trunk(x)).chunk(2, dim=1)
        return mean, logvar


class Decoder(nn.Module):
    """z → likelihood parameters of p(x|z): ``(mean, logvar)`` for gaussian, ``(logits,)`` for bernoulli."""

    def __init__(self, cfg, in_features: int | None = None):
        super().__init__()
        self.likelihood = make_likelihood(cfg.likelihood, cfg.min_logvar)
        out_channels = cfg.input_shape[0] * len(self.likelihood.names)
        self.trunk = DecoderTrunk(
            in_features or cfg.latent_dim, cfg.input_shape, out_channels, cfg.backbone, cfg.hidden, cfg.channels,
            cfg.activation,
        )

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        return self.likelihood.params(self.trunk(z))


@register
class VAE(Model):
    """Gaussian VAE: encoder → (mean, logvar), reparameterized z, decoder → p(x|z); analytic KL to N(0, I)."""

    kind = "vae"
    Config = VAEConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"hidden": (32,), "latent_dim": 4}

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.encoder = GaussianEncoder(config)
        self.decoder = Decoder(config)

    def forward(self, x: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        """Training loss: -(E_q log p(x|z)) + kl_weight · Σ_d max(KL_d, free_bits), averaged over the batch.

        ``free_bits`` (nats per latent dimension, Kingma et al. 2016) stops the optimiser from pushing a dimension's
        batch-average KL below that value, the usual guard against posterior collapse.
        """
        mean, logvar = self.encoder(x)
        z = reparameterize(mean, logvar)
        recon = self.decoder.likelihood.log_prob(x, self.decoder(z))
        kl_dims = gaussian_kl(mean, logvar)
        kl_term = torch.clamp(kl_dims.mean(0), min=free_bits).sum()
        loss = -recon.mean() + kl_weight * kl_term
        kl = kl_dims.sum(1)
        return loss, {"elbo": (recon - kl).mean().detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach()}

    def elbo(self, x: Tensor, samples: int = 1) -> Tensor:
        """Per-example ELBO E_q[log p(x|z)] - KL(q(z|x) || p(z)), with an S-sample Monte Carlo reconstruction term."""
        mean, logvar = self.encoder(x)
        recon = torch.stack(
            [self.decoder.likelihood.log_prob(x, self.decoder(reparameterize(mean, logvar))) for _ in range(samples)]
        ).mean(0)
        return recon - gaussian_kl(mean, logvar).sum(1)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        mean, logvar = self.encoder(x)
        n, d = mean.shape
        z = reparameterize(mean.expand(k, n, d), logvar.expand(k, n, d))
        params = self.decoder(z.reshape(k * n, d))
        log_px = self.decoder.likelihood.log_prob(x.repeat(k, *([1] * (x.dim() - 1))), params).view(k, n)
        return log_px + log_standard_normal(z).sum(-1) - log_normal(z, mean, logvar).sum(-1)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder.likelihood.mean(self.decoder(self.encoder(x)[0]))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        z = temperature * torch.randn(n, self.config.latent_dim, generator=generator)
        return self.decoder.likelihood.mean(self.decoder(z))

    def latent_means(self, x: Tensor) -> Tensor:
        return self.encoder(x)[0]

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict:
        mean, logvar = self.encoder(x)
        return posterior_collapse_figures(mean, logvar)

    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """encoder x → (mean, logvar), decoder z → likelihood; the runtime draws z = mean + exp(logvar/2)·eps."""
        latent = {"type": "gaussian", "shape": [self.config.latent_dim]}
        return encoder_decoder_spec(self.encoder, self.export_decoder(), latent, self.decoder.likelihood.spec(),
                                    data, max_batch)

    def export_decoder(self) -> nn.Module:
        """The module the decoder graph is traced from (a tied decoder gives a copy that owns its weights)."""
        return self.decoder


def posterior_collapse_figures(mean: Tensor, logvar: Tensor) -> dict:
    """Active units, KL per dimension and the mutual information I(x; z) under q, from posterior parameters.

    - active units (Burda et al. 2016): dimensions whose E_q[z] varies over the data with variance above 0.01.
    - KL per dimension: the data average of KL(q(z_d|x) || N(0, 1)); a collapsed dimension sits near 0.
    - mutual information (Hoffman & Johnson 2016): E_x E_q(z|x)[log q(z|x) - log q(z)], with the aggregate
      posterior q(z) = (1/N) Σ_n q(z|x_n) estimated on the same N examples.
    """
    mean, logvar = mean.double(), logvar.double()
    variance = mean.var(0, unbiased=False)
    kl_per_dim = gaussian_kl(mean, logvar).mean(0)
    n, d = mean.shape
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # one draw per example
    log_q_self = log_normal(z, mean, logvar).sum(1)
    # log q(z_i | x_j) for every pair, in blocks of rows to keep memory at O(block · N · d)
    log_q_agg = torch.cat(
        [
            torch.logsumexp(log_normal(z[i : i + 256, None], mean[None], logvar[None]).sum(-1), 1)
            for i in range(0, n, 256)
        ]
    ) - math.log(n)
    return {
        "active_units": int((variance > 0.01).sum()),
        "active_unit_variance": variance.tolist(),
        "kl_per_dim": kl_per_dim.tolist(),
        "mutual_information": float((log_q_self - log_q_agg).mean()),
    }
