"""A deterministic autoencoder: encoder x → z, decoder z → p(x|z), trained by maximum likelihood of x given z.

With the gaussian likelihood of learned variance the loss is a per-pixel weighted squared error; with bernoulli it
is the binary cross-entropy. There is no prior, so the AE reconstructs but does not sample or give a density.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from .backbones import EncoderTrunk, check_sizes
from .base import Model, register
from .spec import ExportSpec, encoder_decoder_spec
from .vae import Decoder, VAEConfig


@dataclass
class AEConfig(VAEConfig):
    """Everything that rebuilds an AE: the fields, meanings and defaults of ``VAEConfig`` (``latent_dim`` is the
    size of the deterministic code)."""


class DeterministicEncoder(nn.Module):
    """x → z."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        check_sizes(latent_dim=cfg.latent_dim)
        self.trunk = EncoderTrunk(cfg.input_shape, cfg.backbone, cfg.hidden, cfg.channels, cfg.activation)
        self.head = nn.Linear(self.trunk.out_features, cfg.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


@register
class AE(Model):
    """Deterministic autoencoder (the seed's recap)."""

    kind = "ae"
    Config = AEConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"hidden": (16,), "latent_dim": 5}
    has_density = False
    has_prior = False

    def __init__(self, config: AEConfig):
        super().__init__(config)
        self.encoder = DeterministicEncoder(config)
        self.decoder = Decoder(config)

    def forward(self, x: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        """Reconstruction loss -log p(x | encoder(x)), averaged over the batch (no KL: kl_weight is unused)."""
        recon = self.decoder.likelihood.log_prob(x, self.decoder(self.encoder(x)))
        return -recon.mean(), {"recon": recon.mean().detach()}

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder.likelihood.mean(self.decoder(self.encoder(x)))

    def latent_means(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """encoder x → z, decoder z → likelihood; ``encode`` is the code itself."""
        latent = {"type": "deterministic", "shape": [self.config.latent_dim]}
        return encoder_decoder_spec(self.encoder, self.decoder, latent, self.decoder.likelihood.spec(), data,
                                    max_batch)
