"""The learned prior of the VQ-VAE: a small causal transformer over the code indices in raster order.

van den Oord et al. (2017) fit an autoregressive model (a PixelCNN) to the codes of the training set after the VQ-VAE
is trained; a causal transformer does the same job and exports as one plain graph. The graph is

    prior(tokens) -> logits        tokens: N×T int64, logits: N×T×K (float32)

where ``tokens[:, 0]`` is the start token ``K`` (one past the last code) and ``tokens[:, t]`` for t ≥ 1 is code t-1;
``logits[:, t]`` is the unnormalised log-distribution of code t given codes 0..t-1. Sampling feeds the start token,
draws code 0 from the last logits, appends it, and so on for all L positions (no random operation in the graph).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"prior_width must be a multiple of prior_heads, got {width} and {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        n, t, c = h.shape
        q, k, v = (part.view(n, t, self.heads, c // self.heads).transpose(1, 2) for part in self.qkv(h).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: h + attn(ln(h)), then h + mlp(ln(h))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class CodePrior(nn.Module):
    """p(c) = Π_t p(c_t | c_<t) over ``length`` code positions, each one of ``num_codes`` codes.

    Args:
        num_codes: K, the codebook size; token K is the start token.
        length: L, the number of latent positions (h·w in raster order).
        width, layers, heads, dropout: the transformer's size and its dropout during training.
    """

    def __init__(self, num_codes: int, length: int, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.num_codes, self.length = num_codes, length
        self.token_embedding = nn.Embedding(num_codes + 1, width)
        self.position_embedding = nn.Parameter(torch.zeros(length, width))
        nn.init.normal_(self.position_embedding, std=0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_codes)

    @property
    def start_token(self) -> int:
        return self.num_codes

    def forward(self, tokens: Tensor) -> Tensor:
        """N×T start-token-led indices (T ≤ L) → N×T×K logits of the next code at every position."""
        h = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(h)))

    def tokens_for(self, codes: Tensor) -> Tensor:
        """The teacher-forcing input of N×L codes: the start token, then codes 0..L-2."""
        start = torch.full_like(codes[:, :1], self.start_token)
        return torch.cat([start, codes[:, :-1]], 1)

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p(c) per sequence (nats), N×L codes in raster order."""
        logits = self(self.tokens_for(codes))
        return -F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """N×L codes drawn one position at a time; ``temperature`` < 1 sharpens the distribution."""
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        device = self.head.weight.device
        tokens = torch.full((n, 1), self.start_token, dtype=torch.long, device=device)
        for _ in range(self.length):
            probs = torch.softmax(self(tokens)[:, -1] / temperature, -1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], 1)
        return tokens[:, 1:]


class PriorObjective(nn.Module):
    """What ``fit`` trains in the prior stage: the mean negative log-likelihood per sequence of training codes.

    It holds the prior under the attribute name ``prior``, so the stage's weights file has the same keys as the
    prior inside the VQ-VAE (``prior.*``) and loads straight into it. Inputs arrive as float arrays (``fit`` casts
    every batch to float32; code indices below 2^24 are exact) and are turned back into indices here.
    """

    def __init__(self, prior: CodePrior):
        super().__init__()
        self.prior = prior

    def forward(self, codes: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0):
        log_p = self.prior.log_prob(codes.long())
        nll = -log_p.mean()
        bits_per_code = nll / (self.prior.length * torch.log(torch.tensor(2.0)))
        return nll, {"nll": nll.detach(), "bits_per_code": bits_per_code.detach()}
