"""A small hierarchical VAE with bidirectional inference, after BIVA (Maaløe et al. 2019).

Layer 1 is next to x, layer L on top. Three paths:

- bottom-up (deterministic): d_1 = trunk(x), d_i = f_i(d_{i-1});
- top-down generative: p(z_L) = N(0, I); t_i = g_i(z_{i+1}, t_{i+1}) (a skip connection carries t_{i+1} down);
  p(z_i | z_{>i}) = N(head(t_i)); p(x | z_1, …, z_L) sees every layer through skip connections (the x decoder
  reads all z concatenated);
- inference: q(z_L | x) from d_L; q(z_i | x, z_{>i}) from [d_i, t_i] for the layers in between, which combines the
  bottom-up and the top-down path; q(z_1 | x) from d_1 alone by default (``bottom_inference``), like BIVA's
  bottom-up variables, or from [d_1, t_1] like the layers above.

The ELBO has one KL term per layer, KL(q(z_i | ·) ‖ p(z_i | z_{>i})), computed in closed form given the sampled
parents. Unlike the paper, each layer has one stochastic variable, not a bottom-up and a top-down one, which keeps
the model small enough for 2 CPU cores.

Every layer's Gaussian parameters, posterior and prior, are softly bounded (``latent_bound``): below the top the
ELBO does not fix the scale of a layer (z_i and p(z_i | z_{>i}) can grow together at no cost). Unbounded, the lower
layers' means drift far from the prior's scale and long runs overflow to NaN; bounded, the model also generalises
better (docs/experiments.md, round family-5).

For export, both modules take every layer's noise as an input (nothing is drawn inside a graph):
``encoder(x, eps_1, …, eps_L)`` returns (z_1…z_L, mean_1…mean_L, logvar_1…logvar_L) and ``decoder(eps_1, …,
eps_L)`` samples ancestrally from the prior and returns the likelihood parameters of x.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .backbones import EncoderTrunk, mlp
from .base import Model, log_normal, register
from .spec import NORMAL_SEED, ExportSpec, GraphSpec, normal_draws, validation_rows
from .vae import Decoder, posterior_collapse_figures


@dataclass
class BIVAConfig:
    """Everything that rebuilds a BIVA.

    Args:
        input_shape: (C, H, W) of one example; ``vaedeploy train`` sets it from the data. Default (1, 8, 8).
        latent_dims: sizes of the stochastic layers, bottom (next to x) first; at least two. Default (16, 8, 4).
        layer_hidden: width of the small dense nets between stochastic layers. Default 128.
        backbone: ``mlp`` or ``conv`` for the x trunk and the x decoder. Default ``mlp``.
        hidden: dense widths of the x trunk and the x decoder. Default (256, 256).
        channels: conv stage channels, ``conv`` only. Default (32, 64).
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``. Default ``silu``.
        likelihood: ``gaussian`` (learned diagonal variance) or ``bernoulli``. Default ``gaussian``.
        min_logvar: soft floor of the decoder's log-variance, ``gaussian`` only. Default -8.
        dropout: dropout rate on the deterministic states of both paths (d_i and t_i) in the training pass, against
            overfitting the small training sets (chosen on digits' validation split, docs/experiments.md). Sampling
            through the decoder alone has none. Default 0.1.
        bottom_inference: ``bottom_up`` (q(z_1 | x) from the bottom-up path alone) or ``bidirectional`` (from the
            bottom-up and the top-down path, like the layers above it; with two layers and ``bottom_up`` no layer
            combines the paths). Default ``bottom_up`` (better on the validation splits of digits and mnist5k).
        latent_bound: soft bound b on every layer's posterior and prior parameters, b·tanh(·/b) as in NVAE (Vahdat &
            Kautz 2020): means within ±b, log-variances within ±2b; 0 turns it off. Default 1.5 (chosen on the
            validation splits; it also regularises, as a cap on each dimension's precision).
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)
    latent_dims: tuple[int, ...] = (16, 8, 4)
    layer_hidden: int = 128
    backbone: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    channels: tuple[int, ...] = (32, 64)
    activation: str = "silu"
    likelihood: str = "gaussian"
    min_logvar: float = -8.0
    dropout: float = 0.1
    bottom_inference: str = "bottom_up"
    latent_bound: float = 1.5


BOTTOM_INFERENCE = ("bottom_up", "bidirectional")


def gaussian_kl_between(q_mean: Tensor, q_logvar: Tensor, p_mean: Tensor, p_logvar: Tensor) -> Tensor:
    """Elementwise KL(N(q_mean, exp(q_logvar)) ‖ N(p_mean, exp(p_logvar))) in closed form."""
    return 0.5 * (p_logvar - q_logvar + (torch.exp(q_logvar) + (q_mean - p_mean) ** 2) * torch.exp(-p_logvar) - 1.0)


def bounded_gaussian(raw: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """A head's output split into (mean, logvar), softly bounded to ±bound and ±2·bound (unbounded for 0)."""
    mean, logvar = raw.chunk(2, 1)
    if bound <= 0:
        return mean, logvar
    return bound * torch.tanh(mean / bound), 2 * bound * torch.tanh(logvar / (2 * bound))


class TopDown(nn.Module):
    """The generative path between stochastic layers: t_i from (z_{i+1}, t_{i+1}), then p(z_i | z_{>i})."""

    def __init__(self, cfg: BIVAConfig):
        super().__init__()
        dims, width = cfg.latent_dims, cfg.layer_hidden
        # state[i] makes t_{i+1} (0-based layer i below layer i+1); the top one has no t above it
        self.state = nn.ModuleList(
            mlp([dims[i + 1] + (width if i + 1 < len(dims) - 1 else 0), width], cfg.activation)
            for i in range(len(dims) - 1)
        )
        self.prior_head = nn.ModuleList(nn.Linear(width, 2 * dims[i]) for i in range(len(dims) - 1))
        self.latent_bound = cfg.latent_bound

    def step(self, i: int, z_above: Tensor, t_above: Tensor | None,
             dropout: nn.Module | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(t_i, prior mean, prior logvar) of 0-based layer i given the layer above it; ``dropout`` acts on t_i."""
        t = self.state[i](z_above if t_above is None else torch.cat([z_above, t_above], 1))
        t = t if dropout is None else dropout(t)
        mean, logvar = bounded_gaussian(self.prior_head[i](t), self.latent_bound)
        return t, mean, logvar


class BIVAEncoder(nn.Module):
    """x and the noise of every layer → posterior samples and parameters of every layer (bottom first)."""

    def __init__(self, cfg: BIVAConfig, top_down: TopDown):
        super().__init__()
        dims, width = cfg.latent_dims, cfg.layer_hidden
        self.trunk = EncoderTrunk(cfg.input_shape, cfg.backbone, cfg.hidden, cfg.channels, cfg.activation)
        self.bottom_up = nn.ModuleList(
            mlp([self.trunk.out_features if i == 1 else width, width], cfg.activation) for i in range(1, len(dims))
        )
        self.top_head = nn.Linear(width, 2 * dims[-1])
        self.bottom_up_first = cfg.bottom_inference == "bottom_up"

        def posterior_head(i: int) -> nn.Module:
            """q(z_i | ·) of 0-based layer i below the top: from d_1 alone, or from [d_i, t_i]."""
            features = self.trunk.out_features if i == 0 else width
            if i == 0 and self.bottom_up_first:
                return nn.Linear(features, 2 * dims[0])
            return nn.Sequential(mlp([features + width, width], cfg.activation), nn.Linear(width, 2 * dims[i]))

        self.posterior_head = nn.ModuleList(posterior_head(i) for i in range(len(dims) - 1))
        # the encoder owns the dropout of both paths, so encoder.eval() alone switches it off for export
        self.dropout = nn.Dropout(cfg.dropout)
        self._top_down = [top_down]  # the decoder owns it; a list keeps it out of this module's state dict

    def infer(self, x: Tensor, noise: list[Tensor]):
        """Lists (bottom first) of z, q mean, q logvar, p mean, p logvar; the top prior is N(0, I)."""
        top_down = self._top_down[0]
        d = [self.dropout(self.trunk(x))]
        for layer in self.bottom_up:
            d.append(self.dropout(layer(d[-1])))
        top, bound = len(noise) - 1, top_down.latent_bound
        mean, logvar = bounded_gaussian(self.top_head(d[top]), bound)
        z = {top: mean + torch.exp(0.5 * logvar) * noise[top]}
        q = {top: (mean, logvar)}
        p = {top: (torch.zeros_like(mean), torch.zeros_like(logvar))}
        t = None
        for i in range(top - 1, -1, -1):
            t, p_mean, p_logvar = top_down.step(i, z[i + 1], t, self.dropout)
            features = d[0] if i == 0 and self.bottom_up_first else torch.cat([d[i], t], 1)
            mean, logvar = bounded_gaussian(self.posterior_head[i](features), bound)
            z[i], q[i], p[i] = mean + torch.exp(0.5 * logvar) * noise[i], (mean, logvar), (p_mean, p_logvar)
        layers = range(top + 1)
        return ([z[i] for i in layers], [q[i][0] for i in layers], [q[i][1] for i in layers],
                [p[i][0] for i in layers], [p[i][1] for i in layers])

    def forward(self, x: Tensor, *noise: Tensor) -> tuple[Tensor, ...]:
        z, q_mean, q_logvar, _, _ = self.infer(x, list(noise))
        return (*z, *q_mean, *q_logvar)


class BIVADecoder(nn.Module):
    """Top-down generation: prior noise of every layer (bottom first) → likelihood parameters of x."""

    def __init__(self, cfg: BIVAConfig):
        super().__init__()
        self.top_down = TopDown(cfg)
        self.x_decoder = Decoder(cfg, in_features=sum(cfg.latent_dims))
        self.likelihood = self.x_decoder.likelihood

    def decode_latents(self, z: list[Tensor]) -> tuple[Tensor, ...]:
        """p(x | z_1, …, z_L): every layer reaches the x decoder through the skip connections."""
        return self.x_decoder(torch.cat(z, 1))

    def forward(self, *noise: Tensor) -> tuple[Tensor, ...]:
        top = len(noise) - 1
        z, t = {top: noise[top]}, None
        for i in range(top - 1, -1, -1):
            t, mean, logvar = self.top_down.step(i, z[i + 1], t)
            z[i] = mean + torch.exp(0.5 * logvar) * noise[i]
        return self.decode_latents([z[i] for i in range(top + 1)])


class ExportedEncoder(nn.Module):
    """The encoder with the decoder's top-down path registered beside it: the encoder reads that path at every call
    without owning it, and a half-precision copy of the graph must cast it too."""

    def __init__(self, encoder: BIVAEncoder, top_down: TopDown):
        super().__init__()
        self.encoder, self.top_down = encoder, top_down

    def forward(self, x: Tensor, *noise: Tensor) -> tuple[Tensor, ...]:
        return self.encoder(x, *noise)


@register
class BIVA(Model):
    """Hierarchical VAE with bidirectional inference and a skip-connected top-down decoder."""

    kind = "biva"
    Config = BIVAConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"hidden": (32,), "latent_dims": (4, 3, 2), "layer_hidden": 16}

    def __init__(self, config: BIVAConfig):
        if len(config.latent_dims) < 2 or min(config.latent_dims) < 1:
            raise ValueError(f"biva needs at least two stochastic layers of positive size, got latent_dims="
                             f"{config.latent_dims!r}")
        if config.bottom_inference not in BOTTOM_INFERENCE:
            raise ValueError(f"bottom_inference must be one of {BOTTOM_INFERENCE}, got {config.bottom_inference!r}")
        if not config.latent_bound >= 0:
            raise ValueError(f"latent_bound must be >= 0 (0: unbounded), got {config.latent_bound!r}")
        super().__init__(config)
        self.decoder = BIVADecoder(config)
        self.encoder = BIVAEncoder(config, self.decoder.top_down)

    def _noise(self, n: int, generator: torch.Generator | None = None, scale: float = 1.0) -> list[Tensor]:
        return [scale * torch.randn(n, d, generator=generator) for d in self.config.latent_dims]

    def _layers(self, x: Tensor):
        """One posterior pass: z, per-layer KL (N × d_i each) and log p(x | z)."""
        z, q_mean, q_logvar, p_mean, p_logvar = self.encoder.infer(x, self._noise(len(x)))
        kl = [gaussian_kl_between(*args) for args in zip(q_mean, q_logvar, p_mean, p_logvar)]
        return z, kl, self.decoder.likelihood.log_prob(x, self.decoder.decode_latents(z))

    def forward(self, x: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        """-(log p(x|z)) + kl_weight · Σ_layers Σ_d max(KL_{layer,d}, free_bits), averaged over the batch."""
        _, kl, recon = self._layers(x)
        kl_term = sum(torch.clamp(k.mean(0), min=free_bits).sum() for k in kl)
        loss = -recon.mean() + kl_weight * kl_term
        kl_sums = [k.sum(1) for k in kl]
        total_kl = sum(kl_sums)
        metrics = {"elbo": (recon - total_kl).mean().detach(), "recon": recon.mean().detach(),
                   "kl": total_kl.mean().detach()}
        metrics.update({f"kl_layer{i + 1}": k.mean().detach() for i, k in enumerate(kl_sums)})
        return loss, metrics

    def elbo(self, x: Tensor, samples: int = 1) -> Tensor:
        """Per-example ELBO with closed-form per-layer KLs given the sampled parents, averaged over ``samples``."""
        draws = []
        for _ in range(samples):
            _, kl, recon = self._layers(x)
            draws.append(recon - sum(k.sum(1) for k in kl))
        return torch.stack(draws).mean(0)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        n = len(x)
        xs = x.repeat(k, *([1] * (x.dim() - 1)))
        z, q_mean, q_logvar, p_mean, p_logvar = self.encoder.infer(xs, self._noise(k * n))
        log_w = self.decoder.likelihood.log_prob(xs, self.decoder.decode_latents(z))
        for zi, qm, qlv, pm, plv in zip(z, q_mean, q_logvar, p_mean, p_logvar):
            log_w = log_w + (log_normal(zi, pm, plv) - log_normal(zi, qm, qlv)).sum(1)
        return log_w.view(k, n)

    def _posterior_means(self, x: Tensor) -> list[Tensor]:
        """z of every layer with zero noise: each layer's posterior mean given its parents' means."""
        return self.encoder.infer(x, self._noise(len(x), scale=0.0))[0]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder.likelihood.mean(self.decoder.decode_latents(self._posterior_means(x)))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        return self.decoder.likelihood.mean(self.decoder(*self._noise(n, generator, temperature)))

    def latent_means(self, x: Tensor) -> Tensor:
        return torch.cat(self._posterior_means(x), 1)

    @torch.no_grad()
    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """encoder (x, eps_1..eps_L) → (z_i, mean_i, logvar_i per layer), decoder (eps_1..eps_L) → likelihood
        (ancestral sampling), and ``latent_decoder`` (z_1..z_L concatenated → likelihood) for decode and
        reconstruct. The number and sizes of the layers come from the config, so added layers export the same way."""
        dims = [int(d) for d in self.config.latent_dims]
        layers = [{"dim": d, "noise": f"eps_{i}", "z": f"z_{i}", "mean": f"mean_{i}", "logvar": f"logvar_{i}"}
                  for i, d in enumerate(dims, 1)]
        noise_names = [layer["noise"] for layer in layers]
        x = validation_rows(data, max_batch)
        noise = [normal_draws((max_batch, d), NORMAL_SEED + i) for i, d in enumerate(dims)]
        zeros = [np.zeros_like(eps) for eps in noise]
        z = self.encoder(torch.from_numpy(x), *map(torch.from_numpy, noise))[: len(dims)]
        likelihood = self.decoder.likelihood.spec()
        outputs = [layer[k] for k in ("z", "mean", "logvar") for layer in layers]
        graphs = [
            GraphSpec("encoder", ExportedEncoder(self.encoder, self.decoder.top_down), ["x", *noise_names],
                      {"data": [x, *noise], "data_posterior_means": [x, *zeros]}, outputs),
            GraphSpec("decoder", self.decoder, noise_names, {"normal": noise}, likelihood["outputs"]),
            GraphSpec("latent_decoder", self.decoder.x_decoder, ["z"],
                      {"encodings": [torch.cat(z, 1).numpy()], "normal": [normal_draws((max_batch, sum(dims)))]},
                      likelihood["outputs"], module_path="decoder.x_decoder"),
        ]
        # z is every layer's sample concatenated (bottom first); each layer's noise is N(0, I) of its size
        latent = {"type": "hierarchical", "shape": [sum(dims)], "layers": layers,
                  "graphs": {"encode": "encoder", "decode": "latent_decoder", "sample": "decoder"}}
        return ExportSpec(latent, likelihood, graphs)

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict:
        """Collapse figures for the whole code and for each layer (``layers``, bottom first).

        ``kl_per_dim`` is the KL that the ELBO pays, against the conditional prior p(z_i | z_{>i}) at one posterior
        sample of the parents; active units and mutual information are those of q(z_i | x, z_{>i}) at that sample.
        """
        _, q_mean, q_logvar, p_mean, p_logvar = self.encoder.infer(x, self._noise(len(x)))
        kl = [gaussian_kl_between(*a).double().mean(0) for a in zip(q_mean, q_logvar, p_mean, p_logvar)]
        figures = posterior_collapse_figures(torch.cat(q_mean, 1), torch.cat(q_logvar, 1))
        figures["kl_per_dim"] = torch.cat(kl).tolist()
        layers = []
        for i, (mean, logvar) in enumerate(zip(q_mean, q_logvar)):
            layer = {"layer": i + 1, "latent_dim": mean.shape[1], **posterior_collapse_figures(mean, logvar)}
            layer["kl_per_dim"] = kl[i].tolist()
            layer["kl"] = float(kl[i].sum())
            layers.append(layer)
        figures["layers"] = layers
        return figures
