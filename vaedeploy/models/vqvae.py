"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): a grid of discrete codes and a learned prior over them.

    x ─encoder─► z_e (N×D×h×w) ─nearest codebook row─► z_q (N×D×h×w) ─decoder─► p(x | z_q)

- The encoder output z_e is channels-first, N×D×h×w (D = ``embedding_dim``, h×w the latent grid: 8×8 → 2×2 and
  28×28 → 7×7 with two stride-2 stages). Its L = h·w positions, read in raster order, are what the prior models.
- The nearest codebook row (squared Euclidean distance, ties to the lowest index) comes from
  ``vaedeploy.kernels.vq_nearest``: the torch reference on CPU, the Triton kernel on CUDA.
- Gradients pass the quantization by the straight-through estimator: the decoder's input is
  z_e + sg(z_q - z_e), so it sees z_q and the encoder gets the decoder's gradient unchanged.
- Codebook learning: the codebook loss ‖sg(z_e) - e‖² (``codebook_update="loss"``) or exponential moving averages
  of cluster sizes and sums (``"ema"``, decay 0.99, Laplace-smoothed counts); always the commitment loss
  β‖z_e - sg(e)‖². The codebook starts from k-means on the first training batch's z_e, and a code that no training
  vector picked for ``dead_code_steps`` steps is re-seeded from a random z_e of the current batch.
- The prior (``code_prior.CodePrior``) is trained in a second stage on the codes of the training split; ``sample``
  draws codes from it and decodes them.

Losses are sums per example (the reconstruction in nats over pixels, the VQ terms over the latent grid), averaged
over the batch, like the other models' objectives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import activation, conv_sizes, upsampling_conv
from .base import Model, make_likelihood, register
from .code_prior import CodePrior, PriorObjective
from .spec import NORMAL_SEED, ExportSpec, GraphSpec, normal_draws, validation_rows

CODEBOOK_UPDATES = ("loss", "ema")


@dataclass
class VQVAEConfig:
    """Everything that rebuilds a VQ-VAE and its prior (stored in the run's config.json and the bundle).

    Args:
        input_shape: (C, H, W) of one example; ``vaedeploy train`` sets it from the data. Default (1, 8, 8).
        channels: channels of the stride-2 convolutional stages; their number sets the latent grid (two stages:
            8×8 → 2×2, 28×28 → 7×7; one stage: 8×8 → 4×4). Default (16, 32).
        residual_blocks: 3×3 residual blocks at the grid resolution, in the encoder and in the decoder. Default 1.
        embedding_dim: D, the size of each latent vector and codebook row. Default 16.
        num_codes: K, the number of codebook rows. Default 256.
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``. Default ``silu``.
        likelihood: ``bernoulli`` (binary cross-entropy, also with the [0, 1] grey levels of dequantized data) or
            ``gaussian`` (learned diagonal variance). Default ``bernoulli``: on near-binary digits the learned
            variance spends the model on the flat background and leaves grey strokes, and trains far slower to the
            same reconstruction error; the VQ-VAE gives no density of x either way.
        min_logvar: soft floor of the decoder's log-variance, ``gaussian`` only. Default -8.
        commitment_weight: β of the commitment loss β‖z_e - sg(e)‖². Default 0.25.
        codebook_update: ``loss`` (the codebook loss trains the codebook by gradient) or ``ema`` (moving averages of
            the assigned vectors, no gradient). Default ``loss``.
        ema_decay: decay of the moving averages, ``ema`` only. Default 0.99.
        kmeans_init: start the codebook from k-means on the first training batch's encoder outputs. Default True.
        kmeans_iters: Lloyd iterations of that k-means. Default 10.
        dead_code_steps: re-seed a code that no training vector picked for this many steps (0: never). Default 50.
        prior_width: width of the prior transformer. Default 128.
        prior_layers: transformer blocks of the prior. Default 2.
        prior_heads: attention heads of the prior. Default 4.
        prior_dropout: dropout of the prior during training. Default 0: within a few minutes of CPU training
            the prior is short of steps more than of regularisation, and dropout slows each step (raise it for long
            runs: the validation loss starts to trail the training loss).
    """

    input_shape: tuple[int, int, int] = (1, 8, 8)
    channels: tuple[int, ...] = (16, 32)
    residual_blocks: int = 1
    embedding_dim: int = 16
    num_codes: int = 256
    activation: str = "silu"
    likelihood: str = "bernoulli"
    min_logvar: float = -8.0
    commitment_weight: float = 0.25
    codebook_update: str = "loss"
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_steps: int = 50
    prior_width: int = 128
    prior_layers: int = 2
    prior_heads: int = 4
    prior_dropout: float = 0.0


class ResidualBlock(nn.Module):
    """h + conv1×1(act(conv3×3(act(h)))), at constant resolution and width."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.body = nn.Sequential(activation(act), nn.Conv2d(channels, channels, 3, padding=1), activation(act),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class VQEncoder(nn.Module):
    """x (N×C×H×W) → z_e (N×D×h×w): stride-2 convolutions, residual blocks, a 1×1 projection to D."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip([cfg.input_shape[0], *cfg.channels[:-1]], cfg.channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), activation(cfg.activation)]
        layers += [ResidualBlock(cfg.channels[-1], cfg.activation) for _ in range(cfg.residual_blocks)]
        layers += [activation(cfg.activation), nn.Conv2d(cfg.channels[-1], cfg.embedding_dim, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class VQDecoder(nn.Module):
    """z_q (N×D×h×w) → likelihood parameters of p(x|z_q), each N×C×H×W; mirrors ``VQEncoder``."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.likelihood = make_likelihood(cfg.likelihood, cfg.min_logvar)
        out_channels = cfg.input_shape[0] * len(self.likelihood.names)
        sizes = list(reversed(conv_sizes(*cfg.input_shape[1:], len(cfg.channels))))
        chans = list(reversed(cfg.channels))
        layers: list[nn.Module] = [nn.Conv2d(cfg.embedding_dim, chans[0], 3, padding=1)]
        layers += [ResidualBlock(chans[0], cfg.activation) for _ in range(cfg.residual_blocks)]
        for i, (c_in, c_out) in enumerate(zip(chans, [*chans[1:], out_channels])):
            layers += [activation(cfg.activation), upsampling_conv(c_in, c_out, sizes[i], sizes[i + 1])]
        self.body = nn.Sequential(*layers)

    def forward(self, z_q: Tensor) -> tuple[Tensor, ...]:
        return self.likelihood.params(self.body(z_q))


def _nearest(vectors: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook row for each of M×D ``vectors`` (the kernel package's op; no gradient)."""
    from vaedeploy.kernels import vq_nearest

    return vq_nearest(vectors.detach().contiguous(), codebook.detach().contiguous())[0]


def kmeans(vectors: Tensor, k: int, iters: int) -> Tensor:
    """k centres: k-means++ seeding (Arthur & Vassilvitskii 2007), then ``iters`` steps of Lloyd's algorithm.

    Seeding picks each next centre with probability proportional to its squared distance from the nearest centre
    so far, which keeps plain Lloyd from leaving two centres in one cluster. When all vectors are already centres
    (M < k, or repeated vectors) the rest are drawn uniformly; a centre that loses all its vectors keeps its place
    and dead-code restart re-seeds it later.
    """
    m = len(vectors)
    centres = vectors[torch.randint(m, (k,))].clone()
    nearest = ((vectors - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        centres[i] = vectors[torch.multinomial(weights, 1)[0]]
        nearest = torch.minimum(nearest, ((vectors - centres[i]) ** 2).sum(1))
    for _ in range(iters):
        index = _nearest(vectors, centres)
        counts = torch.bincount(index, minlength=k).to(vectors.dtype)
        sums = torch.zeros_like(centres).index_add_(0, index, vectors)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return centres


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """The codebook (K×D) and the state that trains it: EMA statistics and per-code steps since last use.

    In training mode ``forward`` also updates that state (k-means on the first call, EMA, dead-code restart);
    under DistributedDataParallel the counts and sums are summed over ranks and re-seeded rows come from rank 0,
    so every rank keeps the same codebook.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        if cfg.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook_update must be one of {CODEBOOK_UPDATES}, got {cfg.codebook_update!r}")
        if cfg.num_codes < 2 or cfg.embedding_dim < 1:
            raise ValueError(f"num_codes must be >= 2 and embedding_dim >= 1, got {cfg.num_codes} and "
                             f"{cfg.embedding_dim}")
        self.cfg = cfg
        k, d = cfg.num_codes, cfg.embedding_dim
        initial = torch.empty(k, d).uniform_(-1.0 / k, 1.0 / k)  # the paper's initialisation, used without k-means
        if cfg.codebook_update == "loss":
            self.codebook = nn.Parameter(initial)
        else:
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", initial.clone())
        self.register_buffer("initialized", torch.tensor(not cfg.kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(k, dtype=torch.long))
        self.register_buffer("codes_restarted", torch.tensor(0))  # a running total, reported by evaluation

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, dict]:
        """z_e (N×D×h×w) → (indices N×h×w, z_q N×D×h×w, metrics); z_q carries the codebook's gradient."""
        n, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        index = _nearest(flat, self.codebook)
        z_q = F.embedding(index, self.codebook).view(n, h, w, d).permute(0, 3, 1, 2)
        counts = torch.bincount(index, minlength=self.cfg.num_codes).float()
        metrics = {"perplexity": perplexity(counts)}
        if self.training:
            self._update(flat.detach(), index, counts)
        return index.view(n, h, w), z_q, metrics

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        centres = kmeans(flat, self.cfg.num_codes, self.cfg.kmeans_iters)
        if _distributed():
            dist.broadcast(centres, 0)
        self.codebook.data.copy_(centres)
        if self.cfg.codebook_update == "ema":
            self.ema_sum.copy_(centres)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, index: Tensor, counts: Tensor) -> None:
        """EMA step and dead-code restart after one training batch."""
        if _distributed():
            dist.all_reduce(counts)
        if self.cfg.codebook_update == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, index, flat)
            if _distributed():
                dist.all_reduce(sums)
            decay = self.cfg.ema_decay
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            # Laplace smoothing keeps a code with a vanishing count from dividing by ~0
            total = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (total + self.cfg.num_codes * 1e-5) * total
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.cfg.dead_code_steps <= 0:
            return
        dead = (self.steps_unused >= self.cfg.dead_code_steps).nonzero()[:, 0]
        if len(dead) == 0:
            return
        fresh = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
        if _distributed():
            dist.broadcast(fresh, 0)
        self.codebook.data[dead] = fresh
        if self.cfg.codebook_update == "ema":
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.steps_unused[dead] = 0
        self.codes_restarted.add_(len(dead))


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code frequencies: K when every code is used equally, 1 when one code takes all."""
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


@register
class VQVAE(Model):
    """VQ-VAE with a learned autoregressive prior; see the module doc."""

    kind = "vqvae"
    Config = VQVAEConfig
    # a config that trains and exports in seconds: the contract test runs every kind with it
    example_config: ClassVar[dict] = {"channels": (8, 16), "embedding_dim": 4, "num_codes": 16, "prior_width": 32,
                                      "prior_layers": 1, "prior_heads": 2}
    has_density = False  # the VQ-VAE gives no density of x; the prior gives one of the codes
    has_prior = True
    extra_stages = ("prior",)

    def __init__(self, config: VQVAEConfig):
        super().__init__(config)
        self.encoder = VQEncoder(config)
        self.quantizer = VectorQuantizer(config)
        self.decoder = VQDecoder(config)
        self.grid = conv_sizes(*config.input_shape[1:], len(config.channels))[-1]
        self.prior = CodePrior(config.num_codes, self.grid[0] * self.grid[1], config.prior_width,
                               config.prior_layers, config.prior_heads, config.prior_dropout)
        # Trained in its own stage: frozen here so the first stage's optimizer and DDP leave it alone.
        self.prior.requires_grad_(False)

    @property
    def codebook(self) -> Tensor:
        """K×D codebook rows (what the runtime ships as codebook.npy)."""
        return self.quantizer.codebook

    def forward(self, x: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        """Training loss: -log p(x | z_q) + β‖z_e - sg(z_q)‖² (+ ‖sg(z_e) - z_q‖² with the loss update).

        ``kl_weight`` and ``free_bits`` are part of the shared training interface and do not apply here.
        """
        z_e = self.encoder(x)
        _, z_q, metrics = self.quantizer(z_e)
        straight_through = z_e + (z_q - z_e).detach()
        recon = self.decoder.likelihood.log_prob(x, self.decoder(straight_through))
        commitment = ((z_e - z_q.detach()) ** 2).flatten(1).sum(1).mean()
        loss = -recon.mean() + self.config.commitment_weight * commitment
        if self.config.codebook_update == "loss":
            loss = loss + ((z_e.detach() - z_q) ** 2).flatten(1).sum(1).mean()
        return loss, {"recon": recon.mean().detach(), "commitment": commitment.detach(),
                      **{k: v.detach() for k, v in metrics.items()}}

    def encode_codes(self, x: Tensor) -> Tensor:
        """N×h×w code indices of images."""
        return _nearest(self.encoder(x).permute(0, 2, 3, 1).reshape(-1, self.config.embedding_dim),
                        self.codebook).view(len(x), *self.grid)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Mean images from N×h×w (or N×L raster-order) code indices."""
        if codes.dtype != torch.long or codes[0].numel() != self.prior.length:
            raise ValueError(f"codes must be int64 with {self.grid[0]}×{self.grid[1]} = {self.prior.length} "
                             f"per example, got {codes.dtype} with shape {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= self.config.num_codes:
            raise ValueError(f"codes must lie in [0, {self.config.num_codes}), got [{codes.min()}, {codes.max()}]")
        z_q = F.embedding(codes.reshape(len(codes), *self.grid), self.codebook).permute(0, 3, 1, 2)
        return self.decoder.likelihood.mean(self.decoder(z_q))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_codes(self.encode_codes(x))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        return self.decode_codes(self.prior.sample(n, generator=generator, temperature=temperature))

    def latent_means(self, x: Tensor) -> Tensor:
        return self.encoder(x).flatten(1)

    def stage_objective(self, stage: str, data):
        """The prior stage: ``PriorObjective`` on the codes of the training and validation splits."""
        if stage != "prior":
            return super().stage_objective(stage, data)
        self.eval()
        train, val = (self.code_statistics(torch.from_numpy(data.evaluation_inputs(split)))[0].numpy()
                      for split in ("train", "val"))
        self.prior.requires_grad_(True)
        # the codes are fixed inputs: no noise to draw, so ``prepare`` passes them through
        return PriorObjective(self.prior), train.astype(np.float32), val.astype(np.float32), lambda raw, rng: raw

    @torch.no_grad()
    def code_statistics(self, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
        """(N×L codes of ``x``, per-code counts over them)."""
        codes = torch.cat([self.encode_codes(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        return codes.flatten(1), torch.bincount(codes.flatten(), minlength=self.config.num_codes)

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict:
        """Codebook use on ``x`` and the prior's negative log-likelihood of its codes."""
        codes, counts = self.code_statistics(x)
        nll = -torch.cat([self.prior.log_prob(codes[i : i + 500]) for i in range(0, len(codes), 500)]).double()
        k = self.config.num_codes
        return {
            "num_codes": k,
            "latent_grid": list(self.grid),
            "codebook_perplexity": float(perplexity(counts.float())),
            "codes_used": float((counts > 0).sum()) / k,
            "dead_codes": int((counts == 0).sum()),
            "prior_nll_bits_per_code": float(nll.mean() / (self.prior.length * math.log(2))),
            "prior_nll_per_example": float(nll.mean()),
            "codes_restarted_in_training": int(self.quantizer.codes_restarted),
            "code_counts": counts.tolist(),
        }

    @torch.no_grad()
    def export_spec(self, data, max_batch: int) -> ExportSpec:
        """encoder x → z_e, decoder z_q → likelihood, ``prior`` tokens → logits, and ``codebook.npy``. The nearest-code
        step is the runtime's (``vaedeploy.kernels``), never in a graph; export adds the index agreement check that
        every ``vq`` bundle gets. The prior graph reads N×L tokens (start token, then codes 0..L-2) and gives N×L×K
        logits; it is causal, so the runtime feeds all L positions at every step and reads position t."""
        codebook = self.codebook.detach().float().contiguous()
        num_codes, dim = codebook.shape
        (h, w), length = self.grid, self.prior.length
        x = validation_rows(data, max_batch)
        z_e = self.encoder(torch.from_numpy(x))
        index = _nearest(z_e.permute(0, 2, 3, 1).reshape(-1, dim), codebook)
        z_q = F.embedding(index, codebook).view(max_batch, h, w, dim).permute(0, 3, 1, 2).contiguous().numpy()
        tokens = self.prior.tokens_for(index.view(max_batch, length)).numpy()
        random_tokens = np.random.default_rng(NORMAL_SEED).integers(0, num_codes, (max_batch, length), dtype=np.int64)
        random_tokens[:, 0] = self.prior.start_token
        likelihood = self.decoder.likelihood.spec()
        graphs = [
            GraphSpec("encoder", self.encoder, ["x"], {"data": [x]}, ["z_e"]),
            GraphSpec("decoder", self.decoder, ["z_q"],
                      {"encodings": [z_q], "normal": [normal_draws((max_batch, dim, h, w))]}, likelihood["outputs"]),
            GraphSpec("prior", self.prior, ["tokens"], {"encodings": [tokens], "random_codes": [random_tokens]},
                      ["logits"]),
        ]
        latent = {"type": "vq", "shape": [dim, h, w], "num_codes": num_codes, "codebook": "codebook",
                  "prior": {"type": "autoregressive", "graph": "prior", "length": length,
                            "start_token": self.prior.start_token}}
        return ExportSpec(latent, likelihood, graphs, arrays={"codebook": codebook.numpy()})

    @torch.no_grad()
    def bar_charts(self, x: Tensor) -> dict[str, dict]:
        _, counts = self.code_statistics(x)
        used = int((counts > 0).sum())
        ordered = sorted(counts.tolist(), reverse=True)
        return {"codebook_usage": {
            "values": ordered, "xlabel": "code, most used first", "ylabel": "vectors of the test split",
            "title": f"codebook usage ({used} of {len(ordered)} codes, perplexity "
                     f"{float(perplexity(counts.float())):.0f})",
        }}
