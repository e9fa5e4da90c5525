import os

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# The Triton interpreter must be chosen before any module that defines a @triton.jit kernel is imported; conftest
# runs before test collection, so on a machine without CUDA every kernel test runs under the interpreter.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---- exported bundles shared by tests/export and tests/runtime: a dynamo export costs seconds per graph ----------
def _bundle_runs() -> dict:
    """name → (kind, model config, exporter, precisions): every registered kind with its example config (so a new
    kind is exported and served by construction), fp16 where a kind's graphs need care in half precision, the legacy
    exporter for one, and a conv Bernoulli VAE."""
    from vaedeploy.models import MODELS

    runs = {kind: (kind, dict(cls.example_config), "dynamo", ("fp32",)) for kind, cls in MODELS.items()}
    for kind in ("vae", "vqvae", "biva"):
        runs[kind] = (*runs[kind][:3], ("fp32", "fp16"))
    runs["ae"] = (*runs["ae"][:2], "legacy", ("fp32",))
    runs["vae_conv_bernoulli"] = ("vae", {"hidden": [16], "latent_dim": 3, "backbone": "conv", "channels": [4, 8],
                                          "likelihood": "bernoulli"}, "dynamo", ("fp32",))
    return runs


BUNDLE_RUNS = _bundle_runs()
BUNDLE_MAX_BATCH = 64


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name → (run dir, bundle dir), each trained for one epoch and exported once, on first use."""
    from vaedeploy.export import export_run

    from vaedeploy.data import load_dataset
    from vaedeploy.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("bundles")
    data = load_dataset("digits")
    made = {}

    def get(name):
        if name not in made:
            kind, config, exporter, precisions = BUNDLE_RUNS[name]
            run, bundle = root / f"{name}_run", root / f"{name}_bundle"
            train_run(kind, data, run, model_config=config, train_config=TrainConfig(epochs=1), progress=False)
            export_run(run, bundle, exporter=exporter, precisions=precisions, max_batch=BUNDLE_MAX_BATCH)
            made[name] = (run, bundle)
        return made[name]

    return get


@pytest.fixture(scope="session")
def digits():
    from vaedeploy.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def fd_classifier(digits, tmp_path_factory):
    """A briefly trained sample-FD classifier file for digits, copied into run directories to save test time."""
    from vaedeploy.fid import CACHE_NAME, load_or_train_classifier

    cache = tmp_path_factory.mktemp("fd")
    load_or_train_classifier(digits, cache, epochs=8)
    return cache / CACHE_NAME
