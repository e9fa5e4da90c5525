"""The model registry: ``vaedeploy train KIND`` and every loader find a model class here by its ``kind``."""
from __future__ import annotations

from ..errors import ConfigError
from .ae import AE
from .base import Model
from .biva import BIVA
from .bivae import BiVAE
from .twostage import TwoStage
from .vae import VAE
from .vqvae import VQVAE

MODELS: dict[str, type[Model]] = {cls.kind: cls for cls in (AE, VAE, VQVAE, BiVAE, BIVA, TwoStage)}


def model_class(kind: str) -> type[Model]:
    if kind not in MODELS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
    return MODELS[kind]


def build_model(kind: str, config: dict) -> Model:
    return model_class(kind).from_config(config)


__all__ = ["MODELS", "Model", "build_model", "model_class"]
