"""TensorRT backend: the engines ``vaedeploy build`` wrote, one execution context per optimization profile (a batch
bucket), every context sharing one block of device memory; torch CUDA tensors bound by address.

Written against TensorRT's documented Python API (docs/tensorrt.md) and tested on the CPU, on torch CPU tensors and
stream 0, against a fake of exactly the calls made here (tests/trt/fake_tensorrt.py); ``load`` refuses
``device="cpu"`` for it, since real TensorRT runs on NVIDIA GPUs. **Never run on real TensorRT.**

- The engine of a graph is found by its record (``bundle.engine_files``; written by ``deploy/trt_build.py``): built
  from this bundle's graph (its sha256), by the TensorRT module and version installed here, for this GPU's compute
  capability, not failed by ``vaedeploy build --validate``, its profiles reaching the largest batch the runtime runs;
  the plan's sha256 is checked against the record before TensorRT deserializes it. Each refusal is one sentence
  naming the ``vaedeploy build`` command that makes a fitting engine.
- ``set_input_shape`` once per context and batch, ``set_tensor_address`` of every input and output by name (never by
  position: TensorRT's tensor order is its own), ``execute_async_v3`` on the caller's current stream. No host
  synchronization: the runtime's CUDA graphs capture the enqueue (their warm-up enqueues first, as TensorRT needs).
- A call of n rows runs the profile with the smallest maximum ≥ n, at n rows or its minimum (static profiles: the
  bucket), its inputs bound where they are when they already are the engine's rows on the device, else copied into
  the call's buffers. The runtime's buckets keep their output buffers (the CUDA graphs replay into them, and the
  bucket machinery copies out); any other size gets new ones, which are the caller's to keep.
- A bundle of any image size: a call's per-row dims are its inputs' own (the runtime has checked them against the
  bundle's ``input.size``); each axis the manifest names (``bundle.IMAGE_AXES``, ``LATENT_AXES``) takes the call's
  size, an output's from its inputs' through ``latent.downsample``, and must lie in the profile's range, else one
  sentence naming the range the engine was built for. A context is shaped again when a call's shape changes, and
  the buffers of the buckets are kept per (rows, dims).
- The contexts share one block of device memory (``USER_MANAGED`` allocation, the engines' largest
  ``device_memory_size_v2``), so no two may run at once on the device: the runtime's buckets run one call at a time
  and order their streams; without buckets this backend does the same itself.

torch is imported by the backend, never at module level: the registry (``backends/__init__.py``) imports this module
to check engines for ``auto`` only on CUDA, where torch is there.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ...bundle import ENGINE_RECORD_FORMAT, ENGINES, IMAGE_AXES, LATENT_AXES, engine_files
from ...errors import BundleError, ConfigError, InputError, MissingDependency
from ...io import read_json
from ..arrays import TorchArrays, shape_text
from .base import Runner

DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32"}  # TensorRT's DataType names


def compute_capability(device: str) -> str:
    """``major.minor`` of the CUDA device ``device``, as a record of ``vaedeploy build`` states it."""
    import torch

    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"{major}.{minor}"


def _sm(capability: str) -> str:
    return "sm_" + capability.replace(".", "")


def _build_command(bundle, directory: Path, precision: str) -> str:
    cache = "" if directory == bundle.root / ENGINES else f" --cache {directory}"
    return f"`vaedeploy build {bundle.root}{cache}" + (" --precision fp16`" if precision == "fp16" else "`")


def _import(module: str, plan: Path):
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(f"{plan}: built by {module}, which is not installed here: pip install 'vaedeploy[trt]'"
                                + (" (tensorrt_rtx: TensorRT for RTX)" if module == "tensorrt_rtx" else ""))
    return importlib.import_module(module)


def find_engine(bundle, directory: Path, role: str, precision: str, device: str) -> tuple[dict, Path, object]:
    """The record and plan of the engine of ``role`` at ``precision`` in ``directory``, and the TensorRT module that
    built it, if that engine can run here; else a ``BundleError`` saying why and which command builds one."""
    plan, record_path = engine_files(directory, role, precision)
    build = _build_command(bundle, directory, precision)
    if not record_path.is_file():
        raise BundleError(f"{directory}: no TensorRT engine of the {role} graph at {precision} ({record_path.name} is "
                          f"missing); run {build}")
    try:
        record = read_json(record_path, "an engine record", error=BundleError)
        key = record["key"]
        graph, built, capability = key["graph"], key["tensorrt"], key["gpu"]["compute_capability"]
        profiles, expected = key["profiles"], record["plan"]
        format_ok = record["format"] == ENGINE_RECORD_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleError(f"{record_path}: not an engine record of vaedeploy build; run {build}") from None
    if not format_ok:
        raise BundleError(f"{record_path}: engine record format {record['format']}, this vaedeploy reads "
                          f"{ENGINE_RECORD_FORMAT}; run {build}")
    variants = bundle.manifest["graphs"].get(role, {})
    if graph.get("file") != variants.get(graph.get("precision"), {}).get("file") or \
            graph.get("sha256") != bundle.manifest["files"].get(graph.get("file")):
        raise BundleError(f"{plan}: built from another {graph.get('file')} than this bundle's (the bundle was "
                          f"exported again); run {build}")
    trt = _import(built["module"], plan)
    here = compute_capability(device)
    if (built["version"], capability) != (trt.__version__, here):
        raise BundleError(f"{plan}: built by {built['module']} {built['version']} for {_sm(capability)}, this is "
                          f"{trt.__name__} {trt.__version__} on {_sm(here)}; run {build}")
    if (record.get("validation") or {}).get("passed") is False:
        raise BundleError(f"{plan}: failed `vaedeploy build --validate` (see {record['validation'].get('file')} "
                          f"beside it); run {build} --validate again, which builds it anew")
    if not plan.is_file() or plan.stat().st_size != expected["bytes"]:
        raise BundleError(f"{plan}: missing or not the plan its record names (an interrupted build?); run {build}")
    if not profiles:
        raise BundleError(f"{record_path}: names no optimization profile; run {build}")
    return record, plan, trt


def _covers(record: dict, plan: Path, largest: int, bundle, directory: Path, precision: str) -> None:
    """Refuse an engine whose profiles stop below the largest batch the runtime will run."""
    reach = max(hi for _, _, hi in record["key"]["profiles"])
    if reach < largest:
        raise ConfigError(f"{plan}: its profiles reach batch {reach}, and this runtime runs batches up to {largest}; "
                          f"load with buckets up to {reach}, or run {_build_command(bundle, directory, precision)} "
                          f"with --max-batch {largest}")


def usable(bundle, precision: str, device: str, engines=None, buckets=None) -> tuple[bool, str]:
    """Whether every graph of ``bundle`` has an engine that can run here, and the sentence ``auto`` gives for it."""
    from ..buckets import bucket_sizes

    directory = Path(engines) if engines is not None else bundle.root / ENGINES
    try:
        largest = bucket_sizes(buckets, bundle.max_batch)[-1] if buckets is not None else bundle.max_batch
    except ConfigError:
        largest = bundle.max_batch  # the runtime refuses these buckets itself, with its own sentence
    try:
        for role in bundle.manifest["graphs"]:
            record, plan, _ = find_engine(bundle, directory, role, precision, device)
            _covers(record, plan, largest, bundle, directory, precision)
    except (BundleError, ConfigError, MissingDependency) as e:
        return False, str(e)
    built = record["key"]["tensorrt"]
    return True, (f"engines in {directory} built by {built['module']} {built['version']} for "
                  f"{_sm(record['key']['gpu']['compute_capability'])}")


def tensorrt_logger(trt, warn):
    """A TensorRT logger that keeps the errors for the sentence of a failed step and passes each warning to ``warn``
    (the runtime's are Python warnings, a build's are progress lines)."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                warn(msg)

        def last(self) -> str:
            return self.errors[-1] if self.errors else "TensorRT logged no error"

    return Logger()


def _warn(msg: str) -> None:
    warnings.warn(f"TensorRT: {msg}", RuntimeWarning, stacklevel=3)  # at the caller of the logger's ``log``


def deserialize(trt, runtime, logger, data: bytes, record: dict) -> tuple[object, str | None]:
    """The engine of the plan bytes ``data``, or None and why not: the plan's sha256 is checked against its record
    first, so a half-built or changed plan never reaches TensorRT; then TensorRT may refuse it (built by another
    version or for another GPU)."""
    if hashlib.sha256(data).hexdigest() != (record.get("plan") or {}).get("sha256"):
        return None, "the plan does not match the sha256 of its record (an interrupted build, or a changed file)"
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        return None, f"{trt.__name__} {trt.__version__} cannot deserialize the plan ({logger.last()})"
    return engine, None


@dataclass
class _Slot:
    """What a call of some size runs on: a context's profile and rows, the per-row dims of each input, its input
    buffers (None: not made yet; an input already on the engine's rows is bound where it is) and its output buffers,
    by tensor name."""

    profile: int
    rows: int
    dims: tuple
    inputs: list
    outputs: dict = field(default_factory=dict)

    @property
    def shapes(self) -> tuple:
        """Each input's shape as the context is set to it."""
        return tuple((self.rows, *d) for d in self.dims)


class TensorRTRunner(Runner):
    """The engine of one graph: one execution context per optimization profile, bound by tensor name."""

    backend = "tensorrt"

    def __init__(self, owner: "Backend", role: str, outputs: list[str] | None, record: dict, plan: Path, trt):
        # the graph the engine was built from: an fp16 engine of TensorRT 10's FP16 flag comes from the fp32 graph
        super().__init__(owner.bundle, role, record["key"]["graph"]["precision"], owner.device, outputs)
        self.precision, self.plan, self.record = owner.precision, plan, record
        self._owner, self._trt = owner, trt
        torch = owner.arrays.torch
        self._dtypes = [getattr(torch, spec["dtype"]) for spec in self.graph["inputs"]]
        self.engine, self.contexts, self.profiles = None, [], []
        self._bounds: list[list[tuple]] = []  # per profile, each input's (min, max) shape
        self._shaped: list[tuple | None] = []  # the input shapes each context was last set to
        self._slots: dict[tuple, _Slot] = {}  # (rows, dims) of the runtime's buckets → its slot

    def __repr__(self) -> str:
        return f"TensorRTRunner({self.plan}, {self.precision}, {self.device})"

    def activate_impl(self) -> None:
        trt, logger = self._trt, self._owner.logger(self._trt)
        engine, why = deserialize(trt, self._owner.tensorrt_runtime(trt), logger, self.plan.read_bytes(), self.record)
        if engine is None:
            raise BundleError(f"{self.plan}: {why}; run "
                              f"{_build_command(self._owner.bundle, self._owner.directory, self.precision)}")
        self._check_tensors(engine)
        bounds = []
        for p in range(engine.num_optimization_profiles):
            shapes = [engine.get_tensor_profile_shape(name, p) for name in self.input_names]
            bounds.append([(tuple(map(int, low)), tuple(map(int, high))) for low, _, high in shapes])
        profiles = [(low[0], high[0]) for (low, high), *_ in bounds]  # the batch range, the first input's
        stream = self._owner.stream()
        contexts = []
        for p in range(len(profiles)):
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise ConfigError(f"{self.plan}: TensorRT could not make an execution context ({logger.last()})")
            self._owner.share_memory(context, engine.device_memory_size_v2)
            if not context.set_optimization_profile_async(p, stream):
                raise ConfigError(f"{self.plan}: TensorRT refused optimization profile {p} ({logger.last()})")
            contexts.append(context)
        self.engine, self.contexts, self.profiles, self._bounds = engine, contexts, profiles, bounds
        self._shaped = [None] * len(profiles)

    def _check_tensors(self, engine) -> None:
        """The engine's inputs and outputs are the graph's, by name and dtype."""
        trt = self._trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = sorted(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = sorted(n for n in names if n not in inputs)
        graph_inputs, graph_outputs = sorted(self.input_names), sorted(s["name"] for s in self.graph["outputs"])
        if (inputs, outputs) != (graph_inputs, graph_outputs):
            raise BundleError(f"{self.plan}: the engine has inputs {inputs} and outputs {outputs}; the {self.role} "
                              f"graph has {graph_inputs} and {graph_outputs}")
        for spec in (*self.graph["inputs"], *self.graph["outputs"]):
            dtype = DTYPES.get(engine.get_tensor_dtype(spec["name"]).name)
            if dtype != spec["dtype"]:
                raise BundleError(f"{self.plan}: tensor {spec['name']!r} is {dtype} in the engine, {spec['dtype']} in "
                                  "the graph")

    def deactivate_impl(self) -> None:
        self._owner.release(self.contexts)
        self.contexts, self._slots, self.engine = [], {}, None  # contexts before their engine, as TensorRT frees them

    def _slot(self, n: int, dims: tuple) -> _Slot:
        """The profile, rows and buffers of a call of n rows of per-row ``dims`` (one per input; kept for the
        runtime's bucket sizes)."""
        fitting = [(high, p) for p, (_, high) in enumerate(self.profiles) if high >= n]
        if not fitting:
            raise InputError(f"{self!r}: {n} rows are more than its largest profile, "
                             f"{max(h for _, h in self.profiles)}")
        profile = min(fitting)[1]
        self._check_dims(profile, dims)
        rows = max(n, self.profiles[profile][0])
        arrays, axes = self._owner.arrays, self._axes(dims)
        padded = [arrays.torch.zeros((rows, *d), dtype=dtype, device=arrays.device) if rows > n else None
                  for d, dtype in zip(dims, self._dtypes)]
        slot = _Slot(profile, rows, dims, padded,
                     {spec["name"]: arrays.new((rows, *(axes.get(d, d) for d in spec["shape"][1:])), spec["dtype"])
                      for spec in self.graph["outputs"]})
        if n in self._owner.sizes:
            self._slots[n, dims] = slot
        return slot

    def _check_dims(self, profile: int, dims: tuple) -> None:
        """Refuse, in one sentence, per-row dims outside the profile the engine was built with (an engine built for
        a narrower range of sizes than the bundle now takes)."""
        for name, d, (low, high) in zip(self.input_names, dims, self._bounds[profile]):
            if not all(lo <= v <= hi for lo, v, hi in zip(low[1:], d, high[1:])):
                raise InputError(f"{name}: expected N×{shape_text(low[1:])} to N×{shape_text(high[1:])}, the sizes "
                                 f"the {self.role} engine {self.plan.name} was built for, got N×{shape_text(d)}; run "
                                 f"{_build_command(self._owner.bundle, self._owner.directory, self.precision)}")

    def _axes(self, dims: tuple) -> dict[str, int]:
        """The size of each axis the manifest names (``bundle.IMAGE_AXES``, ``LATENT_AXES``) at a call's input
        ``dims``: read from the inputs; an image's from a latent's and back through ``latent.downsample``."""
        axes = {name: int(v) for spec, d in zip(self.graph["inputs"], dims)
                for name, v in zip(spec["shape"][1:], d) if isinstance(name, str)}
        f = self._owner.bundle.downsample
        for image, latent in zip(IMAGE_AXES, LATENT_AXES):
            if f and image in axes:
                axes.setdefault(latent, axes[image] // f)
            elif f and latent in axes:
                axes.setdefault(image, axes[latent] * f)
        return axes

    def run_impl(self, inputs: tuple) -> list:
        n, dims = len(inputs[0]), tuple(tuple(x.shape[1:]) for x in inputs)
        slot = self._slots.get((n, dims)) or self._slot(n, dims)
        owner = self._owner
        if owner.lock is None:  # the runtime's buckets run one call at a time and order the streams
            self._enqueue(slot, inputs, n)
        else:
            with owner.lock:
                owner.order()
                self._enqueue(slot, inputs, n)
        return [slot.outputs[name][:n] for name in self.output_names]

    def _enqueue(self, slot: _Slot, inputs: tuple, n: int) -> None:
        context = self.contexts[slot.profile]
        if self._shaped[slot.profile] != slot.shapes:
            for name, shape in zip(self.input_names, slot.shapes):
                if not context.set_input_shape(name, shape):
                    raise ConfigError(f"{self!r}: TensorRT refused {name!r} at {shape_text(shape)} "
                                      f"({self._owner.logger(self._trt).last()})")
            self._shaped[slot.profile] = slot.shapes
        arrays = self._owner.arrays
        for i, (name, x, dtype) in enumerate(zip(self.input_names, inputs, self._dtypes)):
            if slot.inputs[i] is None and isinstance(x, arrays.torch.Tensor) and x.device == arrays.device and \
                    x.dtype == dtype and x.is_contiguous():
                address = x.data_ptr()  # already the engine's rows where the engine runs: no copy
            else:
                if slot.inputs[i] is None:
                    slot.inputs[i] = arrays.torch.zeros((slot.rows, *x.shape[1:]), dtype=dtype, device=arrays.device)
                slot.inputs[i][:n].copy_(arrays.torch.as_tensor(x))
                address = slot.inputs[i].data_ptr()
            context.set_tensor_address(name, address)
        for name, buffer in slot.outputs.items():
            context.set_tensor_address(name, buffer.data_ptr())
        if not context.execute_async_v3(self._owner.stream()):
            raise RuntimeError(f"TensorRT could not enqueue {self.plan} at {slot.rows} rows "
                               f"({self._owner.logger(self._trt).last()})")


class Backend:
    """The engines of a bundle's graphs on one CUDA device (``load(..., backend="tensorrt", engines=DIR)``).

    Args:
        buckets: the runtime's batch buckets (None: none; this backend then orders its calls itself).
        cuda_graphs: whether the runtime captures each bucket (nothing changes here: the enqueue is capturable).
        engines: the engine cache directory (default: the bundle's ``engines/``).
    """

    name = "tensorrt"
    capturable = True  # execute_async_v3 only enqueues on the stream given: a CUDA graph captures it
    warmup_runs = 0

    def __init__(self, bundle, precision: str, device: str, buckets: tuple[int, ...] | None = None,
                 cuda_graphs: bool = False, engines=None):
        self.bundle, self.precision, self.device = bundle, precision, device
        self.directory = Path(engines) if engines is not None else bundle.root / ENGINES
        self.arrays = TorchArrays(device)
        self.sizes = tuple(buckets or ())
        self.largest = self.sizes[-1] if self.sizes else bundle.max_batch
        # without the runtime's buckets nothing else keeps two calls from running at once on shared memory
        self.lock = None if self.sizes else threading.Lock()
        self._last_stream = None
        self._memory = None  # the block every context's scratch lives in
        self._contexts: list = []
        self._runtimes: dict[str, tuple] = {}  # module name → (its Runtime, its logger)

    def runner(self, role: str, outputs: list[str] | None = None) -> TensorRTRunner:
        record, plan, trt = find_engine(self.bundle, self.directory, role, self.precision, self.device)
        _covers(record, plan, self.largest, self.bundle, self.directory, self.precision)
        return TensorRTRunner(self, role, outputs, record, plan, trt)

    def tensorrt_runtime(self, trt):
        """One ``trt.Runtime`` per TensorRT module, with its logger, kept for the backend's life (TensorRT wants the
        runtime to outlive its engines)."""
        if trt.__name__ not in self._runtimes:
            logger = tensorrt_logger(trt, _warn)
            self._runtimes[trt.__name__] = (trt.Runtime(logger), logger)
        return self._runtimes[trt.__name__][0]

    def logger(self, trt):
        self.tensorrt_runtime(trt)
        return self._runtimes[trt.__name__][1]

    def share_memory(self, context, size: int) -> None:
        """Give ``context`` the shared block, grown to ``size`` bytes if it is smaller (every context is then
        pointed at the new block; runners are activated when the runtime is made, before any graph is captured)."""
        torch = self.arrays.torch
        if self._memory is None or self._memory.numel() < size:
            self._memory = torch.empty(max(int(size), 1), dtype=torch.uint8, device=self.arrays.device)
            for other in self._contexts:
                other.set_device_memory(self._memory.data_ptr(), self._memory.numel())
        self._contexts.append(context)
        context.set_device_memory(self._memory.data_ptr(), self._memory.numel())

    def release(self, contexts: list) -> None:
        self._contexts = [c for c in self._contexts if all(c is not mine for mine in contexts)]

    @property
    def memory_bytes(self) -> int:
        """The size of the device memory every context shares."""
        return 0 if self._memory is None else self._memory.numel()

    def stream(self) -> int:
        """The caller's current CUDA stream, as TensorRT takes it (0 on the CPU, where only the fake runs)."""
        if self.arrays.device.type != "cuda":
            return 0
        return self.arrays.torch.cuda.current_stream(self.arrays.device).cuda_stream

    def order(self) -> None:
        """Without buckets: a call on another stream than the previous one waits for it on the device."""
        if self.arrays.device.type != "cuda":
            return
        current = self.arrays.torch.cuda.current_stream(self.arrays.device)
        if self._last_stream is not None and current != self._last_stream:
            current.wait_stream(self._last_stream)
        self._last_stream = current

    def close(self) -> None:
        self._contexts, self._memory, self._runtimes = [], None, {}
