"""``backend="auto"`` on the CPU: the installed backends measured on the bundle's own decoder, the fastest kept.

A guess cannot pick a CPU backend: which is fastest depends on the graph (an 8×8 MLP's batch-1 call is ONNX
Runtime's, a conv decoder at a large batch may be OpenVINO's), the CPU (bf16 units or none) and the versions. So
``choose`` loads the bundle on every backend that can run it at the asked precision, times ``decode`` at batch 1 and
at ``min(64, max_batch)`` rows, interleaved in ``ROUNDS`` rounds (the median of each backend's rounds), and keeps
the backend whose geometric mean over the two sizes is least. A backend must beat the first of ``ORDER`` that can
run the bundle by ``MARGIN`` to be chosen over it: within the noise of a short measurement, the torch-free core stays.

``precision="auto"`` (with ``backend="auto"``: asking for it is the permission to lower the precision) measures
every (backend, precision) pair of fp32 and each lower precision the bundle was validated for at a PSNR of at least
``MIN_PSNR_DB`` on every graph output (the manifest's ``validation.worst``), with fp32 on the first backend as the
default the others must beat by ``MARGIN``.

The result is cached in the bundle's ``calibration/`` folder (a folder this module owns by ``owned``'s rule: its
marker lists every file it wrote), one JSON file per key: the CPU's model and flags, its physical cores, the
versions of vaedeploy and of each candidate's package, the bundle's manifest (which names every graph by sha256) and
the precision. A key that differs is calibrated again; a bundle folder that cannot be written is calibrated on every
load, and the reason says so.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import math
import platform
import time
from pathlib import Path

import numpy as np

from .. import owned
from ..bundle import PRECISIONS, BundleError
from ..errors import ConfigError, MissingDependency, VaedeployError
from ..io import read_json, write_json
from .backends import CPU_ORDER as ORDER
from .backends import installed

PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}
ROUNDS = 3
CALLS = 20  # per backend, size and round, fewer where a call is slow (SECONDS)
SECONDS = 0.2  # the most a backend, size and round is timed for, after its first call
MARGIN = 0.9  # another backend is chosen over the default only when it takes at most this share of its time
MIN_PSNR_DB = 40.0  # precision="auto" lowers the precision only where every graph was validated at this PSNR or more
# the flags that decide which kernels a backend can use: vector width, and the bf16 / fp16 units
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
         "amx_fp16")
FOLDER = "calibration"
CALIBRATION = owned.Kind(tool="calibrate", what="the calibration folder of `vaedeploy.load(backend='auto')`",
                         noun="calibration folder", error=ConfigError)


def cpu_facts() -> dict:
    """The CPU's model name and the flags of ``FLAGS`` it has (Linux's /proc/cpuinfo; elsewhere the platform's
    word and no flags): the one reading of the machine, for the calibration's key and every benchmark's record."""
    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and name is None:
                name = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(), "flags": sorted(flags & set(FLAGS))}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def calibration_key(bundle, precision: str, candidates: list[str]) -> dict:
    """What a cached choice holds for: the machine, the versions, the bundle and the precision."""
    from .backends.onnxruntime import physical_cores

    manifest = hashlib.sha256((bundle.root / "manifest.json").read_bytes()).hexdigest()
    return {**cpu_facts(), "physical_cores": physical_cores(), "vaedeploy": _version("vaedeploy"),
            "versions": {name: _version(PACKAGES[name]) for name in candidates}, "manifest_sha256": manifest,
            "precision": precision}


def precisions_of(bundle, precision: str) -> tuple[list[str], list[str]]:
    """The precisions to measure: ``precision`` itself, or for ``auto`` fp32 and each lower precision every graph
    was validated for at a PSNR of at least ``MIN_PSNR_DB`` on every output; and a sentence for each left out."""
    if precision != "auto":
        return [precision], []
    worst = bundle.manifest.get("validation", {}).get("worst", {})
    common = set.intersection(*(set(v) for v in bundle.manifest["graphs"].values()))
    chosen, skipped = ["fp32"], []
    for lower in ("fp16", "bf16"):
        psnr = [v.get("psnr_db", -math.inf) for k, v in worst.items() if k.split(".")[1:2] == [lower]]
        if lower not in common:
            continue
        if psnr and min(psnr) >= MIN_PSNR_DB:
            chosen.append(lower)
        else:
            skipped.append(f"{lower} was validated at {min(psnr, default=-math.inf):.0f} dB PSNR, below "
                           f"{MIN_PSNR_DB:g}")
    return chosen, skipped


def candidates(bundle, precisions: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (backend, precision) pairs that can run ``bundle`` here, backends in ``ORDER`` and precisions in the
    order given, and a sentence for each backend left out."""
    usable, skipped = [], []
    for name in ORDER:
        if not installed(name):
            skipped.append(f"{name} is not installed")
        elif name == "torch" and not bundle.manifest.get("model"):
            skipped.append("torch needs the model's weights, which this bundle does not have")
        elif not (runs := [p for p in precisions if p in _variants(bundle, name)]):
            skipped.append(f"{name} cannot run {'/'.join(precisions)} graphs")
        else:
            usable += [(name, p) for p in runs]
    return usable, skipped
def _variants(bundle, name: str) -> set[str]:
    """The precisions ``name`` can run this bundle at: the graphs' variants, bf16 but on ONNX Runtime (ONNX's Conv
    and Gemm take no bfloat16, so no bf16 graph exists to give it)."""
    variants = set.intersection(*(set(v) for v in bundle.manifest["graphs"].values()))
    return variants - {"bf16"} if name == "onnxruntime" else variants


def measure(bundle, configs: dict[str, tuple[str, str]]) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """label → batch → the median seconds of ``decode`` over ``ROUNDS`` interleaved rounds, for ``configs``: label →
    (backend, precision); and label → why, for each that could not load the bundle (its backend's sentence)."""
    from .latents import runtime_class

    sizes = sorted({1, min(64, bundle.max_batch)})
    runtimes, failed = {}, {}
    try:
        for label, (name, precision) in configs.items():
            try:
                runtimes[label] = runtime_class(bundle)(bundle, name, "cpu", precision, backend_reason="calibrating")
            except VaedeployError as e:  # e.g. a damaged part of the manifest only this backend reads
                failed[label] = str(e)
        rng = np.random.default_rng(0)
        inputs = {n: rng.standard_normal((n, *bundle.latent_shape), dtype=np.float32) for n in sizes}  # reference size
        rounds = {label: {n: [] for n in sizes} for label in runtimes}
        for _ in range(ROUNDS):
            for name, rt in runtimes.items():
                for n, z in inputs.items():
                    rounds[name][n].append(_median_call(rt, z))
    finally:
        for rt in runtimes.values():
            rt.close()
    return {name: {n: float(np.median(times)) for n, times in by_size.items()} for name, by_size in rounds.items()}, \
        failed


def _median_call(rt, z) -> float:
    rt.decode(z)  # a first call pays for shapes seen for the first time
    times, spent = [], 0.0
    while len(times) < CALLS and spent < SECONDS:
        start = time.perf_counter()
        rt.decode(z)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return float(np.median(times))


def pick(times: dict[str, dict[int, float]], default: str) -> str:
    """The label of least geometric mean time, where it takes at most ``MARGIN`` of ``default``'s."""
    score = {name: math.exp(np.mean([math.log(t) for t in by_size.values()])) for name, by_size in times.items()}
    best = min(score, key=score.get)
    return best if score[best] <= MARGIN * score[default] else default


def _said(times: dict[str, dict[int, float]]) -> str:
    sizes = sorted(next(iter(times.values())))
    shown = "; ".join(f"{name} " + "/".join(f"{by_size[n] * 1e3:.3g}" if by_size[n] < 1 else f"{by_size[n] * 1e3:.0f}"
                                            for n in sizes) for name, by_size in times.items())
    return f"decode ms at batch {'/'.join(str(n) for n in sizes)}: {shown}"


def choose(bundle, precision: str) -> tuple[str, str, str, dict]:
    """The backend and precision ``auto`` runs ``bundle`` at here (``precision`` itself, or for ``auto`` the measured
    choice among the validated ones), the sentence saying why, and the calibration record (cached in the bundle's
    ``calibration/`` when it can be written)."""
    if precision not in (*PRECISIONS, "auto"):  # refused before any measurement, as the runtime refuses it
        raise ConfigError(f"precision must be one of {PRECISIONS} or 'auto', got {precision!r}")
    if precision != "auto":
        for role in bundle.manifest["graphs"]:
            bundle.graph(role, precision)  # a precision the bundle has no graphs for is refused, naming the graph
    precisions, skipped = precisions_of(bundle, precision)
    pairs, left_out = candidates(bundle, precisions)
    skipped += left_out
    if not pairs:
        raise MissingDependency(f"no CPU backend can run this bundle at {precision}: {'; '.join(skipped)}")
    # a label per pair: the backend alone where the precision is fixed
    configs = {(name if precision != "auto" else f"{name} {p}"): (name, p) for name, p in pairs}
    key = calibration_key(bundle, precision, sorted({name for name, _ in pairs}))
    path = bundle.root / FOLDER / f"{hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]}.json"
    record = _cached(path, key)
    where = f"calibrated earlier, read from {path}"
    if record is None:
        times, failed = measure(bundle, configs) if len(configs) > 1 else ({}, {})
        if failed and not times:  # none could load it: the first one's sentence says why
            raise BundleError(next(iter(failed.values())))
        skipped += [f"{label} cannot run it ({why})" for label, why in failed.items()]
        default = next(iter(times), next(iter(configs)))  # the first that loaded
        label = pick(times, default) if times else default
        record = {"key": key, "times_s": {n: {str(b): t for b, t in ts.items()} for n, ts in times.items()},
                  "chosen": configs[label][0], "precision": configs[label][1], "skipped": skipped}
        where = f"calibrated now, {_store(path, record)}"
    times = {n: {int(b): t for b, t in ts.items()} for n, ts in record["times_s"].items()}
    chosen, chosen_precision, skipped = record["chosen"], record["precision"], record["skipped"]
    said = chosen if precision != "auto" else f"{chosen} at {chosen_precision}"
    if not times:
        why = f"the only CPU backend that can run it ({'; '.join(skipped)})"
    else:
        default = configs[next(iter(times))]
        verdict = "measured fastest" if (chosen, chosen_precision) != default else \
            f"the default, no other measured {1 / MARGIN:.2g}× faster"
        why = f"{verdict} on {key['cpu']} ({_said(times)}{''.join(f'; {s}' for s in skipped)}; {where})"
    return chosen, chosen_precision, f"auto on the CPU: {said}, {why}", record


def _cached(path: Path, key: dict) -> dict | None:
    try:
        record = read_json(path, "a calibration record")
    except (OSError, VaedeployError):
        return None
    ok = isinstance(record, dict) and record.get("key") == key and record.get("chosen") in ORDER \
        and record.get("precision") in PRECISIONS and isinstance(record.get("skipped"), list) \
        and isinstance(record.get("times_s"), dict)
    return record if ok else None


def _store(path: Path, record: dict) -> str:
    """Write ``record`` to ``path`` under the folder's ownership rule; where it went, or why it did not."""
    try:
        owned.claim(path.parent, CALIBRATION, [path.name])
        write_json(path, record)
    except (OSError, VaedeployError) as e:
        return f"not cached: {str(e).splitlines()[0]}"
    return f"cached in {path}"
