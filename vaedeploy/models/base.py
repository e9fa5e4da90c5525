"""What every model shares: likelihoods, Gaussian helpers, the config round trip and the model contract.

The contract (docs/architecture.md, "One place per kind"): a model is an ``encoder`` module and a ``decoder`` module
that export
can trace on their own, plus training and evaluation methods that use them. Decoders return a tuple of likelihood
parameters (Gaussian: ``(mean, logvar)``; Bernoulli: ``(logits,)``) so every graph has named outputs.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import typing
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, VaedeployError

LOG_2PI = math.log(2 * math.pi)


def log_normal(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def log_standard_normal(z: Tensor) -> Tensor:
    return -0.5 * (LOG_2PI + z**2)


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) in closed form."""
    return 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar)


def reparameterize(mean: Tensor, logvar: Tensor) -> Tensor:
    """z = mean + std * eps with eps ~ N(0, I): differentiable in mean and logvar."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def sum_except_batch(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(mean, diag(exp(logvar))) with a learned diagonal variance.

    The mean goes through a sigmoid (data lie in [0, 1]); the log-variance has a soft floor at ``min_logvar`` so the
    density cannot grow without bound on pixels that never change.
    """

    kind = "gaussian"
    names = ("mean", "logvar")

    def __init__(self, min_logvar: float):
        super().__init__()
        self.min_logvar = min_logvar

    def params(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        mean_raw, logvar_raw = raw.chunk(2, dim=1)
        return torch.sigmoid(mean_raw), self.min_logvar + F.softplus(logvar_raw - self.min_logvar)

    @staticmethod
    def log_prob(x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        mean, logvar = params
        return sum_except_batch(log_normal(x, mean, logvar))

    @staticmethod
    def mean(params: tuple[Tensor, ...]) -> Tensor:
        return params[0]

    def spec(self) -> dict:
        return {"kind": self.kind, "outputs": list(self.names), "min_logvar": self.min_logvar}


class BernoulliLikelihood(nn.Module):
    """p(x|z) = Bernoulli(sigmoid(logits)), for binary (or binarized) data."""

    kind = "bernoulli"
    names = ("logits",)

    def params(self, raw: Tensor) -> tuple[Tensor]:
        return (raw,)

    @staticmethod
    def log_prob(x: Tensor, params: tuple[Tensor, ...]) -> Tensor:
        return -sum_except_batch(F.binary_cross_entropy_with_logits(params[0], x, reduction="none"))

    @staticmethod
    def mean(params: tuple[Tensor, ...]) -> Tensor:
        return torch.sigmoid(params[0])

    def spec(self) -> dict:
        return {"kind": self.kind, "outputs": list(self.names)}


def make_likelihood(kind: str, min_logvar: float) -> GaussianLikelihood | BernoulliLikelihood:
    if kind == "gaussian":
        return GaussianLikelihood(min_logvar)
    if kind == "bernoulli":
        return BernoulliLikelihood()
    raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {kind!r}")


MODELS: dict[str, type["Model"]] = {}  # kind → class, filled by ``register``


def register(cls: type["Model"]) -> type["Model"]:
    """Class decorator: make a model kind known to ``vaedeploy train``, the loaders and the contract tests."""
    if cls.kind in MODELS:
        raise ValueError(f"model kind {cls.kind!r} is registered twice ({MODELS[cls.kind].__name__}, {cls.__name__})")
    MODELS[cls.kind] = cls
    return cls


class Model(nn.Module):
    """Base of every vaedeploy model.

    Subclasses set ``kind`` (the registry name) and ``Config`` (a dataclass that fully rebuilds the model) and build
    ``self.encoder`` and ``self.decoder``. ``forward(x, kl_weight=, free_bits=)`` returns ``(loss, metrics)``: the
    training objective, averaged over the batch, so the same call works through DistributedDataParallel.
    """

    kind: ClassVar[str]
    Config: ClassVar[type]
    # What this model can report; evaluation asks these instead of guessing from the class.
    has_density: ClassVar[bool] = True
    has_prior: ClassVar[bool] = True
    # Training stages after the main one (e.g. a learned prior), each with its own weights file "<stage>.safetensors".
    extra_stages: ClassVar[tuple[str, ...]] = ()
    # Free bits (nats per latent dimension) that training uses unless told otherwise (TrainConfig.free_bits=None).
    default_free_bits: ClassVar[float] = 0.0
    # A config small enough to train and export in seconds (tests/models/test_contract.py runs every kind with it).
    example_config: ClassVar[dict] = {}

    def __init__(self, config):
        super().__init__()
        self.config = config

    @classmethod
    def from_config(cls, config: dict | object) -> "Model":
        """The model a config (its dataclass, or the dict of config.json) describes; a config it cannot be built
        from is a ``ConfigError`` that says why."""
        config = config if isinstance(config, cls.Config) else config_from_dict(cls.Config, config)
        try:
            return cls(config)
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            if isinstance(e, VaedeployError):
                raise
            raise ConfigError(f"{cls.kind}: cannot build the model from its config: {str(e).splitlines()[0]}") from e

    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean image for the encoder's most likely code."""
        raise NotImplementedError

    def diagnostics(self, x: Tensor) -> dict:
        """Model-specific evaluation figures on a prepared split (active units, KL per dimension, ...)."""
        return {}

    def latent_means(self, x: Tensor) -> Tensor:
        """One vector per example to draw the latent space with (N × d)."""
        raise NotImplementedError

    def stage_objective(self, stage: str, data) -> tuple[nn.Module, np.ndarray, np.ndarray, Callable]:
        """What ``fit`` trains in one of ``extra_stages``: (module, training inputs, validation inputs, prepare).

        The module's state-dict keys must be those of this model's submodules it trains, so the stage's weights
        file loads into the model (``load_run``).
        """
        raise ValueError(f"{self.kind} has no training stage {stage!r}; its extra stages: {list(self.extra_stages)}")

    def export_spec(self, data: np.ndarray, max_batch: int):
        """The ``ExportSpec`` of this model (``spec.py``): its graphs, their validation inputs built from ``data``
        (real prepared inputs, N × input shape) with ``max_batch`` rows, the manifest's latent and likelihood
        entries and any arrays. Export calls this on a model in eval mode, under ``torch.no_grad``."""
        raise NotImplementedError(f"{self.kind} does not say how it exports")

    def bar_charts(self, x: Tensor) -> dict[str, dict]:
        """Model-specific bar charts of the prepared test split ``x``, as data: file stem → ``{"values", "title",
        "xlabel", "ylabel"}`` (``vaedeploy plot`` draws them; a model never draws)."""
        return {}

    @torch.no_grad()
    def log_likelihood_iw(self, x: Tensor, k: int = 1000, chunk: int = 100) -> Tensor:
        """Importance-weighted log-likelihood estimate log (1/k) Σ_i p(x, z_i) / q(z_i | x), per example.

        Burda et al. (2016): a lower bound on log p(x) that tightens as k grows (k = 1 is the ELBO). Weights are
        drawn ``chunk`` at a time and combined with a float64 logsumexp.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        chunks = [self.log_importance_weights(x, min(chunk, k - start)).double() for start in range(0, k, chunk)]
        return torch.logsumexp(torch.cat(chunks, 0), 0) - math.log(k)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """k × N log weights log p(x, z) - log q(z | x) with z ~ q(z | x)."""
        raise NotImplementedError

    def samplers(self) -> dict:
        """Named ways to draw n images (``name -> fn(n, generator=)``) whose sample quality eval reports."""
        return {"sample_fd": self.sample} if self.has_prior else {}


def config_from_dict(cls: type, values: dict):
    """Rebuild a config dataclass from JSON (or ``--set`` values), checking every value against its field's type:
    lists become tuples, ints are accepted for floats, anything else of the wrong type is a ``ConfigError``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__}: expected an object of options, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {sorted(unknown)}; expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _typed(f"{cls.__name__}.{k}", hints[k], v) for k, v in values.items()})


def _shown(value) -> str:
    """``value`` as an error message echoes it: its repr, cut to 80 characters (a --set value may be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(name: str, hint, value):
    """``value`` as the field type ``hint`` (int, float, str, bool, tuple[int, ...], tuple[int, int, int]) or a
    ``ConfigError`` naming the option, the type and what came."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if args[-1] is Ellipsis and not isinstance(value, (list, tuple, dict, str)):
            value = [value]  # one width, as --set hidden=256 gives it
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of {_TYPE_NAMES.get(args[0], args[0].__name__)}s, got "
                              f"{_shown(value)}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)} ({_shown(value)})")
        return tuple(_typed(name, args[0], v) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and abs(value) <= sys.float_info.max  # False for NaN, ±inf and integers past float's range
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        expected = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}
        raise ConfigError(f"{name}: expected {expected.get(hint, hint.__name__)}, got {_shown(value)}")
    return value


_TYPE_NAMES = {int: "integer", float: "number", str: "string"}
