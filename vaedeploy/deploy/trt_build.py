"""`vaedeploy build`: a TensorRT engine of every graph of a bundle, one optimization profile per batch bucket, cached.

Written against TensorRT's documented Python API (docs/tensorrt.md names the sources) and tested on the CPU against
a fake of exactly the calls made here (tests/trt/fake_tensorrt.py). **Never run on real TensorRT.**

For each graph at the asked precision: TensorRT's ONNX parser fills a network; one optimization profile per bucket
(min = opt = max = the bucket, so each bucket's engine path is static), or with ``ranges`` one per span between
buckets (opt = the bucket); where the bundle takes any image size (``input.size``), every profile also spans its
image and latent axes over (batch, H, W): min and max the manifest's range, opt the reference size
(``axis_ranges``); the builder optimization level and the workspace pool limit as asked; a timing cache kept beside
the plans and reused by every later build on the same TensorRT and GPU. What differs between TensorRT 10, 11
and TensorRT-RTX is the table ``FLAVOURS``; everything else here is the same call in all three.

The cache (the bundle's ``engines/``, or ``cache``) holds per graph and precision a plan and a JSON record of what
built it (``bundle.engine_files``). Its key is the graph's sha256, the profiles, the builder settings, the TensorRT
module and version and the GPU's compute capability. A plan is rebuilt, with one line saying why, when its key does
not match, when it does not match its record (an interrupted build), or when TensorRT cannot deserialize it. The
plan is written before its record, each atomically, and the backend checks the plan's sha256 against the record
before it deserializes it: a half-built plan is never loaded.

The cache directory follows vaedeploy's ownership rule (``owned``, ``bundle.ENGINE_CACHE``): it must be absent,
empty, or a cache `vaedeploy build` wrote, holding nothing else. It is filled file by file, never replaced: each
file's name joins the directory's marker before the file is written, so a build killed halfway leaves only listed
files. A cache written before the marker is known by its engine records (``bundle.older_engine_cache``).

``validate_engines`` runs every engine at every bucket and compares each output with ONNX Runtime on the fp32 graph,
within export's tolerance of the engine's precision (``validate.TOLERANCES``), failing hard.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vaedeploy import __version__, owned
from vaedeploy.bundle import (
    ENGINE_CACHE,
    ENGINE_RECORD_FORMAT,
    ENGINES,
    IMAGE_AXES,
    LATENT_AXES,
    PRECISIONS,
    Bundle,
    engine_files,
    load_bundle,
)
from vaedeploy.errors import BundleError, ConfigError, DataError, FileFormatError, JobFailed, MissingDependency
from vaedeploy.io import atomic_write_bytes, read_json, write_json
from vaedeploy.runtime.backends.tensorrt import deserialize, tensorrt_logger
from vaedeploy.runtime.buckets import bucket_sizes


@dataclass(frozen=True)
class Flavour:
    """What one TensorRT flavour does differently from the others, in the calls this builder makes."""

    label: str
    minimum: tuple[int, int]  # the oldest release with the memory API the backend uses (device_memory_size_v2,
    # set_device_memory), which TensorRT 10.1 introduced and 11 kept
    strongly_typed_flag: bool  # a network is strongly typed only with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fp16_flag: bool  # BuilderFlag.FP16 exists: an fp16 engine may come from the fp32 graph, weakly typed
    timing_cache: bool  # the builder's timing cache has an effect
    user_allocation_flag: bool  # BuilderFlag.REQUIRE_USER_ALLOCATION is needed for CUDA stream capture
    tf32_flag: bool  # BuilderFlag.TF32 exists (on by default): cleared for fp32 engines


# (module, major version) → its differences. TensorRT 11 removed the precision flags and builds strongly typed
# networks only (the STRONGLY_TYPED flag is deprecated, always on); TensorRT-RTX is strongly typed, its timing cache
# has no effect (deprecated in 1.2), and since 1.2 an engine captured in a CUDA graph needs REQUIRE_USER_ALLOCATION
# (its 1.2 release notes). TensorRT 11's migration guide keeps TF32 among the flags; TensorRT-RTX's documentation names
# no TF32 flag, so none is touched there (not verified on a real TensorRT-RTX: `--validate` is the check).
FLAVOURS = {
    ("tensorrt", 10): Flavour("TensorRT 10", (10, 1), True, True, True, False, True),
    ("tensorrt", 11): Flavour("TensorRT 11", (11, 0), False, False, True, False, True),
    ("tensorrt_rtx", 1): Flavour("TensorRT-RTX 1", (1, 2), False, False, False, True, False),
}
MODULES = ("tensorrt", "tensorrt_rtx")  # the order a build looks for them
INSTALL = "pip install 'vaedeploy[trt]' (TensorRT 10.1 or newer; TensorRT-RTX 1.2 or newer as tensorrt_rtx also works)"
OPT_LEVELS = range(6)  # TensorRT's builder optimization levels; 3 is its default



def import_tensorrt():
    """The installed TensorRT module and its row of ``FLAVOURS``; a sentence naming what to install otherwise."""
    name = next((m for m in MODULES if importlib.util.find_spec(m) is not None), None)
    if name is None:
        raise MissingDependency(f"vaedeploy build needs TensorRT, which is not installed: {INSTALL}")
    trt = importlib.import_module(name)
    version = tuple(int(part) for part in trt.__version__.split(".")[:2])
    flavour = FLAVOURS.get((name, version[0]))
    if flavour is None:
        known = ", ".join(f"{m} {major}" for m, major in FLAVOURS)
        raise MissingDependency(f"vaedeploy build knows {known}; this is {name} {trt.__version__}: {INSTALL}")
    if version < flavour.minimum:
        raise MissingDependency(f"vaedeploy build needs {name} {'.'.join(map(str, flavour.minimum))} or newer, "
                                f"this is {trt.__version__}: {INSTALL}")
    return trt, flavour


@dataclass(frozen=True)
class Settings:
    """What a build is asked for, checked against the bundle (``settings``)."""

    precision: str
    buckets: tuple[int, ...]
    ranges: bool
    opt_level: int
    workspace_mib: int | None

    @property
    def profiles(self) -> list[list[int]]:
        """Batch [min, opt, max] of each optimization profile: one per bucket, static, or the span up to it."""
        starts = (1, *(b + 1 for b in self.buckets[:-1])) if self.ranges else self.buckets
        return [[start, b, b] for start, b in zip(starts, self.buckets)]


def axis_ranges(bundle: Bundle) -> dict[str, list[int]]:
    """[min, opt, max] of each named spatial axis of the bundle's graphs (``bundle.IMAGE_AXES``, ``LATENT_AXES``):
    the manifest's ``input.size`` range, the reference size as opt, a latent's over ``latent.downsample``; empty for
    a bundle of one size."""
    sizes = bundle.sizes
    if sizes is None:
        return {}
    ranges = {}
    for i, (image, latent) in enumerate(zip(IMAGE_AXES, LATENT_AXES)):
        ranges[image] = [sizes.low[i], sizes.reference[i], sizes.high[i]]
        if bundle.downsample:
            ranges[latent] = [v // bundle.downsample for v in ranges[image]]
    return ranges


def _dims(spec: dict, ranges: dict[str, list[int]], k: int) -> tuple:
    """A tensor's dims after the batch at point ``k`` (0 min, 1 opt, 2 max) of its named axes' ranges."""
    return tuple(ranges[d][k] if isinstance(d, str) else d for d in spec["shape"][1:])


def settings(bundle: Bundle, buckets=None, max_batch=None, precision="fp32", opt_level=3, workspace_mib=None,
             ranges=False) -> Settings:
    """The build's settings, or a ConfigError naming the option and what the bundle allows."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if opt_level not in OPT_LEVELS:
        raise ConfigError(f"--opt-level must be one of {list(OPT_LEVELS)} (TensorRT's builder optimization levels), "
                          f"got {opt_level!r}")
    largest = bundle.max_batch if max_batch is None else max_batch
    if not 1 <= largest <= bundle.max_batch:
        raise ConfigError(f"--max-batch must be from 1 to the bundle's max_batch {bundle.max_batch} (the runtime "
                          f"splits larger batches), got {max_batch}")
    sizes = bucket_sizes(None, largest) if buckets is None else tuple(sorted(set(buckets)))
    if not sizes or sizes[0] < 1 or sizes[-1] > largest:
        raise ConfigError(f"--buckets must be batch sizes from 1 to {largest} (--max-batch, or the bundle's "
                          f"max_batch), got {list(buckets)}")
    return Settings(precision, sizes, ranges, opt_level, workspace_mib)


@contextlib.contextmanager
def on_gpu(device: str):
    """Make ``device`` (already checked: ``cuda`` or ``cuda:N``) CUDA's current device while TensorRT builds for it,
    and give its name and compute capability."""
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    with torch.cuda.device(index):
        major, minor = torch.cuda.get_device_capability(index)
        yield {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def _monitor(trt, progress):
    """TensorRT's build phases as progress lines, the top two levels of them."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            if self.depth[phase_name] < 2:
                progress(f"    {'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def _batches(profiles: list[list[int]]) -> str:
    return ", ".join(str(hi) if lo == hi else f"{lo}..{hi}" for lo, _, hi in profiles)


def _differences(old: dict, new: dict) -> str:
    """Why a plan built for key ``old`` does not serve ``new``, in words."""
    reasons = []
    built, here = old.get("tensorrt", {}), new["tensorrt"]
    built_gpu, here_gpu = old.get("gpu", {}).get("compute_capability", "?"), new["gpu"]["compute_capability"]
    if built != here or built_gpu != here_gpu:
        reasons.append(f"built by {built.get('module')} {built.get('version')} for sm_{built_gpu.replace('.', '')}, "
                       f"this is {here['module']} {here['version']} on sm_{here_gpu.replace('.', '')}")
    if old.get("graph") != new["graph"]:
        was = old.get("graph") or {}
        reasons.append(f"built from {was.get('file')} (sha256 {str(was.get('sha256'))[:12]}), the graph now is "
                       f"{new['graph']['file']} (sha256 {new['graph']['sha256'][:12]})")
    if old.get("profiles") != new["profiles"]:
        reasons.append(f"built for batches {_batches(old.get('profiles') or [])}, asked for "
                       f"{_batches(new['profiles'])}")
    was = old.get("builder") or {}
    changed = [f"{k} {was.get(k)} → {v}" for k, v in new["builder"].items() if was.get(k) != v]
    if changed:
        reasons.append("built with " + ", ".join(changed))
    return "; ".join(reasons) or "its key is not this build's"


def _source(bundle: Bundle, role: str, precision: str, flavour: Flavour) -> tuple[str, str]:
    """Which ONNX variant an engine is built from, and how it is typed: the graph of the engine's precision,
    strongly typed; an fp16 engine without an fp16 graph only where the FP16 flag exists (TensorRT 10)."""
    if precision in bundle.manifest["graphs"][role]:
        return precision, "strong"
    if flavour.fp16_flag:
        return "fp32", "weak, fp16 flag"
    raise ConfigError(f"{bundle.root}: the {role} graph has no fp16 variant, and {flavour.label} builds strongly typed "
                      "networks only (their precision is the graph's); export the bundle with --precision fp16")


class _Build:
    """One `vaedeploy build`: TensorRT, the GPU, the settings and the cache, and each graph's engine."""

    def __init__(self, trt, flavour: Flavour, bundle: Bundle, chosen: Settings, directory: Path, gpu: dict, progress):
        self.trt, self.flavour, self.bundle, self.settings = trt, flavour, bundle, chosen
        self.directory, self.gpu, self.progress = directory, gpu, progress
        self.machine = {"module": trt.__name__, "version": trt.__version__}
        self.logger = tensorrt_logger(trt, lambda msg: progress(f"    TensorRT: {msg}"))
        cc = gpu["compute_capability"].replace(".", "")
        self.timing_cache = directory / f"timing.{trt.__name__}-{trt.__version__}.sm{cc}.cache"

    def key(self, role: str) -> dict:
        precision = self.settings.precision
        graph_precision, typing = _source(self.bundle, role, precision, self.flavour)
        file = self.bundle.graph(role, graph_precision)["file"]
        builder = {"typing": typing, "opt_level": self.settings.opt_level, "workspace_mib": self.settings.workspace_mib,
                   "tf32": precision != "fp32" or not self.flavour.tf32_flag,
                   "user_allocation": self.flavour.user_allocation_flag}
        sizes = axis_ranges(self.bundle)
        return {"graph": {"file": file, "precision": graph_precision, "sha256": self.bundle.manifest["files"][file]},
                "profiles": self.settings.profiles, **({"axes": sizes} if sizes else {}), "builder": builder,
                "tensorrt": self.machine, "gpu": {"compute_capability": self.gpu["compute_capability"]}}

    def stale(self, plan: Path, record_path: Path, key: dict) -> str | None:
        """Why the cached plan cannot serve ``key`` (None: it can)."""
        if not record_path.exists():
            return f"none in {self.directory} yet" if not plan.exists() else "its record is missing"
        try:
            record = read_json(record_path, "an engine record")
        except FileFormatError:
            return "its record cannot be read"
        if not isinstance(record, dict) or not isinstance(record.get("key"), dict):
            return "its record cannot be read"
        if record["key"] != key:
            return _differences(record["key"], key)
        if not plan.is_file():
            return "the plan is missing"
        if (record.get("validation") or {}).get("passed") is False:
            return f"it failed `vaedeploy build --validate` ({record['validation'].get('file')})"
        return deserialize(self.trt, self.trt.Runtime(self.logger), self.logger, plan.read_bytes(), record)[1]

    def engine(self, role: str) -> dict:
        """The cached engine of ``role`` if it serves, else a new one; its record, with what happened."""
        key = self.key(role)
        plan, record_path = engine_files(self.directory, role, self.settings.precision)
        why = self.stale(plan, record_path, key)
        if why is None:
            self.progress(f"{plan.name}: up to date")
            return {**read_json(record_path), "status": "cached"}
        self.progress(f"building {plan.name} from {key['graph']['file']}: {why}")
        self.progress(f"    {len(key['profiles'])} profile(s), batches {_batches(key['profiles'])}; "
                      f"{key['builder']['typing']} typing, opt level {self.settings.opt_level}; "
                      f"{self.flavour.label} ({self.trt.__version__}) on {self.gpu['name']} "
                      f"(sm_{self.gpu['compute_capability'].replace('.', '')})")
        start = time.perf_counter()
        data = self.build(self.bundle.graph(role, key["graph"]["precision"]), key["builder"]["typing"])
        seconds = time.perf_counter() - start
        owned.claim(self.directory, ENGINE_CACHE, [plan.name, record_path.name])
        atomic_write_bytes(plan, data)  # the plan first: a record never names a plan that is not whole
        record = {"format": ENGINE_RECORD_FORMAT, "role": role, "precision": self.settings.precision, "key": key,
                  "plan": {"file": plan.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
                  "gpu_name": self.gpu["name"], "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "build_seconds": round(seconds, 3), "vaedeploy_version": __version__, "validation": None}
        write_json(record_path, record)
        self.progress(f"    built {plan} in {seconds:.1f} s ({len(data) / 2**20:.1f} MiB)")
        return {**record, "status": "built", "reason": why}

    def build(self, graph: dict, typing: str) -> bytes:
        """The serialized engine of one ONNX graph (its manifest entry) with this build's settings."""
        trt, flavour, chosen = self.trt, self.flavour, self.settings
        builder = trt.Builder(self.logger)
        strong = typing == "strong" and flavour.strongly_typed_flag
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(graph["path"])):
            problems = [parser.get_error(i).desc() for i in range(parser.num_errors)] or [self.logger.last()]
            raise BundleError(f"{graph['path']}: TensorRT's ONNX parser refused the graph ({'; '.join(problems)})")
        config = builder.create_builder_config()
        config.builder_optimization_level = chosen.opt_level
        if chosen.workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, chosen.workspace_mib << 20)
        if typing != "strong":
            config.set_flag(trt.BuilderFlag.FP16)
        if chosen.precision == "fp32" and flavour.tf32_flag:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 engines must meet export's fp32 tolerance
        if flavour.user_allocation_flag:
            config.set_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
        ranges = axis_ranges(self.bundle)
        for lo, opt, hi in chosen.profiles:
            profile = builder.create_optimization_profile()
            for spec in graph["inputs"]:
                shapes = ((rows, *_dims(spec, ranges, k)) for k, rows in enumerate((lo, opt, hi)))
                profile.set_shape(spec["name"], *shapes)
            if config.add_optimization_profile(profile) < 0:
                raise ConfigError(f"{graph['path']}: TensorRT refused the profile of batches {lo}..{hi} "
                                  f"({self.logger.last()})")
        if flavour.timing_cache:
            self.attach_timing_cache(config)
        config.progress_monitor = _monitor(trt, self.progress)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise JobFailed(f"TensorRT could not build an engine of {graph['path']} ({self.logger.last()})")
        if flavour.timing_cache:
            owned.claim(self.directory, ENGINE_CACHE, [self.timing_cache.name])
            atomic_write_bytes(self.timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def attach_timing_cache(self, config) -> None:
        """The timing cache of earlier builds on this TensorRT and GPU (a new one when there is none or it does not
        fit), so layers already timed are not timed again."""
        data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        if config.set_timing_cache(config.create_timing_cache(data), False):
            return
        self.progress(f"    {self.timing_cache.name} does not fit this TensorRT and GPU ({self.logger.last()}); "
                      "starting a new timing cache")
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engines(bundle, *, buckets=None, max_batch=None, precision="fp32", opt_level=3, workspace_mib=None,
                  cache=None, ranges=False, device="cuda", progress=print, bar=False) -> dict:
    """Build (or find in the cache) the TensorRT engine of every graph of ``bundle``; return what was done.

    Args:
        bundle: a bundle directory (verified on load).
        buckets: the batch sizes, one optimization profile each (default: the runtime's default buckets up to
            ``max_batch``).
        max_batch: the largest bucket of the default buckets (default: the bundle's max_batch).
        precision: ``fp32`` (IEEE fp32: the TF32 flag cleared) or ``fp16`` (the bundle's fp16 graphs, strongly typed;
            on TensorRT 10 a bundle without them builds its fp32 graphs with the FP16 flag).
        opt_level: TensorRT's builder optimization level, 0 to 5.
        workspace_mib: the builder's workspace pool limit (default: TensorRT's, the device's memory).
        cache: the engine cache directory (default: the bundle's ``engines/``).
        ranges: one profile per span between buckets (any batch runs unpadded) instead of one static profile each.
        device: ``cuda`` or ``cuda:N``, already checked (``runtime.cuda.require_cuda``).
        progress: called with each progress line.
        bar: show a tqdm bar over the graphs (``progress`` should then be ``tqdm.write``, so lines and bar don't mix).

    Returns ``{"bundle", "cache", "precision", "buckets", "profiles", "tensorrt", "gpu", "engines", "seconds"}``,
    ``engines`` holding each graph's record with its ``status`` (``built`` or ``cached``) and the ``reason`` of a
    build.
    """
    trt, flavour = import_tensorrt()
    loaded = load_bundle(bundle)
    chosen = settings(loaded, buckets, max_batch, precision, opt_level, workspace_mib, ranges)
    directory = Path(cache) if cache is not None else loaded.root / ENGINES
    owned.check_target(directory, ENGINE_CACHE)  # before the work: a refused cache should not cost a build
    start = time.perf_counter()
    with on_gpu(device) as gpu:
        build = _Build(trt, flavour, loaded, chosen, directory, gpu, progress)
        roles = list(loaded.manifest["graphs"])
        if bar:
            from tqdm.auto import tqdm

            roles = tqdm(roles, desc=f"vaedeploy build {precision}", unit="engine", dynamic_ncols=True)
        engines = [build.engine(role) for role in roles]
    return {"bundle": str(loaded.root), "cache": str(directory), "precision": precision,
            "buckets": list(chosen.buckets), "profiles": chosen.profiles, "tensorrt": build.machine, "gpu": gpu,
            "engines": engines, "seconds": round(time.perf_counter() - start, 3)}


# ---- validation ------------------------------------------------------------------------------------------------

def _images(bundle: Bundle, n: int, rng) -> tuple[np.ndarray, str]:
    """n input images: the test split of the data the bundle was exported from, else uniform noise in [0, 1)."""
    spec = bundle.manifest["input"].get("data")
    try:
        from vaedeploy.data import load_from_spec

        data, label = load_from_spec(spec).evaluation_inputs("test"), f"the test split of {spec['name']}"
    except (DataError, MissingDependency, ModuleNotFoundError, KeyError, TypeError) as e:
        data = rng.random((n, *bundle.input_shape), dtype=np.float32)
        label = f"uniform noise in [0, 1) (the bundle's data could not be loaded: {e})"
    return np.ascontiguousarray(np.resize(data, (n, *bundle.input_shape)).astype(np.float32)), label


def _inputs(bundle: Bundle, graph: dict, n: int, images: np.ndarray) -> dict[str, np.ndarray]:
    """A graph's inputs for n rows: images where it takes images, code tokens (the VQ prior's, from its start token)
    where it takes integers, N(0, I) for every other float input (latents and noise)."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in graph["inputs"]:
        dims = _dims(spec, axis_ranges(bundle), 1)  # spatial axes at the reference size
        if spec["dtype"] == "int64":
            prior = bundle.latent["prior"]
            tokens = rng.integers(0, bundle.latent["num_codes"], (n, *dims))
            tokens[:, 0] = prior["start_token"]
            feed[spec["name"]] = tokens
        elif dims == bundle.input_shape:
            feed[spec["name"]] = images[:n]
        else:
            feed[spec["name"]] = rng.standard_normal((n, *dims), dtype=np.float32)
    return feed


def validate_engines(bundle: Bundle, built: dict, runner, progress=print) -> dict:
    """Every engine of ``built`` (what ``build_engines`` returned) at every bucket against ONNX Runtime on the fp32
    graph, within export's tolerance of the engine's precision; the report goes beside the plans
    (``validation.PRECISION.json``) and into each record. Raises ``JobFailed`` (exit 1) when an output is outside.

    Args:
        bundle: the loaded bundle.
        built: ``build_engines``'s result.
        runner: role → an inactive runner of that graph's engine with all its outputs (the TensorRT backend's
            ``Backend.runner``).
    """
    import onnxruntime as ort
    import torch

    from ..export.validate import TOLERANCES, cpu_session, errors  # torch: imported only where validation runs

    precision, sizes = built["precision"], built["buckets"]
    tolerance = TOLERANCES[precision]
    images, label = _images(bundle, sizes[-1], np.random.default_rng(0))
    checks, failures, worst = [], [], {}
    for role in bundle.manifest["graphs"]:
        reference = cpu_session(bundle.graph(role, "fp32")["path"])
        with runner(role) as engine:
            progress(f"validating {role} ({precision}) at batches {', '.join(map(str, sizes))}")
            device = engine.device
            for n in sizes:
                feed = _inputs(bundle, engine.graph, n, images)
                expected = dict(zip(engine.output_names, reference.run(engine.output_names, feed)))
                got = engine.infer({k: torch.from_numpy(v).to(device) for k, v in feed.items()})
                outputs = {}
                for name, value in got.items():
                    err = errors(value.float().cpu().numpy(), expected[name])
                    err["passed"] = all(err[k] <= tolerance[k] for k in tolerance)  # False for NaN
                    outputs[name] = err
                    kept = worst.setdefault(f"{role}.{name}", {"max_abs": 0.0, "rel_l2": 0.0})
                    for k in kept:
                        kept[k] = max(kept[k], err[k]) if np.isfinite(err[k]) else float("nan")
                    if not err["passed"]:
                        failures.append(f"{role} {precision} at batch {n}: {name} max_abs={err['max_abs']:.3g} "
                                        f"rel_l2={err['rel_l2']:.3g}")
                checks.append({"graph": role, "batch": n, "outputs": outputs,
                               "passed": all(o["passed"] for o in outputs.values())})
    directory = Path(built["cache"])
    report = {"passed": not failures, "precision": precision, "tolerance": tolerance,
              "reference": f"onnxruntime {ort.__version__} CPUExecutionProvider on the fp32 graphs", "inputs": label,
              "tensorrt": built["tensorrt"], "gpu": built["gpu"], "worst": worst, "failures": failures,
              "checks": checks}
    owned.claim(directory, ENGINE_CACHE, [f"validation.{precision}.json"])
    path = write_json(directory / f"validation.{precision}.json", report)
    for role in bundle.manifest["graphs"]:  # the backend refuses an engine whose record says it failed
        record_path = engine_files(directory, role, precision)[1]
        passed = not any(c["graph"] == role and not c["passed"] for c in checks)
        write_json(record_path, {**read_json(record_path), "validation": {"passed": passed, "file": path.name}})
    if failures:
        raise JobFailed(f"TensorRT engines disagree with ONNX Runtime beyond export's {precision} tolerance "
                        f"(max_abs {tolerance['max_abs']}, rel_l2 {tolerance['rel_l2']}); report in {path}:\n  "
                        + "\n  ".join(failures[:10]))
    return report
