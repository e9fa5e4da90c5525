"""The `tensorrt` backend (vaedeploy/runtime/backends/tensorrt.py) in the runtime's batch buckets, against the FAKE
TensorRT of tests/trt/fake_tensorrt.py, on torch CPU tensors: one context per profile sharing one block of memory,
tensors bound by name, results equal to ONNX Runtime's, every refusal a sentence; ``--validate``. The ``gpu`` test at
the end is the one for real TensorRT (skipped where it is not installed or there is no CUDA device)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from fake_tensorrt import calls
from helpers import images

from vaedeploy import load
from vaedeploy.bundle import engine_files, load_bundle
from vaedeploy.deploy import trt_build
from vaedeploy.errors import BundleError, ConfigError, InputError, JobFailed, MissingDependency
from vaedeploy.runtime.backends import auto, resolve
from vaedeploy.runtime.backends.tensorrt import Backend, usable
from vaedeploy.runtime.latents import runtime_class


def build(bundle, **options):
    return trt_build.build_engines(bundle, progress=lambda line: None, **options)


def on_fake(bundle, buckets=(1, 2, 4, 8), precision="fp32", engines=None):
    """A runtime on the tensorrt backend on the CPU: what load(backend="tensorrt") makes on CUDA, which it refuses on
    the CPU since real TensorRT needs a GPU; the fake runs on torch CPU tensors and stream 0."""
    loaded = load_bundle(bundle)
    return runtime_class(loaded)(loaded, "tensorrt", "cpu", precision, buckets=buckets,
                                 backend_options={"engines": engines})


def test_the_buckets_run_on_one_context_per_profile_and_match_onnxruntime(machine, bundle_copy):
    bundle = bundle_copy()
    build(bundle, buckets=[1, 2, 4, 8])
    machine.trt.calls.clear()
    runtime, reference = on_fake(bundle), load(bundle, backend="onnxruntime")
    x = images(11)  # 8 + 3: the largest bucket, then bucket 4 padded
    z = reference.encode_params(x)[0]
    for got, expected in [(runtime.encode_params(x), reference.encode_params(x)), (runtime.decode(z),
                                                                                     reference.decode(z)),
                          (runtime.reconstruct(x), reference.reconstruct(x)),
                          (runtime.sample(5, seed=3), reference.sample(5, seed=3)),
                          (runtime.encode(x, seed=1), reference.encode(x, seed=1))]:
        for g, e in zip(*(((a,) if isinstance(a, np.ndarray) else a) for a in (got, expected))):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)

    assert calls(machine.trt, "ICudaEngine.create_execution_context") == [("USER_MANAGED",)] * 8  # 4 per engine
    memories = set(calls(machine.trt, "IExecutionContext.set_device_memory"))
    assert len(memories) == 1 and next(iter(memories))[1] == 4 * 4096  # one block, the largest engine's size
    assert runtime._backend.memory_bytes == 4 * 4096
    assert {args[0] for args in calls(machine.trt, "IExecutionContext.execute_async_v3")} == {0}  # current stream
    # each context is shaped once, at its bucket: a bucket's later calls only bind and enqueue
    shapes = calls(machine.trt, "IExecutionContext.set_input_shape")
    assert len(shapes) == len(set(shapes)) and {s[1][0] for s in shapes} <= {1, 2, 4, 8}
    runtime.close()


def test_tensors_are_bound_by_name_not_by_tensorrts_order(machine, bundle_copy):
    bundle = bundle_copy()
    build(bundle, buckets=[1, 2])
    runtime = on_fake(bundle, buckets=(1, 2))
    engine = runtime.runners["encoder"].engine
    listed = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    graph = runtime.runners["encoder"].graph
    assert listed != [s["name"] for s in graph["inputs"] + graph["outputs"]]  # the fake lists outputs first
    mean, logvar = runtime.encode_params(images(2))
    expected = load(bundle, backend="onnxruntime").encode_params(images(2))
    np.testing.assert_allclose(mean, expected[0], atol=1e-6)
    np.testing.assert_allclose(logvar, expected[1], atol=1e-6)
    assert not np.allclose(expected[0], expected[1])  # so a swap of the two would have shown


def test_without_buckets_a_call_takes_the_smallest_profile_that_fits(machine, bundle_copy):
    bundle = bundle_copy()
    build(bundle, buckets=[1, 4, 64])
    runtime = on_fake(bundle, buckets=None)
    assert runtime.buckets is None and runtime._backend.lock is not None
    z = np.random.default_rng(0).standard_normal((3, runtime.latent_dim), dtype=np.float32)
    np.testing.assert_allclose(runtime.decode(z), load(bundle, backend="onnxruntime").decode(z), atol=1e-6)
    (last,) = calls(machine.trt, "IExecutionContext.execute_async_v3")[-1:]
    assert set(last[1].values()) == {(4, runtime.latent_dim)}  # 3 rows padded to the static profile of 4


SIZES = [(12, 20), (32, 8)]  # two sizes the klconv bundle takes (H, W multiples of 4 from 8 to 32), neither 8×8


def test_a_bundle_of_any_size_runs_each_size_at_its_own_shape_and_matches_onnxruntime(machine, bundle_copy):
    """klconv: engines with profiles over (batch, H, W); each call's context is set to the call's own H, W (not the
    manifest's reference 8×8) and the outputs come at that size, equal to ONNX Runtime's."""
    bundle = bundle_copy("klconv")
    build(bundle, buckets=[1, 4], ranges=True)
    runtime, reference = on_fake(bundle, buckets=(1, 4)), load(bundle, backend="onnxruntime")
    for h, w in SIZES:
        x = images(3, seed=h, shape=(1, h, w))
        machine.trt.calls.clear()
        z = reference.encode(x, seed=1)
        for got, expected in [(runtime.encode_params(x), reference.encode_params(x)),
                              (runtime.encode(x, seed=1), z), (runtime.decode(z), reference.decode(z)),
                              (runtime.sample(3, seed=3, size=(h, w)), reference.sample(3, seed=3, size=(h, w)))]:
            for g, e in zip(*(((a,) if isinstance(a, np.ndarray) else a) for a in (got, expected))):
                assert g.shape == e.shape
                np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
        shapes = set(calls(machine.trt, "IExecutionContext.set_input_shape"))
        assert shapes == {("x", (4, 1, h, w)), ("z", (4, 2, h // 4, w // 4))}  # 3 rows in bucket 4, at this size
    runtime.close()


def test_a_size_outside_the_engines_profiles_is_one_sentence(machine, bundle_copy, monkeypatch):
    """Engines built for H, W up to 16 (as by a build of a narrower range) under a bundle that takes up to 32: a call
    at 32×8 is refused naming the range its engine was built for, before anything is enqueued."""
    bundle = bundle_copy("klconv")
    narrower = {"height": [8, 8, 16], "width": [8, 8, 16], "latent_height": [2, 2, 4], "latent_width": [2, 2, 4]}
    monkeypatch.setattr(trt_build, "axis_ranges", lambda loaded: narrower)
    build(bundle, buckets=[1, 4], ranges=True)
    runtime = on_fake(bundle, buckets=(1, 4))
    np.testing.assert_allclose(runtime.decode(np.zeros((2, 2, 4, 3), np.float32)),
                               load(bundle, backend="onnxruntime").decode(np.zeros((2, 2, 4, 3), np.float32)),
                               atol=1e-5)  # 16×12: in range
    machine.trt.calls.clear()
    with pytest.raises(InputError, match=r"^x: expected N×1×8×8 to N×1×16×16, the sizes the encoder engine "
                                         rf"encoder\.fp32\.plan was built for, got N×1×32×8; run `vaedeploy build "
                                         rf"{bundle}`$"):
        runtime.encode_params(images(2, shape=(1, 32, 8)))
    assert not calls(machine.trt, "IExecutionContext.execute_async_v3")
    runtime.close()


def test_refusals_are_sentences_naming_the_build_command(machine, bundle_copy):
    bundle = bundle_copy()
    with pytest.raises(BundleError, match=r"no TensorRT engine of the decoder graph at fp32 \(decoder.fp32.json is "
                                          rf"missing\); run `vaedeploy build {bundle}`"):
        on_fake(bundle)
    build(bundle, buckets=[1, 2])
    with pytest.raises(ConfigError, match="its profiles reach batch 2, and this runtime runs batches up to 8; load "
                                          "with buckets up to 2, or run `vaedeploy build .*` with --max-batch 8"):
        on_fake(bundle, buckets=(1, 8))
    with pytest.raises(BundleError, match=r"no TensorRT engine of the decoder graph at fp16 .* --precision fp16`"):
        on_fake(bundle, buckets=(1, 2), precision="fp16")
    machine.install(version="10.14.0")
    with pytest.raises(BundleError, match="built by tensorrt 10.13.0 for sm_89, this is tensorrt 10.14.0 on sm_89"):
        on_fake(bundle, buckets=(1, 2))
    machine.install(compute_capability="12.0")
    with pytest.raises(BundleError, match="for sm_89, this is tensorrt 10.13.0 on sm_120"):
        on_fake(bundle, buckets=(1, 2))
    machine.install(compute_capability="8.9")
    plan = engine_files(bundle / "engines", "encoder", "fp32")[0]
    data = bytearray(plan.read_bytes())
    data[-2] ^= 1  # same size, other bytes: only the sha256 tells
    plan.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.fp32.plan: the plan does not match the sha256 of its record"):
        on_fake(bundle, buckets=(1, 2))


def test_usable_says_whether_auto_may_take_tensorrt(machine, bundle_copy):
    bundle = bundle_copy()
    loaded = load_bundle(bundle)
    assert usable(loaded, "fp32", "cuda") == (False, f"{bundle / 'engines'}: no TensorRT engine of the encoder graph "
                                                     f"at fp32 (encoder.fp32.json is missing); run `vaedeploy build "
                                                     f"{bundle}`")
    build(bundle, buckets=[1, 2])
    ok, why = usable(loaded, "fp32", "cuda")  # the runtime's default buckets reach the bundle's max_batch
    assert not ok and "its profiles reach batch 2" in why
    assert usable(loaded, "fp32", "cuda", buckets=[1, 2]) == \
        (True, f"engines in {bundle / 'engines'} built by tensorrt 10.13.0 for sm_89")


def test_auto_on_cuda_takes_tensorrt_only_with_engines_for_this_machine():
    known = {"onnxruntime": True, "torch": True, "tensorrt": True, "onnxruntime_cuda": False, "weights": True}
    name, why = auto("cuda", {**known, "tensorrt_engines": (True, "engines in B/engines built by tensorrt 10.13")})
    assert name == "tensorrt" and why == ("auto on CUDA: tensorrt, TensorRT engines per bucket (engines in B/engines "
                                          "built by tensorrt 10.13)")
    name, why = auto("cuda", {**known, "tensorrt_engines": (False, "no engine yet")})
    assert name == "torch" and "tensorrt has no engine to run here (no engine yet)" in why
    name, why = auto("cuda", {**known, "tensorrt": False})
    assert name == "torch" and "tensorrt is not installed" in why


def test_tensorrts_warnings_are_python_warnings_in_the_runtime_and_its_last_error_is_kept(machine, bundle_copy):
    logger = Backend(load_bundle(bundle_copy()), "fp32", "cpu").logger(machine.trt)
    severity = machine.trt.ILogger.Severity
    with pytest.warns(RuntimeWarning, match="^TensorRT: a slow tactic$"):
        logger.log(severity.WARNING, "a slow tactic")
    logger.log(severity.ERROR, "out of memory")
    assert logger.last() == "out of memory"


def test_load_refuses_tensorrt_on_the_cpu_and_says_what_to_install(bundle_copy, machine):
    loaded = load_bundle(bundle_copy())
    with pytest.raises(ConfigError, match="backend 'tensorrt' runs on NVIDIA GPUs: load the bundle with "
                                          "device='cuda'"):
        resolve("tensorrt", "cpu", loaded)
    with pytest.raises(ConfigError, match="engines= is the TensorRT backend's engine cache; backend 'onnxruntime'"):
        load(loaded.root, backend="onnxruntime", engines=loaded.root / "engines")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_the_backend_names_the_package(bundle_copy):
    with pytest.raises(MissingDependency, match=r"backend 'tensorrt' needs the 'tensorrt' or 'tensorrt_rtx' package, "
                                                r"which is not installed: pip install 'vaedeploy\[trt\]'"):
        resolve("tensorrt", "cuda", load_bundle(bundle_copy()))


def test_validate_passes_writes_its_report_and_a_failure_is_refused_and_rebuilt(machine, bundle_copy):
    bundle = bundle_copy()
    loaded = load_bundle(bundle)
    built = build(bundle, buckets=[1, 2])
    backend = Backend(loaded, "fp32", "cpu", (1, 2), engines=built["cache"])
    report = trt_build.validate_engines(loaded, built, backend.runner, progress=lambda line: None)
    assert report["passed"] and {c["batch"] for c in report["checks"]} == {1, 2}
    assert all(c["passed"] for c in report["checks"]) and len(report["checks"]) == 4
    record = json.loads(engine_files(bundle / "engines", "decoder", "fp32")[1].read_text())
    assert record["validation"] == {"passed": True, "file": "validation.fp32.json"}

    machine.trt.faults["offset"] = 1e-3  # every output off by 1e-3: beyond fp32's max_abs 1e-4
    with pytest.raises(JobFailed, match="TensorRT engines disagree with ONNX Runtime beyond export's fp32 tolerance"):
        trt_build.validate_engines(loaded, built, backend.runner, progress=lambda line: None)
    with pytest.raises(BundleError, match="failed `vaedeploy build --validate`"):
        on_fake(bundle, buckets=(1, 2))
    machine.trt.faults.clear()
    again = build(bundle, buckets=[1, 2])
    assert all(e["reason"] == "it failed `vaedeploy build --validate` (validation.fp32.json)" for e in again["engines"])
    on_fake(bundle, buckets=(1, 2)).close()


@pytest.mark.gpu
@pytest.mark.skipif(not any(importlib.util.find_spec(m) for m in trt_build.MODULES),
                    reason="real TensorRT (tensorrt or tensorrt_rtx) is not installed")
def test_real_tensorrt_engines_match_the_torch_backend(exported, tmp_path):
    """On a machine with TensorRT and a GPU: build the demo VAE's engines, run them in the CUDA-graph buckets and
    compare with the torch backend. Never run on this project's machines (none has TensorRT)."""
    import shutil

    import torch

    bundle = shutil.copytree(exported("vae")[1], tmp_path / "vae_bundle")
    built = trt_build.build_engines(bundle, max_batch=8)
    assert {e["status"] for e in built["engines"]} == {"built"}
    runtime = load(bundle, backend="tensorrt", device="cuda", buckets=[1, 2, 4, 8])
    reference = load(bundle, backend="torch", device="cuda", buckets=[1, 2, 4, 8])
    x = torch.rand(11, 1, 8, 8, device="cuda")
    torch.testing.assert_close(runtime.reconstruct(x), reference.reconstruct(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runtime.sample(5, seed=0), reference.sample(5, seed=0), atol=1e-4, rtol=1e-4)
    assert runtime.describe()["execution"] == "batch buckets, one CUDA graph per bucket capturing the whole call"
