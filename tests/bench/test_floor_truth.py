"""The floor against counts worked out by hand: a transposed convolution's FLOPs, an int64 input's bytes, the graphs
each op of each latent type runs, the launch term with and without CUDA graphs, the copy rate a graph's size picks,
and the units of the measured rates (a clock that makes every timed run last exactly 1 ms)."""
import types

import numpy as np
import pytest

from vaedeploy.bench import floor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx_tool")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(path, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def _transposed_convolution(tmp_path, batch):
    """z[B, 2, 3, 3] → ConvTranspose(2 → 3 channels, 2×2 kernel, stride 2) → x[B, 3, 6, 6]: every input value
    meets every output channel's 2×2 kernel once, 2·3·3 · 3·2·2 = 216 multiply-accumulates a row."""
    path = _save(tmp_path / "up.onnx", [helper.make_node("ConvTranspose", ["z", "K"], ["x"], strides=[2, 2])],
                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2, 3, 3])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6])],
                 [numpy_helper.from_array(np.ones((2, 3, 2, 2), np.float32), "K")])
    return floor.graph_cost(path, [{"name": "z", "shape": ["batch", 2, 3, 3], "dtype": "float32"}], batch)


@pytest.mark.parametrize("batch", [1, 5])
def test_a_transposed_convolution_counts_as_matrix_work(tmp_path, batch):
    cost = _transposed_convolution(tmp_path, batch)
    assert cost.flops >= 2 * batch * 216 and cost.other_flops == 0
    assert cost.bytes == 4 * (2 * 3 * 2 * 2) + 4 * batch * (2 * 3 * 3) + 4 * batch * (3 * 6 * 6)


def test_a_transposed_convolutions_flops_are_its_multiply_accumulates_exactly(tmp_path):
    assert _transposed_convolution(tmp_path, 5).flops == 2 * 5 * 216


@pytest.mark.parametrize("batch", [1, 3])
def test_int64_tokens_count_eight_bytes_each(tmp_path, batch):
    """A VQ prior's shape: tokens int64 [B, 4] → Gather from a 5×3 float table → logits [B, 4, 3]; no matrix work."""
    path = _save(tmp_path / "prior.onnx", [helper.make_node("Gather", ["table", "tokens"], ["logits"], axis=0)],
                 [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 4])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 3])],
                 [numpy_helper.from_array(np.zeros((5, 3), np.float32), "table")])
    cost = floor.graph_cost(path, [{"name": "tokens", "shape": ["batch", 4], "dtype": "int64"}], batch)
    assert cost.flops == 0
    assert cost.bytes == 4 * 5 * 3 + 8 * batch * 4 + 4 * batch * 4 * 3


def _runtime(latent: dict):
    """A runtime whose bundle has ``latent`` and the few manifest fields the table of operations reads besides."""
    latent = {"num_codes": 8, **latent}
    shape = (2, 2, 2) if latent["type"] == "vq" else (2,)  # a VQ latent is D×h×w
    graph = {"inputs": [{"name": "x", "shape": ["batch", 1, 8, 8]}],
             "outputs": [{"name": "mean", "shape": ["batch", 2]}, {"name": "logvar", "shape": ["batch", 2]}]}
    bundle = types.SimpleNamespace(latent=latent, latent_shape=shape, sizes=None, input_shape=(1, 8, 8),
                                   graph=lambda role: graph)
    return types.SimpleNamespace(bundle=bundle)


@pytest.mark.parametrize("latent, sample", [
    ({"type": "gaussian"}, ["decoder"]),
    ({"type": "gaussian", "prior": {"type": "two_stage", "graph": "stage2"}}, ["stage2", "decoder"]),
    ({"type": "vq", "prior": {"graph": "prior", "length": 4}}, ["prior"] * 4 + ["decoder"]),
    ({"type": "hierarchical", "graphs": {"encode": "encoder", "decode": "generate", "sample": "ancestral"}},
     ["ancestral"]),
    ({"type": "deterministic"}, None),
])
def test_the_graphs_each_op_runs(latent, sample):
    runtime = _runtime(latent)
    decoder = ["generate"] if latent["type"] == "hierarchical" else ["decoder"]
    assert floor.op_graphs(runtime, "sample") == sample
    assert floor.op_graphs(runtime, "encode") == ["encoder"]
    assert floor.op_graphs(runtime, "decode") == decoder
    assert floor.op_graphs(runtime, "reconstruct") == ["encoder", *decoder]


RATES = {"matmul": {"flops_per_s": 1e9},
         "copy": [{"bytes": 1000, "bytes_per_s": 1e10}, {"bytes": 10**6, "bytes_per_s": 1e9}],
         "launch": {"kernel_s": 10e-6, "graph_s": 4e-6}}


def test_the_launch_floor_is_one_kernel_per_graph_or_one_graph_launch():
    costs = [floor.GraphCost(flops=1e3, bytes=100), floor.GraphCost(flops=1e3, bytes=100)]  # 1 µs compute each
    plain, graphed = floor.floor(costs, RATES), floor.floor(costs, RATES, cuda_graphs=True)
    assert plain["launch_ms"] == pytest.approx(0.020) and plain["floor_ms"] == pytest.approx(0.022)
    assert graphed["launch_ms"] == pytest.approx(0.004) and graphed["floor_ms"] == pytest.approx(0.006)
    assert plain["bound"] == graphed["bound"] == "launch"


def test_a_graph_the_size_of_a_measured_copy_takes_that_copys_rate():
    exact = floor.floor([floor.GraphCost(flops=0, bytes=1000)], RATES)
    assert exact["memory_ms"] == pytest.approx(1000 / 1e10 * 1e3)
    just_over = floor.floor([floor.GraphCost(flops=0, bytes=1001)], RATES)
    assert just_over["memory_ms"] == pytest.approx(1001 / 1e9 * 1e3)


def test_measured_rates_are_flops_and_bytes_read_plus_written_per_second(monkeypatch):
    ticks = iter(np.arange(0, 10**6) * 1e-3)  # perf_counter: every timed run lasts exactly 1 ms
    monkeypatch.setattr(floor, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    rates = floor.measure_rates("cpu")
    assert rates["matmul"]["by_library"]["numpy"] == pytest.approx(2 * 512**3 / 1e-3)
    assert rates["matmul"]["flops_per_s"] == pytest.approx(2 * 512**3 / 1e-3)
    for entry, nbytes in zip(rates["copy"], floor.CPU_COPY_SIZES):
        repeat = max(1, (1 << 24) // nbytes)  # copies per timed run
        assert entry == {"bytes": nbytes, "bytes_per_s": pytest.approx(2 * nbytes * repeat / 1e-3)}
