"""A fully convolutional Gaussian VAE with spatial latents: the KL-f autoencoder of latent diffusion, made small.

q(z|x) = N(mean, diag(exp(logvar))) over a c×(H/f)×(W/f) latent image, prior N(0, I) per latent element, as in
Rombach et al. (2022)'s KL-regularised autoencoders (without their perceptual and adversarial losses). Every layer
is a convolution, so the same weights take any H, W that are multiples of the downsampling factor f = 2**stages: the
bundle declares the range (``input.size``) and export validates the graphs at several sizes in it. The latent
scaling (``scaling_factor``, ``shift_factor``) is diffusers' (``AutoencoderKL.config``): ``encode`` gives
(z - shift) · scale and ``decode`` takes that (docs/bundle.md, "Latent scaling").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .backbones import activation, check_sizes
from .base import Model, gaussian_kl, log_normal, log_standard_normal, make_likelihood, register, reparameterize
from .spec import ExportSpec, SpatialSize, encoder_decoder_spec
from .vae import posterior_collapse_figures


@dataclass
class KLConvConfig:
    """Everything that rebuilds a KL-conv VAE (stored in the run's config.json and the bundle).

    Args:
        input_shape: (C, H, W) of the training images; ``vaedeploy train`` sets it from the data. H and W must be
            multiples of the downsampling factor. Default (1, 28, 28) (mnist5k).
        latent_channels: channels c of the latent image. Default 4.
        channels: channels of each downsampling stage (stride-2 convolution), one stage per entry, so the
            downsampling factor is 2**len(channels). Default (32, 64): f = 4, 28×28 → c×7×7.
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``. Default ``silu``.
        likelihood: ``gaussian`` (learned per-pixel variance) or ``bernoulli``. Default ``gaussian``.
        min_logvar: soft floor of the decoder's log-variance, ``gaussian`` only. Default -8.
        min_size, max_size: the smallest and largest H and W the exported graphs declare and are validated at
            (multiples of the downsampling factor). Default 8 and 128.
        scaling_factor, shift_factor: diffusers' latent scaling, recorded in the bundle: the runtime's ``encode``
            returns (z - shift_factor) · scaling_factor and ``decode`` takes latents in that space. Default 1 and 0
            (no scaling recorded).
    """

    input_shape: tuple[int, int, int] = (1, 28, 28)
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64)
    activation: str = "silu"
    likelihood: str = "gaussian"
    min_logvar: float = -8.0
    min_size: int = 8
    max_size: int = 128
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)


def _check(cfg: KLConvConfig) -> None:
    check_sizes(latent_channels=cfg.latent_channels, channels=cfg.channels)
    f = cfg.downsample
    if any(s % f for s in (*cfg.input_shape[1:], cfg.min_size, cfg.max_size)) or cfg.min_size > cfg.max_size:
        raise ConfigError(f"klconv: input H, W ({cfg.input_shape[1]}, {cfg.input_shape[2]}), min_size "
                          f"({cfg.min_size}) and max_size ({cfg.max_size}) must be multiples of the downsampling "
                          f"factor {f} (2**len(channels)), with min_size ≤ max_size")
    if not cfg.scaling_factor > 0:
        raise ConfigError(f"klconv: scaling_factor must be a number > 0, got {cfg.scaling_factor!r}")


class ConvEncoder(nn.Module):
    """x (N×C×H×W) → (mean, logvar), each N×c×(H/f)×(W/f)."""

    def __init__(self, cfg: KLConvConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.input_shape[0], cfg.channels[0], 3, padding=1)]
        previous = cfg.channels[0]
        for c in cfg.channels:
            layers += [activation(cfg.activation), nn.Conv2d(previous, c, 4, stride=2, padding=1)]
            previous = c
        layers += [activation(cfg.activation), nn.Conv2d(previous, 2 * cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """z (N×c×h×w) → likelihood parameters, each N×C×(h·f)×(w·f)."""

    def __init__(self, cfg: KLConvConfig):
        super().__init__()
        self.likelihood = make_likelihood(cfg.likelihood, cfg.min_logvar)
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, cfg.channels[-1], 3, padding=1)]
        previous = cfg.channels[-1]
        for c in reversed(cfg.channels):
            layers += [activation(cfg.activation), nn.ConvTranspose2d(previous, c, 4, stride=2, padding=1)]
            previous = c
        out = cfg.input_shape[0] * len(self.likelihood.names)
        layers += [activation(cfg.activation), nn.Conv2d(previous, out, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        return self.likelihood.params(self.net(z))


@register
class KLConv(Model):
    """Convolutional Gaussian VAE with c×(H/f)×(W/f) latents; analytic KL to N(0, I) summed over latent elements."""

    kind = "klconv"
    Config = KLConvConfig
    # a config that trains and exports in seconds, with a latent scaling so the contract test runs through its rule
    example_config: ClassVar[dict] = {"latent_channels": 2, "channels": (4, 8), "max_size": 32,
                                      "scaling_factor": 0.5, "shift_factor": 0.25}

    def __init__(self, config: KLConvConfig):
        super().__init__(config)
        _check(config)
        self.encoder = ConvEncoder(config)
        self.decoder = ConvDecoder(config)

    def latent_shape(self, h: int, w: int) -> tuple[int, int, int]:
        f = self.config.downsample
        return self.config.latent_channels, h // f, w // f

    def forward(self, x: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        """-(E_q log p(x|z)) + kl_weight · Σ max(KL_e, free_bits) over latent elements e, averaged over the batch."""
        mean, logvar = self.encoder(x)
        recon = self.decoder.likelihood.log_prob(x, self.decoder(reparameterize(mean, logvar)))
        kl_elements = gaussian_kl(mean, logvar).flatten(1)
        loss = -recon.mean() + kl_weight * torch.clamp(kl_elements.mean(0), min=free_bits).sum()
        kl = kl_elements.sum(1)
        return loss, {"elbo": (recon - kl).mean().detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach()}

    def elbo(self, x: Tensor, samples: int = 1) -> Tensor:
        mean, logvar = self.encoder(x)
        recon = torch.stack([self.decoder.likelihood.log_prob(x, self.decoder(reparameterize(mean, logvar)))
                             for _ in range(samples)]).mean(0)
        return recon - gaussian_kl(mean, logvar).flatten(1).sum(1)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        mean, logvar = self.encoder(x)
        n, shape = len(mean), mean.shape[1:]
        z = reparameterize(mean.expand(k, *mean.shape), logvar.expand(k, *logvar.shape))
        params = self.decoder(z.reshape(k * n, *shape))
        log_px = self.decoder.likelihood.log_prob(x.repeat(k, *([1] * (x.dim() - 1))), params).view(k, n)
        return log_px + (log_standard_normal(z) - log_normal(z, mean, logvar)).flatten(2).sum(-1)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder.likelihood.mean(self.decoder(self.encoder(x)[0]))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        z = temperature * torch.randn(n, *self.latent_shape(*self.config.input_shape[1:]), generator=generator)
        return self.decoder.likelihood.mean(self.decoder(z))

    def latent_means(self, x: Tensor) -> Tensor:
        return self.encoder(x)[0].flatten(1)

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict:
        mean, logvar = self.encoder(x)
        return posterior_collapse_figures(mean.flatten(1), logvar.flatten(1))

    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """encoder x → (mean, logvar), decoder z → likelihood, both over any H, W in [min_size, max_size]: validated
        on real data, its encodings and N(0, I) latents at the data's size, and at the other sizes on the data tiled
        to that size and N(0, I) latents (``models.spec.encoder_decoder_spec``, as a user's own modules are)."""
        cfg = self.config
        size = SpatialSize((cfg.min_size, cfg.min_size), (cfg.max_size, cfg.max_size), cfg.downsample,
                           cfg.downsample)
        latent = {"type": "gaussian", "shape": list(self.latent_shape(*cfg.input_shape[1:])),
                  "downsample": cfg.downsample}
        if (cfg.scaling_factor, cfg.shift_factor) != (1.0, 0.0):
            latent["scaling"] = {"scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor}
        return encoder_decoder_spec(self.encoder, self.decoder, latent, self.decoder.likelihood.spec(), data,
                                    max_batch, size=size)
