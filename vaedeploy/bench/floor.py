"""The floor beside every figure: what the op's graphs must at least cost on this machine.

For each graph an op runs, at the row's batch size:

- **FLOPs**: twice the multiply-accumulates that `onnx-tool` (a maintained ONNX profiler) counts after shape
  inference at that batch, in the matrix operations (Gemm, MatMul, Conv, ConvTranspose: exactly, bias additions
  included; a ConvTranspose counted here, from its input, since onnx-tool counts it from its output as a Conv;
  tests/bench/test_floor.py and test_floor_truth.py check the counts against hand-computed ones). Its estimates
  for the other nodes (activations at a fixed cost per element) are reported as ``other_flops`` and left out of the
  floor: they are not matrix work, and counting them at the matrix rate would lift the floor above what a fast
  runtime does;
- **bytes**: the least traffic a call must make: every initializer (the weights) read once, the inputs read once
  and the outputs written once; intermediate tensors may stay in cache, so they are not counted.

Over the machine's rates, measured once per run (``measure_rates``): a matrix product (float32, or the graph's
precision on a GPU) and a copy at a few sizes (the graph's traffic is taken at the rate of the smallest measured
copy at least as large, so a graph that fits in cache is held to the cache's rate). A graph's floor is the larger of
its compute time and its memory time; an op's floor is the sum over its graphs plus, on a GPU, the launch floor:
one kernel launch per graph (at least), or one CUDA-graph launch for the whole call when graphs are on. The noise
and nearest-code steps outside the graphs are not counted, so the floor stays a lower bound.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import BATCH_AXIS, IMAGE_AXES, LATENT_AXES
from ..errors import MissingDependency
from ..runtime.operations import operations_of

MATRIX_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "QLinearMatMul"})
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
CPU_COPY_SIZES = (1 << 18, 1 << 22, 1 << 26)  # 256 KiB, 4 MiB, 64 MiB (a GPU's: gpu.COPY_SIZES)


def _onnx_tool():
    try:
        import onnx_tool
    except ImportError:
        raise MissingDependency("the floor counts FLOPs with onnx-tool: pip install 'vaedeploy[bench]'") from None
    return onnx_tool


@dataclass(frozen=True)
class GraphCost:
    """What one call of a graph at one batch size must do."""

    flops: float  # in matrix operations
    bytes: float
    other_flops: float = 0.0  # onnx-tool's estimates for the other nodes


@functools.lru_cache(maxsize=None)
def _model(path: str):
    return _onnx_tool().Model(path)


def graph_cost(path: Path, inputs: list[dict], batch: int, axes: dict | None = None) -> GraphCost:
    """FLOPs and least bytes of the graph at ``path`` for one call at ``batch`` rows.

    Args:
        path: the ONNX file.
        inputs: the graph's inputs as the manifest lists them (``name``, ``shape`` with a named batch axis and, for
            a bundle of any image size, named spatial axes; ``dtype``).
        batch: the rows of the call.
        axes: the size of every other named axis (``size_axes``).
    """
    named = {**(axes or {}), BATCH_AXIS: batch}
    feeds = {spec["name"]: np.zeros([named[s] if isinstance(s, str) else int(s) for s in spec["shape"]],
                                    _DTYPES[spec["dtype"]]) for spec in inputs}
    graph = _model(str(path)).graph
    graph.shape_infer(feeds)
    graph.profile()
    matrix = sum(_macs(graph, node) for node in graph.nodemap.values() if node.op_type in MATRIX_OPS)
    other = sum(float(node.macs[0]) for node in graph.nodemap.values() if node.op_type not in MATRIX_OPS)
    weights = sum(t.nbytes for t in _initializers(str(path)))
    outputs = sum(math.prod(graph.tensormap[name].get_shape()) * _itemsize(graph.tensormap[name])
                  for name in graph.output)
    return GraphCost(2 * matrix, float(weights + sum(a.nbytes for a in feeds.values()) + outputs), 2 * other)


def _macs(graph, node) -> float:
    """The multiply-accumulates of a matrix node: onnx-tool's, but a ConvTranspose's counted here. onnx-tool counts
    it as a Conv, output elements × Cout·kh·kw (Cout/Cin · stride² times too many), where each input value meets
    each output channel of its group through the kernel once: input elements × (Cout/groups)·kh·kw, the kernel's
    [Cin, Cout/groups, kh, kw] less its first axis; plus one addition per output element with a bias, as
    onnx-tool counts a Conv's."""
    if node.op_type != "ConvTranspose":
        return float(node.macs[0])
    x, kernel = (graph.tensormap[name].get_shape() for name in node.input[:2])
    bias = math.prod(graph.tensormap[node.output[0]].get_shape()) if len(node.input) > 2 and node.input[2] else 0
    return float(math.prod(x) * math.prod(kernel[1:]) + bias)


def _itemsize(tensor) -> int:
    return np.dtype(tensor.dtype).itemsize if getattr(tensor, "dtype", None) is not None else 4


@functools.lru_cache(maxsize=None)
def _initializers(path: str) -> tuple:
    import onnx
    from onnx import numpy_helper

    return tuple(numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer)


def op_graphs(runtime, op: str) -> list[str] | None:
    """The roles of the graphs one call of ``op`` runs, in order (a VQ prior once per code), or None where the
    runtime has no such op: the runtime's table of operations (``vaedeploy.runtime.operations``)."""
    operation = operations_of(runtime).get(op)
    return None if operation is None else list(operation.graphs)


def size_axes(bundle, size: tuple[int, int] | None) -> dict:
    """The named spatial axes of a bundle's graphs at an image ``size`` (H, W): the image's and the latent's
    (over ``latent.downsample``); its reference size where ``size`` is None."""
    height, width = size or bundle.input_shape[1:]
    factor = bundle.downsample or 1
    return dict(zip((*IMAGE_AXES, *LATENT_AXES), (height, width, height // factor, width // factor)))


def op_cost(runtime, op: str, batch: int, size: tuple[int, int] | None = None) -> list[GraphCost]:
    """The cost of every graph one call of ``op`` at ``batch`` rows (of images of ``size``) runs."""
    costs, axes = [], size_axes(runtime.bundle, size)
    for role in op_graphs(runtime, op) or []:
        graph = runtime.bundle.graph(role, runtime.precision)
        costs.append(graph_cost(graph["path"], graph["inputs"], batch, axes))
    return costs


def op_floor(runtime, op: str, batch: int, rates: dict, size: tuple[int, int] | None = None,
             cuda_graphs: bool = False) -> dict:
    """``floor`` of one call of ``op``; where onnx-tool cannot follow a graph (its shape inference fails inside
    SD-VAE's decoder, in the attention block's Squeeze), no floor and why (``uncounted``), so the row is still
    measured."""
    try:
        costs = op_cost(runtime, op, batch, size)
    except MissingDependency:
        raise
    except Exception as e:  # onnx-tool's errors have no common base: ValueError, IndexError, KeyError, ...
        why = (str(e).strip().splitlines() or [""])[0]
        return {"floor_ms": None, "bound": None,
                "uncounted": f"no floor: onnx-tool cannot count {op}'s graphs ({type(e).__name__}: {why})"}
    return floor(costs, rates, cuda_graphs)


# ---- the machine's rates -------------------------------------------------------------------------------------

def _best(run, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _matmul_graph(size: int) -> bytes:
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model.SerializeToString()


def _cpu_matmuls(size: int, repeats: int) -> dict:
    """FLOP/s of a float32 size² matrix product in each library that may run a graph here: numpy's BLAS, ONNX
    Runtime's MLAS (the runtime's own session options) and torch's where torch is already loaded."""
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime import session_options

    a, b = (np.random.default_rng(i).standard_normal((size, size)).astype(np.float32) for i in (0, 1))
    session = ort.InferenceSession(_matmul_graph(size), session_options(), providers=["CPUExecutionProvider"])
    products = {"numpy": lambda: a @ b, "onnxruntime": lambda: session.run(None, {"a": a, "b": b})}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        products["torch"] = lambda: ta @ tb
    rates = {}
    for name, product in products.items():
        product()  # thread pools start
        rates[name] = 2 * size**3 / _best(product, repeats)
    return rates


def measure_rates(device: str = "cpu", precision: str = "fp32") -> dict:
    """The machine's matrix-product rate (FLOP/s), copy rates (bytes moved per second, read + write, at a few
    sizes) and, on a GPU, the launch times, measured once per run.

    Each figure is the best of many tries (on a shared machine, the tries that were not interrupted); the matrix
    rate is the fastest of the libraries that may run a graph here, so the floor stays below what any of them does.
    """
    if device.startswith("cuda"):
        from .gpu import measure_rates as gpu_rates

        return gpu_rates(device, precision)
    by_library = _cpu_matmuls(512, 20)
    copies = []
    for nbytes in CPU_COPY_SIZES:
        source = np.ones(nbytes // 4, np.float32)
        target = np.empty_like(source)
        repeat = max(1, (1 << 24) // nbytes)

        def copy(source=source, target=target, repeat=repeat):
            for _ in range(repeat):
                np.copyto(target, source)

        copies.append({"bytes": nbytes, "bytes_per_s": 2 * nbytes * repeat / _best(copy, 10)})
    return {"device": "cpu", "matmul": {"dtype": "float32", "flops_per_s": max(by_library.values()),
                                        "by_library": by_library}, "copy": copies}


def _copy_rate(rates: dict, nbytes: float) -> float:
    for entry in rates["copy"]:
        if nbytes <= entry["bytes"]:
            return entry["bytes_per_s"]
    return rates["copy"][-1]["bytes_per_s"]


def floor(costs: list[GraphCost], rates: dict, cuda_graphs: bool = False) -> dict:
    """The floor of one call running ``costs``' graphs: seconds, which term bounds it, and the parts."""
    compute = sum(c.flops / rates["matmul"]["flops_per_s"] for c in costs)
    memory = sum(c.bytes / _copy_rate(rates, c.bytes) for c in costs)
    graphs = sum(max(c.flops / rates["matmul"]["flops_per_s"], c.bytes / _copy_rate(rates, c.bytes)) for c in costs)
    launch = 0.0
    if "launch" in rates:
        launch = rates["launch"]["graph_s"] if cuda_graphs else len(costs) * rates["launch"]["kernel_s"]
    bound = "launch" if launch > graphs else ("compute" if compute >= memory else "memory")
    return {"floor_ms": (graphs + launch) * 1e3, "bound": bound, "flops": sum(c.flops for c in costs),
            "other_flops": sum(c.other_flops for c in costs), "bytes": sum(c.bytes for c in costs),
            "compute_ms": compute * 1e3, "memory_ms": memory * 1e3, "launch_ms": launch * 1e3}
