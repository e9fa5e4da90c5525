"""``vaedeploy serve``: bundles on the Open Inference Protocol (KServe V2, as Triton Inference Server speaks it), with
Triton's dynamic batching; so ``tritonclient`` and every V2 client work unchanged (docs/serving.md).

``protocol.py`` holds the wire format (JSON and the binary tensor extension), ``models.py`` the V2 models of a
bundle, ``batcher.py`` the dynamic batcher, ``metrics.py`` the Prometheus metrics, ``app.py`` the HTTP endpoints and
the server's lifecycle, ``grpc_service.py`` the same service over gRPC. The server needs the ``serve`` extra
(``pip install 'vaedeploy[serve]'``); the protocol, the models and the batcher need numpy only.
"""
from __future__ import annotations

import importlib

from ..errors import MissingDependency

_LAZY = {"InferenceServer": ".app", "model_config": ".app", "run": ".app", "BatchPolicy": ".batcher"}
_EXTRA = ("starlette", "uvicorn", "httptools", "prometheus_client", "grpc", "tritonclient", "google")

__all__ = sorted(_LAZY)


def __getattr__(name):
    # PEP 562: the web framework loads when the server is asked for, so the batcher and protocol import without it
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name], __name__)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _EXTRA:
            raise
        raise MissingDependency(f"vaedeploy serve needs the {e.name.split('.')[0]!r} package: pip install "
                                "'vaedeploy[serve]'") from None
    return getattr(module, name)
