"""`vaedeploy build` (deploy/trt_build.py) against the FAKE TensorRT of tests/trt/fake_tensorrt.py: the calls it
makes, the profiles per bucket, the cache key and every rebuild reason, atomic writes, the TensorRT 10 / 11 /
TensorRT-RTX paths, and the error sentences. Nothing here runs real TensorRT."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from fake_tensorrt import calls

from vaedeploy.bundle import engine_files, load_bundle
from vaedeploy.cli import main
from vaedeploy.deploy import trt_build
from vaedeploy.errors import BundleError, ConfigError, JobFailed, MissingDependency


def build(bundle, lines=None, **options):
    return trt_build.build_engines(bundle, progress=(lines.append if lines is not None else lambda line: None),
                                   **options)


def test_one_static_profile_per_bucket_and_spans_with_ranges(machine, bundle_copy):
    bundle = bundle_copy()
    result = build(bundle, buckets=[4, 1, 8])
    assert result["buckets"] == [1, 4, 8] and result["profiles"] == [[1, 1, 1], [4, 4, 4], [8, 8, 8]]
    decoder = load_bundle(bundle).graph("decoder")
    (name,) = [spec["name"] for spec in decoder["inputs"]]
    dims = tuple(decoder["inputs"][0]["shape"][1:])
    decoder_shapes = [args[1:] for args in calls(machine.trt, "IOptimizationProfile.set_shape") if args[0] == name]
    assert decoder_shapes == [((b, *dims),) * 3 for b in (1, 4, 8)]

    machine.trt.calls.clear()
    result = build(bundle, buckets=[1, 4, 8], ranges=True, cache=bundle / "ranged")
    assert result["profiles"] == [[1, 1, 1], [2, 4, 4], [5, 8, 8]]
    decoder_shapes = [args[1:] for args in calls(machine.trt, "IOptimizationProfile.set_shape") if args[0] == name]
    assert decoder_shapes == [((lo, *dims), (b, *dims), (b, *dims)) for lo, b in ((1, 1), (2, 4), (5, 8))]


def test_a_bundle_of_any_size_gets_profiles_over_batch_height_and_width(machine, bundle_copy):
    """klconv on digits: images any multiple of 4 from 8×8 to 32×32 (reference 8×8), latents 2×H/4×W/4."""
    bundle = bundle_copy("klconv")
    assert trt_build.axis_ranges(load_bundle(bundle)) == {
        "height": [8, 8, 32], "width": [8, 8, 32], "latent_height": [2, 2, 8], "latent_width": [2, 2, 8]}
    result = build(bundle, buckets=[1, 4], ranges=True)
    shapes = {args[0]: [] for args in calls(machine.trt, "IOptimizationProfile.set_shape")}
    for name, *shape in calls(machine.trt, "IOptimizationProfile.set_shape"):
        shapes[name].append(tuple(shape))
    assert shapes == {"x": [((1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 32, 32)), ((2, 1, 8, 8), (4, 1, 8, 8), (4, 1, 32, 32))],
                      "z": [((1, 2, 2, 2), (1, 2, 2, 2), (1, 2, 8, 8)), ((2, 2, 2, 2), (4, 2, 2, 2), (4, 2, 8, 8))]}
    record = json.loads(engine_files(result["cache"], "decoder", "fp32")[1].read_text())
    assert record["key"]["axes"]["latent_height"] == [2, 2, 8]  # a changed range is a changed key: rebuilt


def test_the_default_buckets_are_the_runtimes_up_to_max_batch(machine, bundle_copy):
    # written out by hand: the powers of two up to --max-batch, and --max-batch itself
    assert build(bundle_copy(), max_batch=6)["buckets"] == [1, 2, 4, 6]


def test_tensorrts_warnings_are_progress_lines_of_a_build_and_its_last_error_is_kept(machine, bundle_copy):
    lines = []
    build(bundle_copy(), lines, buckets=[1])
    (logger,), *_ = calls(machine.trt, "Builder")  # the logger the build gave TensorRT
    severity = machine.trt.ILogger.Severity
    assert logger.last() == "TensorRT logged no error"
    for level, message in [(severity.WARNING, "a slow tactic"), (severity.ERROR, "out of memory"),
                           (severity.INFO, "chatter")]:
        logger.log(level, message)
    assert lines[-1] == "    TensorRT: a slow tactic" and logger.last() == "out of memory"


def test_the_builder_settings_reach_tensorrt(machine, bundle_copy):
    build(bundle_copy(), opt_level=5, workspace_mib=256)
    (flags, level, pool), *_ = calls(machine.trt, "Builder.build_serialized_network")
    assert level == 5 and pool == 256 << 20
    assert flags == []  # fp32: TF32 cleared, no FP16
    assert calls(machine.trt, "Builder.create_network") == [(1,), (1,)]  # STRONGLY_TYPED is bit 0 of the fake


def test_a_second_build_is_cached_and_every_key_change_rebuilds_saying_why(machine, bundle_copy):
    bundle = bundle_copy()
    first = build(bundle, buckets=[1, 2])
    assert {e["status"] for e in first["engines"]} == {"built"}
    lines = []
    again = build(bundle, lines, buckets=[1, 2])
    assert {e["status"] for e in again["engines"]} == {"cached"} and any("up to date" in line for line in lines)

    def reasons(**options) -> dict:
        """role → why its engine was rebuilt (None: it was up to date)."""
        lines.clear()
        done = build(bundle, lines, **{"buckets": [1, 2], **options})
        return {e["role"]: e.get("reason") for e in done["engines"]}

    assert all("opt_level 3 → 1" in r for r in reasons(opt_level=1).values())
    assert all("built for batches 1, 2, asked for 1, 4" in r for r in reasons(opt_level=1, buckets=[1, 4]).values())
    machine.install(version="10.14.1")
    assert all("built by tensorrt 10.13.0 for sm_89, this is tensorrt 10.14.1 on sm_89" in r
               for r in reasons().values())
    machine.install(version="10.14.1", compute_capability="9.0")
    assert all("for sm_89, this is tensorrt 10.14.1 on sm_90" in r for r in reasons().values())

    plan, record_path = engine_files(bundle / "engines", "decoder", "fp32")
    record = json.loads(record_path.read_text())
    record["key"]["graph"]["sha256"] = "0" * 64  # as if the bundle was exported again since
    record_path.write_text(json.dumps(record))
    assert "built from decoder.onnx (sha256 000000000000), the graph now is decoder.onnx" in reasons()["decoder"]
    assert reasons() == {"encoder": None, "decoder": None}

    plan.write_bytes(plan.read_bytes() + b" ")
    assert "the plan does not match the sha256 of its record" in reasons()["decoder"]
    data = b"not an engine"  # a plan TensorRT refuses although its record matches it
    plan.write_bytes(data)
    record = json.loads(record_path.read_text())
    record["plan"]["sha256"] = hashlib.sha256(data).hexdigest()
    record_path.write_text(json.dumps(record))
    assert "cannot deserialize the plan (the plan's magic tag does not match" in reasons()["decoder"]


def test_a_record_without_its_plan_and_a_plan_without_its_record_rebuild(machine, bundle_copy):
    bundle = bundle_copy()
    build(bundle, buckets=[1])
    plan, record_path = engine_files(bundle / "engines", "decoder", "fp32")
    plan.unlink()
    assert build(bundle, buckets=[1])["engines"][-1]["reason"] == "the plan is missing"
    record_path.unlink()
    assert build(bundle, buckets=[1])["engines"][-1]["reason"] == "its record is missing"


def test_an_interrupted_write_leaves_no_plan_that_loads(machine, bundle_copy, monkeypatch):
    """A failure while the plan is written leaves neither plan nor temporary file; one between the plan and its
    record leaves a plan that no record names, which the next build rebuilds and the backend never loads."""
    bundle = bundle_copy()
    real_replace = os.replace

    def fail_on(suffix):
        def replace(src, dst):
            if str(dst).endswith(suffix):
                raise OSError(28, "No space left on device")
            return real_replace(src, dst)

        return replace

    monkeypatch.setattr(os, "replace", fail_on(".plan"))
    with pytest.raises(OSError, match="No space left"):
        build(bundle, buckets=[1])
    ours = ("timing.", ".vaedeploy-owned.json")  # the timing cache and the cache's marker (vaedeploy.owned)
    assert sorted(p.name for p in (bundle / "engines").iterdir() if not p.name.startswith(ours)) == []

    monkeypatch.setattr(os, "replace", fail_on(".fp32.json"))
    with pytest.raises(OSError, match="No space left"):
        build(bundle, buckets=[1])
    assert sorted(p.name for p in (bundle / "engines").iterdir() if not p.name.startswith(ours)) == \
        ["encoder.fp32.plan"]
    from vaedeploy.runtime.backends.tensorrt import usable

    ok, why = usable(load_bundle(bundle), "fp32", "cuda", buckets=[1])
    assert not ok and "no TensorRT engine of the encoder graph at fp32 (encoder.fp32.json is missing)" in why
    monkeypatch.setattr(os, "replace", real_replace)
    assert build(bundle, buckets=[1])["engines"][0]["reason"] == "its record is missing"


def test_the_timing_cache_is_kept_and_reused(machine, bundle_copy):
    bundle = bundle_copy()
    build(bundle, buckets=[1])
    (cache_file,) = (bundle / "engines").glob("timing.*.cache")
    assert cache_file.name == "timing.tensorrt-10.13.0.sm89.cache"
    assert json.loads(cache_file.read_text())["builds"] == 2  # encoder and decoder
    machine.trt.calls.clear()
    build(bundle, buckets=[1], opt_level=2)
    assert calls(machine.trt, "IBuilderConfig.set_timing_cache")[0] == (True, False)
    assert json.loads(cache_file.read_text())["builds"] == 4


def test_tensorrt_10_fp16_uses_the_fp16_graphs_strongly_typed(machine, bundle_copy):
    result = build(bundle_copy(), buckets=[1], precision="fp16")
    assert [e["key"]["graph"]["file"] for e in result["engines"]] == ["encoder.fp16.onnx", "decoder.fp16.onnx"]
    assert all(e["key"]["builder"]["typing"] == "strong" for e in result["engines"])
    assert calls(machine.trt, "Builder.create_network") == [(1,), (1,)]
    assert "FP16" not in calls(machine.trt, "Builder.build_serialized_network")[0][0]


def test_tensorrt_10_fp16_without_fp16_graphs_takes_the_builder_flag(machine, bundle_copy):
    result = build(bundle_copy("ae"), buckets=[1], precision="fp16")
    assert {e["key"]["graph"]["file"].split(".")[1] for e in result["engines"]} == {"onnx"}  # the fp32 graphs
    assert all(e["key"]["builder"]["typing"] == "weak, fp16 flag" for e in result["engines"])
    assert set(calls(machine.trt, "Builder.create_network")) == {(0,)}
    assert all("FP16" in flags for flags, _, _ in calls(machine.trt, "Builder.build_serialized_network"))


def test_tensorrt_11_is_strongly_typed_only(machine, bundle_copy):
    machine.install(version="11.4.0")
    result = build(bundle_copy(), buckets=[1], precision="fp16")  # the fake 11 has no BuilderFlag.FP16 at all
    assert set(calls(machine.trt, "Builder.create_network")) == {(0,)}
    assert result["tensorrt"] == {"module": "tensorrt", "version": "11.4.0"}
    with pytest.raises(ConfigError, match="TensorRT 11 builds strongly typed networks only .* export the bundle with "
                                          "--precision fp16"):
        build(bundle_copy("ae"), buckets=[1], precision="fp16")


def test_tensorrt_rtx_has_no_timing_cache_and_asks_for_user_allocation(machine, bundle_copy):
    machine.install("tensorrt_rtx", "1.2.0.54")
    bundle = bundle_copy()
    result = build(bundle, buckets=[1])
    assert result["tensorrt"]["module"] == "tensorrt_rtx"
    assert not list((bundle / "engines").glob("timing.*"))
    assert all(flags == ["REQUIRE_USER_ALLOCATION"] for flags, _, _ in
               calls(machine.trt, "Builder.build_serialized_network"))


def test_tensorrt_versions_it_does_not_know_are_refused_with_a_sentence(machine, bundle_copy):
    for name, version, needle in [("tensorrt", "9.3.0", "this is tensorrt 9.3.0"),
                                  ("tensorrt", "10.0.1", "needs tensorrt 10.1 or newer, this is 10.0.1"),
                                  ("tensorrt_rtx", "1.1.1", "needs tensorrt_rtx 1.2 or newer")]:
        machine.install(name, version)
        with pytest.raises(MissingDependency, match=needle):
            build(bundle_copy(), buckets=[1])


def test_errors_name_the_option_or_the_graph(machine, bundle_copy):
    bundle = bundle_copy()
    max_batch = load_bundle(bundle).max_batch
    with pytest.raises(ConfigError, match=f"--buckets must be batch sizes from 1 to {max_batch}"):
        build(bundle, buckets=[1, max_batch + 1])
    with pytest.raises(ConfigError, match="--max-batch must be from 1"):
        build(bundle, max_batch=max_batch + 1)
    with pytest.raises(ConfigError, match="--opt-level must be one of"):
        build(bundle, opt_level=6)
    machine.trt.faults["parse"] = "While parsing node number 3 [Gemm]: unsupported"
    with pytest.raises(BundleError, match=r"encoder.onnx: TensorRT's ONNX parser refused the graph \(While parsing"):
        build(bundle, buckets=[1])
    machine.trt.faults = {"build": "out of memory"}
    with pytest.raises(JobFailed, match=r"TensorRT could not build an engine of .*encoder.onnx \(out of memory\)"):
        build(bundle, buckets=[1])


def test_the_fake_refuses_what_it_does_not_know(machine):
    with pytest.raises(AttributeError, match="fake tensorrt: tensorrt.Logger is not one of the TensorRT calls"):
        machine.trt.Logger  # noqa: B018
    with pytest.raises(AttributeError, match="BuilderFlag.INT8 is not one of"):
        machine.trt.BuilderFlag.INT8  # noqa: B018
    config = machine.trt.Builder(None).create_builder_config()
    with pytest.raises(AttributeError, match="TimedBuilderConfig.max_workspace_size"):
        config.max_workspace_size = 1


def test_the_engine_cache_is_part_of_the_bundle_for_a_later_export(machine, bundle_copy):
    from vaedeploy.export.target import check_target

    bundle = bundle_copy()
    build(bundle, buckets=[1])
    check_target(bundle)  # a bundle with its engines/ may be exported over: the engines go with the old graphs
    (bundle / "engines" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not part of its bundle"):
        check_target(bundle)


def test_cli_build_with_the_fake(machine, bundle_copy, monkeypatch, capsys):
    import vaedeploy.runtime.cuda as cuda

    monkeypatch.setattr(cuda, "require_cuda", lambda device: None)  # the fake needs no GPU; the check is TensorRT's
    bundle = bundle_copy()
    assert main(["build", str(bundle), "--buckets", "1,2"]) == 0
    out = capsys.readouterr()
    assert "2 built, 0 up to date; fp32, batches 1, 2; tensorrt 10.13.0 on fake GPU" in out.out
    assert "building decoder.fp32.plan from decoder.onnx: none in" in out.out + out.err
    assert main(["build", str(bundle), "--buckets", "1,2"]) == 0
    assert "0 built, 2 up to date" in capsys.readouterr().out
    assert main(["build", str(bundle), "--buckets", "1,1000"]) == 2
    assert capsys.readouterr().err.startswith("error: --buckets must be batch sizes from 1 to")
