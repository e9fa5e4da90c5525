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
BUNDLE_RUNS = {
    # name: (kind, model config, exporter, precisions)
    "vae": ("vae", {"hidden": [32], "latent_dim": 4}, "dynamo", ("fp32", "fp16")),
    "vae_conv_bernoulli": ("vae", {"hidden": [16], "latent_dim": 3, "backbone": "conv", "channels": [4, 8],
                                   "likelihood": "bernoulli"}, "dynamo", ("fp32",)),
    "ae": ("ae", {"hidden": [16], "latent_dim": 5}, "legacy", ("fp32",)),
    # the kinds with more graphs (tests/runtime/test_kinds.py); fp16 where a kind's graphs need care in half precision
    "vqvae": ("vqvae", {"channels": [8, 16], "embedding_dim": 4, "num_codes": 16, "prior_width": 32,
                        "prior_layers": 1, "prior_heads": 2}, "dynamo", ("fp32", "fp16")),
    "bivae": ("bivae", {"hidden": [32], "latent_dim": 4}, "dynamo", ("fp32",)),
    "biva": ("biva", {"hidden": [32], "latent_dims": [4, 3, 2], "layer_hidden": 16}, "dynamo", ("fp32", "fp16")),
    "twostage": ("twostage", {"hidden": [32], "latent_dim": 4, "stage2_hidden": [16]}, "dynamo", ("fp32",)),
}
BUNDLE_MAX_BATCH = 64


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name → (run dir, bundle dir), each trained for one epoch and exported once, on first use."""
    from vaedeploy.data import load_dataset
    from vaedeploy.export import export_run
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
