"""What a run gives back: the table on the terminal, the JSON document, the PNG plots, and ``--compare``.

The JSON document (``SCHEMA_VERSION``): ``environment`` (machine, versions, command line, load average), the
``settings`` of the loop, the machine's ``rates`` the floors were taken over, the ``bundles`` (with their sha256)
or the ``server``, free-text ``notes``, and ``rows``: one per case and repeat, with the figures of ``stats.figures``,
the case's key, its ``floor`` and ``x_floor`` (p50 over the floor), and a ``note`` where a figure needs one.
"""
from __future__ import annotations

import io
import statistics
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_bytes, read_json, show, write_json

SCHEMA_VERSION = 1
IDENTITY = ("bundle", "url", "model", "backend", "device", "precision", "op", "batch", "size", "tile", "concurrency",
            "copies", "cuda_graphs", "binary")
ROW_FIGURES = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "cv")
MAX_RESULT_BYTES = 256 << 20  # a result is kilobytes per row; a run of many thousand rows stays far below this

# The schema of a result, one (required, optional) pair of field → JSON types per object: ``check`` reads every
# document through it, the ones bench writes and the ones --compare loads, so a hand-edited file is refused naming
# the file and the field. Fields not listed are free: they are shown, never computed with.
_NUMBER, _NONE = (int, float), type(None)
DOCUMENT = ({"benchmark": (str,), "schema_version": (int,), "environment": (dict,), "settings": (dict,),
             "notes": (list,), "rows": (list,)}, {})
ENVIRONMENT = ({"date": (str,), "command": (str,)}, {"versions": (dict,)})
ROW = ({"batch": (int,), "concurrency": (int,), "windows": (int,), "stable": (bool,), "status": (str,),
        "calls": (int,), "items_per_s": _NUMBER, "errors": (int,), "repeat": (int,)},
       {**{k: (str, _NONE) for k in ("bundle", "url", "model", "backend", "device", "precision", "op")},
        **{k: (bool, _NONE) for k in ("copies", "cuda_graphs", "binary")},
        **{f"{prefix}{k}": _NUMBER for prefix in ("", "device_", "enqueue_") for k in ROW_FIGURES},
        "size": (list, _NONE), "tile": (str, _NONE), "peak_rss_growth_bytes": (int, _NONE),
        "floor": (dict, _NONE), "x_floor": (*_NUMBER, _NONE), "note": (str,), "first_error": (str,)})
FLOOR = ({}, {"floor_ms": (*_NUMBER, _NONE), "bound": (str, _NONE), "uncounted": (str,)})
OVERHEAD_BOUND = 10.0  # a batch-1 row this many times its floor is bound by per-call work, not the graph's


def identity(row: dict) -> tuple:
    return tuple(tuple(v) if isinstance(v := row.get(k), list) else v for k in IDENTITY)


def annotate(rows: list[dict]) -> list[dict]:
    """Add ``x_floor`` and the notes trtexec would print: launch-bound or copy-bound GPU rows, CPU rows whose
    per-call cost dwarfs the graph's work."""
    resident = {identity({**r, "copies": True}): r for r in rows if r.get("copies") is False}
    for row in rows:
        floor_ms = (row.get("floor") or {}).get("floor_ms")
        row["x_floor"] = row["p50_ms"] / floor_ms if floor_ms and "p50_ms" in row else None
        notes = [row["floor"]["uncounted"]] if "uncounted" in (row.get("floor") or {}) else []
        if "device_p50_ms" in row and row["device_p50_ms"] < 0.5 * row["p50_ms"]:
            notes.append(f"launch-bound: the device works {row['device_p50_ms'] / row['p50_ms']:.0%} of the host "
                         "latency" + ("" if row.get("cuda_graphs") else " (CUDA graphs would cut the launches)"))
        twin = resident.get(identity(row)) if row.get("copies") else None
        if twin and "p50_ms" in twin and row["p50_ms"] >= 2 * twin["p50_ms"]:
            notes.append(f"copies dominate: {row['p50_ms'] / twin['p50_ms']:.1f}× the call on device tensors")
        on_cpu = not str(row.get("device", "cpu")).startswith("cuda")
        if on_cpu and row["batch"] == 1 and row["x_floor"] and row["x_floor"] >= OVERHEAD_BOUND:
            notes.append(f"per-call overhead dominates ({row['x_floor']:.0f}× the floor)")
        if notes:
            row["note"] = "; ".join(notes)
    return rows


def _type_names(types: tuple) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object",
             list: "a list", type(None): "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types if not (t is int and float in types)))


def _fields(doc, schema: tuple[dict, dict], where: str, source: str) -> dict:
    """``doc``, an object whose fields have the types ``schema`` gives, else a ConfigError naming the field."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: {where}: expected an object, got {show(doc)}")
    required, optional = schema
    for key, types in {**optional, **required}.items():
        if key not in doc:
            if key in required:
                raise ConfigError(f"{source}: {where}: missing {key!r} ({_type_names(types)})")
            continue
        value = doc[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"{source}: {where}.{key}: expected {_type_names(types)}, got {show(value)}")
    return doc


def check(doc, source: str = "result") -> dict:
    """``doc`` if it is a `vaedeploy bench` result of this schema, else a ConfigError naming the file (``source``)
    and the first field at fault."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a vaedeploy bench result (a JSON object), got {show(doc)}")
    _fields(doc, DOCUMENT, "the result", source)
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{source}: expected schema_version {SCHEMA_VERSION}, got {doc['schema_version']}")
    _fields(doc["environment"], ENVIRONMENT, "environment", source)
    for i, note in enumerate(doc["notes"]):
        if not isinstance(note, str):
            raise ConfigError(f"{source}: notes[{i}]: expected a string, got {show(note)}")
    for i, row in enumerate(doc["rows"]):
        _fields(row, ROW, f"rows[{i}]", source)
        if row.get("floor") is not None:
            _fields(row["floor"], FLOOR, f"rows[{i}].floor", source)
        if row["calls"] and any(k not in row for k in ROW_FIGURES):
            raise ConfigError(f"{source}: rows[{i}]: a row with calls needs {', '.join(ROW_FIGURES)}")
        if not (row.get("op") or row.get("model")):
            raise ConfigError(f"{source}: rows[{i}]: expected an 'op' (in-process) or a 'model' (server)")
    return doc


def load(path) -> dict:
    """A result file (``--compare``'s A.json and B.json), read through ``io.read_json`` and checked by ``check``."""
    return check(read_json(path, "a `vaedeploy bench` result (what --out writes)", MAX_RESULT_BYTES, ConfigError),
                 str(path))


def write(doc: dict, out: Path) -> list[Path]:
    """The JSON document at ``out`` (atomically) and its plots beside it; returns the files written."""
    out = Path(out)
    write_json(out, check(doc))
    return [out, *plots(doc, out.with_suffix(""))]


def by_case(rows: list[dict]) -> list[dict]:
    """One row per case over the repeats: the median p50, p90, p99 and items/s, the p50's range, and whether every
    repeat was stable (in the order the cases first appear)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(identity(row), []).append(row)
    merged = []
    for group in groups.values():
        measured = [r for r in group if "p50_ms" in r]
        row = dict(group[0])
        if measured:
            p50 = [r["p50_ms"] for r in measured]
            row.update(p50_ms=statistics.median(p50), p50_min_ms=min(p50), p50_max_ms=max(p50),
                       p90_ms=statistics.median(r["p90_ms"] for r in measured),
                       p99_ms=statistics.median(r["p99_ms"] for r in measured),
                       items_per_s=statistics.median(r["items_per_s"] for r in measured))
            if row.get("x_floor") is not None:
                floor_ms = (row.get("floor") or {}).get("floor_ms")
                row["x_floor"] = row["p50_ms"] / floor_ms if floor_ms else None
        row.update(repeats=len(group), stable=all(r["stable"] for r in group))
        merged.append(row)
    return merged


# ---- the terminal table -------------------------------------------------------------------------------------

def _ms(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value < 0.01 else f"{value:.3f}" if value < 100 else f"{value:.0f}"


def _mib(value) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def _rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e4 else f"{value:.0f}"


def _columns(rows: list[dict]) -> list[tuple[str, callable]]:
    def present(key):
        return any(r.get(key) is not None for r in rows)

    columns = []
    if present("model"):
        columns.append(("model", lambda r: r["model"]))
    else:
        columns += [("bundle", lambda r: r["bundle"]), ("backend", lambda r: r["backend"])]
        if any(str(r.get("device", "cpu")).startswith("cuda") for r in rows):
            columns += [("device", lambda r: r["device"]),
                        ("copies", lambda r: {True: "yes", False: "no", None: "–"}[r.get("copies")]),
                        ("graphs", lambda r: {True: "on", False: "off", None: "–"}[r.get("cuda_graphs")])]
        columns.append(("op", lambda r: r["op"]))
    if present("repeat") and len({r["repeat"] for r in rows}) > 1:
        columns.append(("run", lambda r: str(r["repeat"])))
    columns.append(("batch", lambda r: str(r["batch"])))
    if present("size"):
        columns += [("size", lambda r: "x".join(map(str, r["size"])) if r.get("size") else "–"),
                    ("tile", lambda r: r.get("tile") or "–")]
    columns.append(("conc", lambda r: str(r["concurrency"])))
    columns += [("p50 ms", lambda r: _ms(r.get("p50_ms"))), ("p90", lambda r: _ms(r.get("p90_ms"))),
                ("p99", lambda r: _ms(r.get("p99_ms"))), ("cv", lambda r: f"{r['cv']:.2f}" if "cv" in r else "–"),
                ("items/s", lambda r: _rate(r["items_per_s"]))]
    if present("device_p50_ms"):
        columns += [("device p50", lambda r: _ms(r.get("device_p50_ms"))),
                    ("enqueue p50", lambda r: _ms(r.get("enqueue_p50_ms")))]
    if any(r.get("errors") for r in rows):
        columns.append(("errors", lambda r: str(r["errors"])))
    if present("peak_rss_growth_bytes"):
        columns.append(("peak MiB", lambda r: _mib(r.get("peak_rss_growth_bytes"))))
    columns += [("floor ms", lambda r: _ms((r.get("floor") or {}).get("floor_ms"))),
                ("× floor", lambda r: f"{r['x_floor']:.1f}×" if r.get("x_floor") else "–"),
                ("bound", lambda r: (r.get("floor") or {}).get("bound", "–")),
                ("status", lambda r: r["status"])]
    return columns


def table(rows: list[dict]) -> str:
    """The rows as an aligned text table, with each row's note beneath it."""
    columns = _columns(rows)
    cells = [[name for name, _ in columns]] + [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for k, line in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if k and c[:1].isdigit() else c.ljust(w) for c, w in zip(line, widths)))
        if k and rows[k - 1].get("note"):
            lines.append("    ↳ " + rows[k - 1]["note"])
    return "\n".join(lines)


def summary(doc: dict) -> str:
    """Where and how: the machine, the rates the floors use, the stability settings."""
    env, settings = doc["environment"], doc["settings"]
    gpu = env.get("gpu")
    lines = [f"{env['cpu']}, {env['cpu_cores_available']} cores available"
             + (f"; {gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda']})" if gpu else "")
             + f"; load average {env.get('load_average_at_start')} at the start"]
    if doc.get("rates"):
        rates = doc["rates"]
        copies = ", ".join(f"{c['bytes'] / 2**20:g} MiB {c['bytes_per_s'] / 1e9:.0f} GB/s" for c in rates["copy"])
        launch = rates.get("launch")
        lines.append(f"floor rates: matmul {rates['matmul']['flops_per_s'] / 1e9:.0f} GFLOP/s "
                     f"({rates['matmul']['dtype']}); copy {copies}"
                     + (f"; launch {launch['kernel_s'] * 1e6:.1f} µs, graph launch {launch['graph_s'] * 1e6:.1f} µs"
                        if launch else ""))
    lines.append(f"windows of {settings['window_s'] * 1e3:.0f} ms until the last {settings['stable_windows']} agree "
                 f"within {settings['tolerance']:.0%} (throughput and p50), at most {settings['max_windows']}; "
                 f"budget {settings['budget_s']:g} s")
    return "\n".join(lines + doc["notes"])


# ---- plots --------------------------------------------------------------------------------------------------

def _series_label(row: dict) -> str:
    if row.get("model"):
        return row["model"]
    parts = [row["backend"]]
    if row.get("copies") is not None:
        parts.append("copies" if row["copies"] else "on device")
    if row.get("cuda_graphs") is not None:
        parts.append("graphs" if row["cuda_graphs"] else "no graphs")
    return " ".join(parts)


def plots(doc: dict, stem: Path) -> list[Path]:
    """``stem``_latency.png (p50 against batch size per backend, log axes, one panel per bundle and op; the floor
    dashed) and, when more than one concurrency was measured, ``stem``_throughput.png (items/s against
    concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in by_case(doc["rows"]) if "p50_ms" in r]
    written = []
    panels: dict[str, list[dict]] = {}
    for row in rows:
        panels.setdefault(row.get("model") or f"{row['bundle']} {row['op']}", []).append(row)
    serial = {k: [r for r in v if r["concurrency"] == 1] for k, v in panels.items()}
    serial = {k: v for k, v in serial.items() if len({r["batch"] for r in v}) > 1}
    if serial:
        written.append(_grid(plt, serial, stem.with_name(stem.name + "_latency.png"), "batch size", "p50 latency (ms)",
                             lambda r: r["batch"], lambda r: r["p50_ms"], floor=True))
    concurrent = {k: v for k, v in panels.items() if len({r["concurrency"] for r in v}) > 1}
    if concurrent:
        written.append(_grid(plt, concurrent, stem.with_name(stem.name + "_throughput.png"), "concurrency",
                             "items / s", lambda r: r["concurrency"], lambda r: r["items_per_s"], by_batch=True))
    return written


def _grid(plt, panels: dict, path: Path, xlabel: str, ylabel: str, x, y, floor: bool = False,
          by_batch: bool = False) -> Path:
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (title, entries) in zip(axes.flat, panels.items()):
        series: dict[str, list[dict]] = {}
        for r in entries:
            label = _series_label(r) + (f" batch {r['batch']}" if by_batch else "")
            series.setdefault(label, []).append(r)
        for label, points in series.items():
            points.sort(key=x)
            line, = ax.plot([x(p) for p in points], [y(p) for p in points], marker="o", label=label)
            if floor and all(p.get("floor") for p in points):
                ax.plot([x(p) for p in points], [p["floor"]["floor_ms"] for p in points], linestyle="--",
                        color=line.get_color(), alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if floor:
        figure.suptitle("p50 latency (solid) and the FLOP/byte floor (dashed)", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---- --compare ----------------------------------------------------------------------------------------------

def _differences(a: dict, b: dict) -> list[str]:
    env_a, env_b = a["environment"], b["environment"]
    lines = []
    for key in ("cpu", "cpu_cores_available", "gpu"):
        if env_a.get(key) != env_b.get(key):
            lines.append(f"  {key}: {env_a.get(key)} → {env_b.get(key)}")
    versions_a, versions_b = env_a.get("versions", {}), env_b.get("versions", {})
    for name in sorted(set(versions_a) | set(versions_b)):
        if versions_a.get(name) != versions_b.get(name):
            lines.append(f"  {name}: {versions_a.get(name, '–')} → {versions_b.get(name, '–')}")
    return lines


def _ratio(b: float, a: float) -> str:
    return f"{b / a:.2f}×" if a else "–"  # a row with no throughput (every call failed) has no ratio


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Row by row, B's p50 and throughput over A's (rows matched by bundle, backend, op, batch, concurrency, …;
    repeats reduced to their median first); rows in one file only are listed as such."""
    rows_a, rows_b = ({identity(r): r for r in by_case(d["rows"])} for d in (a, b))
    lines = [f"A: {name_a} ({a['environment']['date']}: {a['environment']['command']})",
             f"B: {name_b} ({b['environment']['date']}: {b['environment']['command']})"]
    differences = _differences(a, b)
    lines += (["machine and versions that differ:"] + differences) if differences else \
        ["same machine description and versions"]
    header = ["case", "A p50 ms", "B p50 ms", "B/A p50", "A items/s", "B items/s", "B/A items/s"]
    table_rows = []
    for key, row_a in rows_a.items():
        row_b = rows_b.get(key)
        case = " ".join(str(v) for k, v in zip(IDENTITY, key) if v is not None and k not in ("url", "binary"))
        if row_b is None:
            table_rows.append([case, _ms(row_a.get("p50_ms")), "only in A", "", _rate(row_a["items_per_s"]), "", ""])
        elif "p50_ms" in row_a and "p50_ms" in row_b:
            table_rows.append([case, _ms(row_a["p50_ms"]), _ms(row_b["p50_ms"]),
                               _ratio(row_b["p50_ms"], row_a["p50_ms"]), _rate(row_a["items_per_s"]),
                               _rate(row_b["items_per_s"]), _ratio(row_b["items_per_s"], row_a["items_per_s"])])
    table_rows += [[" ".join(str(v) for k, v in zip(IDENTITY, key) if v is not None and k not in ("url", "binary")),
                    "", _ms(row.get("p50_ms")), "only in B", "", _rate(row["items_per_s"]), ""]
                   for key, row in rows_b.items() if key not in rows_a]
    widths = [max(len(str(line[i])) for line in [header, *table_rows]) for i in range(len(header))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *table_rows]]
    return "\n".join(lines)
