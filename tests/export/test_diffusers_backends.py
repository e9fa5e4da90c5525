"""Bundles imported from diffusers on every CPU backend (docs/diffusers.md): the bundle stores the model's config
(JSON) and weights (safetensors), so the torch backend rebuilds diffusers' class; every op of the operation table
gives on torch and on OpenVINO what it gives on ONNX Runtime, for AutoencoderKL, AutoencoderTiny and VQModel, at two
sizes (one non-square) and across a split at max_batch."""
import json
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_diffusers
from vaedeploy.export.diffusers import photographs

from vaedeploy import load
from vaedeploy.errors import MissingDependency
from vaedeploy.runtime.operations import operations_of

NAMES = ["sd", "taesd", "vqgan"]  # AutoencoderKL, AutoencoderTiny, VQModel
BACKENDS = ["torch", "openvino"]
SIZES = [(16, 16), (32, 24)]  # the reference size and a non-square one
ROWS = (1, 3)  # one row, and a call split at the bundles' max batch of 2


def inputs_of(op, reference, x: np.ndarray) -> list:
    """Inputs of ``op`` from photographs x: the images, or what the reference runtime's encoder makes of them."""
    if op.inputs and op.inputs[0].name == "x":
        return [x]
    if op.inputs and op.inputs[0].name == "codes":
        return [reference.encode(x)[0]]
    if op.inputs and op.inputs[0].name == "z_q":
        return [reference.encode(x)[1]]
    return [reference.encode(x, seed=1)]  # z, scaled where the bundle declares a scaling, as decode takes it


def test_the_bundle_stores_the_models_config_and_weights_without_pickle(diffusers_bundle):
    bundle, vae = diffusers_bundle("sd"), tiny_diffusers("sd")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"] == {"kind": "diffusers.AutoencoderKL", "config": json.loads(vae.to_json_string()),
                                 "weights": "model.safetensors"}
    assert "model.safetensors" in manifest["files"]
    # files only: a load with backend="auto" earlier in the session may have added its calibration/ folder
    assert {p.suffix for p in bundle.iterdir() if p.is_file()} <= {".json", ".onnx", ".safetensors", ".npy", ".data"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_op_equals_onnxruntime_on_every_cpu_backend(diffusers_bundle, name, backend):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino backend needs `pip install 'vaedeploy[openvino]'`")
    bundle = diffusers_bundle(name)
    with load(bundle, backend="onnxruntime") as reference, load(bundle, backend=backend) as rt:
        assert rt.backend == backend
        ops = operations_of(rt)
        assert ops.keys() == operations_of(reference).keys()
        for op in ops.values():
            if not op.inputs:
                continue  # sample: the KL bundle's, checked below at a fixed seed
            for size in SIZES:
                for rows in ROWS:
                    given = inputs_of(op, reference, photographs(*size, rows))
                    expected = op.run(reference, given, rows, 7, 3, 1.0)
                    got = [np.asarray(g) for g in op.run(rt, given, rows, 7, 3, 1.0)]
                    for e, g in zip(expected, got):
                        where = f"{name} {backend} {op.name} {size} {rows}"
                        assert g.shape == e.shape and g.dtype == e.dtype, where
                        if g.dtype.kind == "f":
                            np.testing.assert_allclose(g, e, atol=1e-3, rtol=1e-3, err_msg=where)
                        else:  # codes: a near-tie between two codebook rows may flip within the graphs' float error
                            assert np.mean(g == e) >= 0.99, where
        if "sample" in ops:
            np.testing.assert_allclose(np.asarray(rt.sample(3, seed=5, size=(16, 24))),
                                       reference.sample(3, seed=5, size=(16, 24)), atol=1e-3, rtol=1e-3)


def test_the_torch_backend_rebuilds_diffusers_own_modules(diffusers_bundle):
    vae, x = tiny_diffusers("taesd"), photographs(24, 16, 2)
    with load(diffusers_bundle("taesd"), backend="torch") as rt:
        with torch.no_grad():
            latents = vae.encode(torch.from_numpy(x)).latents
            np.testing.assert_allclose(rt.encode(torch.from_numpy(x)).numpy(), latents.numpy(), rtol=0, atol=1e-6)
            np.testing.assert_allclose(rt.decode(latents).numpy(), vae.decode(latents).sample.numpy(), rtol=0,
                                       atol=1e-6)


def test_the_torch_backend_without_diffusers_names_the_extra_in_one_sentence(diffusers_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an environment without diffusers gives on import
    with pytest.raises(MissingDependency, match=r"^a diffusers model needs diffusers: pip install "
                                                r"'vaedeploy\[diffusers\]'$"):
        load(diffusers_bundle("vqgan"), backend="torch")
