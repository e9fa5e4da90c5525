"""The GPU runtime against PyTorch eager on one CUDA device: ``sample`` and ``encode`` of two models, batch 1 to 16,384.

    python benchmarks/gpu_runtime.py            # writes benchmarks/results/gpu_runtime.json and .png, prints the table
    python benchmarks/gpu_runtime.py --quick    # 100 calls a figure: a check that the script runs end to end
    python benchmarks/gpu_runtime.py --table    # the table of the committed JSON
    python benchmarks/gpu_runtime.py --bundles DIR --out FILE   # bundles exported beforehand, the JSON elsewhere

**Not yet run**: written where no GPU was available; it refuses to run without CUDA. No figure of it exists yet.

The models: the demo VAE (``vae`` on digits: 16 latents, MLP 256-256, 8×8) and the mnist5k conv VAE (``vae`` on
mnist5k, ``backbone=conv``: channels 32-64, then 256-256, 16 latents, 28×28), each trained one epoch (latency does
not depend on the weights) and exported with ``max_batch`` 16,384, so the buckets are 1, 2, 4, … 16,384.

Paths, each through ``vaedeploy.load(bundle, backend="torch", device="cuda", ...)``:
- ``eager``: ``cuda_graphs=False``, the modules and the Triton noise kernel launched one by one (PyTorch eager);
- ``graphs``: the default, one CUDA graph per bucket capturing the whole call (captured by the warm-up calls);
- ``graphs+out``: the same with a preallocated ``out=``, so no result tensor is allocated per call.
Inputs are already on the device (8 tensors, rotated). Every call is timed three ways, p50 and p99 over at least
1,000 calls (100 with ``--quick``): ``host`` is perf_counter around the call alone (what the calling thread pays to
enqueue it), ``device`` is CUDA events recorded on the current stream before and after it, ``serial`` is perf_counter
from before the call to after the stream is synchronized (a caller that waits for each result).

The floor of an op at batch n: the module it runs (decoder for ``sample``, encoder for ``encode``) at n rows can take
no less than max(compute, memory), where compute = its linear-layer FLOPs / the device's measured fp32 matmul rate
(TF32 off: torch's default for matmul) + its convolution FLOPs / the measured TF32 rate (cuDNN's default for
convolutions), FLOPs counted by ``torch.utils.flop_counter``, and memory = (its parameters + its input + its outputs
in bytes) / the measured device-to-device copy bandwidth (bytes read + written). The noise kernel and the
reparameterization are left out of the floor (a few bytes a row).
Goals (issue 15): ``sample`` at batch 1, p50 ``serial`` ≤ 20 µs and ≥ 4× faster than eager's; at batch 16,384 the
device p50 within 1.5× of the floor.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.common` when run as a script

from benchmarks.common import RESULTS_DIR, machine_info, markdown_table, summarize, write_rows  # noqa: E402

NAME = "gpu_runtime"
BATCHES = (1, 8, 64, 1024, 16384)
MAX_BATCH = 16384
CALLS, QUICK_CALLS, WARMUP_CALLS = 1000, 100, 20
MODELS = {  # name → (data, model config)
    "demo vae": ("digits", {}),
    "mnist5k conv vae": ("mnist5k", {"backbone": "conv", "channels": [32, 64], "hidden": [256, 256]}),
}
PATHS = ("eager", "graphs", "graphs+out")
GOALS = {"sample_batch1_serial_p50_us_max": 20.0, "sample_batch1_speedup_vs_eager_min": 4.0,
         "batch16384_device_p50_of_floor_max": 1.5}


def bundle_path(root: Path, name: str) -> Path:
    """Where ``bundles(root)`` puts the bundle of model ``name`` (and where ``--bundles`` looks for it)."""
    return root / f"{name.replace(' ', '_')}_bundle"


def bundles(tmp: Path) -> dict[str, Path]:
    """Train and export every model of MODELS into ``tmp`` (the runs beside the bundles)."""
    from vaedeploy.export import export_run

    from vaedeploy.data import load_dataset
    from vaedeploy.train import TrainConfig, train_run

    made = {}
    for name, (data, config) in MODELS.items():
        run = tmp / f"{name.replace(' ', '_')}_run"
        train_run("vae", load_dataset(data), run, model_config=config, train_config=TrainConfig(epochs=1),
                  progress=False)
        made[name] = export_run(run, bundle_path(tmp, name), max_batch=MAX_BATCH)
    return made


def exported_bundles(root: Path) -> dict[str, Path]:
    """The bundles of MODELS that ``bundles(root)`` wrote earlier (e.g. on a CPU machine, before a GPU run)."""
    found = {name: bundle_path(root, name) for name in MODELS}
    missing = [str(path) for path in found.values() if not (path / "manifest.json").is_file()]
    if missing:
        sys.exit(f"--bundles {root}: expected a bundle (manifest.json) at {', '.join(missing)}; none is there")
    return found


def device_rates(torch) -> dict:
    """The device's measured copy bandwidth (bytes read + written per second) and fp32 and TF32 matmul rates."""
    def best_seconds(fn, repeats: int = 20) -> float:
        fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        return min(times)

    src = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB, far past the L2 cache
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / best_seconds(lambda: dst.copy_(src))
    a, b = torch.randn(8192, 8192, device="cuda"), torch.randn(8192, 8192, device="cuda")
    flops = 2 * 8192**3
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        fp32 = flops / best_seconds(lambda: a @ b, 5)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32_rate = flops / best_seconds(lambda: a @ b, 5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"copy_bytes_per_s": copy, "fp32_matmul_flops_per_s": fp32, "tf32_matmul_flops_per_s": tf32_rate}


def floor(torch, rt, role: str, batch: int, rates: dict) -> dict:
    """The floor of one graph's module at ``batch`` rows (see the module doc), in microseconds, with its terms."""
    from torch.utils.flop_counter import FlopCounterMode

    module = rt._backend.model()
    for name in rt.bundle.graph(role)["module"].split("."):
        module = getattr(module, name)
    shape = rt.input_shape if role == "encoder" else (rt.latent_dim,)
    x = torch.zeros((batch, *shape), device="cuda")
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        out = module(x)
    by_op = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    conv = sum(n for op, n in by_op.items() if "convolution" in op)
    linear = sum(by_op.values()) - conv
    outputs = (out,) if isinstance(out, torch.Tensor) else out
    moved = (sum(p.numel() * p.element_size() for p in module.parameters()) + x.numel() * 4
             + sum(o.numel() * o.element_size() for o in outputs))
    compute = linear / rates["fp32_matmul_flops_per_s"] + conv / rates["tf32_matmul_flops_per_s"]
    memory = moved / rates["copy_bytes_per_s"]
    return {"floor_us": max(compute, memory) * 1e6, "compute_us": compute * 1e6, "memory_us": memory * 1e6,
            "linear_flops": linear, "conv_flops": conv, "bytes": moved}


def time_calls(torch, call, inputs: list, calls: int) -> dict:
    """host / device / serial figures (milliseconds, ``summarize``) of ``calls`` calls, after a warm-up."""
    stream = torch.cuda.current_stream()
    for i in range(WARMUP_CALLS):
        call(inputs[i % len(inputs)])
    stream.synchronize()
    before = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    after = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    host, serial = [], []
    for i in range(calls):
        x = inputs[i % len(inputs)]
        before[i].record(stream)
        t0 = time.perf_counter()
        call(x)
        t1 = time.perf_counter()
        after[i].record(stream)
        stream.synchronize()
        t2 = time.perf_counter()
        host.append(t1 - t0)
        serial.append(t2 - t0)
    device = [b.elapsed_time(a) / 1e3 for b, a in zip(before, after)]
    return {"host": summarize(host), "device": summarize(device), "serial": summarize(serial)}


def bench(torch, name: str, bundle: Path, rates: dict, calls: int, machine: dict) -> list[dict]:
    from vaedeploy import load

    runtimes = {"eager": load(bundle, backend="torch", device="cuda", cuda_graphs=False),
                "graphs": load(bundle, backend="torch", device="cuda")}
    rows = []
    for op, role in (("sample", "decoder"), ("encode", "encoder")):
        for batch in BATCHES:
            generator = torch.Generator(device="cuda").manual_seed(batch)
            shape = runtimes["eager"].input_shape
            images = [torch.rand((batch, *shape), device="cuda", generator=generator) for _ in range(8)]
            bound = floor(torch, runtimes["eager"], role, batch, rates)
            for path in PATHS:
                rt = runtimes["eager" if path == "eager" else "graphs"]
                out_shape = (batch, *rt.input_shape) if op == "sample" else (batch, rt.latent_dim)
                out = torch.empty(out_shape, device="cuda") if path == "graphs+out" else None
                if op == "sample":  # a fresh seed every call: each replay draws new noise
                    seeds = iter(range(2**62))

                    def call(_, rt=rt, out=out, n=batch, seeds=seeds):
                        return rt.sample(n, seed=next(seeds), out=out)

                    inputs = [None]
                else:
                    def call(x, rt=rt, out=out):
                        return rt.encode(x, seed=1, out=out)

                    inputs = images
                figures = time_calls(torch, call, inputs, calls)
                rows.append({"model": name, "op": op, "batch": batch, "path": path, "calls": calls, **figures,
                             "floor": bound, "device_p50_of_floor": figures["device"]["p50_ms"] * 1e3
                             / bound["floor_us"], "machine": machine})
        print(f"{name} {op}: done", flush=True)
    described = runtimes["graphs"].describe()["buckets"]
    for row in rows:
        if row["model"] == name and row["path"] != "eager":
            row["graph_pool_bytes"] = described["graph_pool_bytes"]
    for rt in runtimes.values():
        rt.close()
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """The issue's goals, met or missed, from the rows: each with its figure and threshold."""
    at = {(r["model"], r["op"], r["batch"], r["path"]): r for r in rows}
    out = []

    def goal(model, text, value, threshold, met):
        out.append({"model": model, "goal": f"{model}: {text}", "value": value, "threshold": threshold, "met": met})

    for model in dict.fromkeys(r["model"] for r in rows):
        graphs, eager = at[(model, "sample", 1, "graphs")], at[(model, "sample", 1, "eager")]
        serial = graphs["serial"]["p50_ms"] * 1e3
        speedup = eager["serial"]["p50_ms"] / graphs["serial"]["p50_ms"]
        limit, least, most = (GOALS["sample_batch1_serial_p50_us_max"], GOALS["sample_batch1_speedup_vs_eager_min"],
                              GOALS["batch16384_device_p50_of_floor_max"])
        goal(model, "sample batch 1: serial p50 ≤ 20 µs (value in µs)", serial, limit, serial <= limit)
        goal(model, "sample batch 1: ≥ 4× faster than eager (serial p50)", speedup, least, speedup >= least)
        big = at[(model, "sample", MAX_BATCH, "graphs")]["device_p50_of_floor"]
        goal(model, "sample batch 16384: device p50 within 1.5× of the floor", big, most, big <= most)
    return out


def table(doc: dict) -> str:
    """p50 / p99 in microseconds: serial and device for eager and graphs, graphs' host time, the floor."""
    at = {(r["model"], r["op"], r["batch"], r["path"]): r for r in doc["rows"]}

    def cell(row, kind):
        return f"{row[kind]['p50_ms'] * 1e3:.1f} / {row[kind]['p99_ms'] * 1e3:.1f}"

    lines = []
    for model, op, batch in dict.fromkeys((r["model"], r["op"], r["batch"]) for r in doc["rows"]):
        eager, graphs = at[(model, op, batch, "eager")], at[(model, op, batch, "graphs")]
        lines.append([model, op, batch, cell(eager, "serial"), cell(graphs, "serial"), cell(graphs, "host"),
                      cell(eager, "device"), cell(graphs, "device"),
                      f"{eager['serial']['p50_ms'] / graphs['serial']['p50_ms']:.1f}×",
                      f"{graphs['floor']['floor_us']:.1f}", f"{graphs['device_p50_of_floor']:.2f}×"])
    headers = ["model", "op", "batch", "eager serial p50/p99 µs", "graphs serial", "graphs host", "eager device",
               "graphs device", "graphs vs eager (serial)", "floor µs", "graphs device / floor"]
    m = doc["machine"]
    caption = (f"{m['gpu']['name']} (driver {doc.get('driver')}, CUDA {m['gpu']['cuda']}), torch "
               f"{m['versions'].get('torch')}, triton {m['versions'].get('triton')}; {doc['date']}")
    return markdown_table(headers, lines) + f"\n\nMeasured on {caption}."


def plot(rows: list[dict], path: Path) -> None:
    from vaedeploy.plots import pyplot, save_figure

    plt = pyplot()
    models, ops = list(dict.fromkeys(r["model"] for r in rows)), ("sample", "encode")
    fig, axes = plt.subplots(len(models), len(ops), figsize=(6 * len(ops), 4 * len(models)), squeeze=False)
    for ax_row, model in zip(axes, models):
        for ax, op in zip(ax_row, ops):
            for path_name, color in (("eager", "C0"), ("graphs", "C2")):
                for kind, line in (("serial", "o-"), ("device", "s:")):
                    points = [(r["batch"], r[kind]["p50_ms"] * 1e3) for r in rows
                              if (r["model"], r["op"], r["path"]) == (model, op, path_name)]
                    ax.plot(*zip(*points), line, color=color, label=f"{path_name} {kind} p50")
            floor_points = [(r["batch"], r["floor"]["floor_us"]) for r in rows
                            if (r["model"], r["op"], r["path"]) == (model, op, "graphs")]
            ax.plot(*zip(*floor_points), "k--", label="floor")
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="µs", title=f"{model}: {op}")
            ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0]['machine']['gpu']['name']}, driver {rows[0]['machine'].get('driver')}")
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls a figure instead of {CALLS}")
    parser.add_argument("--table", action="store_true", help="print the table of the committed JSON and exit")
    parser.add_argument("--bundles", type=Path, help="measure the bundles that bundles(DIR) exported there "
                                                     "(benchmarks/gpu_check.py prepare) instead of training them")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json",
                        help="the JSON result (default benchmarks/results/gpu_runtime.json; its PNG beside it)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_runtime needs a CUDA device and found none (torch.cuda.is_available() is False); its figures "
                 "are GPU-only")
    machine = machine_info()
    rates = device_rates(torch)
    calls = QUICK_CALLS if args.quick else CALLS
    with tempfile.TemporaryDirectory() as tmp:
        made = exported_bundles(args.bundles) if args.bundles else bundles(Path(tmp))
        rows = [row for name, bundle in made.items() for row in bench(torch, name, bundle, rates, calls, machine)]
    meta = {"driver": (machine["gpu"] or {}).get("driver"), "device_rates": rates, "goals": goals(rows),
            "goal_thresholds": GOALS}
    doc = json.loads(write_rows(NAME, rows, meta=meta, path=args.out).read_text())
    plot(rows, args.out.with_suffix(".png"))
    print(table(doc))
    for g in doc["goals"]:
        print(f"{g['goal']}: {g['value']:.2f}: {'met' if g['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
