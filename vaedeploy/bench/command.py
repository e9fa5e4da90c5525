"""`vaedeploy bench`: its options and the three things it does (a bundle in-process, a server, --compare)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..argtypes import POSITIVE, POSITIVE_INT, comma_list
from ..errors import ConfigError

DEFAULT_BATCHES = "1,8,64,512"


# the comma lists of this command: duplicates dropped (a batch size twice is measured once)
_INTEGERS = comma_list(POSITIVE_INT, "positive integers separated by commas", unique=True)
_NAMES = comma_list(str, "names separated by commas", unique=True)


def _size(text: str) -> tuple[int, int]:
    """An image size: ``N`` (N×N) or ``HxW``, positive integers."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(text)
    return (int(parts[0]), int(parts[-1]))


def _tile(text: str):
    """A tiling: ``none`` (whole), ``auto`` (the runtime's tile) or ``HxW`` pixels."""
    return None if text == "none" else text if text == "auto" else _size(text)


_SIZES = comma_list(_size, "image sizes N or HxW separated by commas, e.g. 64,256x384", unique=True)
_TILES = comma_list(_tile, "tilings none, auto or HxW separated by commas, e.g. none,auto", unique=True)


def _parameter(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``bench`` subcommand of the ``vaedeploy`` command."""
    bench = subparsers.add_parser(
        "bench", help="latency and throughput of bundles in-process or of a V2 server, with the floor beside each row",
        description="Modelled on trtexec and perf_analyzer: cases interleaved in rounds, timed in windows until the "
                    "last 3 agree (throughput and p50) within --tolerance; p50/p90/p95/p99, mean, CV, items/s and "
                    "the FLOP/byte floor of every row. See docs/benchmarks.md.")
    bench.add_argument("bundles", nargs="*", type=Path, help="bundle directories (measured together, interleaved)")
    bench.add_argument("--backends", type=_NAMES, help="comma list of backends (default: every installed one)")
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    bench.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    bench.add_argument("--ops", type=_NAMES, help="comma list of operations as the bundle's table lists them "
                                                  "(encode, encode_params, decode, reconstruct, sample, VQ's "
                                                  "decode_codes, sample_codes; default: all the bundle has)")
    bench.add_argument("--batch-sizes", type=_INTEGERS, default=_INTEGERS(DEFAULT_BATCHES),
                       help=f"rows per call (default {DEFAULT_BATCHES})")
    bench.add_argument("--sizes", type=_SIZES,
                       help="image sizes N or HxW, e.g. 64,256,512 (a bundle that takes any size; default: its "
                            "reference size)")
    bench.add_argument("--tile", type=_TILES, default=[None],
                       help="how decode and encode_params of a bundle that takes any size run: none (whole), auto "
                            "or HxW pixels, a comma list to compare them (default none)")
    bench.add_argument("--memory", action="store_true",
                       help="also the peak memory of each case: the peak RSS growth of its first call, in a process "
                            "of its own (Linux)")
    bench.add_argument("--concurrency", type=_INTEGERS, default=[1],
                       help="callers at once, e.g. 1,8,64 (default 1: serial latency)")
    bench.add_argument("--budget-s", type=POSITIVE, default=60.0,
                       help="wall time of the whole run, split over --repeats (default 60)")
    bench.add_argument("--window-s", type=POSITIVE, help="window length (default: fitted to the budget)")
    bench.add_argument("--tolerance", type=POSITIVE, default=0.10,
                       help="the stability rule's tolerance (default 0.10: within 10%%)")
    bench.add_argument("--max-windows", type=int, default=10, help="windows before a case is unstable (default 10)")
    bench.add_argument("--repeats", type=int, default=1, help="run everything this many times, to see the spread")
    bench.add_argument("--data", help="images to feed: digits, mnist5k or .npy/.npz (default: the bundle's data)")
    bench.add_argument("--note", action="append", default=[], help="a line to keep in the result (repeatable)")
    bench.add_argument("--out", type=Path, help="write the JSON result here, and its PNG plots beside it")
    server = bench.add_argument_group("server mode (any Open Inference Protocol server: vaedeploy serve, Triton)")
    server.add_argument("--url", help="the server, e.g. http://127.0.0.1:8000")
    server.add_argument("--model", type=_NAMES, help="comma list of its models, e.g. vae.sample,vae.encode")
    server.add_argument("--json-data", action="store_true", help="send JSON tensors, not the binary extension")
    server.add_argument("--param", type=_parameter, action="append", default=[], metavar="KEY=VALUE",
                        help="a request parameter for every request, e.g. temperature=0.7 (repeatable)")
    server.add_argument("--int-high", type=int, default=1, help="integer inputs are drawn in [0, this] (default 1)")
    server.add_argument("--timeout-s", type=POSITIVE, default=60.0, help="per-request timeout (default 60)")
    bench.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                       help="print B's figures over A's, row by row, and exit")
    bench.set_defaults(func=run)
    return bench


def run(args) -> int:
    from . import output

    if args.compare:
        a, b = (output.load(path) for path in args.compare)
        print(output.compare(a, b, str(args.compare[0]), str(args.compare[1])))
        return 0
    if args.url is None and not args.bundles:
        raise ConfigError("bench: expected BUNDLE directories, --url with --model, or --compare A.json B.json")
    if args.url and not args.model:
        raise ConfigError("--url: expected --model NAME[,NAME…] (the server's models to drive)")
    if args.repeats < 1 or args.max_windows < 3:
        raise ConfigError(f"expected --repeats ≥ 1 and --max-windows ≥ 3, got {args.repeats} and {args.max_windows}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    from .run import measure_bundles, measure_server

    common = dict(batches=args.batch_sizes, concurrencies=args.concurrency, budget_s=args.budget_s,
                  window_s=args.window_s, tolerance=args.tolerance, max_windows=args.max_windows,
                  repeats=args.repeats, data=args.data, notes=args.note)
    if args.url:
        doc = measure_server(args.url, args.model, binary=not args.json_data, parameters=dict(args.param),
                             int_high=args.int_high, timeout_s=args.timeout_s, bundles=args.bundles,
                             precision=args.precision, **common)
    else:
        doc = measure_bundles(args.bundles, backends=args.backends, device=args.device, precision=args.precision,
                              ops=args.ops, sizes=args.sizes, tiling=args.tile, peak_memory=args.memory, **common)
    print(output.summary(doc))
    print(output.table(doc["rows"]))
    if args.out:
        for path in output.write(doc, args.out):
            print(f"wrote {path}")
    return 0

