"""The `vaedeploy` command: train, eval, plot, export, build, demo, web, serve, triton-repo, bench."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from .argtypes import BATCH_LIMIT, COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, number
from .errors import ConfigError, JobFailed, VaedeployError

# the training options a --resume takes from the run instead of the command line; only --epochs may change
TRAIN_OPTIONS = ("batch_size", "lr", "seed", "kl_warmup", "free_bits", "patience", "max_seconds", "grad_clip")
MODEL_OPTIONS = ("latent_dim", "backbone", "hidden", "likelihood", "activation")


def _value(text: str):
    """A --set value: JSON when it parses (numbers, lists, true/false), a comma list, or a plain string."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or an integer past the 4,300-digit limit
        return [_value(part) for part in text.split(",")] if "," in text else text


def _model_overrides(args) -> dict:
    overrides = {}
    for name in ("latent_dim", "backbone", "likelihood", "activation"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.hidden is not None:
        overrides["hidden"] = [_value(w) for w in args.hidden.split(",")]
    if args.preprocessing == "binarize" and "likelihood" not in overrides:
        overrides["likelihood"] = "bernoulli"
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key.replace("-", "_")] = _value(text)
    return overrides


def _train_config(args):
    from .train import TrainConfig

    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "kl_warmup_epochs": args.kl_warmup, "free_bits": args.free_bits, "patience": args.patience,
             "max_seconds": args.max_seconds, "grad_clip": args.grad_clip}
    return TrainConfig(**{k: v for k, v in given.items() if v is not None})


def cmd_train(args) -> int:
    from .data import load_dataset, load_from_spec
    from .models import model_class
    from .runs import read_config
    from .train import train_run

    model_class(args.model)  # an unknown kind is refused before any data is read, with the kinds there are
    if args.resume or args.stage != "all":
        if args.resume:
            given = [f"--{name.replace('_', '-')}" for name in (*TRAIN_OPTIONS, *MODEL_OPTIONS)
                     if getattr(args, name) is not None] + (["--set"] if args.set else [])
            if given:
                raise ConfigError(f"--resume continues the run with its own options; only --epochs may change, got "
                                  f"{' '.join(given)}")
        data = load_from_spec(read_config(args.out)["data"])
    else:
        data = load_dataset(args.data, preprocessing=args.preprocessing, split_seed=args.split_seed)
    _, metrics = train_run(args.model, data, args.out, model_config=_model_overrides(args),
                           train_config=_train_config(args), resume=args.resume, overwrite=args.overwrite,
                           progress=not args.no_progress, stage=args.stage)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    stages = ({"model": metrics} if "best" in metrics else {}) | metrics.get("stages", {})
    for stage, doc in stages.items():
        best = doc["best"]
        print(f"trained {args.model} ({stage}) on {data.name}: best validation loss {best['val_loss']:.3f} at epoch "
              f"{best['epoch']} ({doc['stop_reason']}, {doc['train_seconds']:.1f} s); run in {args.out}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_run

    results = evaluate_run(args.run, iw_samples=args.iw_samples, elbo_samples=args.elbo_samples)
    print(json.dumps(results, indent=2))
    return 0


def cmd_plot(args) -> int:
    from .pictures import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_export(args) -> int:
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


def _batch_sizes(text: str) -> list[int]:
    """--buckets: batch sizes separated by commas."""
    parts = text.split(",")
    if not all(re.fullmatch(r"\d+", p.strip()) and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected batch sizes ≥ 1 separated by commas (e.g. 1,2,4,8), got {text!r}")
    return [int(p) for p in parts]


def _cuda_device(text: str) -> str:
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cuda or cuda:N (TensorRT builds on an NVIDIA GPU), got {text!r}")
    return text


def cmd_build(args) -> int:
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


def _demo_runtime(run: Path, out: Path, data) -> list[Path]:
    """Export the demo VAE, load it with backend="auto" and use every runtime call; returns the pictures drawn."""
    import numpy as np

    from . import load
    from .export import export_run
    from .plots import plot_grid, plot_reconstructions

    bundle = export_run(run, out / "vae_bundle")  # replaces the bundle an earlier demo wrote, and nothing else
    manifest = json.loads((bundle / "manifest.json").read_text())
    worst = manifest["validation"]["worst"]
    print(f"      {bundle}: {', '.join(sorted(manifest['files']))}; ONNX Runtime matches PyTorch at batch sizes "
          f"{manifest['validation']['batch_sizes']} (worst relative L2 error "
          f"{max(w['rel_l2'] for w in worst.values()):.1g})")
    runtime = load(bundle, backend="auto")
    x = data.evaluation_inputs("test")
    z = runtime.encode(x, seed=0)
    recon = runtime.reconstruct(x)
    samples = runtime.sample(100, seed=0)
    print(f"      {runtime}: encode {x.shape} → z {z.shape}; reconstruct MSE/pixel {np.mean((recon - x) ** 2):.5f}; "
          f"sample(100, seed=0) {samples.shape}, the same again with the same seed: "
          f"{bool(np.array_equal(samples, runtime.sample(100, seed=0)))}")
    return [
        plot_grid(samples, out / "runtime_samples.png", "samples through the ONNX Runtime bundle"),
        plot_reconstructions(x[:10], recon[:10], out / "runtime_reconstructions.png",
                             "test images (top) and their reconstructions through the bundle"),
    ]


def _demo_benchmark(bundle: Path, out: Path) -> None:
    """A short `vaedeploy bench` of the demo bundle on the CPU backends (docs/benchmarks.md has the committed runs)."""
    from .bench import output
    from .bench.run import measure_bundles

    doc = measure_bundles([bundle], ops=["encode", "decode", "sample"], batches=[1, 64, 1024], budget_s=15.0,
                          notes=["the demo's short run (15 s); the committed figures are in docs/benchmarks.md"])
    print(output.summary(doc))
    print(output.table(doc["rows"]))
    for path in output.write(doc, out / "benchmark.json"):
        print(f"      wrote {path}")


def cmd_demo(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_run
    from .pictures import plot_run
    from .train import TrainConfig, train_run

    out = Path(args.out)
    started = time.perf_counter()
    data = load_dataset("digits")
    print(f"[1/5] training a VAE on digits ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
          f"images, 8×8): up to {args.epochs} epochs, early stopping, at most {args.seconds:g} s")
    train_run("vae", data, out / "vae", overwrite=True,  # the demo's own run: an earlier demo's is replaced
              train_config=TrainConfig(epochs=args.epochs, max_seconds=args.seconds, patience=30))
    print("[2/5] evaluating on the test split (importance sampling with 1,000 samples)")
    results = evaluate_run(out / "vae")
    print("[3/5] drawing samples, reconstructions and the latent space")
    pictures = plot_run(out / "vae")
    print("[4/5] exporting to an ONNX bundle, validating, and running it through vaedeploy.load(backend='auto')")
    pictures += _demo_runtime(out / "vae", out, data)
    print("[5/5] timing encode, decode and sample on ONNX Runtime and PyTorch with `vaedeploy bench` (15 s)")
    _demo_benchmark(out / "vae_bundle", out)
    rows = [
        ("ELBO (nats/image)", f"{results['elbo']:.1f}"),
        ("log-likelihood, IW k=1000", f"{results['log_likelihood_iw']:.1f}"),
        ("probabilistic PCA baseline", f"{results['baseline_ppca_log_likelihood']:.1f}"),
        ("bits per dim (IW)", f"{results['log_likelihood_iw_bits_per_dim']:.3f}"),
        ("reconstruction MSE / pixel", f"{results['recon_error']:.5f}"),
        ("active units", f"{results['active_units']} of {len(results['kl_per_dim'])}"),
        ("mutual information I(x;z)", f"{results['mutual_information']:.2f} nats"),
    ]
    width = max(len(r[0]) for r in rows)
    print("\nvaedeploy demo: VAE on digits, test split")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("\nfiles:")
    for path in [out / "vae" / "model.safetensors", out / "vae" / "eval.json", out / "vae_bundle", *pictures]:
        print(f"  {path}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_web(args) -> int:
    from .web import serve, write_site

    out = write_site(args.bundle, args.out, data=args.data)
    print(f"wrote the latent explorer for {args.bundle} to {out}")
    if args.serve:
        serve(out, port=args.port)
    return 0


def cmd_serve(args) -> int:
    from .serve.options import serve

    return serve(args)


def cmd_triton_repo(args) -> int:
    from .serve.options import triton_repo

    return triton_repo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaedeploy", description="Train, evaluate, export and serve VAEs.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write a run directory")
    train.add_argument("model", metavar="KIND", help="the model kind (vaedeploy/models/; a wrong one lists them)")
    train.add_argument("--data", default="digits", help="digits, mnist5k, or a .npy/.npz path (default digits)")
    train.add_argument("--out", required=True, help="run directory to write (absent or empty, unless --resume or "
                                                     "--overwrite)")
    train.add_argument("--preprocessing", default="dequantize", choices=["dequantize", "binarize", "scale"])
    train.add_argument("--split-seed", type=COUNT, default=0)
    train.add_argument("--epochs", type=POSITIVE_INT,
                       help="the most epochs to train (default 2000; early stopping ends sooner)")
    train.add_argument("--batch-size", type=POSITIVE_INT, help="examples per step (default 128)")
    train.add_argument("--lr", type=POSITIVE, help="Adam learning rate (default 1e-3)")
    train.add_argument("--seed", type=COUNT, help="seeds weights, shuffling and noise (default 0)")
    train.add_argument("--kl-warmup", type=COUNT, help="epochs of linear KL warm-up (default 0: off)")
    train.add_argument("--free-bits", type=NON_NEGATIVE,
                       help="nats per latent dimension, 0: off (default: the model's, 0 for all but bivae)")
    train.add_argument("--patience", type=COUNT, help="early-stopping patience in epochs (default 30; 0: off)")
    train.add_argument("--max-seconds", type=NON_NEGATIVE, help="training time limit (default 0: none)")
    train.add_argument("--grad-clip", type=NON_NEGATIVE, help="clip the gradient norm (default 0: off)")
    train.add_argument("--latent-dim", type=POSITIVE_INT)
    train.add_argument("--backbone", choices=["mlp", "conv"])
    train.add_argument("--hidden", help="dense widths, e.g. 256,256")
    train.add_argument("--likelihood", choices=["gaussian", "bernoulli"])
    train.add_argument("--activation", choices=["relu", "silu", "tanh", "elu"])
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model config field, e.g. --set min_logvar=-6")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (its own files only; other files stay)")
    train.add_argument("--stage", default="all",
                       help="all (default) or one extra stage (vqvae: prior) to (re)train on the run in --out")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run on its test split; writes RUN/eval.json")
    ev.add_argument("run")
    ev.add_argument("--iw-samples", type=POSITIVE_INT, default=1000)
    ev.add_argument("--elbo-samples", type=POSITIVE_INT, default=10)
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="write PNG pictures of a run")
    plot.add_argument("run")
    plot.set_defaults(func=cmd_plot)

    export = sub.add_parser("export", help="export a run to a validated ONNX bundle (exit 1 when validation fails)")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="bundle directory to write (absent, empty, or a bundle)")
    export.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"],
                        help="torch.onnx exporter (default dynamo; legacy is recorded in the manifest)")
    export.add_argument("--precision", action="append", choices=["fp32", "fp16"], default=["fp32"],
                        help="fp16 adds half-precision graphs beside the fp32 master (repeatable)")
    export.add_argument("--opset", type=POSITIVE_INT, default=18,
                        help="ONNX opset (dynamo: 18 up to this torch's newest; default 18)")
    export.add_argument("--max-batch", type=BATCH_LIMIT, default=1024, help="largest batch validated (default 1024)")
    export.add_argument("--force", action="store_true",
                        help="replace a bundle whose manifest cannot be read (never a run or other files)")
    export.set_defaults(func=cmd_export)

    build = sub.add_parser("build", help="build TensorRT engines of a bundle's graphs, one profile per batch bucket, "
                                         "cached (docs/tensorrt.md; exit 1 when --validate fails)")
    build.add_argument("bundle")
    build.add_argument("--buckets", type=_batch_sizes,
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
    build.add_argument("--device", type=_cuda_device, default="cuda", help="cuda or cuda:N (default cuda)")
    build.add_argument("--validate", action="store_true",
                       help="run every engine at every bucket against ONNX Runtime, export's tolerances; fail hard")
    build.set_defaults(func=cmd_build)

    demo = sub.add_parser("demo", help="train, evaluate, plot, export and serve a VAE on the embedded digits")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=POSITIVE_INT, default=300, help="the most training epochs (default 300)")
    demo.add_argument("--seconds", type=NON_NEGATIVE, default=120.0, help="training time limit (default 120)")
    demo.set_defaults(func=cmd_demo)

    web = sub.add_parser("web", help="write a browser page decoding the bundle on onnxruntime-web")
    web.add_argument("bundle")
    web.add_argument("--out", required=True, help="new or empty directory, or a previous output")
    web.add_argument("--data", help="training data for the pad's principal directions: digits, mnist5k or .npy/.npz "
                                    "(default: the data the bundle's manifest names)")
    web.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 with COOP/COEP headers")
    web.add_argument("--port", type=number(int, 1), default=8080)
    web.set_defaults(func=cmd_web)

    from .serve.options import add_serve_arguments, add_triton_repo_arguments

    serve = sub.add_parser("serve", help="serve bundles on the Open Inference Protocol (KServe V2 / Triton's HTTP) "
                                         "with dynamic batching (docs/serving.md)")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    triton = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository of a bundle")
    add_triton_repo_arguments(triton)
    triton.set_defaults(func=cmd_triton_repo)

    from .bench.command import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


# packages of the extras, and the extra that brings each: a command that needs one says which to install
_OPTIONAL = {"torch": "train", "safetensors": "train", "sklearn": "train", "mlxtend": "train", "matplotlib": "train",
             "tqdm": "train", "onnx": "train", "onnxscript": "train", "onnx_tool": "bench"}


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename and str(e.filename) not in what else what


def main(argv: list[str] | None = None) -> int:
    """Run a command; every expected failure is one line on stderr and exit code 2 (1 when the work ran and its own
    check failed: validation against PyTorch, a diverged loss). Anything else is a bug and keeps its traceback;
    ``--debug`` shows the traceback of every error."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, JobFailed):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, VaedeployError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"error: {_os_error(e)}", file=sys.stderr)
            return 2
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in _OPTIONAL:
            package = e.name.split(".")[0]
            print(f"error: vaedeploy {args.command} needs the {package!r} package: pip install "
                  f"'vaedeploy[{_OPTIONAL[package]}]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
