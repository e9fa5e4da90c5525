"""The floor: onnx-tool's counts of a small known graph against hand-computed ones, the bytes, the arithmetic of
the floor, and which graphs each op of a real bundle runs."""
import numpy as np
import pytest

from vaedeploy.bench import floor

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    """x[B,8] → Gemm(W 8×4, b 4) → Relu → MatMul(V 4×3) → y[B,3]; img[B,2,6,6] → Conv(5 filters 3×3, pad 1, bias)
    → Sigmoid → s[B,5,6,6]."""
    weights = {"W": (8, 4), "b": (4,), "V": (4, 3), "K": (5, 2, 3, 3), "kb": (5,)}
    initializers = [numpy_helper.from_array(np.ones(shape, np.float32), name) for name, shape in weights.items()]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "V"], ["y"]),
             helper.make_node("Conv", ["img", "K", "kb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"])]
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 5, 6, 6])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path_factory.mktemp("graph") / "small.onnx"
    onnx.save(model, path)
    inputs = [{"name": "x", "shape": ["batch", 8], "dtype": "float32"},
              {"name": "img", "shape": ["batch", 2, 6, 6], "dtype": "float32"}]
    return path, inputs


@pytest.mark.parametrize("batch", [1, 3])
def test_flops_and_bytes_of_a_known_graph(small_graph, batch):
    cost = floor.graph_cost(*small_graph, batch)
    gemm = batch * 8 * 4 + batch * 4  # multiply-accumulates, and the bias add per output
    matmul = batch * 4 * 3
    conv = batch * 5 * 6 * 6 * (2 * 3 * 3) + batch * 5 * 6 * 6
    assert cost.flops == 2 * (gemm + matmul + conv)
    weights = 4 * (8 * 4 + 4 + 4 * 3 + 5 * 2 * 3 * 3 + 5)
    inputs, outputs = 4 * batch * (8 + 2 * 6 * 6), 4 * batch * (3 + 5 * 6 * 6)
    assert cost.bytes == weights + inputs + outputs
    assert cost.other_flops > 0, "Relu and Sigmoid are reported apart from the matrix work"


def test_the_floor_is_the_larger_of_compute_and_memory_per_graph_plus_the_launches():
    rates = {"matmul": {"flops_per_s": 1e9},
             "copy": [{"bytes": 1000, "bytes_per_s": 1e10}, {"bytes": 10**6, "bytes_per_s": 1e9}]}
    compute_bound = floor.GraphCost(flops=1e6, bytes=500)      # 1 ms of compute, 50 ns of memory (cache rate)
    memory_bound = floor.GraphCost(flops=1e3, bytes=5 * 10**5)  # 1 µs of compute, 0.5 ms at the 1 MB copy rate
    f = floor.floor([compute_bound, memory_bound], rates)
    assert f["floor_ms"] == pytest.approx(1.0 + 0.5) and f["bound"] == "compute"
    assert f["compute_ms"] == pytest.approx(1.001) and f["memory_ms"] == pytest.approx(0.5 + 5e-5)
    assert floor.floor([memory_bound], rates)["bound"] == "memory"
    big = floor.GraphCost(flops=0, bytes=10**7)  # beyond the largest copy measured: that copy's rate
    assert floor.floor([big], rates)["floor_ms"] == pytest.approx(10.0)
    gpu = {**rates, "launch": {"kernel_s": 5e-3, "graph_s": 2e-3}}
    assert floor.floor([compute_bound, memory_bound], gpu)["floor_ms"] == pytest.approx(1.5 + 10.0)
    with_graphs = floor.floor([compute_bound, memory_bound], gpu, cuda_graphs=True)
    assert with_graphs["floor_ms"] == pytest.approx(1.5 + 2.0) and with_graphs["bound"] == "launch"


def test_each_op_runs_the_graphs_the_manifest_names(exported):
    from vaedeploy import load

    with load(exported("vae")[1]) as rt:
        assert floor.op_graphs(rt, "encode") == ["encoder"] and floor.op_graphs(rt, "sample") == ["decoder"]
        assert floor.op_graphs(rt, "reconstruct") == ["encoder", "decoder"]
        one, eight = floor.op_cost(rt, "decode", 1)[0], floor.op_cost(rt, "decode", 8)[0]
        assert 7.9 < eight.flops / one.flops < 8.1, "a per-row graph's FLOPs grow with the batch"
    with load(exported("ae")[1]) as rt:
        assert floor.op_graphs(rt, "sample") is None, "an AE has no sample"
    with load(exported("twostage")[1]) as rt:
        assert floor.op_graphs(rt, "sample") == ["stage2_decoder", "decoder"]


def test_the_machine_rates_are_measured_here():
    rates = floor.measure_rates()
    assert rates["matmul"]["flops_per_s"] > 1e8 and {"numpy", "onnxruntime"} <= set(rates["matmul"]["by_library"])
    assert [c["bytes"] for c in rates["copy"]] == list(floor.CPU_COPY_SIZES)
    assert all(c["bytes_per_s"] > 1e8 for c in rates["copy"]) and "launch" not in rates


def test_a_graph_onnx_tool_cannot_follow_gives_a_row_without_a_floor_and_says_why(exported, monkeypatch):
    """SD-VAE's decoder stops onnx-tool's shape inference (a Squeeze in its attention block): the op is still
    measured, its row has no floor, and its note names the cause."""
    from vaedeploy import load
    from vaedeploy.bench.output import annotate

    def unfollowable(path):
        raise ValueError("cannot select an axis to squeeze out which has size not equal to one")

    rates = {"matmul": {"flops_per_s": 1e9}, "copy": [{"bytes": 1e6, "bytes_per_s": 1e9}]}
    with load(exported("vae")[1], backend="onnxruntime") as rt:
        assert floor.op_floor(rt, "decode", 1, rates)["floor_ms"] > 0
        floor._model.cache_clear()
        monkeypatch.setattr(floor, "_model", unfollowable)
        uncounted = floor.op_floor(rt, "decode", 1, rates)
    assert uncounted["floor_ms"] is None and uncounted["bound"] is None
    row = annotate([{"op": "decode", "batch": 1, "p50_ms": 0.05, "floor": uncounted}])[0]
    assert row["x_floor"] is None
    assert row["note"] == ("no floor: onnx-tool cannot count decode's graphs (ValueError: cannot select an axis to "
                           "squeeze out which has size not equal to one)")
