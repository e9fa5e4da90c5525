"""Posterior collapse shown, then prevented: one VAE with a strong decoder trained three ways on the same data.

A wide decoder with a learned per-pixel variance can explain much of the data without the code, so plain ELBO
training switches latent dimensions off (KL ≈ 0, inactive). KL warm-up (the KL weight rises from 0 over the first
epochs) and free bits (no pressure on a dimension's KL below λ nats) are the two usual remedies. Every run trains for
the same number of epochs from the same seed; the test split is evaluated by ``vaedeploy.evaluate``.

Writes ``benchmarks/results/posterior_collapse.json`` and ``benchmarks/results/posterior_collapse.png`` (KL per
dimension of each run, dimensions sorted by KL) and prints a markdown table.

    python benchmarks/posterior_collapse.py                    # digits, about 3 minutes on 2 idle cores
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, markdown_table, write_rows  # noqa: E402
from vaedeploy.data import load_dataset  # noqa: E402
from vaedeploy.evaluate import evaluate_run  # noqa: E402
from vaedeploy.plots import plot_grouped_bars  # noqa: E402
from vaedeploy.train import TrainConfig, train_run  # noqa: E402

# the strong decoder: wide layers and a learned variance, against more latent dimensions than the data need
STRONG_DECODER = {"latent_dim": 32, "hidden": [512, 512]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--warmup-epochs", type=int, default=100)
    parser.add_argument("--free-bits", type=float, default=0.25, help="nats per dimension")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--out", default="runs/posterior_collapse")
    args = parser.parse_args()

    data = load_dataset(args.data)
    variants = {
        "plain ELBO": {},
        f"KL warm-up ({args.warmup_epochs} epochs)": {"kl_warmup_epochs": args.warmup_epochs},
        f"free bits ({args.free_bits:g} nats/dim)": {"free_bits": args.free_bits},
    }
    rows, kl_series = [], {}
    for i, (name, options) in enumerate(variants.items()):
        run = Path(args.out) / args.data / f"variant{i}"
        cfg = TrainConfig(epochs=args.epochs, patience=0, seed=0, **options)
        _, metrics = train_run("vae", data, run, model_config=STRONG_DECODER, train_config=cfg, progress=True)
        results = evaluate_run(run, iw_samples=args.iw_samples)
        rows.append({"variant": name, "run": str(run), "train_seconds": metrics["train_seconds"],
                     "epochs": len(metrics["history"]), "model": STRONG_DECODER, **options,
                     **{k: results[k] for k in ("active_units", "kl_per_dim", "mutual_information", "elbo",
                                                "log_likelihood_iw", "recon_error")}})
        kl_series[f"{name}: {results['active_units']} active"] = sorted(results["kl_per_dim"], reverse=True)

    path = write_rows("posterior_collapse", rows, meta={"data": args.data, "epochs": args.epochs,
                                                        "iw_samples": args.iw_samples})
    picture = plot_grouped_bars(
        kl_series, RESULTS_DIR / "posterior_collapse.png",
        f"VAE {STRONG_DECODER} on {args.data}: KL per latent dimension after {args.epochs} epochs",
        "latent dimension (sorted by KL)", "KL(q(z_d|x) ‖ N(0,1)), nats")
    print(markdown_table(
        ["variant", "active units", "total KL", "I(x;z)", "ELBO", "IW log-lik", "train s"],
        [[r["variant"], f"{r['active_units']} of {len(r['kl_per_dim'])}", sum(r["kl_per_dim"]),
          r["mutual_information"], r["elbo"], r["log_likelihood_iw"], r["train_seconds"]] for r in rows]))
    print(f"wrote {path} and {picture}")


if __name__ == "__main__":
    main()
