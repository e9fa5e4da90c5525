"""Where ONNX Runtime's time goes on a full-size conv decoder, against OpenVINO f32 on the same graph (issue 30).

    python benchmarks/ort_profile.py --work DIR [--model taesd] [--calls 3] [--out benchmarks/results/ort_profile.json]

The decoder (``benchmarks/peers_full.py``'s bundle, imported once into ``--work``) at its measured size, batch 1:

1. ONNX Runtime with the runtime's session options and ``enable_profiling``: each node's kernel time over ``--calls``
   calls (after one warm-up), summed by op type and, for Conv, by shape (input, weight), with each shape's FLOP rate;
2. OpenVINO f32 (``PERF_COUNT``): its per-layer times, summed by layer type, and the same calls' wall time;
3. the session options that could close the gap in fp32, each a session of its own, timed interleaved (min and
   median of ``--calls``): the graph optimization levels (``ORT_ENABLE_ALL`` is the one with the NCHWc layout
   transformer), one thread against one per core, flush-to-zero, and every dimension fixed at the call's
   (``add_free_dimension_override_by_name``). ONNX Runtime 1.32's CPU provider has no NHWC option for float Conv
   (its NHWC transformer is for quantized and fp16 kernels): NCHWc is its channels-blocked layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from benchmarks.common import RESULTS_DIR  # noqa: E402


def variants(graph: dict, side: int, factor: int) -> dict:
    """name → (the session options' changes from the runtime's, config entries) to try."""
    import onnxruntime as ort

    latent = side // factor
    axes = {"batch": 1, "latent_height": latent, "latent_width": latent, "height": side, "width": side}

    def fixed(options):
        for name, value in axes.items():
            options.add_free_dimension_override_by_name(name, value)

    def level(value):
        return lambda options: setattr(options, "graph_optimization_level", value)

    return {"runtime's options (ORT_ENABLE_ALL: NCHWc)": (None, {}),
            "ORT_ENABLE_EXTENDED (no NCHWc layout)": (level(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED), {}),
            "ORT_ENABLE_BASIC": (level(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC), {}),
            "1 intra-op thread": (lambda options: setattr(options, "intra_op_num_threads", 1), {}),
            "every dimension fixed": (fixed, {}),
            "flush-to-zero": (None, {"session.set_denormal_as_zero": "1"})}


def session(path: str, change=None, config: dict | None = None, profile_prefix: str | None = None):
    import onnxruntime as ort

    from vaedeploy.runtime.backends.onnxruntime import session_options

    options = session_options(config=config)
    if change is not None:
        change(options)
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


CONVS = ("Conv", "FusedConv")  # FusedConv: a Conv with its activation fused (ORT_ENABLE_EXTENDED and up)


def _shape(entry: dict) -> list[int]:
    return next(iter(entry.values()))


def conv_flops(args: dict) -> float:
    """2 · output elements · (input channels / groups) · kernel area: from a profile event's input and output shapes
    (input, weight[, bias]); a weight's second axis is already the input channels per group. These are the shapes
    the kernel ran: an NCHWc Conv's channels padded to its block (8 floats with AVX2, 16 with AVX-512)."""
    weight, output = _shape(args["input_type_shape"][1]), _shape(args["output_type_shape"][0])
    return 2.0 * float(np.prod(output)) * float(np.prod(weight[1:]))


def summarize_profile(events: list[dict], calls: int) -> dict:
    """Kernel time per call by op type, and the convolutions' (``CONVS``, the NCHWc Conv among them) by shape with
    their FLOP rate."""
    by_op, by_shape = {}, {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        args, ms = event["args"], event["dur"] / 1e3 / calls
        op = args["op_name"]
        by_op[op] = by_op.get(op, 0.0) + ms
        if op in CONVS:
            key = (json.dumps(_shape(args["input_type_shape"][0])), json.dumps(_shape(args["input_type_shape"][1])))
            entry = by_shape.setdefault(key, {"ms": 0.0, "flop": 0.0, "nodes": 0})
            entry["ms"] += ms
            entry["flop"] += conv_flops(args) / calls
            entry["nodes"] += 1
    total = sum(by_op.values())
    ops = [{"op": op, "ms": ms, "share": ms / total} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])]
    shapes = [{"input": json.loads(i), "weight": json.loads(w), "nodes": e["nodes"] // calls, "ms": e["ms"],
               "gflop": e["flop"] / 1e9, "gflop_per_s": e["flop"] / e["ms"] * 1e3 / 1e9}
              for (i, w), e in sorted(by_shape.items(), key=lambda kv: -kv[1]["ms"])]
    return {"kernel_ms_per_call": total, "by_op": ops, "conv_by_shape": shapes}


def ort_profile(path: str, z: np.ndarray, calls: int, folder: Path) -> dict:
    """The runtime's session with profiling on: one warm-up call (it pays for the first shapes: left out), then
    ``calls`` calls summed by ``summarize_profile``."""
    sess = session(path, profile_prefix=str(folder / "ort"))
    feed = {sess.get_inputs()[0].name: z}
    for _ in range(calls + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    return summarize_profile([e for e in events if e.get("ts", 0) > runs[0]], calls)


def openvino_profile(path: str, z: np.ndarray, calls: int) -> dict | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    from vaedeploy.runtime.backends.onnxruntime import physical_cores

    compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": physical_cores(), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: z})
    by_type, walls = {}, []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: z})
        walls.append(time.perf_counter() - start)
        for info in request.profiling_info:
            by_type[info.node_type] = by_type.get(info.node_type, 0.0) + info.real_time.total_seconds() * 1e3 / calls
    total = sum(by_type.values())
    return {"wall_ms": {"min": min(walls) * 1e3, "median": float(np.median(walls)) * 1e3},
            "kernel_ms_per_call": total,
            "by_type": [{"type": t, "ms": ms, "share": ms / total} for t, ms in
                        sorted(by_type.items(), key=lambda kv: -kv[1]) if ms > 0]}


def time_variants(path: str, z: np.ndarray, tried: dict, calls: int) -> list[dict]:
    """Each variant's session, timed interleaved: its min and median over ``calls`` rounds."""
    sessions = {name: session(path, change, config) for name, (change, config) in tried.items()}
    feeds = {name: {s.get_inputs()[0].name: z} for name, s in sessions.items()}
    times = {name: [] for name in sessions}
    for name, s in sessions.items():
        s.run(None, feeds[name])
    names = list(sessions)
    for r in range(calls):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return [{"variant": name, "min_ms": min(t) * 1e3, "median_ms": float(np.median(t)) * 1e3,
             "times_ms": [x * 1e3 for x in t]} for name, t in times.items()]


def measure(name: str, work: Path, calls: int) -> dict:
    from vaedeploy.export.diffusers import photographs

    from benchmarks import peers_full
    from vaedeploy import load
    from vaedeploy.bench.environment import environment

    env = environment()
    side = peers_full.SIDES[name]
    _, bundle = peers_full.bundle_of(name, work, bf16=False)
    with load(bundle, backend="onnxruntime") as rt:
        z = rt.encode(photographs(side, side, 1), seed=0)
        graph, factor = rt.bundle.graph("decoder"), rt.bundle.downsample
    path = str(graph["path"])
    with tempfile.TemporaryDirectory() as folder:
        profile = ort_profile(path, z, calls, Path(folder))
    doc = {"benchmark": "onnxruntime profile", "environment": env, "model": name, "side": side, "calls": calls,
           "onnxruntime": profile, "openvino_f32": openvino_profile(path, z, calls),
           "variants": time_variants(path, z, variants(graph, side, factor), calls)}
    doc["environment"]["load_average_at_end"] = environment()["load_average_at_start"]
    return doc


def main(argv=None) -> int:
    from vaedeploy.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the imported bundle is kept and reused")
    parser.add_argument("--model", default="taesd", choices=("taesd", "sd"))
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ort_profile.json")
    args = parser.parse_args(argv)
    doc = measure(args.model, args.work, args.calls)
    write_json(args.out, doc)
    for row in doc["onnxruntime"]["by_op"][:6]:
        print(f"ort {row['op']}: {row['ms']:.1f} ms ({row['share']:.0%})")
    for row in doc["variants"]:
        print(f"{row['variant']}: {row['min_ms']:.0f}–{row['median_ms']:.0f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
