"""The tables of docs/*.md and README.md, generated from the committed results in benchmarks/results/*.json.

A docs page marks each generated table with a pair of comments (a source ending in ``/`` names a folder of JSONs,
as ``gpu/`` for docs/gpu.md)::

    <!-- generated from family.json: family -->
    | ... the table ... |
    <!-- end generated -->

``python -m benchmarks.report`` rewrites every such block from its JSON (``make docs``); ``--check`` exits 1 when a
page differs from what its JSON gives, which tests/test_docs.py asserts, so no figure in docs/ drifts from its
measurement.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from benchmarks.common import RESULTS_DIR, markdown_table  # noqa: E402
from benchmarks.diffusers_vae import NAMES  # noqa: E402
from vaedeploy.io import atomic_write_bytes  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"  # its performance section is generated too
BLOCK = re.compile(r"(<!-- generated from (\S+): (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)
KINDS = ("vae", "bivae", "biva", "twostage")


def _spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _groups(doc: dict):
    """(data, kind) → the rows of every seed, in the file's order."""
    groups: dict[tuple, list[dict]] = {}
    for row in doc["rows"]:
        groups.setdefault((row["data"], row["kind"]), []).append(row)
    return groups


def _units(rows: list[dict]) -> str:
    per_seed = [" / ".join(map(str, r["active_units_per_layer"])) if "active_units_per_layer" in r
                else str(r["active_units"]) for r in rows]
    return "; ".join(per_seed)


def family(doc: dict) -> str:
    """The family on digits and mnist5k: mean ± standard deviation over seeds (nats per image, higher is better)."""
    lines, vae_parameters = [], {}
    for (data, kind), rows in _groups(doc).items():
        digits = 1 if data == "digits" else 0
        parameters = rows[0]["parameters"]
        vae_parameters.setdefault(data, parameters if kind == "vae" else None)
        share = f" ({parameters / vae_parameters[data]:.1%})" if kind == "bivae" and vae_parameters[data] else ""
        lines.append([data, kind, _seeds([r["seed"] for r in rows]), f"{parameters:,}{share}",
                      _spread([r["train_seconds"] for r in rows], 0), _spread([r["elbo"] for r in rows], digits),
                      _spread([r["log_likelihood_iw"] for r in rows], digits), _units(rows),
                      _spread([r["sample_fd"] for r in rows], 2),
                      _spread([r["stage1_sample_fd"] for r in rows], 2) if "stage1_sample_fd" in rows[0] else ""])
    return markdown_table(["data", "model", "seeds", "parameters", "train s", "ELBO", "IW log-lik", "active units",
                           "sample FD", "stage-1 FD"], lines)


def checks(doc: dict) -> str:
    """The checks the family benchmark decides, on the means over seeds."""
    def value(check: dict) -> str:
        if "parameters" in check["check"]:
            return f"{check['value']:.1%}"
        if "within 5%" in check["check"]:
            return f"{check['value']:.2%} apart"
        return f"{check['value']:+.2f}"

    return markdown_table(["data", "check", "value", "result"],
                          [[c["data"], c["check"], value(c), "**met**" if c["passed"] else "not met"]
                           for c in doc["checks"]])


def collapse(doc: dict) -> str:
    """Posterior collapse: unit counts and densities per training variant, mean ± standard deviation over seeds."""
    threshold = doc["kl_threshold"]

    def cell(figure: dict) -> str:
        return f"{figure['mean']:.1f} ± {figure['std']:.1f}"

    return markdown_table(
        ["training", f"informative units (KL > {threshold:g} nats)", "active units (variance > 0.01)", "total KL",
         "ELBO", "IW log-lik"],
        [[s["variant"], *(cell(s[k]) for k in ("informative_units", "active_units", "total_kl", "elbo",
                                                "log_likelihood_iw"))] for s in doc["summary"]])


def vq_vs_vae(doc: dict) -> str:
    """The VQ-VAE against Gaussian VAEs of the same trunk on mnist5k."""
    def dash(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "–"

    lines = []
    for r in doc["rows"]:
        epochs = ", ".join(f"{stage} {n} epochs" for stage, n in r["epochs"].items())
        used = f"{r['codes_used']:.1%} ({round(r['codes_used'] * r['num_codes'])} of {r['num_codes']})" \
            if "codes_used" in r else "–"
        lines.append([r["model"], f"{r['parameters']:,} ({r['parameters_without_prior']:,})",
                      f"{r['recon_error']:.4f}", f"{r['train_wall_seconds']:.0f} s ({epochs})", used,
                      dash(r, "codebook_perplexity", ".0f"), dash(r, "prior_nll_bits_per_code", ".2f")])
    return markdown_table(["model", "parameters (without prior)", "test recon MSE / pixel", "training wall time",
                           "codes used", "codebook perplexity", "prior bits / code"], lines)


# ---- `vaedeploy bench` results (vaedeploy/bench/output.py has the schema) ---------------------------------------

def _ms(value: float) -> str:
    return f"{value:.4f}" if value < 0.01 else f"{value:.3f}" if value < 100 else f"{value:.0f}"


def _p50(row: dict) -> str:
    """The median p50 over the repeats and, with more than one, its range."""
    text = _ms(row["p50_ms"])
    if row.get("repeats", 1) > 1:
        text += f" ({_ms(row['p50_min_ms'])}–{_ms(row['p50_max_ms'])})"
    return text + ("" if row["stable"] else " ~")


def _command(env: dict) -> str:
    """The command a result was measured by, without its notes (they are quoted after it, not inside it)."""
    words = shlex.split(env["command"])
    return shlex.join(w for i, w in enumerate(words) if w != "--note" and (i == 0 or words[i - 1] != "--note"))


def _caption(doc: dict) -> str:
    env, versions = doc["environment"], doc["environment"]["versions"]
    repeats = len({r["repeat"] for r in doc["rows"]})
    stable = sum(r["stable"] for r in doc["rows"])
    tools = ", ".join(f"{name} {versions[name]}" for name in ("onnxruntime", "torch", "numba", "openvino")
                      if name in versions)
    matmul, copy = doc["rates"]["matmul"]["flops_per_s"], doc["rates"]["copy"]
    notes = "".join(f" {note[0].upper()}{note[1:]}." for note in doc["notes"])
    flags = f" ({', '.join(env['cpu_flags'])})" if env.get("cpu_flags") else ""  # results from before they were kept
    return (f"Measured by `{_command(env)}` on {env['date']}: {env['cpu']}{flags}, {env['cpu_cores_available']} "
            f"cores (load average {env['load_average_at_start'][0]:g} at the start, "
            f"{env['load_average_at_end'][0]:g} at the end), {tools}. p50 in ms, the median of {repeats} "
            f"run{'s' * (repeats > 1)} with their range in brackets; ~ marks a case not stable in every run "
            f"({stable} of {len(doc['rows'])} rows stable). The floor: matmul {matmul / 1e9:.0f} GFLOP/s, copy "
            f"{copy[0]['bytes_per_s'] / 1e9:.0f}–{copy[-1]['bytes_per_s'] / 1e9:.0f} GB/s, measured in the same "
            f"run.{notes}")


def _rows_by(doc: dict, provider_key: str = "backend") -> tuple[dict, list]:
    from vaedeploy.bench.output import by_case

    index, order = {}, []
    for row in by_case(doc["rows"]):
        case = (row["bundle"], row["op"], row["batch"])
        if case not in index:
            index[case], _ = {}, order.append(case)
        index[case][row[provider_key]] = row
    return index, order


def bench(doc: dict) -> str:
    """`vaedeploy bench` on the CPU backends: p50 of each backend with its multiple of the floor, per case."""
    index, order = _rows_by(doc)
    backends = list(dict.fromkeys(r["backend"] for r in doc["rows"]))
    lines = []
    for case in order:
        rows = index[case]
        first = next(iter(rows.values()))
        cells = [f"{_p50(rows[b])}, {rows[b]['x_floor']:.1f}×" if b in rows else "–" for b in backends]
        ratio = (f"{rows[backends[1]]['p50_ms'] / rows[backends[0]]['p50_ms']:.2f}×"
                 if len(backends) > 1 and all(b in rows for b in backends[:2]) else "–")
        lines.append([*case, f"{_ms(first['floor']['floor_ms'])} ({first['floor']['bound']})", *cells, ratio])
    headers = ["bundle", "op", "batch", "floor ms (bound)", *(f"{b} p50 ms, × floor" for b in backends)]
    headers.append(f"{backends[1]} / {backends[0]}" if len(backends) > 1 else "")
    return markdown_table(headers, lines) + "\n\n" + _caption(doc)


def sizes(doc: dict) -> str:
    """`vaedeploy bench --sizes` of a bundle that takes any image size: per op, batch, size and tiling, the floor
    (its FLOPs and bound), p50 with its multiple of the floor, and the peak RSS growth of the case's first call."""
    from vaedeploy.bench.output import by_case

    lines = []
    for row in by_case(doc["rows"]):
        peak = row.get("peak_rss_growth_bytes")
        lines.append([row["op"], row["batch"], "×".join(map(str, row["size"])), row["tile"],
                      f"{_ms(row['floor']['floor_ms'])} ({row['floor']['bound']})",
                      f"{row['floor']['flops'] / 1e9:.3g}", f"{_p50(row)}, {row['x_floor']:.1f}×",
                      "–" if peak is None else f"{peak / 2**20:.1f}"])
    headers = ["op", "batch", "size", "tile", "floor ms (bound)", "GFLOP", "p50 ms, × floor", "peak MiB"]
    return markdown_table(headers, lines) + "\n\n" + _caption(doc)


NOISE_GOAL = 1.5
NOISE_RUNS = (("bench_noise_numpy.json", "numpy only (no numba, or VAEDEPLOY_NUMBA=0)"),
              ("bench_noise.json", "numba installed (vaedeploy[fast])"))


def _ratios(doc: dict, op: str, base: str) -> list[float]:
    p50 = {(r["repeat"], r["op"]): r["p50_ms"] for r in doc["rows"] if r["batch"] == 1}
    return [p50[(k, op)] / p50[(k, base)] for k in sorted({r["repeat"] for r in doc["rows"]})]


def noise(doc: dict) -> str:
    """The noise goal at batch 1 on onnxruntime: encode(x, seed) over encode_params(x) and sample(1) over decode of
    one latent, each ratio taken within a run (median and range over the runs), without numba and with it."""
    lines = []
    for name, label in NOISE_RUNS:
        run = doc if name == "bench_noise.json" else json.loads((RESULTS_DIR / name).read_text())
        cells = []
        for op, base in (("encode", "encode_params"), ("sample", "decode")):
            ratios = _ratios(run, op, base)
            p50 = {r["op"]: r["p50_ms"] for r in run["rows"] if r["repeat"] == 0}
            median = statistics.median(ratios)
            cells += [f"{p50[op] * 1e3:.1f} / {p50[base] * 1e3:.1f}",
                      f"{median:.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) "
                      f"{'**met**' if median <= NOISE_GOAL else 'not met'}"]
        lines.append([label, *cells])
    headers = ["noise", "encode / encode_params p50 µs (run 1)", f"ratio (goal ≤ {NOISE_GOAL}×)",
               "sample(1) / decode p50 µs (run 1)", f"ratio (goal ≤ {NOISE_GOAL}×)"]
    return markdown_table(headers, lines) + "\n\n" + _caption(doc)


PEER_LEVEL = 0.10  # within 10% either way is level


def _verdict(ours: dict, theirs: dict) -> str:
    """level within 10%; beyond that ahead / behind when the p50s' ranges over the runs do not overlap, else "inside
    the spread" (on a shared machine a difference the runs themselves span is not shown to be one)."""
    ratio = ours["p50_ms"] / theirs["p50_ms"]
    apart = ours.get("p50_max_ms", ours["p50_ms"]) < theirs.get("p50_min_ms", theirs["p50_ms"]) or \
        theirs.get("p50_max_ms", theirs["p50_ms"]) < ours.get("p50_min_ms", ours["p50_ms"])
    if abs(ratio - 1) <= PEER_LEVEL:
        return f"level ({ratio:.2f}×)"
    if not apart:
        return f"inside the spread ({ratio:.2f}×)"
    return f"{'ahead' if ratio < 1 else 'behind'} ({ratio:.2f}×)"


def peers(doc: dict) -> str:
    """vaedeploy against each peer per case: p50 (median over runs), and where vaedeploy stands against the fastest
    peer (``_verdict``)."""
    index, order = _rows_by(doc)
    providers = [p for p in doc["providers"] if p != "vaedeploy"]
    providers.sort(key=lambda p: ["ort session.run", "ort default", "pytorch eager", "torch.compile",
                                  "openvino"].index(p) if p in ("ort session.run", "ort default", "pytorch eager",
                                                                "torch.compile", "openvino") else 9)
    lines = []
    for case in order:
        rows = index[case]
        fastest = min((p for p in providers if p in rows), key=lambda p: rows[p]["p50_ms"])
        lines.append([*case, _p50(rows["vaedeploy"]), *(_p50(rows[p]) if p in rows else "–" for p in providers),
                      f"{_verdict(rows['vaedeploy'], rows[fastest])[:-1]} {fastest})"])
    return markdown_table(["bundle", "op", "batch", "vaedeploy", *providers, "vaedeploy vs the fastest peer"],
                          lines) + "\n\n" + _caption(doc)


def _is_ours(provider: str) -> bool:
    return provider.startswith("vaedeploy")


def cpu_peers(doc: dict) -> str:
    """Every provider of benchmarks/peers.py (vaedeploy's backends and precisions, and the peers): its error against
    PyTorch eager fp32 on decode and reconstruct, and its p50 in every case (docs/cpu.md)."""
    index, order = _rows_by(doc)
    (bundle,) = doc["errors"]
    lines = []
    for provider in doc["providers"]:
        errors = doc["errors"][bundle][provider]
        cells = [f"{errors[op]['max_abs']:.1e} / {errors[op]['psnr_db']:.0f}" for op in ("decode", "reconstruct")]
        lines.append([provider, *cells, *(_p50(index[case][provider]) for case in order)])
    headers = ["provider", "decode error vs fp32: max abs / PSNR dB", "reconstruct error",
               *(f"{op} {batch}" for _, op, batch in order)]
    return markdown_table(headers, lines) + f"\n\nauto chose: {doc['auto'][bundle]}.\n\n" + _caption(doc)


FP32_PEERS = ("ort session.run", "ort default", "pytorch eager", "torch.compile", "openvino f32")
RECONSTRUCT_GOAL, FP32_GOAL, OVERHEAD_GOAL_US = 1.1, 1.1, 3.0


def cpu_goals(doc: dict) -> str:
    """Issue 30's goals on this run: auto against the fastest peer (at an error no larger) and against the fastest
    fp32 peer, reconstruct at the largest batch against encode + decode, and the wrapper's batch-1 overhead."""
    index, order = _rows_by(doc)
    (bundle,) = doc["errors"]
    errors = doc["errors"][bundle]
    lines = []
    for case in order:
        rows = index[case]
        ours = rows["vaedeploy auto"]
        # a peer counts where its error is no larger than auto's (a faster, less exact peer is another trade)
        peers = [p for p in rows if not _is_ours(p)
                 and errors[p]["decode"]["max_abs"] <= errors["vaedeploy auto"]["decode"]["max_abs"] * 1.5 + 1e-6]
        fastest = min(peers, key=lambda p: rows[p]["p50_ms"])
        fp32 = min((p for p in FP32_PEERS if p in rows), key=lambda p: rows[p]["p50_ms"])
        ratio = ours["p50_ms"] / rows[fp32]["p50_ms"]
        lines.append([case[1], case[2], _p50(ours), f"{fastest} {_p50(rows[fastest])}",
                      _verdict(ours, rows[fastest]), f"{fp32}: {ratio:.2f}× "
                      f"{'**met**' if ratio <= FP32_GOAL else 'not met'}"])
    table = markdown_table(["op", "batch", "vaedeploy auto p50 ms", "fastest peer at no larger error",
                            "auto vs it", f"vs the fastest fp32 peer (goal ≤ {FP32_GOAL}×)"], lines)
    largest = max(case[2] for case in order)
    p50 = {(case[1], case[2]): index[case]["vaedeploy auto"]["p50_ms"] for case in order}
    chained = p50[("reconstruct", largest)] / (p50[("encode", largest)] + p50[("decode", largest)])
    overhead = (index[(bundle, "decode", 1)]["vaedeploy"]["p50_ms"]
                - index[(bundle, "decode", 1)]["ort session.run"]["p50_ms"]) * 1e3
    facts = (f"reconstruct at batch {largest:,}: {chained:.2f}× encode + decode run alone (goal ≤ {RECONSTRUCT_GOAL}×: "
             f"{'**met**' if chained <= RECONSTRUCT_GOAL else 'not met'}; encode draws its noise too). The wrapper "
             f"at batch 1: decode {overhead:+.1f} µs over its own session called raw (goal < {OVERHEAD_GOAL_US:g} µs: "
             f"{'**met**' if overhead < OVERHEAD_GOAL_US else 'not met'}).")
    return table + "\n\n" + facts + "\n\n" + _caption(doc)


def cpu_reconstruct(doc: dict) -> str:
    """`vaedeploy bench` of encode, encode_params, decode and reconstruct interleaved: each op's p50 per batch, and
    per run reconstruct's p50 over encode + decode's (issue 30's goal: at most ``RECONSTRUCT_GOAL``)."""
    index, order = _rows_by(doc)
    ops = sorted({case[1] for case in order}, key=("encode", "encode_params", "decode", "reconstruct").index)
    batches = sorted({case[2] for case in order})
    bundle = order[0][0]
    lines = [[batch, *(_p50(index[(bundle, op, batch)]["onnxruntime"]) for op in ops)] for batch in batches]
    facts = []
    for batch in batches:
        runs = {}
        for row in doc["rows"]:
            if row["batch"] == batch:
                runs.setdefault(row["repeat"], {})[row["op"]] = row["p50_ms"]
        for first in ("encode", "encode_params"):
            ratios = sorted(r["reconstruct"] / (r[first] + r["decode"]) for r in runs.values())
            median = statistics.median(ratios)
            facts.append(f"batch {batch:,}: reconstruct / ({first} + decode) {median:.2f}× ({ratios[0]:.2f}–"
                         f"{ratios[-1]:.2f} over the {len(ratios)} runs; goal ≤ {RECONSTRUCT_GOAL}×: "
                         f"{'**met**' if median <= RECONSTRUCT_GOAL else 'not met'})")
    return (markdown_table(["batch", *(f"{op} p50 ms" for op in ops)], lines) + "\n\n" + "; ".join(facts) + ".\n\n"
            + _caption(doc))


def _machine(env: dict) -> str:
    """A benchmark's machine in one clause: the CPU with its flags, cores, load averages and versions."""
    versions = ", ".join(f"{name} {env['versions'][name]}" for name in ("onnxruntime", "openvino", "torch")
                         if name in env["versions"])
    return (f"{env['cpu']} ({', '.join(env['cpu_flags']) or 'no flags read'}), {env['cpu_cores_available']} cores "
            f"(load average {env['load_average_at_start'][0]:g} at the start, {env['load_average_at_end'][0]:g} at "
            f"the end), {versions}")


def cpu_full(doc: dict) -> str:
    """benchmarks/peers.py --full-size: every provider on each full-size decoder at batch 1, min–median of the
    interleaved rounds, its multiple of the fp32 compute floor and its error against PyTorch eager fp32."""
    parts = []
    for model in doc["models"]:
        lines = [[row["provider"], f"{_ms(row['min_ms'])}–{_ms(row['median_ms'])}",
                  f"{row['min_ms'] / model['floor_fp32_ms']:.1f}×",
                  f"{row['max_abs']:.1e} / {row['psnr_db']:.0f}"] for row in sorted(model["rows"],
                                                                                      key=lambda r: r["min_ms"])]
        parts.append(f"**{NAMES[model['model']]} decoder, {model['side']}×{model['side']}, batch 1** "
                     f"({model['gflop']:.0f} GFLOP; floor {_ms(model['floor_fp32_ms'])} ms at the fp32 matmul rate, "
                     f"{model['floor_bf16_ms'] / 1e3:.3g} s at torch's bf16 one)\n\n"
                     + markdown_table(["provider (fastest first)", f"ms, min–median of {doc['rounds']}",
                                       "min × fp32 floor", "error vs eager fp32: max abs / PSNR dB"], lines)
                     + f"\n\nauto chose: {model['auto']}.")
    env, rates = doc["environment"], doc["torch_rates"]
    notes = "".join(f" {note}." for note in doc["notes"])  # each begins with its model's short name
    caption = (f"Measured by `{_command(env)}` on {env['date']}: {_machine(env)}. Rates in the same run: fp32 matmul "
               f"{doc['rates']['matmul']['flops_per_s'] / 1e9:.0f} GFLOP/s; torch bf16 matmul "
               f"{rates['matmul_bf16'] / 1e9:.2g} GFLOP/s, torch conv fp32 {rates['conv_fp32'] / 1e9:.3g} and bf16 "
               f"autocast {rates['conv_bf16'] / 1e9:.2g} GFLOP/s.{notes}")
    return "\n\n".join(parts) + "\n\n" + caption


def ort_profile(doc: dict) -> str:
    """benchmarks/ort_profile.py: ONNX Runtime's kernel time by op type beside OpenVINO f32's by layer type, its
    Conv by shape with the FLOP rate of each, and the session options tried, min–median."""
    ort, ov = doc["onnxruntime"], doc["openvino_f32"] or {"by_type": [], "kernel_ms_per_call": 0}
    rows = max(len(ort["by_op"][:8]), len(ov["by_type"][:8]))
    pad = [None] * rows

    def cell(entries, key, i):
        return f"{entries[i][key]} {_ms(entries[i]['ms'])} ({entries[i]['share']:.0%})" if i < len(entries) else ""

    ops = markdown_table([f"ONNX Runtime: op, ms per call (share), {_ms(ort['kernel_ms_per_call'])} ms in all",
                          f"OpenVINO f32: layer type, ms (share), {_ms(ov['kernel_ms_per_call'])} ms in all"],
                         [[cell(ort["by_op"], "op", i), cell(ov["by_type"], "type", i)] for i, _ in enumerate(pad)])
    shapes = markdown_table(["Conv input", "weight", "nodes", "ms per call", "GFLOP", "GFLOP/s"],
                            [["×".join(map(str, c["input"])), "×".join(map(str, c["weight"])), c["nodes"],
                              _ms(c["ms"]), f"{c['gflop']:.2f}", f"{c['gflop_per_s']:.0f}"]
                             for c in ort["conv_by_shape"][:10]])
    tried = markdown_table(["ONNX Runtime session", f"ms, min–median of {doc['calls']}"],
                           [[v["variant"], f"{_ms(v['min_ms'])}–{_ms(v['median_ms'])}"] for v in doc["variants"]]
                           + ([["OpenVINO f32 (the same calls as its profile)",
                                f"{_ms(ov['wall_ms']['min'])}–{_ms(ov['wall_ms']['median'])}"]] if "wall_ms" in ov
                              else []))
    env = doc["environment"]
    caption = (f"Measured by `{_command(env)}` on {env['date']}: {_machine(env)}; the {doc['model']} decoder at "
               f"{doc['side']}×{doc['side']}, batch 1, {doc['calls']} calls after a warm-up.")
    return "\n\n".join([ops, shapes, tried, caption])


def concurrency(doc: dict) -> str:
    """Callers at once in one process: p50 latency and items/s per op, batch and concurrency."""
    from vaedeploy.bench.output import by_case

    lines = [[r["backend"], r["op"], r["batch"], r["concurrency"], _p50(r), f"{r['items_per_s']:,.0f}"]
             for r in by_case(doc["rows"])]
    return markdown_table(["backend", "op", "batch", "callers", "p50 ms", "items/s"], lines) + "\n\n" + \
        _caption(doc)


def threads(doc: dict) -> str:
    """The torch backend with torch's default threads (this file) and with OMP_NUM_THREADS=1
    (bench_torch_threads1.json): p50 and p90 per op and batch, medians over the runs."""
    from vaedeploy.bench.output import by_case

    single = json.loads((RESULTS_DIR / "bench_torch_threads1.json").read_text())
    one = {(r["op"], r["batch"]): r for r in by_case(single["rows"])}
    lines = [[r["op"], r["batch"], _p50(r), _ms(r["p90_ms"]), _ms(r["p99_ms"]), _p50(one[(r["op"], r["batch"])]),
              _ms(one[(r["op"], r["batch"])]["p90_ms"]), _ms(one[(r["op"], r["batch"])]["p99_ms"])]
             for r in by_case(doc["rows"])]
    return markdown_table(["op", "batch", "2 threads: p50 ms", "p90", "p99", "1 thread: p50 ms", "p90", "p99"],
                          lines) + "\n\n" + _caption(doc)


def performance(doc: dict) -> str:
    """README's performance table: the demo VAE at the smallest and largest batch, vaedeploy against the fastest peer
    (every row and the method: docs/benchmarks.md)."""
    index, order = _rows_by(doc)
    batches = sorted({case[2] for case in order})
    lines = []
    for case in order:
        if case[0] != order[0][0] or case[2] not in (batches[0], batches[-1]):
            continue
        rows = index[case]
        peers_here = [p for p in rows if p != "vaedeploy"]
        fastest = min(peers_here, key=lambda p: rows[p]["p50_ms"])
        lines.append([case[1], case[2], _p50(rows["vaedeploy"]), f"{rows['vaedeploy']['x_floor']:.1f}×",
                      f"{fastest} {_p50(rows[fastest])}", _verdict(rows["vaedeploy"], rows[fastest])])
    env = doc["environment"]
    return markdown_table(["op", "batch", "vaedeploy p50 ms", "× floor", "fastest peer, p50 ms", "vaedeploy"],
                          lines) + (f"\n\n{order[0][0]} bundle, {env['cpu']} ({env['cpu_cores_available']} cores, "
                                    f"shared), {env['date'][:10]}; median of {len({r['repeat'] for r in doc['rows']})}"
                                    " runs, range in brackets. Not yet measured on a GPU.")


def runtime_overhead(doc: dict) -> str:
    """The runtime at batch 1 against PyTorch eager and against its own session called raw (docs/runtime.md)."""
    index, order = _rows_by(doc)
    lines = []
    for case in order:
        if case[2] != 1:
            continue
        rows = index[case]
        ours = rows["vaedeploy"]["p50_ms"]
        lines.append([*case, _p50(rows["vaedeploy"]), _p50(rows["ort session.run"]), _p50(rows["pytorch eager"]),
                      f"{rows['pytorch eager']['p50_ms'] / ours:.2f}×",
                      f"{(ours / rows['ort session.run']['p50_ms'] - 1) * 100:+.0f}%"])
    return markdown_table(["bundle", "op", "batch", "vaedeploy p50 ms", "ort session.run", "pytorch eager",
                           "vaedeploy vs eager", "vaedeploy vs session.run"], lines) + "\n\n" + _caption(doc)


def _serve_caption(doc: dict) -> str:
    machine, settings = doc["machine"], doc["settings"]
    loads = [x for r in doc["rows"] if r["kind"] == "server" for x in r["loadavg_1min"]]
    return (f"{machine['cpu']}, {machine['cpu_cores_available']} cores shared with other work (1-minute load "
            f"average {min(loads):.1f} to {max(loads):.1f} during the run), onnxruntime "
            f"{machine['versions']['onnxruntime']}, {doc['date'][:10]}; {settings['rounds']} rounds of "
            f"{settings['window_s']:g} s per point, the systems measured in turn")


def serving(doc: dict) -> str:
    """README's serving figures: the goal point of benchmarks/serve.py (the conv VAE, 64 clients sending batch-1
    requests), batching on against ``--max-batch-size 1``, pooled over the rounds with each round's ratio."""
    from benchmarks.serve import GOAL, server_row

    lines = []
    for operation, verdict in doc["goal"].items():
        b, u = (server_row(doc["rows"], s, GOAL["model"], operation, GOAL["concurrency"])
                for s in ("batched", "unbatched"))
        rounds = verdict["speedup_rounds"]
        lines.append([f"`{operation}`", f"{b['throughput_rps']:.0f}", f"{u['throughput_rps']:.0f}",
                      f"{verdict['speedup']:.2f}× ({min(rounds):.2f}–{max(rounds):.2f})",
                      f"{b['p99_ms']:.0f} vs {u['p99_ms']:.0f}", "met" if verdict["met"] else "not met"])
    return markdown_table(["64 clients, conv VAE", "batched req/s", "unbatched req/s",
                           "batched / unbatched (per round)", "p99 ms, batched vs unbatched",
                           f"goal (≥ {GOAL['speedup']:g}×, p99 no worse)"], lines) + f"\n\n{_serve_caption(doc)}."


def serve_tables(doc: dict) -> str:
    """docs/serving.md's tables of every point (``benchmarks/serve.py --table``)."""
    from benchmarks.serve import table

    return table(doc).rstrip() + f"\n\n{_serve_caption(doc)}."


def serve_perf_analyzer(doc: dict) -> str:
    """docs/serving.md's perf_analyzer table: vaedeploy serve and a real Triton side by side (benchmarks/serve.py
    --perf-analyzer), with the goals' verdicts and the machine."""
    from benchmarks.serve import perf_table

    loads = [r["loadavg_1min"] for r in doc["rows"]]
    verdicts = "; ".join(
        f"{protocol}: {'met' if g['met'] else 'not met'} ({g['points'] - len(g['missed_at'])} of {g['points']} "
        f"points at Triton's throughput with a p99 no worse; p99/p50 at 1 client "
        f"{', '.join(f'{t:.1f}' for t in g['p99_over_p50_at_1']) or '–'})"
        for protocol, g in doc["goals"].items() if g["points"])
    unbatched = "; ".join(
        f"{protocol}: {g['points'] - len(g['missed_at'])} of {g['points']} points"
        for protocol, g in doc.get("goals_against_unbatched_triton", {}).items() if g["points"])
    against_unbatched = (f" Against Triton without its dynamic batcher (no queue delay): {unbatched} at its "
                         "throughput with a p99 no worse." if unbatched else "")
    machine = doc["machine"]
    return (perf_table(doc) + f"\n\nGoals (vaedeploy ≥ Triton's throughput, p99 no worse; p99 ≤ 2× p50 at 1 client): "
            f"{verdicts}.{against_unbatched} {machine['cpu']}, {machine['cpu_cores_available']} cores shared "
            f"with other engineers' work (1-minute load average {min(loads):.1f} to {max(loads):.1f} during the "
            "run: noisy figures), "
            f"onnxruntime {machine['versions']['onnxruntime']}, {doc['date'][:10]}; one perf_analyzer measurement "
            f"per point ({doc['settings']['measurement_interval_ms']} ms windows until 3 agree within "
            f"{doc['settings']['stability_percentage']}%, at most {doc['settings']['max_trials']}).")


def serve_perf_split(doc: dict) -> str:
    """docs/serving.md's split of a request's time from the same perf_analyzer run (benchmarks/serve.py)."""
    from benchmarks.serve import perf_split_table

    return perf_split_table(doc) + ("\n\nperf_analyzer's own split, means per request at no queue delay: the "
                                    "queue and compute phases come from each server's statistics extension; "
                                    "network + server send/recv is the rest of the time between the client's send "
                                    "and its receive.")


def serve_cpu(doc: dict) -> str:
    """Where each request's CPU goes at the goal point: the server's event loop, its model threads, the load
    generator; and the largest loop + client cost at which the model's costs would still allow the goal's ratio."""
    from benchmarks.serve import GOAL, server_row

    lines, bounds = [], []
    for operation in doc["goal"]:
        costs = {}
        for system in ("batched", "unbatched"):
            r = server_row(doc["rows"], system, GOAL["model"], operation, GOAL["concurrency"])
            loop, client = r["loop_cpu_us_per_request"], r["client_cpu_us_per_request"]
            model = r["server_cpu_us_per_request"] - loop
            costs[system] = (loop, model, client)
            lines.append([f"`{operation}`", system, f"{r.get('mean_batch') or 1:.1f}", f"{loop:.0f}", f"{model:.0f}",
                          f"{client:.0f}", f"{loop + model + client:.0f}",
                          " / ".join(f"{x:.0f}" for x in r["throughput_rps_rounds"])])
        (bl, bm, bc), (ul, um, uc) = costs["batched"], costs["unbatched"]
        bounds.append(f"`{operation}`: {(ul + um + uc) / (bl + bm + bc):.2f}× as measured, {um / bm:.2f}× if the "
                      f"loop and the client cost nothing in both; against this unbatched total, {GOAL['speedup']:g}× "
                      f"holds while the batched loop + client cost at most "
                      f"{(ul + um + uc) / GOAL['speedup'] - bm:.0f} µs (measured: {bl + bc:.0f})")
    return markdown_table(["op", "server", "mean batch", "event loop µs/req", "model threads µs/req",
                           "load generator µs/req", "total µs/req", "req/s per round"], lines) + (
        "\n\nCPU time per request, all threads, warm-up included; the model threads are the batcher's instance "
        "and ONNX Runtime's pool. Where the shared cores are the limit, throughput goes about as 1 / total, so "
        "the ratio of the totals is about what batching gives: " + "; ".join(bounds) + ".")


def serve_spinning(doc: dict) -> str:
    """The runtime alone, ONNX Runtime's intra-op threads spinning between calls (its default, which
    ``vaedeploy.load`` keeps) against not (what ``vaedeploy serve`` sets): median wall time and CPU per call."""
    index = {(r["model"], r["operation"], r["batch"], r["spinning"]): r for r in doc["rows"]
             if r["kind"] == "ceiling"}
    lines = []
    for (model, operation, batch, spinning), on in index.items():
        if not spinning or batch not in (1, 8, 64):
            continue
        off = index[(model, operation, batch, False)]
        lines.append([model, f"`{operation}`", batch, f"{on['us_per_call']:.0f}", f"{off['us_per_call']:.0f}",
                      f"{on['cpu_us_per_call']:.0f}", f"{off['cpu_us_per_call']:.0f}"])
    return markdown_table(["model", "op", "batch", "spinning: p50 µs", "not spinning: p50 µs", "spinning: CPU µs",
                           "not spinning: CPU µs"], lines) + f"\n\n{_serve_caption(doc)}; CPU per call, all threads."


# ---- benchmarks/gpu_check.py: one JSON per step in benchmarks/results/gpu/ (docs/gpu.md) -------------------------

def _gpu_machine(record: dict | None) -> list[str]:
    """device, driver and CUDA, versions: the cells every row of docs/gpu.md carries."""
    machine = (record or {}).get("machine") or {}
    gpu, versions = machine.get("gpu") or {}, machine.get("versions") or {}
    if not gpu:
        return ["—", "—", "—"]
    tools = ", ".join(f"{name} {versions[name]}" for name in ("torch", "triton", "onnxruntime", "vaedeploy")
                      if name in versions)
    return [gpu["name"], f"{gpu.get('driver')}, CUDA {gpu.get('cuda')}", tools]


def gpu_steps(docs: dict) -> str:
    """Each step of the GPU check: its outcome, time against its budget, and where and when it ran."""
    from benchmarks.gpu_check import STEPS, headline

    lines = []
    for step in STEPS:
        record = docs.get(step.name)
        if record is None:
            lines.append([step.name, step.title, "not yet measured", f"— / {step.budget_s:.0f}", *_gpu_machine(None),
                          "—"])
        else:
            seconds = f"{record['seconds']:.0f} / {record['budget_s']:.0f}"
            lines.append([step.name, step.title, headline(record), seconds, *_gpu_machine(record), record["date"][:10]])
    return markdown_table(["step", "what it checks", "outcome", "s / budget", "device", "driver, CUDA", "versions",
                           "date"], lines)


def gpu_goals(docs: dict) -> str:
    """The GPU goals, met or missed with their figures, or not yet measured."""
    from benchmarks.gpu_check import STEPS

    lines = []
    for step in STEPS:
        record = docs.get(step.name)
        if record is not None and record["status"] == "ran":
            lines += [[g["goal"], f"{g['value']:.4g}", f"{g['threshold']:g}", "met" if g["met"] else "missed",
                       *_gpu_machine(record), record["date"][:10]] for g in record.get("goals", [])]
        else:
            lines += [[claim, "not yet measured", "—", "—", *_gpu_machine(None), "—"] for claim in step.claims]
    return markdown_table(["goal", "value", "threshold", "met", "device", "driver, CUDA", "versions", "date"], lines)


def wrapper_cost(doc: dict) -> str:
    """benchmarks/wrapper_cost.py: the runtime's CPU time per batch-1 call on ONNX Runtime, beside its sessions'
    and with the sessions stubbed (issue 30's goal: the wrapper under ``goal_us``)."""
    env, goal = doc["machine"], doc["goal_us"]
    table = [[row["op"], f"{row['call_us']:.1f}", f"{row['session_us']:.1f}", f"{row['overhead_us']:+.1f}",
              f"{row['wrapper_us']:.1f}", "**met**" if row["overhead_us"] < goal else "not met"]
             for row in doc["rows"]]
    caption = (f"Measured by `{doc['command']}` on {doc['date']}: {env['cpu']} ({', '.join(env['cpu_flags'])}), "
               f"{env['cpu_cores_available']} cores, onnxruntime {env['versions'].get('onnxruntime')}; µs of the "
               f"calling thread's CPU time per call, the least over {doc['rounds']} rounds of the mean of "
               f"{doc['block']:,} calls.")
    return markdown_table(["op (batch 1)", "call µs", "its sessions raw µs", "overhead µs", "runtime alone µs",
                           f"goal < {goal:g} µs"], table) + "\n\n" + caption


def diffusers_vae(doc: dict) -> str:
    """benchmarks/diffusers_vae.py: the full-size architectures through vaedeploy and diffusers eager, p50 per case."""
    env = doc["machine"]
    cases: dict[tuple, dict] = {}
    for row in doc["rows"]:
        cases.setdefault((row["model"], row["op"], row["size"]), {})[row["provider"]] = row
    table = [[model, op, f"{size}×{size}", _ms(p["vaedeploy"]["p50_ms"]), _ms(p["diffusers eager"]["p50_ms"]),
              f"{p['diffusers eager']['p50_ms'] / p['vaedeploy']['p50_ms']:.2f}×"]
             for (model, op, size), p in cases.items()]
    end = f", {env['load_average_at_end'][0]:g} at the end" if "load_average_at_end" in env else ""
    caption = (f"Measured by `{env['command']}` on {env['date']}: {env['cpu']} ({', '.join(env['cpu_flags'])}), "
               f"{env['cpu_cores_available']} cores (load average {env['load_average_at_start'][0]:g} at the "
               f"start{end}), "
               f"torch {env['versions'].get('torch')} on {env['torch_threads']} threads, onnxruntime "
               f"{env['versions'].get('onnxruntime')}; random weights; batch 1, p50 in ms of {doc['iters']} calls "
               "each, interleaved.")
    return caption + "\n\n" + markdown_table(["model", "op", "image", "vaedeploy (ms)", "diffusers eager (ms)",
                                             "speed-up"], table)


TABLES = {"family": family, "checks": checks, "collapse": collapse, "vq_vs_vae": vq_vs_vae, "bench": bench,
          "sizes": sizes, "noise": noise, "peers": peers, "cpu_peers": cpu_peers, "cpu_goals": cpu_goals,
          "cpu_full": cpu_full, "ort_profile": ort_profile, "cpu_reconstruct": cpu_reconstruct,
          "runtime_overhead": runtime_overhead, "performance": performance,
          "concurrency": concurrency, "threads": threads, "serving": serving, "serve_tables": serve_tables,
          "serve_cpu": serve_cpu, "serve_perf_analyzer": serve_perf_analyzer, "serve_perf_split": serve_perf_split,
          "serve_spinning": serve_spinning,
          "gpu_steps": gpu_steps, "gpu_goals": gpu_goals,
          "diffusers_vae": diffusers_vae, "wrapper_cost": wrapper_cost}


def _results(name: str):
    """The JSON ``name`` in benchmarks/results/, or for a folder (``gpu/``) a dict of its JSONs by stem (empty while
    the folder does not exist: nothing measured yet)."""
    path = RESULTS_DIR / name
    if name.endswith("/"):
        return {p.stem: json.loads(p.read_text()) for p in sorted(path.glob("*.json"))}
    return json.loads(path.read_text())


def render(page: str) -> str:
    """``page`` with every generated block rewritten from its JSON."""
    def block(match: re.Match) -> str:
        head, file, name, _, tail = match.groups()
        return f"{head}{TABLES[name](_results(file))}\n{tail}"

    return BLOCK.sub(block, page)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page differs from its JSON")
    args = parser.parse_args(argv)
    stale = []
    for path in [*sorted(DOCS.glob("*.md")), README]:
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path)
            if not args.check:
                atomic_write_bytes(path, fresh.encode())
    for path in stale:
        print(f"{path}: {'differs from' if args.check else 'regenerated from'} its results")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
