"""Fixtures of the TensorRT tests: the fake TensorRT module (``fake_tensorrt.py``) installed as ``tensorrt`` or
``tensorrt_rtx``, a pretend GPU, and bundles copied so that each test has its own engine cache."""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys

import fake_tensorrt
import pytest

from vaedeploy.deploy import trt_build
from vaedeploy.runtime.backends import tensorrt as tensorrt_backend


class FakeMachine:
    """The fake TensorRT and a pretend GPU, swapped in for one test (``install`` again to change either)."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.gpu = {"name": "fake GPU (no GPU: tests/trt/fake_tensorrt.py)", "compute_capability": "8.9"}
        self.trt = None
        monkeypatch.setattr(trt_build, "on_gpu", self._on_gpu)
        monkeypatch.setattr(tensorrt_backend, "compute_capability", lambda device: self.gpu["compute_capability"])

    @contextlib.contextmanager
    def _on_gpu(self, device):
        yield dict(self.gpu)

    def install(self, name="tensorrt", version="10.13.0", compute_capability=None):
        if compute_capability is not None:
            self.gpu["compute_capability"] = compute_capability
        for module in trt_build.MODULES:
            self.monkeypatch.delitem(sys.modules, module, raising=False)
        self.trt = fake_tensorrt.make(name, version)
        self.monkeypatch.setitem(sys.modules, name, self.trt)
        return self.trt


@pytest.fixture
def machine(monkeypatch):
    if any(m in sys.modules or importlib.util.find_spec(m) for m in trt_build.MODULES):
        pytest.skip("a real TensorRT is installed here; the fake is not swapped in over it")
    made = FakeMachine(monkeypatch)
    made.install()
    return made


@pytest.fixture
def bundle_copy(exported, tmp_path):
    """name → a copy of that session bundle in this test's tmp_path (the engine cache goes inside it)."""
    def copy(name="vae"):
        target = tmp_path / f"{name}_bundle"
        if not target.exists():
            shutil.copytree(exported(name)[1], target)
        return target

    return copy
