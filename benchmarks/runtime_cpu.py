"""Encode and decode of the demo models on the CPU: PyTorch eager, raw onnxruntime ``session.run``, vaedeploy runtime.

    python benchmarks/runtime_cpu.py                 # times, writes benchmarks/results/runtime_cpu.json, prints table
    python benchmarks/runtime_cpu.py --table         # the docs/runtime.md table from the committed JSON
    python benchmarks/runtime_cpu.py --run RUN_DIR   # a trained run instead of the demo architecture

The demo models are the VAE of ``vaedeploy demo`` (16 latents, MLP 256-256, 8×8 digits) and the AE of the same
shape; latency does not depend on the weights, so without ``--run`` they are trained for one epoch only. Providers
alternate in rounds of a few milliseconds each (``time_interleaved``), so a busy moment on a shared machine hits all
of them alike.

- ``pytorch eager``: the encoder or decoder module on torch tensors under ``inference_mode``, torch threads = cores.
- ``ort default``: ``InferenceSession(path).run`` with onnxruntime's default options, what a user writes first.
- ``ort session.run``: a session with the runtime's tuned options, called raw with the same output names: the
  runtime's wrapper cost is its time over this one.
- ``vaedeploy``: ``Runtime.encode_params(x)`` (encoder graph) and ``Runtime.decode(z)`` on numpy arrays, with their
  input checks. ``encode+noise`` adds the seeded reparameterization of ``Runtime.encode`` (numpy Philox).
Goals on 2 cores: the runtime at batch 1 at least 2.5× faster than eager, at most 15% slower than raw session.run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.common` when run as a script

from benchmarks.common import RESULTS_DIR, machine_info, markdown_table, time_interleaved, write_rows  # noqa: E402

NAME = "runtime_cpu"
BATCHES = (1, 64, 1024)
ITERS = {1: 10000, 64: 2000, 1024: 150}
# calls per provider per round, about 0.5-30 ms of one provider at a time: long enough that a thread pool's spinning
# after a call does not land on the next provider, short enough that a busy moment on the machine hits all of them
BLOCK = {1: 20, 64: 10, 1024: 3}
GOALS = {"speedup_vs_eager_min": 2.5, "overhead_vs_session_run_max": 0.15}


def demo_bundles(tmp: Path, run: str | None) -> dict[str, Path]:
    from vaedeploy.export import export_run

    from vaedeploy.data import load_dataset
    from vaedeploy.train import TrainConfig, train_run

    runs = {}
    if run:
        runs[json.loads((Path(run) / "config.json").read_text())["kind"]] = Path(run)
    else:
        data = load_dataset("digits")
        for kind in ("vae", "ae"):
            train_run(kind, data, tmp / f"{kind}_run", train_config=TrainConfig(epochs=1), progress=False)
            runs[kind] = tmp / f"{kind}_run"
    return {kind: export_run(path, tmp / f"{kind}_bundle") for kind, path in runs.items()}


def eager_module(rt, role: str):
    """The PyTorch module a graph was exported from, rebuilt from the bundle's weights as a user would."""
    from vaedeploy.io import load_tensors
    from vaedeploy.models import build_model

    doc = rt.bundle.manifest["model"]
    module = build_model(doc["kind"], doc["config"])
    module.load_state_dict(load_tensors(rt.bundle.path(doc["weights"])))
    for name in rt.bundle.graph(role)["module"].split("."):
        module = getattr(module, name)
    return module.eval()


def bench_bundle(bundle: Path, scale: float = 1.0, min_seconds: float = 1.0) -> list[dict]:
    import onnxruntime as ort
    import torch

    from vaedeploy import load
    from vaedeploy.runtime.backends.onnxruntime import physical_cores, session_options

    torch.set_num_threads(physical_cores())
    rt = load(bundle, backend="onnxruntime")
    modules = {"encode": eager_module(rt, "encoder"), "decode": eager_module(rt, "decoder")}
    rng = np.random.default_rng(0)
    rows = []
    for op in ("encode", "decode", "encode+noise"):
        if op == "encode+noise" and rt.latent_type != "gaussian":
            continue
        role = "decoder" if op == "decode" else "encoder"
        path, runner = str(rt.bundle.graph(role)["path"]), rt.runners[role]
        default = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        tuned = ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])
        shape = (rt.latent_dim,) if op == "decode" else rt.input_shape
        for batch in BATCHES:
            arrays = [rng.random((batch, *shape), dtype=np.float32) for _ in range(8)]
            tensors = [torch.from_numpy(a) for a in arrays]
            if op == "encode+noise":
                calls = {"vaedeploy": lambda x: rt.encode(x, seed=0)}
            else:
                feed = runner.input_names[0]
                calls = {
                    "pytorch eager": modules[op],
                    "ort default": lambda x, s=default, o=runner.output_names, f=feed: s.run(o, {f: x}),
                    "ort session.run": lambda x, s=tuned, o=runner.output_names, f=feed: s.run(o, {f: x}),
                    "vaedeploy": rt.encode_params if op == "encode" else rt.decode,
                }
            inputs = {name: tensors if name == "pytorch eager" else arrays for name in calls}
            with torch.inference_mode():
                figures = time_interleaved(calls, inputs, block=max(1, int(BLOCK[batch] * scale)), warmup=20,
                                           iters=max(10, int(ITERS[batch] * scale)), min_seconds=min_seconds)
            for provider, fig in figures.items():
                rows.append({"model": rt.kind, "op": op, "batch": batch, "provider": provider, **fig})
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """Batch-1 ratios of p50 latencies against the goals."""
    p50 = {(r["model"], r["op"], r["batch"], r["provider"]): r["p50_ms"] for r in rows}
    out = []
    for (model, op, batch, provider), runtime in p50.items():
        if provider != "vaedeploy" or batch != 1 or op == "encode+noise":
            continue
        speedup = p50[(model, op, batch, "pytorch eager")] / runtime
        overhead = runtime / p50[(model, op, batch, "ort session.run")] - 1
        out.append({
            "model": model, "op": op, "batch": batch, "speedup_vs_eager": speedup, "overhead_vs_session_run": overhead,
            "met": speedup >= GOALS["speedup_vs_eager_min"] and overhead <= GOALS["overhead_vs_session_run_max"],
        })
    return out


def table(doc: dict) -> str:
    """The docs/runtime.md table: p50 / p99 in milliseconds per provider, and the runtime's ratios."""
    rows = doc["rows"]
    index = {(r["model"], r["op"], r["batch"], r["provider"]): r for r in rows}
    lines = []
    for model, op, batch in dict.fromkeys((r["model"], r["op"], r["batch"]) for r in rows):
        def cell(provider, key=(model, op, batch)):
            r = index.get((*key, provider))
            return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}" if r else "–"

        runtime = index[(model, op, batch, "vaedeploy")]["p50_ms"]
        eager = index.get((model, op, batch, "pytorch eager"))
        raw = index.get((model, op, batch, "ort session.run"))
        lines.append([model, op, batch, cell("pytorch eager"), cell("ort default"), cell("ort session.run"),
                      cell("vaedeploy"), f"{eager['p50_ms'] / runtime:.2f}×" if eager else "–",
                      f"{(runtime / raw['p50_ms'] - 1) * 100:+.1f}%" if raw else "–"])
    headers = ["model", "op", "batch", "PyTorch eager p50/p99 ms", "ORT default", "ORT session.run", "vaedeploy",
               "vaedeploy vs eager", "vaedeploy vs session.run"]
    m = doc["machine"]
    caption = (f"{m['cpu']}, {m['cpu_cores_available']} cores available, onnxruntime "
               f"{m['versions'].get('onnxruntime')}, torch {m['versions'].get('torch')}; {doc['date']}")
    return markdown_table(headers, lines) + f"\n\nMeasured on {caption}."


def run(bundles: dict[str, Path], scale: float = 1.0, min_seconds: float = 1.0) -> dict:
    rows = [row for bundle in bundles.values() for row in bench_bundle(bundle, scale, min_seconds)]
    return {"rows": rows, "goals": goals(rows), "goal_thresholds": GOALS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run directory to export and time (default: the demo models)")
    parser.add_argument("--bundle", action="append", default=[], help="time these bundles (repeatable)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls (the demo's table)")
    parser.add_argument("--json", help="write here instead of benchmarks/results/runtime_cpu.json")
    parser.add_argument("--table", action="store_true", help="print the table of the committed JSON and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS_DIR / f"{NAME}.json").read_text())))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {str(b): Path(b) for b in args.bundle} or demo_bundles(Path(tmp), args.run)
        doc = run(bundles, scale=0.1 if args.quick else 1.0, min_seconds=0.0 if args.quick else 1.0)
    meta = {"goals": doc["goals"], "goal_thresholds": GOALS}
    if args.json:  # the demo's quick run: beside the demo's files, not over the committed results
        from vaedeploy.io import write_json

        doc = {"benchmark": NAME, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), **meta, "rows": doc["rows"]}
        write_json(args.json, doc)
    else:
        doc = json.loads(write_rows(NAME, doc["rows"], meta=meta).read_text())
    print(table(doc))
    for g in doc["goals"]:
        print(f"{g['model']} {g['op']} batch 1: {g['speedup_vs_eager']:.2f}× eager, "
              f"{g['overhead_vs_session_run'] * 100:+.1f}% vs session.run: {'met' if g['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
