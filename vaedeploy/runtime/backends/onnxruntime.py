"""ONNX Runtime backend: numpy in, numpy out on the CPU, set up for low latency; imports no torch there.

Sessions run with every graph optimization on (ORT_ENABLE_ALL), sequential execution and one intra-op thread per
physical core: at the small batches a VAE is served at, more threads only add synchronization. A session's threads
stop spinning when its run ends (``session.force_spinning_stop``): else the encoder's pool spins for work while the
decoder's runs, two pools fighting for the same cores, and ``reconstruct`` at batch 1,024 took 1.2–1.7× encode +
decode run alone; with it, 0.86–0.97×, at no cost at batch 1 (docs/cpu.md; ONNX Runtime's one global pool would do
it too, but once made it forbids every other session in the process a pool of its own). Input and output names are
resolved once, so a call is one ``session.run``. ``session_config`` adds ONNX Runtime's session config
entries (``SessionOptions.add_session_config_entry``) to every session: ``vaedeploy serve`` turns the intra-op
threads' spinning off with it (docs/serving.md). A backend builds its ``SessionOptions`` once for all its sessions.
A runner's ``signature()`` is its graph's inputs and outputs as its session has them: ``vaedeploy.load`` checks
the graph against its manifest entry with it, so loading reads each graph file once for its session (and once for
its sha256).

With batch buckets, and always on CUDA, a session runs through IOBinding (``BoundRunner``): inputs and outputs are bound
by address in the runtime's arrays, numpy on the CPU and torch CUDA tensors on CUDA (so ``device="cuda"`` needs torch),
one binding with fixed buffers per bucket and per-row shape (a bundle that takes any image size binds each size it is
called at, its outputs' spatial axes derived from the inputs' through ``latent.downsample``). On CUDA with
``cuda_graphs`` the sessions use ONNX Runtime's own CUDA graphs (``enable_cuda_graph``, one ``gpu_graph_id`` per
bucket): ONNX Runtime synchronizes its stream at the end of a run, so a session cannot run inside a graph the runtime
captures, and the noise kernels run between the sessions' graphs. The IOBinding code is the same on both devices and
tested on the CPU; **its CUDA part has not yet run** (the GPU machines of this project have no onnxruntime-gpu).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...bundle import IMAGE_AXES, LATENT_AXES, graph_signature
from ...errors import BundleError, ConfigError, MissingDependency
from ..arrays import NumpyArrays, TorchArrays
from .base import Runner

# ONNX Runtime's CUDA EP captures a graph on the third run of a gpu_graph_id (two regular runs first,
# cuda_execution_provider.h: min_num_runs_before_cuda_graph_capture_ = 2); a warm-up of three leaves it captured
CAPTURE_RUNS = 3


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, processor = set(), None
    try:
        physical = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                processor = int(value)
            elif key == "physical id":
                physical = value
            elif key == "core id" and processor in allowed:
                cores.add((physical, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


# session config entries every session of the runtime gets, before the caller's own
SESSION_CONFIG = {"session.force_spinning_stop": "1"}


def session_options(threads: int | None = None, config: dict[str, str] | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    for key, value in {**SESSION_CONFIG, **(config or {})}.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"session_config: expected ONNX Runtime config entries as strings (e.g. "
                              f"{{'session.intra_op.allow_spinning': '0'}}), got {key!r}: {value!r}")
        options.add_session_config_entry(key, value)
    return options


def providers(device: str, stream: str | None = None, cuda_graphs: bool = False) -> list:
    """The execution providers of a session on ``device``; on CUDA, on the torch stream ``stream`` (its handle) and
    with ONNX Runtime's CUDA graphs when asked (which need every node on CUDA: no CPU provider to fall back to)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependency(f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this "
                                    f"onnxruntime has {ort.get_available_providers()}")
        options = {"device_id": int(device.partition(":")[2] or 0)}
        if stream is not None:
            options["user_compute_stream"] = stream
        if cuda_graphs:
            return [("CUDAExecutionProvider", {**options, "enable_cuda_graph": "1"})]
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def _first_line(error: Exception) -> str:
    """An ONNX Runtime error's cause, without its ``[ONNXRuntimeError] : 7 : … Load model from PATH failed:``."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line.rpartition("failed:")[2].strip().rstrip(".") or line


class OnnxRuntimeRunner(Runner):
    """One graph in an ``InferenceSession``, created on ``activate`` with ``options`` (default:
    ``session_options()``)."""

    backend = "onnxruntime"

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None = None,
                 options: ort.SessionOptions | None = None):
        super().__init__(bundle, role, precision, device, outputs)
        self.providers, self.options = providers(device), options
        self.session = None

    def activate_impl(self) -> None:
        try:
            self.session = ort.InferenceSession(str(self.graph["path"]), self.options or session_options(),
                                                providers=self.providers)
        except Exception as e:  # ONNX Runtime's errors have no common base class
            raise self.session_error(e) from None
        # InferenceSession.run re-checks the feed's names in Python on every call (about a microsecond, 10% of a
        # batch-1 call); the runtime has checked the input already, so it calls the compiled session directly
        # where this onnxruntime exposes it, with the same (outputs, feed, run_options) signature.
        self._run = getattr(self.session, "_sess", self.session).run
        self._first = self.input_names[0] if len(self.input_names) == 1 else None

    def session_error(self, error: Exception) -> Exception:
        """What a session that ONNX Runtime cannot create is reported as: a damaged or missing file (which
        ``load(verify=False)`` lets through to here), named."""
        return BundleError(f"{self.graph['path']}: ONNX Runtime cannot load this {self.role} graph "
                           f"({_first_line(error)}); expected the ONNX file `vaedeploy export` wrote (load with "
                           "verify=True to check every file against its sha256)")

    def signature(self) -> dict | None:
        return graph_signature(self.session) if self.session is not None else None

    def deactivate_impl(self) -> None:
        self.session = self._run = None

    def run_impl(self, inputs: tuple) -> list:
        if self._first is not None:  # the hot path of every one-input graph: one dict literal
            return self._run(self.output_names, {self._first: inputs[0]}, None)
        return self._run(self.output_names, dict(zip(self.input_names, inputs)), None)


class _Binding:
    """One IOBinding of a session for n rows: input buffers the call's inputs are copied into, preallocated output
    buffers, bound by address, and the run options naming the CUDA graph of this size (None: no graph option)."""

    def __init__(self, session, arrays, graph: dict, output_names: list[str], n: int, graph_id: int | None,
                 axes: dict[str, int]):
        device = arrays.device  # "cpu" for numpy, a torch.device for tensors
        self.place = ("cpu", 0) if isinstance(device, str) else (device.type, device.index or 0)
        self.arrays, self.io = arrays, session.io_binding()
        outputs = {spec["name"]: spec for spec in graph["outputs"]}
        self.inputs = [self._bind(self.io.bind_input, spec, n, graph, axes) for spec in graph["inputs"]]
        self.outputs = [self._bind(self.io.bind_output, outputs[name], n, graph, axes) for name in output_names]
        self.options = ort.RunOptions()
        if graph_id is not None:
            self.options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def _bind(self, bind, spec: dict, n: int, graph: dict, axes: dict[str, int]):
        dims = [axes.get(d, d) for d in spec["shape"][1:]]
        if not all(isinstance(d, int) for d in dims):
            raise BundleError(f"{graph['file']}: {spec['name']} has shape {spec['shape']}; IOBinding needs every axis "
                              "but the batch fixed, or an image or latent axis of the call's size")
        buffer = self.arrays.new((n, *dims), spec["dtype"])
        bind(spec["name"], *self.place, np.dtype(spec["dtype"]), [n, *dims], self.arrays.data_ptr(buffer))
        return buffer

    def run(self, session, inputs: tuple, stream) -> list:
        for buffer, x in zip(self.inputs, inputs):
            if x is not buffer:
                buffer[...] = x
        if stream is not None:
            stream.before()
        session.run_with_iobinding(self.io, self.options)
        if stream is not None:
            stream.after()
        return list(self.outputs)


class BoundRunner(OnnxRuntimeRunner):
    """A session run through IOBinding on the backend's arrays (numpy on the CPU, torch tensors on CUDA).

    A batch size that is a bucket keeps its binding, so its buffers have fixed addresses (what ONNX Runtime's CUDA
    graph of that bucket replays, ``gpu_graph_id`` = the bucket's index + 1; 0 is ONNX Runtime's own). Its outputs
    are those buffers, which the bucket machinery copies out. Any other size binds fresh buffers for the call, run
    without a graph (``gpu_graph_id`` -1), so what it returns is the caller's to keep.
    """

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None, arrays,
                 sizes: tuple[int, ...], graph_ids: dict[int, int], stream=None,
                 options: ort.SessionOptions | None = None):
        super().__init__(bundle, role, precision, device, outputs, options)
        self.arrays, self.sizes, self.graph_ids, self.stream = arrays, set(sizes), graph_ids, stream
        self.downsample = bundle.downsample
        self.providers = providers(device, stream.handle if stream is not None else None, bool(graph_ids))
        self.bindings: dict[tuple, _Binding] = {}  # (rows, each input's per-row shape) → its binding

    def session_error(self, error: Exception) -> Exception:
        if not self.graph_ids:
            return super().session_error(error)
        return ConfigError(f"{self.graph['file']} cannot run under ONNX Runtime's CUDA graphs "
                           f"({_first_line(error)}); load the bundle with cuda_graphs=False")

    def deactivate_impl(self) -> None:
        super().deactivate_impl()
        self.bindings = {}

    def run_impl(self, inputs: tuple) -> list:
        n = len(inputs[0])
        key = (n, *(tuple(x.shape[1:]) for x in inputs))
        binding = self.bindings.get(key)
        if binding is None:
            # ONNX Runtime's CUDA graph of a bucket is its first size's; other sizes of the bucket run without one
            first = n in self.sizes and not any(k[0] == n for k in self.bindings)
            binding = _Binding(self.session, self.arrays, self.graph, self.output_names, n,
                               (self.graph_ids.get(n, -1) if first else -1) if self.graph_ids else None,
                               self._axes(inputs))
            if n in self.sizes:
                self.bindings[key] = binding
        return binding.run(self.session, inputs, self.stream)

    def _axes(self, inputs: tuple) -> dict[str, int]:
        """The size of every named spatial axis in this call: the inputs' own, and the other side's (an image's
        H = h · downsample of its latent's, and back) for the outputs."""
        axes = {d: int(size) for spec, x in zip(self.graph["inputs"], inputs)
                for d, size in zip(spec["shape"][1:], x.shape[1:]) if isinstance(d, str)}
        f = self.downsample
        for image, latent in zip(IMAGE_AXES, LATENT_AXES) if f else ():
            if image in axes:
                axes.setdefault(latent, axes[image] // f)
            elif latent in axes:
                axes[image] = axes[latent] * f
        return axes


class Backend:
    """What a runtime asks of a backend: its arrays, a runner per graph, and ``close``.

    Args:
        buckets: the runtime's batch buckets (None: none, and on the CPU the plain ``session.run`` runner).
        cuda_graphs: on CUDA, one ONNX Runtime CUDA graph per session and bucket.
        session_config: ONNX Runtime session config entries added to every session (None: none).
    """

    name = "onnxruntime"
    capturable = False  # a run synchronizes ONNX Runtime's stream on the host: it cannot run inside a captured graph

    def __init__(self, bundle, precision: str, device: str, buckets: tuple[int, ...] | None = None,
                 cuda_graphs: bool = False, session_config: dict[str, str] | None = None):
        providers(device)  # refuse a device this onnxruntime cannot serve before any session is made
        if precision == "bf16":
            raise ConfigError("precision 'bf16' needs a backend that lowers the fp32 graph to bfloat16 (openvino or "
                              "torch); ONNX Runtime has no bfloat16 Conv or Gemm kernels, got backend 'onnxruntime'")
        self.options = session_options(config=session_config)  # one for every session; refuses non-string entries
        self.bundle, self.precision, self.device = bundle, precision, device
        cuda = device.startswith("cuda")
        self.arrays = TorchArrays(device) if cuda else NumpyArrays()
        self.sizes, self.bound = tuple(buckets or ()), cuda or buckets is not None
        self.graph_ids = {size: i + 1 for i, size in enumerate(self.sizes)} if cuda and cuda_graphs else {}
        self.warmup_runs = CAPTURE_RUNS if self.graph_ids else 0
        if cuda:
            from ..cuda import SessionStream

            self.stream = SessionStream(device)
        else:
            self.stream = None

    def runner(self, role: str, outputs: list[str] | None = None) -> OnnxRuntimeRunner:
        if self.bound:
            return BoundRunner(self.bundle, role, self.precision, self.device, outputs, self.arrays, self.sizes,
                               self.graph_ids, self.stream, self.options)
        return OnnxRuntimeRunner(self.bundle, role, self.precision, self.device, outputs, self.options)

    def close(self) -> None:
        pass
