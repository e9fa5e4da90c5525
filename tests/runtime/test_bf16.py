"""precision="bf16": validated at export as the module computed in bfloat16 (error and PSNR per graph), run by the
backends that lower the fp32 graph (openvino, torch), refused by ONNX Runtime, and chosen among by auto."""
import json

import numpy as np
import pytest
from helpers import edit_manifest, images, uncalibrated_copy

from vaedeploy import load
from vaedeploy.errors import ConfigError
from vaedeploy.runtime import calibrate


@pytest.fixture(scope="module")
def bf16_bundle(exported, tmp_path_factory):
    from vaedeploy.export import export_run

    return export_run(exported("vae")[0], tmp_path_factory.mktemp("bf16") / "vae", precisions=("bf16",), max_batch=16)


def test_the_bf16_variant_names_the_fp32_graph_and_is_validated_in_bfloat16(bf16_bundle):
    manifest = json.loads((bf16_bundle / "manifest.json").read_text())
    for variants in manifest["graphs"].values():
        assert sorted(variants) == ["bf16", "fp32"] and variants["bf16"]["file"] == variants["fp32"]["file"]
    worst = manifest["validation"]["worst"]
    for role in manifest["graphs"]:
        for name in (o["name"] for o in manifest["graphs"][role]["fp32"]["outputs"]):
            fp32, bf16 = worst[f"{role}.fp32.{name}"], worst[f"{role}.bf16.{name}"]
            # a bfloat16 computation, not the fp32 graph again: its error is far above fp32's, its PSNR far below
            assert bf16["rel_l2"] > 20 * fp32["rel_l2"] and bf16["psnr_db"] < fp32["psnr_db"] - 20, (role, name)
            assert 20 < bf16["psnr_db"] < 80
    assert manifest["validation"]["tolerances"]["bf16"] == {"max_abs": 4e-1, "rel_l2": 8e-2}


def test_onnxruntime_refuses_bf16_in_one_sentence(bf16_bundle):
    with pytest.raises(ConfigError, match="precision 'bf16' needs a backend that lowers the fp32 graph") as error:
        load(bf16_bundle, backend="onnxruntime", precision="bf16")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_runs_close_to_fp32_on_the_backends_that_lower_it(bf16_bundle, backend):
    pytest.importorskip(backend, reason=f"backend {backend!r} is not installed")
    x = images(9)
    with load(bf16_bundle, backend=backend, precision="bf16") as half, load(bf16_bundle, backend="onnxruntime") as full:
        got, expected = half.reconstruct(x), full.reconstruct(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=0.1)
        if backend == "torch":  # computed in bfloat16 on any CPU: not the fp32 result
            assert np.abs(got - expected).max() > 1e-4
        else:  # the hint reaches OpenVINO, which runs bf16 where the CPU has a unit for it and f32 elsewhere
            assert {r.config["INFERENCE_PRECISION_HINT"] for r in half.runners.values()} == {"bf16"}
            assert set(half._backend.executes().values()) <= {"bf16", "f32"}


def test_auto_at_bf16_leaves_onnxruntime_out_and_says_so(bf16_bundle, tmp_path):
    bundle = uncalibrated_copy(bf16_bundle, tmp_path / "vae")
    with load(bundle, precision="bf16") as rt:
        assert rt.backend in ("openvino", "torch") and rt.precision == "bf16"
        record = calibrate.read_json(next((bundle / "calibration").glob("[0-9a-f]*.json")))
        assert "onnxruntime cannot run bf16 graphs" in record["skipped"] and "onnxruntime" not in record["times_s"]


def bf16_validated_at(bundle, psnr_db: float) -> None:
    """Set the PSNR the manifest records for every bf16 output (the one-epoch test model's decoder log-variance
    reaches only about 35 dB in bfloat16)."""
    def change(manifest):
        for key, worst in manifest["validation"]["worst"].items():
            if ".bf16." in key:
                worst["psnr_db"] = psnr_db

    edit_manifest(bundle, change)


def test_precision_auto_measures_each_validated_precision_on_each_backend(bf16_bundle, tmp_path):
    bundle = uncalibrated_copy(bf16_bundle, tmp_path / "vae")
    bf16_validated_at(bundle, 45.0)
    with load(bundle, precision="auto") as rt:
        record = calibrate.read_json(next((bundle / "calibration").glob("[0-9a-f]*.json")))
        assert set(record["times_s"]) >= {"onnxruntime fp32", "openvino fp32", "openvino bf16"}
        assert (rt.backend, rt.precision) == (record["chosen"], record["precision"])
        assert rt.backend_reason.startswith(f"auto on the CPU: {rt.backend} at {rt.precision}, ")


def test_precision_auto_leaves_out_a_precision_validated_below_40_db(bf16_bundle, tmp_path):
    bundle = uncalibrated_copy(bf16_bundle, tmp_path / "vae")
    bf16_validated_at(bundle, 45.0)
    edit_manifest(bundle, lambda m: m["validation"]["worst"]["decoder.bf16.mean"].update(psnr_db=31.0))
    with load(bundle, precision="auto") as rt:
        assert rt.precision == "fp32" and "bf16 was validated at 31 dB PSNR, below 40" in rt.backend_reason


def test_precision_auto_needs_backend_auto_on_the_cpu(bf16_bundle):
    with pytest.raises(ConfigError, match="precision 'auto' is measured with backend 'auto' on the CPU"):
        load(bf16_bundle, backend="openvino", precision="auto")
