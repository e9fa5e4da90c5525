"""``vaedeploy demo`` (``make demo``): train, evaluate, plot, export, load and time a VAE on the embedded digits, one
step after another, printing what each gave; every step is the library call its own command makes."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .argtypes import NON_NEGATIVE, POSITIVE_INT


def add_parser(subparsers) -> None:
    """The ``demo`` subcommand of the ``vaedeploy`` command."""
    demo = subparsers.add_parser("demo", help="train, evaluate, plot, export and serve a VAE on the embedded digits")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=POSITIVE_INT, default=300, help="the most training epochs (default 300)")
    demo.add_argument("--seconds", type=NON_NEGATIVE, default=120.0, help="training time limit (default 120)")
    demo.set_defaults(func=run)


def _export_and_run(run: Path, out: Path, data) -> list[Path]:
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


def _benchmark(bundle: Path, out: Path) -> None:
    """A short `vaedeploy bench` of the demo bundle on the CPU backends (docs/benchmarks.md has the committed runs)."""
    from .bench import output
    from .bench.run import measure_bundles

    doc = measure_bundles([bundle], ops=["encode", "decode", "sample"], batches=[1, 64, 1024], budget_s=15.0,
                          notes=["the demo's short run (15 s); the committed figures are in docs/benchmarks.md"])
    print(output.summary(doc))
    print(output.table(doc["rows"]))
    for path in output.write(doc, out / "benchmark.json"):
        print(f"      wrote {path}")


def _print_results(results: dict) -> None:
    """The evaluation's headline figures, one aligned row each."""
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


def run(args) -> int:
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
    pictures += _export_and_run(out / "vae", out, data)
    print("[5/5] timing encode, decode and sample on ONNX Runtime and PyTorch with `vaedeploy bench` (15 s)")
    _benchmark(out / "vae_bundle", out)
    _print_results(results)
    print("\nfiles:")
    for path in [out / "vae" / "model.safetensors", out / "vae" / "eval.json", out / "vae_bundle", *pictures]:
        print(f"  {path}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
