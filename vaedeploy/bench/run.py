"""A whole run: measure the machine's rates, build the cases, measure them (``--repeats`` times), make the doc."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import load
from ..errors import ConfigError
from . import floor
from .environment import environment
from .local import OPS, Bundle, bundle_cases, describe, load_images, variants
from .loop import Settings, measure
from .output import SCHEMA_VERSION, annotate


def _progress(total: int):
    """A progress bar over the cases (tqdm, on a terminal only), and the callback the loop calls per window."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="case", desc="bench", disable=None, leave=False, file=sys.stderr)
    done: set[int] = set()

    def update(case) -> None:
        p50 = case.windows[-1].p50 * 1e3 if case.windows[-1].latencies else float("nan")
        name = case.key.get("model") or f"{case.key['backend']} {case.key['op']}"
        bar.set_postfix_str(f"{name} b{case.key['batch']} c{case.concurrency}: {p50:.3f} ms", refresh=False)
        if case.status != "pending" and id(case) not in done:
            done.add(id(case))
            bar.update(1)

    return bar, update


def _measure(make_cases, settings_given: dict, budget_s: float, repeats: int) -> tuple[list[dict], dict]:
    rows, settings = [], None
    for repeat in range(repeats):
        cases = make_cases()
        settings = Settings.fitted(len(cases), budget_s / repeats, **settings_given)
        bar, update = _progress(len(cases))
        try:
            rows += [{**row, "repeat": repeat} for row in measure(cases, settings, update)]
        finally:
            bar.close()
    return annotate(rows), vars(settings)


def _given(window_s, tolerance, max_windows) -> dict:
    given = {"tolerance": tolerance, "max_windows": max_windows}
    if window_s:
        given["window_s"] = window_s
    return given


def _backends(backends: list[str] | None, device: str) -> list[str]:
    from ..runtime.backends import AUTO_ORDER, installed, resolve

    if backends:
        if "auto" in backends:  # a benchmark names what it compares; leaving --backends out measures all installed
            raise ConfigError(f"--backends takes backend names, not 'auto': one or more of {', '.join(AUTO_ORDER)}")
        return [resolve(b, device, None)[0] for b in backends]
    found = [b for b in AUTO_ORDER if installed(b)]
    if device.startswith("cuda") and "onnxruntime" in found:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            found.remove("onnxruntime")  # onnxruntime without -gpu serves the CPU only
    return found


def check_sizes(path: Path, sizes: list | None, tiling: list) -> None:
    """Refuse, in one sentence, sizes or tiles for a bundle of one fixed size, and sizes outside a bundle's range."""
    from ..bundle import load_bundle

    ranges = load_bundle(path).sizes
    if ranges is None and (sizes or any(tile is not None for tile in tiling)):
        option = "--sizes" if sizes else "--tile"
        raise ConfigError(f"{option}: expected a bundle that takes any image size (input.size), got {path}, whose "
                          "images have one fixed size")
    for size in sizes or ():
        if why := ranges.refusal(size):
            raise ConfigError(f"--sizes: expected {why} for {path}, got {size[0]}x{size[1]}")


def measure_bundles(bundles: list[Path], *, backends: list[str] | None = None, device: str = "cpu",
                    precision: str = "fp32", ops: list[str] | None = None, batches: list[int] = (1, 8, 64, 512),
                    concurrencies: list[int] = (1,), budget_s: float = 60.0, window_s: float | None = None,
                    tolerance: float = 0.10, max_windows: int = 10, repeats: int = 1, data: str | None = None,
                    notes: list[str] = (), sizes: list[tuple[int, int]] | None = None, tiling: list = (None,),
                    peak_memory: bool = False) -> dict:
    """Measure bundles in this process: every backend × op × batch × size × tiling × concurrency, interleaved; the
    JSON document.

    Args:
        bundles: bundle directories (labelled by their directory names).
        backends: the runtime's backends to compare (default: every installed one).
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` or ``fp16`` graphs.
        ops: of ``local.OPS`` (default: all; an op a bundle lacks, like an AE's ``sample``, is left out).
        batches: rows per call.
        concurrencies: callers at once (1: serial latency).
        budget_s: wall time of the whole run, split over the repeats.
        window_s, tolerance, max_windows: the loop's settings (``loop.Settings``).
        repeats: how many times to run every case, for the spread.
        data: the images to feed (default: the data set each bundle's manifest names).
        notes: lines kept in the result (the machine's state, why the run was made).
        sizes: image sizes (H, W) to measure a bundle that takes any size at (default: its reference size).
        tiling: how decode and encode_params of such a bundle run: None (whole), ``"auto"`` or (th, tw) pixels.
        peak_memory: also the peak RSS growth of each case's first call, a process per case (``memory.py``).
    """
    if unknown := sorted(set(ops or ()) - set(OPS)):
        raise ConfigError(f"--ops: expected some of {', '.join(OPS)}, got {', '.join(unknown)}")
    if device.startswith("cuda"):
        from .gpu import require_cuda

        require_cuda(device)
    env = environment(gpu=device.startswith("cuda"))
    rates = floor.measure_rates(device, precision)
    runtimes, entries = [], []
    try:
        for path in bundles:
            check_sizes(path, sizes, tiling)
            loaded = [(variant, load(path, backend=variant["backend"], device=device, precision=precision,
                                     **({"cuda_graphs": variant["cuda_graphs"]} if "cuda_graphs" in variant else {})))
                      for variant in variants(_backends(backends, device), device)]
            runtimes += [rt for _, rt in loaded]
            images, source = load_images(loaded[0][1], data)
            bundle = Bundle(Path(path), Path(path).resolve().name, images, source)
            entries.append((bundle, loaded))

        def make_cases():
            return [case for bundle, loaded in entries for variant, rt in loaded
                    for case in bundle_cases(bundle, rt, variant, list(ops or OPS), list(batches),
                                             list(concurrencies), rates, sizes, list(tiling), peak_memory)]

        rows, settings = _measure(make_cases, _given(window_s, tolerance, max_windows), budget_s, repeats)
        described = [describe(bundle, loaded[0][1]) for bundle, loaded in entries]
    finally:
        for rt in runtimes:
            rt.close()
    env["load_average_at_end"] = environment()["load_average_at_start"]
    return {"benchmark": "vaedeploy bench", "schema_version": SCHEMA_VERSION, "environment": env,
            "settings": settings, "rates": rates, "bundles": described, "server": None, "notes": list(notes),
            "rows": rows}


def measure_server(url: str, models: list[str], *, binary: bool = True, parameters: dict | None = None,
                   int_high: int = 1, timeout_s: float = 60.0, bundles: list[Path] = (), precision: str = "fp32",
                   batches: list[int] = (1, 8, 64), concurrencies: list[int] = (1,), budget_s: float = 60.0,
                   window_s: float | None = None, tolerance: float = 0.10, max_windows: int = 10, repeats: int = 1,
                   data: str | None = None, notes: list[str] = ()) -> dict:
    """Drive an Open Inference Protocol server perf_analyzer style; the JSON document.

    With a bundle (the one the server serves), a model named ``NAME.op`` gets the floor of that op's graphs and the
    bundle's test images; without one, image-shaped inputs get ``data``'s images or N(0, I).
    """
    from .server import Client, server_cases, server_metadata

    client = Client(url, timeout_s)
    server = server_metadata(client)
    if binary and "binary_tensor_data" not in server["extensions"]:
        binary = False
        notes = [*notes, f"{url} does not advertise binary_tensor_data: tensors were sent as JSON"]
    env = environment()
    images, floors, rates, described, sizes = None, {}, None, [], []
    if bundles:
        rates = floor.measure_rates("cpu", precision)
        with load(bundles[0], backend="onnxruntime", precision=precision) as rt:
            images, source = load_images(rt, data)
            described = [describe(Bundle(Path(bundles[0]), Path(bundles[0]).resolve().name, images, source), rt)]
            sizes = [tuple(rt.input_shape), tuple(rt.latent_shape)]  # -1 axes of a spatial bundle's inputs
            for model in models:
                op = model.rsplit(".", 1)[-1]
                if op in OPS and floor.op_graphs(rt, op) is not None:
                    floors.update({(model, b): floor.op_floor(rt, op, b, rates) for b in batches})
    elif data:
        from ..data import load_dataset

        images = load_dataset(data).evaluation_inputs("test")

    def make_cases():
        return server_cases(client, list(models), list(batches), list(concurrencies), binary, parameters or {},
                            images, floors, int_high, sizes)

    rows, settings = _measure(make_cases, _given(window_s, tolerance, max_windows), budget_s, repeats)
    env["load_average_at_end"] = environment()["load_average_at_start"]
    return {"benchmark": "vaedeploy bench", "schema_version": SCHEMA_VERSION, "environment": env,
            "settings": settings, "rates": rates, "bundles": described, "server": {"url": url, **server},
            "notes": list(notes), "rows": rows}
