"""ONNX Runtime against PyTorch on every exported graph, failing hard (docs/bundle.md, "Validation").

Each graph is run at batch sizes 1, 2, 7, 64 and the bundle's maximum, on each input set it was given (real data,
the real encodings of that data, N(0, I) latents), in every precision exported. Every output is compared with the
float32 PyTorch module: max-abs error and relative L2 error ``‖ort − torch‖ / ‖torch‖``, both within the tolerance of
the graph's precision, and the PSNR over the range of PyTorch's output (reported: what a user reads of an image's
loss). A NaN or Inf where PyTorch is finite fails too (NaN never compares as within tolerance), and the failure names
the first node of the graph whose output is not finite (``overflow.py``: an fp16 overflow).

bf16 has no graph of its own (ONNX's Conv and Gemm take no bfloat16; OpenVINO and PyTorch lower the fp32 graph), so
its variant is validated as the graph's module computed in bfloat16 throughout (``Bf16Module``: weights and
activations), the most it loses; a backend that keeps some sums in float32, as OpenVINO's AMX kernels do, loses less.

A graph that takes any image size (``GraphSpec.at_size``) is also run at every size of ``sizes`` (the bundle's
reference size, both corners of its ``input.size`` range and two non-square sizes: ``bundle.ImageSizes``) at batch
sizes 1 and 2, on the inputs ``at_size`` makes, against PyTorch as above; the report and the manifest list the sizes.

Each graph must also treat rows on their own: the runtime splits large batches and a server joins requests, so the
largest batch is run again in two pieces (its first row, then the rest) and must give the same outputs within the
same tolerance. A module that mixes rows (``x - x.mean(0)``, batch statistics) fails here rather than in production.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from vaedeploy.kernels import vq_nearest_numpy

from vaedeploy.errors import JobFailed
from vaedeploy.models.spec import ExportSpec, GraphSpec

from .overflow import first_overflow

BATCH_SIZES = (1, 2, 7, 64)
# fp16 keeps 11 significant bits: about 1e-3 relative per value, more after a few layers. A graph may set its own
# (GraphSpec.tolerances).
# bf16 keeps 8: eight times fp16's error per value.
TOLERANCES = {"fp32": {"max_abs": 1e-4, "rel_l2": 1e-5}, "fp16": {"max_abs": 5e-2, "rel_l2": 1e-2},
              "bf16": {"max_abs": 4e-1, "rel_l2": 8e-2}}
# Least share of VQ indices on which ONNX Runtime and PyTorch must agree, per precision. An index can only flip where
# z_e lies within the graph's error (≤ 1e-4 in fp32, ≤ 5e-2 in fp16) of the boundary between two codes: a
# near-tie, rare in fp32 (one flip in a thousand vectors allowed) and less rare in fp16, whose error is 500× larger.
# A wrong graph moves most vectors to other codes, far below either threshold.
VQ_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.95}
PSNR_CAP = 200.0  # dB: what identical outputs (and float32 round-off on a tiny range) report


class ValidationError(JobFailed):
    """An exported graph disagrees with PyTorch beyond tolerance; ``report`` is the full validation document."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def batch_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in BATCH_SIZES if b <= max_batch} | {max_batch})


def errors(actual: np.ndarray, expected: np.ndarray) -> dict:
    diff = actual.astype(np.float64) - expected.astype(np.float64)
    expected = expected.astype(np.float64)
    norm = float(np.linalg.norm(expected))
    mse = float(np.mean(diff ** 2)) if diff.size else 0.0
    peak = float(np.ptp(expected)) if expected.size else 0.0
    return {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff)) / max(norm, 1e-12),
        # over the output's own range (an image's mean in [0, 1] reads as the usual PSNR); capped where equal
        "psnr_db": min(PSNR_CAP, 10 * math.log10(peak ** 2 / mse)) if mse > 0 and peak > 0 else PSNR_CAP,
    }


class Bf16Module:
    """A graph's module computed in bfloat16 (weights and activations), float32 at its edges, called like an ONNX
    Runtime session: what a bf16 variant is validated with."""

    def __init__(self, module, input_names: list[str], output_names: list[str]):
        import copy

        self.module, self.input_names, self.output_names = copy.deepcopy(module).to(torch.bfloat16), input_names, \
            output_names

    def run(self, output_names, feed: dict) -> list:
        inputs = [torch.from_numpy(feed[name]) for name in self.input_names]
        with torch.no_grad():
            out = self.module(*(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs))
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        by_name = dict(zip(self.output_names, out))
        return [by_name[name].float().numpy() for name in output_names or self.output_names]


def cpu_session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _trace_overflow(check: dict, path: Path, feed: dict, traced: list) -> None:
    """Name the first node that goes non-finite (``overflow.first_overflow``: an fp16 graph's overflow, SDXL's
    failure) in ``check`` when an output of it holds NaN or Inf, once per graph and precision (``traced``); bf16 runs
    no graph of its own, so it has no node to name."""
    if traced or check["precision"] == "bf16" or all(math.isfinite(o["max_abs"]) or "note" in o
                                                     for o in check["outputs"].values()):
        return
    overflow = first_overflow(path, feed)
    check["overflow"] = str(overflow) if overflow else "ONNX Runtime names no node whose output is not finite"
    traced.append(check)


def _compare(case: GraphSpec, session, output_names, inputs, tolerance) -> dict:
    """Each output of the graph against the PyTorch module on ``inputs``: max-abs and relative L2 error, passed."""
    with torch.no_grad():
        expected = case.module(*(torch.from_numpy(a) for a in inputs))
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    actual = session.run(output_names, dict(zip(case.input_names, inputs)))
    outputs = {}
    for name, a, e in zip(output_names, actual, expected):
        e = e.numpy()
        if a.shape != e.shape:
            outputs[name] = {"max_abs": math.inf, "rel_l2": math.inf, "passed": False,
                             "note": f"shape {list(a.shape)}, PyTorch gives {list(e.shape)}"}
            continue
        err = errors(a, e)
        err["passed"] = all(err[k] <= tolerance[k] for k in tolerance)  # False for NaN
        outputs[name] = err
    return outputs


def validate_graphs(graphs: list[GraphSpec], files: dict[str, dict[str, str]], root, max_batch: int,
                    sizes=()) -> dict:
    """Run every graph (its files: role → precision → ONNX file in ``root``) at every batch size and precision on
    each of its input sets, and a graph that takes any image size at each (H, W) of ``sizes`` too; return the report
    (``passed`` is the verdict)."""
    root, batches = Path(root), batch_sizes(max_batch)
    checks, apart = [], []  # against PyTorch; the largest batch against its rows run apart (ONNX Runtime both)
    for case in graphs:
        module = case.module.eval()
        for precision, file in files[case.role].items():
            session = cpu_session(root / file)
            output_names = [o.name for o in session.get_outputs()]
            if precision == "bf16":
                session = Bf16Module(module, case.input_names, output_names)
            tolerance = case.tolerances.get(precision, TOLERANCES[precision])
            traced = []  # the first check of this graph and precision with a non-finite output, traced to its node
            for label, arrays in case.input_sets.items():
                for b in batches:
                    inputs = [np.ascontiguousarray(a[:b]) for a in arrays]
                    outputs = _compare(case, session, output_names, inputs, tolerance)
                    checks.append({"graph": case.role, "precision": precision, "inputs": label, "batch": b,
                                   "outputs": outputs, "passed": all(o["passed"] for o in outputs.values())})
                    _trace_overflow(checks[-1], root / file, dict(zip(case.input_names, inputs)), traced)
                if batches[-1] > 1:
                    apart.append(_rows_on_their_own(case, session, output_names, arrays, batches[-1], precision,
                                                     label, tolerance))
            for h, w in sizes if case.at_size is not None else ():
                arrays = case.at_size(h, w)
                for b in (1, 2):
                    inputs = [np.ascontiguousarray(a[:b]) for a in arrays]
                    outputs = _compare(case, session, output_names, inputs, tolerance)
                    checks.append({"graph": case.role, "precision": precision, "inputs": f"size {h}×{w}", "batch": b,
                                   "outputs": outputs, "passed": all(o["passed"] for o in outputs.values())})
                    _trace_overflow(checks[-1], root / file, dict(zip(case.input_names, inputs)), traced)
    failures = [f"{c['graph']} {c['precision']} on {c['inputs']} at batch {c['batch']}: "
                + ("rows depend on the rest of the batch (each row must be computed on its own: the runtime splits "
                   "batches), " if c in apart else "")
                + ", ".join(f"{n} max_abs={o['max_abs']:.3g} rel_l2={o['rel_l2']:.3g}"
                            for n, o in c["outputs"].items() if not o["passed"])
                + (f"; NaN or Inf in the output: {c['overflow']}" if "overflow" in c else "")
                for c in [*checks, *apart] if not c["passed"]]
    worst = {}
    for c in checks:
        for name, o in c["outputs"].items():
            key = f"{c['graph']}.{c['precision']}.{name}"
            prev = worst.setdefault(key, {"max_abs": 0.0, "rel_l2": 0.0, "psnr_db": PSNR_CAP})
            for k in ("max_abs", "rel_l2"):
                prev[k] = max(prev[k], o[k]) if not math.isnan(o[k]) else math.nan
            prev["psnr_db"] = min(prev["psnr_db"], o.get("psnr_db", PSNR_CAP))
    return {
        "passed": not failures,
        "reference": "PyTorch float32 modules (CPU)",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider (bf16: PyTorch {torch.__version__}, the module "
                   "in bfloat16)",
        "batch_sizes": batches,
        "sizes": [list(size) for size in sizes],  # the (H, W) each graph that takes any size was validated at
        "tolerances": TOLERANCES,
        "worst": worst,
        "failures": failures,
        "extra": {},  # checks beyond per-output errors, filled in by the bundle writer (the VQ index agreement)
        "checks": checks,
        "rows_apart": apart,
    }


def _rows_on_their_own(case: GraphSpec, session, output_names, arrays, b: int, precision: str, label: str,
                       tolerance: dict) -> dict:
    """The check that batch b gives the outputs of its first row and its other b - 1 rows run apart."""
    feed = lambda rows: dict(zip(case.input_names, (np.ascontiguousarray(a[rows]) for a in arrays)))  # noqa: E731
    whole = session.run(output_names, feed(slice(0, b)))
    pieces = [np.concatenate(parts) for parts in zip(session.run(output_names, feed(slice(0, 1))),
                                                     session.run(output_names, feed(slice(1, b))))]
    outputs = {}
    for name, a, e in zip(output_names, pieces, whole):
        err = errors(a, e)
        err["passed"] = all(err[k] <= tolerance[k] for k in tolerance)
        outputs[name] = err
    return {"graph": case.role, "precision": precision, "inputs": f"{label}, first row apart", "batch": b,
            "outputs": outputs, "passed": all(o["passed"] for o in outputs.values())}


def summary(report: dict) -> dict:
    """The part of the report that goes into the manifest."""
    return {k: report[k] for k in ("passed", "runtime", "batch_sizes", "sizes", "tolerances", "worst", "extra")}


def vq_index_agreement(spec: ExportSpec, files: dict[str, dict[str, str]], root, max_batch: int) -> dict:
    """Share of latent vectors whose nearest code is the same from ONNX Runtime's z_e and from PyTorch's: the check
    every ``vq`` bundle gets, on the encoder's real data at every batch size and precision."""
    encoder = next(g for g in spec.graphs if g.role == "encoder")
    codebook = spec.arrays[spec.latent["codebook"]]
    data = next(iter(encoder.input_sets.values()))[0]

    def codes(z_e: np.ndarray) -> np.ndarray:
        return vq_nearest_numpy(np.ascontiguousarray(z_e.transpose(0, 2, 3, 1).reshape(-1, codebook.shape[1])),
                                codebook)[0]

    results, failures = {}, []
    for precision, file in files["encoder"].items():
        graph = cpu_session(Path(root) / file)
        if precision == "bf16":
            graph = Bf16Module(encoder.module, encoder.input_names, encoder.output_names)
        for b in batch_sizes(max_batch):
            with torch.no_grad():
                expected = codes(encoder.module(torch.from_numpy(data[:b])).numpy())
            got = codes(graph.run(None, {"x": data[:b]})[0])
            rate = float((got == expected).mean())
            results[f"{precision}@{b}"] = {"rate": rate, "vectors": int(expected.size),
                                           "disagreements": int((got != expected).sum())}
            if rate < VQ_AGREEMENT[precision]:
                failures.append(f"encoder {precision} on data at batch {b}: VQ index agreement {rate:.4f} below "
                                f"{VQ_AGREEMENT[precision]}")
    worst = min(r["rate"] for r in results.values())
    return {"name": "vq_index_agreement", "passed": not failures, "thresholds": VQ_AGREEMENT, "worst": worst,
            "by_precision_and_batch": results, "failures": failures}


# checks a latent type adds to every bundle of that type, beyond per-output errors
LATENT_CHECKS = {"vq": vq_index_agreement}
