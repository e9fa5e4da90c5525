"""Posterior collapse shown, then prevented: one VAE with a strong decoder trained three ways on the same data.

A wide decoder can explain much of the data without the code, so plain ELBO training switches latent dimensions
off (KL ≈ 0, inactive). KL warm-up (the KL weight rises from 0 over the first epochs) and free bits (no pressure on a
dimension's KL below λ nats) are the two usual remedies. Every variant trains for the same number of epochs from each
of the same seeds; the test split is evaluated by ``vaedeploy.evaluate``.

The default decoder is Bernoulli on dynamically binarized images, the setting of Burda et al.'s active units. With
``--likelihood gaussian`` (learned per-pixel variance, dequantized images) the decoder's precision can grow large
enough that a dimension carrying a hundredth of a nat still pays, and the dimensions plain training switches off keep
posterior means that vary a little over the data: they pass Burda's variance threshold and blur that count.

Units are counted two ways, because they disagree: ``active units`` (Burda et al.: the posterior mean varies over the
data with variance above 0.01) and ``informative units`` (the dimension's KL to the prior, averaged over the data,
above ``--kl-threshold`` nats). A dimension can pass the first with a negligible KL, i.e. while carrying almost no
information, so the KL count is the one that says whether a dimension is in use.

Writes ``benchmarks/results/NAME.json`` (``--name``, default ``posterior_collapse``: every run, and per variant the
mean and spread over seeds) and ``benchmarks/results/NAME.png`` (KL per dimension, dimensions sorted by KL within each
run, then averaged over seeds) and prints markdown tables.

    python benchmarks/posterior_collapse.py                    # digits, 3 seeds: about 10 minutes on 2 idle cores
    python benchmarks/posterior_collapse.py --likelihood gaussian --name posterior_collapse_gaussian
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, markdown_table, write_rows  # noqa: E402
from vaedeploy.data import load_dataset  # noqa: E402
from vaedeploy.evaluate import evaluate_run  # noqa: E402
from vaedeploy.plots import plot_grouped_bars  # noqa: E402
from vaedeploy.train import TrainConfig, train_run  # noqa: E402

# the strong decoder: wide layers against more latent dimensions than the data need
STRONG_DECODER = {"latent_dim": 32, "hidden": [512, 512]}
PREPROCESSING = {"bernoulli": "binarize", "gaussian": "dequantize"}
COUNTS = ("informative_units", "active_units")


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--likelihood", choices=sorted(PREPROCESSING), default="bernoulli",
                        help="the decoder: bernoulli on binarized images or gaussian on dequantized ones")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--warmup-epochs", type=int, default=100)
    parser.add_argument("--free-bits", type=float, default=0.25, help="nats per dimension")
    parser.add_argument("--kl-threshold", type=float, default=0.1, help="nats: KL above it makes a unit informative")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--out", help="where the run directories go (default runs/NAME)")
    parser.add_argument("--name", default="posterior_collapse", help="results file name under benchmarks/results/")
    args = parser.parse_args()

    data = load_dataset(args.data, preprocessing=PREPROCESSING[args.likelihood])
    model = {**STRONG_DECODER, "likelihood": args.likelihood}
    variants = {
        "plain ELBO": {},
        f"KL warm-up ({args.warmup_epochs} epochs)": {"kl_warmup_epochs": args.warmup_epochs},
        f"free bits ({args.free_bits:g} nats/dim)": {"free_bits": args.free_bits},
    }
    rows = []
    for i, (name, options) in enumerate(variants.items()):
        for seed in args.seeds:
            run = Path(args.out or f"runs/{args.name}") / args.data / f"variant{i}_seed{seed}"
            cfg = TrainConfig(epochs=args.epochs, patience=0, seed=seed, **options)
            _, metrics = train_run("vae", data, run, model_config=model, train_config=cfg, progress=True)
            results = evaluate_run(run, iw_samples=args.iw_samples)
            kl = results["kl_per_dim"]
            rows.append({"variant": name, "seed": seed, "run": str(run), "train_seconds": metrics["train_seconds"],
                         "epochs": len(metrics["history"]), "model": model, **options,
                         "informative_units": sum(k > args.kl_threshold for k in kl), "total_kl": sum(kl),
                         **{k: results[k] for k in ("active_units", "kl_per_dim", "mutual_information", "elbo",
                                                    "log_likelihood_iw", "recon_error")}})

    summary, kl_series = [], {}
    for name in variants:
        runs = [r for r in rows if r["variant"] == name]
        summary.append({"variant": name, **{key: spread([r[key] for r in runs]) for key in
                                            (*COUNTS, "total_kl", "elbo", "log_likelihood_iw")}})
        counts = summary[-1]
        label = (f"{name}: {counts['informative_units']['mean']:.1f} informative, "
                 f"{counts['active_units']['mean']:.1f} active")
        kl_series[label] = np.mean([sorted(r["kl_per_dim"], reverse=True) for r in runs], 0).tolist()
    checks = [{"check": f"fewer {count} without warm-up than with it, and without free bits than with them "
                        "(means over seeds)",
               "plain": summary[0][count]["mean"], "warm-up": summary[1][count]["mean"],
               "free bits": summary[2][count]["mean"],
               "passed": summary[0][count]["mean"] < min(summary[1][count]["mean"], summary[2][count]["mean"])}
              for count in COUNTS]
    path = write_rows(args.name, rows, meta={
        "data": args.data, "likelihood": args.likelihood, "preprocessing": PREPROCESSING[args.likelihood],
        "epochs": args.epochs, "seeds": args.seeds, "iw_samples": args.iw_samples, "kl_threshold": args.kl_threshold,
        "summary": summary, "checks": checks})
    picture = plot_grouped_bars(
        kl_series, RESULTS_DIR / f"{args.name}.png",
        f"VAE {model} on {args.data}: KL per latent dimension after {args.epochs} epochs "
        f"(mean of {len(args.seeds)} seeds)",
        "latent dimension (sorted by KL within each run)", "KL(q(z_d|x) ‖ N(0,1)), nats")

    def mean_std(figure: dict) -> str:
        return f"{figure['mean']:.1f} ± {figure['std']:.1f}"

    print(markdown_table(
        ["variant", "seed", "informative units", "active units", "total KL", "ELBO", "IW log-lik", "train s"],
        [[r["variant"], r["seed"], r["informative_units"], r["active_units"], r["total_kl"], r["elbo"],
          r["log_likelihood_iw"], r["train_seconds"]] for r in rows]))
    print(markdown_table(
        ["variant", f"informative units (KL > {args.kl_threshold:g})", "active units (variance > 0.01)", "total KL",
         "ELBO", "IW log-lik"],
        [[s["variant"], *(mean_std(s[k]) for k in (*COUNTS, "total_kl", "elbo", "log_likelihood_iw"))]
         for s in summary]))
    print(markdown_table(["check", "passed"], [[c["check"], c["passed"]] for c in checks]))
    print(f"wrote {path} and {picture}")


if __name__ == "__main__":
    main()
