"""The TensorRT engine cache key (deploy/trt_build.py) against the FAKE TensorRT: each part of the key changed alone
forces a rebuild, and the same build again finds its plan; a plan that failed ``--validate`` is never served. Nothing
here runs real TensorRT."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest

from vaedeploy.bundle import MANIFEST, engine_files, sha256_file
from vaedeploy.deploy import trt_build

BASE = {"buckets": [1, 4], "opt_level": 3}


def statuses(bundle, cache, **options) -> dict:
    """role → ``built`` or ``cached`` for one build with ``BASE`` changed by ``options``."""
    done = trt_build.build_engines(bundle, cache=cache, progress=lambda line: None, **{**BASE, **options})
    return {e["role"]: e["status"] for e in done["engines"]}


def _rebuilt_then_cached(bundle, cache, **options) -> None:
    assert set(statuses(bundle, cache, **options).values()) == {"built"}, f"{options} must rebuild"
    assert set(statuses(bundle, cache, **options).values()) == {"cached"}, f"{options} again finds its plans"


@pytest.fixture
def built(machine, bundle_copy, tmp_path):
    bundle, cache = bundle_copy(), tmp_path / "cache"
    assert set(statuses(bundle, cache).values()) == {"built"}
    assert set(statuses(bundle, cache).values()) == {"cached"}
    return bundle, cache


@pytest.mark.parametrize("change", [{"opt_level": 1}, {"workspace_mib": 64}, {"buckets": [1, 2]}, {"ranges": True}])
def test_each_builder_setting_alone_forces_a_rebuild(built, change):
    _rebuilt_then_cached(*built, **change)
    _rebuilt_then_cached(*built)  # and back


def test_another_tensorrt_version_or_gpu_forces_a_rebuild(built, machine):
    machine.install(version="10.14.1")
    _rebuilt_then_cached(*built)
    machine.install(version="10.14.1", compute_capability="9.0")
    _rebuilt_then_cached(*built)


def test_another_graph_under_the_same_name_forces_a_rebuild(built, tmp_path):
    bundle, cache = built
    other = tmp_path / "exported_again"
    shutil.copytree(bundle, other, ignore=shutil.ignore_patterns("engines"))
    graph = onnx.load(other / "decoder.onnx")
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, "exported": "again"})
    onnx.save(graph, other / "decoder.onnx")
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["files"]["decoder.onnx"] = sha256_file(other / "decoder.onnx")
    (other / MANIFEST).write_text(json.dumps(manifest))
    assert statuses(other, cache) == {"encoder": "cached", "decoder": "built"}


def test_range_profiles_start_past_the_bucket_below(built):
    done = trt_build.build_engines(built[0], cache=built[1], progress=lambda line: None, buckets=[1, 4, 8],
                                   ranges=True)
    assert done["profiles"] == [[1, 1, 1], [2, 4, 4], [5, 8, 8]]


def test_the_key_records_tf32_off_for_fp32_engines(built):
    bundle, cache = built
    record = json.loads(engine_files(cache, "decoder", "fp32")[1].read_text())
    assert record["key"]["builder"]["tf32"] is False and record["key"]["builder"]["typing"] == "strong"


@pytest.mark.parametrize("validation, status", [(None, "cached"), ({"passed": True, "file": "v.json"}, "cached"),
                                                ({"passed": False, "file": "v.json"}, "built")])
def test_a_plan_that_failed_validation_is_rebuilt(built, validation, status):
    bundle, cache = built
    record_path = engine_files(cache, "decoder", "fp32")[1]
    record = json.loads(record_path.read_text())
    record["validation"] = validation
    record_path.write_text(json.dumps(record))
    assert statuses(bundle, cache)["decoder"] == status
