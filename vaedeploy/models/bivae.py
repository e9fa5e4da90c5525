"""Bidirectional VAE with tied weights (after Adigun & Kosko): the decoder runs the encoder's matrices backwards.

Encoding is the forward pass x → h_1 → … → h_L → (mean, logvar); decoding is the backward pass through the same
matrices, z → h_L → … → h_1 → x, with ``F.linear(h, W.t())``. Only the biases and the output heads belong to the
decoder: a per-pixel scale and shift for each likelihood parameter, and for the Gaussian a low-rank log-variance
head on h_1 (so the variance need not follow the mean). The model has about half the parameters of a ``vae`` of
the same widths. The mean half of the encoder's output layer is the decoder's first matrix.

For export, ``decoder.standalone()`` returns a decoder that holds its own copy of the transposed weights, so the
decoder graph can be traced, shipped and run without the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import activation
from .base import make_likelihood
from .vae import VAE, GaussianEncoder, VAEConfig


@dataclass
class BiVAEConfig(VAEConfig):
    """Everything that rebuilds a BiVAE: ``VAEConfig``'s fields, except that ``backbone`` must be ``mlp`` (the tied
    pass is a stack of dense layers, ``hidden`` wide in both directions) and ``channels`` is unused; and:

    Args:
        logvar_rank: rank of the untied log-variance head on h_1, ``gaussian`` only (0: the log-variance is a
            per-pixel affine function of the tied output, like the mean). Default 32.
    """

    logvar_rank: int = 32


class TiedDecoder(nn.Module):
    """z → likelihood parameters through the transposed encoder matrices.

    Tied to an encoder, it reads that encoder's weights at every call (they are not registered twice, so the state
    dict and the optimizer see each matrix once). Built with ``encoder=None`` it owns ``transposed``: copies of the
    transposed matrices, which is what ``standalone()`` fills for export.
    """

    def __init__(self, cfg: BiVAEConfig, encoder: GaussianEncoder | None):
        super().__init__()
        self.cfg = cfg
        self.likelihood = make_likelihood(cfg.likelihood, cfg.min_logvar)
        self.act = activation(cfg.activation)
        self._encoder = [encoder] if encoder is not None else []  # a list hides it from module registration
        pixels = cfg.input_shape[0] * cfg.input_shape[1] * cfg.input_shape[2]
        # layer outputs of the backward pass: h_L, …, h_1, then the pixels
        widths = [*reversed(cfg.hidden), pixels]
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in widths])
        params = len(self.likelihood.names)
        self.head_scale = nn.Parameter(torch.ones(params, pixels))
        self.head_shift = nn.Parameter(torch.zeros(params, pixels))
        gaussian_rank = cfg.logvar_rank if cfg.likelihood == "gaussian" else 0
        self.logvar_head = nn.Sequential(nn.Linear(cfg.hidden[0], gaussian_rank), nn.Linear(gaussian_rank, pixels)) \
            if gaussian_rank > 0 else None
        inputs = [cfg.latent_dim, *reversed(cfg.hidden)]
        self.transposed = nn.ParameterList(
            [] if encoder is not None else [nn.Parameter(torch.empty(i, o)) for i, o in zip(inputs, widths)]
        )

    def transposed_weights(self) -> list[Tensor]:
        """The backward pass's matrices, z-side first, each stored as (in, out) for ``F.linear(h, W.t())``."""
        if not self._encoder:
            return list(self.transposed)
        encoder = self._encoder[0]
        dense = [m for m in encoder.trunk.modules() if isinstance(m, nn.Linear)]
        # the decoder reads z where the encoder wrote the mean: the first latent_dim rows of the output layer
        return [encoder.head.weight[: self.cfg.latent_dim], *(m.weight for m in reversed(dense))]

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        h = z
        weights = self.transposed_weights()
        for weight, bias in zip(weights[:-1], self.biases):
            h = self.act(F.linear(h, weight.t(), bias))
        h_1 = h
        out = F.linear(h_1, weights[-1].t(), self.biases[-1])
        raw = out[:, None, :] * self.head_scale + self.head_shift  # N × params × pixels
        if self.logvar_head is not None:
            raw = torch.cat([raw[:, :1], raw[:, 1:] + self.logvar_head(h_1)[:, None]], 1)
        return self.likelihood.params(raw.reshape(z.shape[0], -1, *self.cfg.input_shape[1:]))

    def standalone(self) -> "TiedDecoder":
        """A copy that owns its transposed weights (and no encoder): what export traces as the decoder graph."""
        copy = TiedDecoder(self.cfg, encoder=None)
        with torch.no_grad():
            for target, source in zip(copy.transposed, self.transposed_weights()):
                target.copy_(source)
            copy.load_state_dict(self.state_dict(), strict=False)  # biases and head; `transposed` is set above
        return copy.train(self.training)


class BiVAE(VAE):
    """Gaussian VAE whose decoder is the encoder run backwards; training, ELBO and sampling are the VAE's."""

    kind = "bivae"
    Config = BiVAEConfig

    def __init__(self, config: BiVAEConfig):
        if config.backbone != "mlp":
            raise ValueError(f"bivae ties dense layers only: backbone must be 'mlp', got {config.backbone!r}")
        if not config.hidden:
            raise ValueError(f"bivae needs at least one hidden layer, got hidden={config.hidden!r}")
        super(VAE, self).__init__(config)  # Model.__init__: the VAE's own untied decoder is not built
        self.encoder = GaussianEncoder(config)
        self.decoder = TiedDecoder(config, self.encoder)
