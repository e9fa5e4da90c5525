"""The model registry: ``vaedeploy train KIND`` and every loader find a model class here by its ``kind``.

Each kind registers itself (``@register`` in its own module, ``models/<kind>.py``: config, model, export spec), and
importing this package imports every module in it, so adding a kind is one file.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import ConfigError
from .base import MODELS, Model, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def model_class(kind: str) -> type[Model]:
    if kind not in MODELS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
    return MODELS[kind]


def build_model(kind: str, config: dict) -> Model:
    return model_class(kind).from_config(config)


__all__ = ["MODELS", "Model", "build_model", "model_class", "register"]
