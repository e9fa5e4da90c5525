"""The `vaedeploy` command: train, eval, plot, export, demo, web."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _value(text: str):
    """A --set value: JSON when it parses (numbers, lists, true/false), a comma list, or a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [_value(part) for part in text.split(",")] if "," in text else text


def _model_overrides(args) -> dict:
    overrides = {}
    for name in ("latent_dim", "backbone", "likelihood", "activation"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.hidden is not None:
        overrides["hidden"] = _value(args.hidden) if "," in args.hidden else [int(args.hidden)]
    if args.preprocessing == "binarize" and "likelihood" not in overrides:
        overrides["likelihood"] = "bernoulli"
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.replace("-", "_")] = _value(text)
    return overrides


def cmd_train(args) -> int:
    from .data import load_dataset, load_from_spec
    from .io import read_json
    from .train import TrainConfig, train_run

    if args.resume or args.stage != "all":
        data = load_from_spec(read_json(Path(args.out) / "config.json")["data"])
    else:
        data = load_dataset(args.data, preprocessing=args.preprocessing, split_seed=args.split_seed)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        kl_warmup_epochs=args.kl_warmup, free_bits=args.free_bits, patience=args.patience,
        max_seconds=args.max_seconds, grad_clip=args.grad_clip,
    )
    _, metrics = train_run(args.model, data, args.out, model_config=_model_overrides(args), train_config=cfg,
                           resume=args.resume, progress=not args.no_progress, stage=args.stage)
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
    from .plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_export(args) -> int:
    from .export import ExportError, ValidationError, export_run

    try:
        out = export_run(args.run, args.out, exporter=args.exporter, opset=args.opset,
                         precisions=tuple(args.precision), max_batch=args.max_batch)
    except (ExportError, ValidationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest = json.loads((out / "manifest.json").read_text())
    worst = manifest["validation"]["worst"]
    print(f"exported {manifest['kind']} to {out}: graphs {sorted(manifest['graphs'])} in "
          f"{sorted(set(p for g in manifest['graphs'].values() for p in g))}, {args.exporter} exporter, opset "
          f"{args.opset}; validated against PyTorch at batch sizes {manifest['validation']['batch_sizes']}, "
          f"worst rel-L2 error {max(w['rel_l2'] for w in worst.values()):.2g}")
    return 0


def _demo_runtime(run: Path, out: Path, data) -> list[Path]:
    """Export the demo VAE, load it with backend="auto" and use every runtime call; returns the pictures drawn."""
    import numpy as np

    from . import load
    from .export import export_run
    from .plots import plot_grid, plot_reconstructions

    bundle = export_run(run, out / "vae_bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    worst = manifest["validation"]["worst"]
    print(f"      {bundle}: {', '.join(sorted(manifest['files']))}; ONNX Runtime matches PyTorch at batch sizes "
          f"{manifest['validation']['batch_sizes']} (worst relative L2 error {max(w['rel_l2'] for w in worst.values()):.1g})")
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
    """Print the CPU benchmark table for the demo bundle (a short run; the committed figures are in README)."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "runtime_cpu.py"
    if not script.exists():
        print("      benchmarks/runtime_cpu.py is not part of this install; see README for the figures")
        return
    subprocess.run([sys.executable, str(script), "--bundle", str(bundle), "--quick", "--json",
                    str(out / "benchmark_runtime_cpu.json")], check=True)


def cmd_demo(args) -> int:
    from .data import load_dataset
    from .evaluate import evaluate_run
    from .plots import plot_run
    from .train import TrainConfig, train_run

    out = Path(args.out)
    started = time.perf_counter()
    data = load_dataset("digits")
    print(f"[1/5] training a VAE on digits ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
          f"images, 8×8): up to {args.epochs} epochs, early stopping, at most {args.seconds:g} s")
    train_run("vae", data, out / "vae",
              train_config=TrainConfig(epochs=args.epochs, max_seconds=args.seconds, patience=30))
    print("[2/5] evaluating on the test split (importance sampling with 1,000 samples)")
    results = evaluate_run(out / "vae")
    print("[3/5] drawing samples, reconstructions and the latent space")
    pictures = plot_run(out / "vae")
    print("[4/5] exporting to an ONNX bundle, validating, and running it through vaedeploy.load(backend='auto')")
    pictures += _demo_runtime(out / "vae", out, data)
    print("[5/5] timing encode and decode: PyTorch eager, raw onnxruntime session.run, the vaedeploy runtime")
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


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS

    parser = argparse.ArgumentParser(prog="vaedeploy", description="Train, evaluate, export and serve VAEs.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write a run directory")
    train.add_argument("model", choices=sorted(MODELS))
    train.add_argument("--data", default="digits", help="digits, mnist5k, or a .npy/.npz path (default digits)")
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--preprocessing", default="dequantize", choices=["dequantize", "binarize", "scale"])
    train.add_argument("--split-seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--kl-warmup", type=int, default=0, help="epochs of linear KL warm-up (default 0: off)")
    train.add_argument("--free-bits", type=float,
                       help="nats per latent dimension, 0: off (default: the model's, 0 for all but bivae)")
    train.add_argument("--patience", type=int, default=20, help="early-stopping patience in epochs (0: off)")
    train.add_argument("--max-seconds", type=float, default=0.0, help="training time limit (default 0: none)")
    train.add_argument("--grad-clip", type=float, default=0.0)
    train.add_argument("--latent-dim", type=int)
    train.add_argument("--backbone", choices=["mlp", "conv"])
    train.add_argument("--hidden", help="dense widths, e.g. 256,256")
    train.add_argument("--likelihood", choices=["gaussian", "bernoulli"])
    train.add_argument("--activation", choices=["relu", "silu", "tanh", "elu"])
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model config field, e.g. --set min_logvar=-6")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--stage", default="all",
                       help="all (default) or one extra stage (vqvae: prior) to (re)train on the run in --out")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run on its test split; writes RUN/eval.json")
    ev.add_argument("run")
    ev.add_argument("--iw-samples", type=int, default=1000)
    ev.add_argument("--elbo-samples", type=int, default=10)
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="write PNG pictures of a run")
    plot.add_argument("run")
    plot.set_defaults(func=cmd_plot)

    export = sub.add_parser("export", help="export a run to a validated ONNX bundle (exit 1 when validation fails)")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"],
                        help="torch.onnx exporter (default dynamo; legacy is recorded in the manifest)")
    export.add_argument("--precision", action="append", choices=["fp32", "fp16"], default=["fp32"],
                        help="fp16 adds half-precision graphs beside the fp32 master (repeatable)")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--max-batch", type=int, default=1024, help="largest batch validated (default 1024)")
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="train, evaluate, plot, export and serve a VAE on the embedded digits")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=300, help="training epochs (default 300, ~20 s on 2 cores)")
    demo.add_argument("--seconds", type=float, default=120.0, help="training time limit (default 120)")
    demo.set_defaults(func=cmd_demo)

    web = sub.add_parser("web", help="write a browser page decoding the bundle on onnxruntime-web")
    web.add_argument("bundle")
    web.add_argument("--out", required=True, help="new or empty directory, or a previous output")
    web.add_argument("--data", help="training data for the pad's principal directions: digits, mnist5k or .npy/.npz "
                                    "(default: the data the bundle's manifest names)")
    web.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 with COOP/COEP headers")
    web.add_argument("--port", type=int, default=8080)
    web.set_defaults(func=cmd_web)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .train import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
