"""What several test files share: their input images, a dataset made of given arrays, a model's parameter count, the
kinds beyond vae and ae with the graphs each exports, editing a bundle's manifest in place, and damaging a JSON
document as a careless hand edit would (the fuzz tests of the readers).

A module, not conftest fixtures: ``KINDS`` feeds ``pytest.mark.parametrize``, read when a file is collected, where
no fixture reaches, and plain functions read the same at every call site. Test files import it as ``helpers``:
tests/ has no ``__init__.py``, so pytest puts tests/ (the directory of its conftest.py) on ``sys.path``.
"""
import json
import shutil

import numpy as np
from hypothesis import strategies as st

from vaedeploy.data import Dataset, DataSplit
from vaedeploy.models import MODELS

KINDS = sorted(set(MODELS) - {"vae", "ae"})  # vae and ae have files of their own; every other kind is tested alike

# One kind's graphs written out by hand, not read from its export spec: ``spec_graphs`` derives every kind's
# expectation from the code under test, which cannot catch a spec that names the wrong graphs; this one can.
VQVAE_GRAPHS = {"encoder", "decoder", "prior"}


def images(n: int, seed: int = 0, shape=(1, 8, 8)) -> np.ndarray:
    """n images of uniform pixels in [0, 1), the same for the same seed (the test models' shape by default)."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def dataset(shape, levels, preprocessing, test: np.ndarray | None = None, labels=None) -> Dataset:
    """A dataset of ``test`` (default four zero images of ``shape``) as every split, named ``constructed``."""
    test = np.zeros((4, *shape), np.float32) if test is None else test
    split = DataSplit(test, labels)
    return Dataset("constructed", shape, levels, split, split, split, preprocessing=preprocessing)


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def spec_graphs(model) -> set[str]:
    """The roles of the graphs ``model``'s export spec names: what the manifest of its bundle lists."""
    return {graph.role for graph in model.export_spec(images(2, shape=tuple(model.config.input_shape)), 2).graphs}


def edit_manifest(bundle, change):
    """Apply ``change`` to the bundle's manifest.json, in place, and give back the bundle."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def paths(doc, prefix=()):
    """Every path into a JSON document, the document itself (``()``) first."""
    yield prefix
    children = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in children:
        yield from paths(value, (*prefix, key))


def damage(data, doc, values):
    """``doc`` (edited in place, or replaced) as a hand edit leaves it: one to three times a hypothesis draw picks a
    path and puts a value drawn from ``values`` there, or deletes an object's key; the root path replaces the whole
    document."""
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(paths(doc))))
        if not path:
            doc = data.draw(values)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(values)
    return doc


# ---- the bundles the `exported` fixture (conftest.py) makes: a dynamo export costs seconds per graph ----------
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


def uncalibrated_copy(bundle, to):
    """A copy of a bundle without the calibration/ folder ``backend="auto"`` leaves in it (other tests load the shared
    bundles with the default backend), so a test of auto starts from no measurement."""
    return shutil.copytree(bundle, to, ignore=shutil.ignore_patterns("calibration"))


# ---- diffusers' autoencoders, tiny (docs/diffusers.md) -------------------------------------------------------------

DIFFUSERS_BLOCKS = {"down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
                    "block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 16}
# tiny configs after diffusers' own test configs: SD-style (quant convs, 4 channels, scaled), FLUX-style (16
# channels, no quant convs, scaled and shifted), TAESD-style, VQGAN-style; each downsamples by 2. class name → config
DIFFUSERS_CONFIGS = {
    "sd": ("AutoencoderKL", {**DIFFUSERS_BLOCKS, "latent_channels": 4, "scaling_factor": 0.18215}),
    "flux": ("AutoencoderKL", {**DIFFUSERS_BLOCKS, "latent_channels": 16, "use_quant_conv": False,
                               "use_post_quant_conv": False, "scaling_factor": 0.3611, "shift_factor": 0.1159}),
    "taesd": ("AutoencoderTiny", {"encoder_block_out_channels": (8, 8), "decoder_block_out_channels": (8, 8),
                                  "num_encoder_blocks": (1, 1), "num_decoder_blocks": (1, 1), "latent_channels": 4}),
    "vqgan": ("VQModel", {**DIFFUSERS_BLOCKS, "latent_channels": 3, "num_vq_embeddings": 16, "vq_embed_dim": 3}),
}
DIFFUSERS_SIZES = (16, 32)  # the tiny models' sample_size (diffusers' tile) and twice it: 16×16 … 32×32


def tiny_diffusers(name: str):
    """The tiny diffusers model ``name`` (``DIFFUSERS_CONFIGS``), seeded, in eval mode."""
    import diffusers
    import torch

    cls, config = DIFFUSERS_CONFIGS[name]
    torch.manual_seed(0)
    return getattr(diffusers, cls)(**config).eval()
