"""``vaedeploy export`` and ``build``: the commands that write a bundle and its TensorRT engines, their options and
what they print. Export imports torch and a build TensorRT, so each command imports its library only when it runs."""
from __future__ import annotations

import json

from .argtypes import BATCH_LIMIT, POSITIVE_INT, comma_list, cuda_device

BUCKETS = comma_list(POSITIVE_INT, "batch sizes ≥ 1 separated by commas (e.g. 1,2,4,8)")


def add_parser(subparsers) -> None:
    """The ``export`` and ``build`` subcommands of the ``vaedeploy`` command."""
    export = subparsers.add_parser("export",
                                   help="export a run to a validated ONNX bundle (exit 1 when validation fails)")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="bundle directory to write (absent, empty, or a bundle)")
    export.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"],
                        help="torch.onnx exporter (default dynamo; legacy is recorded in the manifest)")
    export.add_argument("--precision", action="append", choices=["fp32", "fp16", "bf16"], default=["fp32"],
                        help="fp16 adds half-precision graphs beside the fp32 master, bf16 the fp32 graph validated "
                             "in bfloat16 for openvino and torch (repeatable)")
    export.add_argument("--opset", type=POSITIVE_INT, default=18,
                        help="ONNX opset (dynamo: 18 up to this torch's newest; default 18)")
    export.add_argument("--max-batch", type=BATCH_LIMIT, default=1024, help="largest batch validated (default 1024)")
    export.add_argument("--force", action="store_true",
                        help="replace a bundle whose manifest cannot be read (never a run or other files)")
    export.set_defaults(func=run_export)

    build = subparsers.add_parser("build", help="build TensorRT engines of a bundle's graphs, one profile per batch "
                                                "bucket, cached (docs/tensorrt.md; exit 1 when --validate fails)")
    build.add_argument("bundle")
    build.add_argument("--buckets", type=BUCKETS,
                       help="batch sizes, one optimization profile each, e.g. 1,2,4,8 (default 1, 2, 4, … --max-batch)")
    build.add_argument("--max-batch", type=BATCH_LIMIT, help="the largest default bucket (default: the bundle's)")
    build.add_argument("--ranges", action="store_true",
                       help="one profile per span between buckets (any batch unpadded) instead of one static each")
    build.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                       help="fp16 builds the bundle's fp16 graphs (TensorRT 10 without them: the FP16 flag)")
    build.add_argument("--opt-level", type=int, choices=range(6), default=3, metavar="0-5",
                       help="TensorRT's builder optimization level (default 3)")
    build.add_argument("--workspace", type=POSITIVE_INT, metavar="MiB",
                       help="the builder's workspace limit (default: TensorRT's)")
    build.add_argument("--cache", help="engine cache directory (default: BUNDLE/engines)")
    build.add_argument("--device", type=cuda_device, default="cuda", help="cuda or cuda:N (default cuda)")
    build.add_argument("--validate", action="store_true",
                       help="run every engine at every bucket against ONNX Runtime, export's tolerances; fail hard")
    build.set_defaults(func=run_build)


def run_export(args) -> int:
    from .export import export_run

    out = export_run(args.run, args.out, exporter=args.exporter, opset=args.opset, precisions=tuple(args.precision),
                     max_batch=args.max_batch, force=args.force)
    manifest = json.loads((out / "manifest.json").read_text())
    worst = manifest["validation"]["worst"]
    opsets = sorted({e["opset"] for g in manifest["graphs"].values() for e in g.values()})
    print(f"exported {manifest['kind']} to {out}: graphs {sorted(manifest['graphs'])} in "
          f"{sorted(set(p for g in manifest['graphs'].values() for p in g))}, {args.exporter} exporter, opset "
          f"{', '.join(map(str, opsets))}; validated against PyTorch at batch sizes "
          f"{manifest['validation']['batch_sizes']}, worst rel-L2 error {max(w['rel_l2'] for w in worst.values()):.2g}")
    return 0


def run_build(args) -> int:
    from .deploy.trt_build import build_engines, import_tensorrt

    import_tensorrt()  # a machine without TensorRT hears what to install before anything else is looked at
    from tqdm.auto import tqdm

    from .runtime.cuda import require_cuda

    require_cuda(args.device)
    built = build_engines(args.bundle, buckets=args.buckets, max_batch=args.max_batch, precision=args.precision,
                          opt_level=args.opt_level, workspace_mib=args.workspace, cache=args.cache, ranges=args.ranges,
                          device=args.device, progress=tqdm.write, bar=True)
    counts = {s: sum(e["status"] == s for e in built["engines"]) for s in ("built", "cached")}
    gpu, trt = built["gpu"], built["tensorrt"]
    print(f"engines of {built['bundle']} in {built['cache']}: {counts['built']} built, {counts['cached']} up to date; "
          f"{built['precision']}, batches {', '.join(map(str, built['buckets']))}; {trt['module']} {trt['version']} on "
          f"{gpu['name']} (compute capability {gpu['compute_capability']}); {built['seconds']:.1f} s")
    if args.validate:
        from .bundle import load_bundle
        from .deploy.trt_build import validate_engines
        from .runtime.backends.tensorrt import Backend

        bundle = load_bundle(args.bundle)
        backend = Backend(bundle, args.precision, args.device, tuple(built["buckets"]), engines=built["cache"])
        try:
            report = validate_engines(bundle, built, backend.runner, progress=print)
        finally:
            backend.close()
        worst = max((w["rel_l2"] for w in report["worst"].values()), default=0.0)
        print(f"validated against {report['reference']} at every bucket: worst relative L2 error {worst:.2g} "
              f"(tolerance {report['tolerance']['rel_l2']:g})")
    return 0
