"""Bidirectional VAE with tied weights (after Adigun & Kosko): the decoder runs the encoder's matrices backwards.

Encoding is the forward pass x → (convolutions) → h_1 → … → h_L → (mean, logvar); decoding is the backward pass
through the same weights, z → h_L → … → h_1 → (transposed convolutions) → x: ``F.linear(h, W.t())`` for a dense
layer and ``F.conv_transpose2d(h, K)`` with the same kernel K for a stride-2 convolution (the adjoint of the
encoder's operator). Only the biases and the output heads belong to the decoder: a per-pixel scale and shift for
each likelihood parameter, and for the Gaussian a low-rank log-variance head on h_1 (so the variance need not follow
the mean). The model has about half the parameters of a ``vae`` of the same widths. The mean half of the encoder's
output layer is the decoder's first matrix. Training uses free bits by default (``default_free_bits``, see below).

For export, ``decoder.standalone()`` returns a decoder that holds its own copy of the transposed weights, so the
decoder graph can be traced, shipped and run without the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import activation, conv_sizes, upsampling_padding
from .base import make_likelihood, register
from .vae import VAE, GaussianEncoder, VAEConfig


@dataclass
class BiVAEConfig(VAEConfig):
    """Everything that rebuilds a BiVAE: ``VAEConfig``'s fields (``mlp`` or ``conv`` backbone, both tied), and:

    Args:
        logvar_rank: rank of the untied log-variance head on h_1, ``gaussian`` only (0: the log-variance is a
            per-pixel affine function of the tied output, like the mean). Default 32.
    """

    logvar_rank: int = 32


def encoder_weights(encoder: GaussianEncoder, latent_dim: int) -> list[Tensor]:
    """The encoder's weights in the order the backward pass uses them: the mean rows of the output layer, the dense
    layers from the top down, then the convolution kernels from the top down. Each keeps the encoder's shape,
    (out, in) or (out, in, k, k), which is (in, out, …) of the backward pass."""
    dense = [m.weight for m in encoder.trunk.modules() if isinstance(m, nn.Linear)]
    convs = [m.weight for m in encoder.trunk.modules() if isinstance(m, nn.Conv2d)]
    return [encoder.head.weight[:latent_dim], *reversed(dense), *reversed(convs)]


class TiedDecoder(nn.Module):
    """z → likelihood parameters through the transposed encoder weights.

    Tied to an encoder, it reads that encoder's weights at every call (they are not registered twice, so the state
    dict and the optimizer see each matrix once). Built with ``encoder=None`` it owns ``transposed``: copies of the
    transposed weights, which is what ``standalone()`` fills for export.
    """

    def __init__(self, cfg: BiVAEConfig, encoder: GaussianEncoder | None):
        super().__init__()
        self.cfg = cfg
        self.likelihood = make_likelihood(cfg.likelihood, cfg.min_logvar)
        self.act = activation(cfg.activation)
        self._encoder = [encoder] if encoder is not None else []  # a list hides it from module registration
        shapes = [w.shape for w in encoder_weights(encoder or GaussianEncoder(cfg), cfg.latent_dim)]
        self.dense_layers = len(cfg.hidden) + 1  # the mean rows and every hidden layer
        c, h, w = cfg.input_shape
        pixels = c * h * w
        # one bias per output unit of a dense layer and per output channel of a transposed convolution
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(shape[1])) for shape in shapes])
        # the spatial sizes the transposed convolutions land on, the encoder's sizes in reverse
        self.sizes = conv_sizes(h, w, len(shapes) - self.dense_layers)[::-1]
        params = len(self.likelihood.names)
        self.head_scale = nn.Parameter(torch.ones(params, pixels))
        self.head_shift = nn.Parameter(torch.zeros(params, pixels))
        gaussian_rank = cfg.logvar_rank if cfg.likelihood == "gaussian" else 0
        self.logvar_head = nn.Sequential(nn.Linear(cfg.hidden[0], gaussian_rank), nn.Linear(gaussian_rank, pixels)) \
            if gaussian_rank > 0 else None
        self.transposed = nn.ParameterList(
            [] if encoder is not None else [nn.Parameter(torch.empty(shape)) for shape in shapes]
        )

    def transposed_weights(self) -> list[Tensor]:
        """The backward pass's weights, z-side first, in the encoder's shapes (see ``encoder_weights``)."""
        return encoder_weights(self._encoder[0], self.cfg.latent_dim) if self._encoder else list(self.transposed)

    def forward(self, z: Tensor) -> tuple[Tensor, ...]:
        weights = self.transposed_weights()
        last = len(weights) - 1
        h, h_1 = z, None
        for i, (weight, bias) in enumerate(zip(weights, self.biases)):
            if i < self.dense_layers:
                if i == self.dense_layers - 1:
                    h_1 = h  # the first hidden layer's width: what the log-variance head reads
                h = F.linear(h, weight.t(), bias)
            else:
                stage = i - self.dense_layers
                if stage == 0:  # the dense stack's output is the encoder's flattened last feature map
                    h = h.unflatten(1, (weight.shape[0], *self.sizes[0]))
                h = F.conv_transpose2d(h, weight, bias, stride=2, padding=1,
                                       output_padding=upsampling_padding(self.sizes[stage], self.sizes[stage + 1]))
            if i < last:
                h = self.act(h)
        raw = h.flatten(1)[:, None, :] * self.head_scale + self.head_shift  # N × params × pixels
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


@register
class BiVAE(VAE):
    """Gaussian VAE whose decoder is the encoder run backwards; training, ELBO and sampling are the VAE's."""

    kind = "bivae"
    Config = BiVAEConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"hidden": (32,), "latent_dim": 4}
    # A latent dimension's encoder row is also its decoder column, so the KL that shrinks the row of a dimension in
    # little use also mutes what the decoder reads from it, so plain training switches dimensions off for good and
    # underfits. Half a nat of free bits per dimension keeps them all in play, which helps bivae far more than vae
    # (docs/experiments.md, round family-6).
    default_free_bits = 0.5

    def __init__(self, config: BiVAEConfig):
        if not config.hidden:
            raise ValueError(f"bivae needs at least one hidden layer, got hidden={config.hidden!r}")
        super(VAE, self).__init__(config)  # Model.__init__: the VAE's own untied decoder is not built
        self.encoder = GaussianEncoder(config)
        self.decoder = TiedDecoder(config, self.encoder)

    def export_decoder(self) -> TiedDecoder:
        """The decoder graph ships without the encoder: a copy that owns the transposed matrices."""
        return self.decoder.standalone().eval()
