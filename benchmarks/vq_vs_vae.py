"""VQ-VAE (default config, K = 256) against Gaussian VAEs of similar size on mnist5k: training time, codebook use,
test reconstruction error, prior samples.

    python -m benchmarks.vq_vs_vae [--epochs 40] [--max-seconds 300] [--out runs/vq_vs_vae]

Trains each model with the same TrainConfig (each training stage capped at --max-seconds), evaluates it on the test
split and writes benchmarks/results/vq_vs_vae.json, and the VQ-VAE's prior samples and reconstructions as PNGs beside
it. The VAEs use conv trunks with the VQ-VAE's channels and 16 latents, once with the learned-variance Gaussian
decoder (the Foundation default) and once with the Bernoulli decoder the VQ-VAE uses, so the likelihood is not what
decides the comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, markdown_table, write_rows
from vaedeploy.data import load_dataset
from vaedeploy.evaluate import evaluate_model
from vaedeploy.plots import plot_grid, plot_reconstructions
from vaedeploy.train import TrainConfig, load_run, train_run

VAE_TRUNK = {"backbone": "conv", "channels": [16, 32], "hidden": [128], "latent_dim": 16}
MODELS = [
    ("vqvae", "VQ-VAE, default config (K=256, 7×7 codes)", {}),
    ("vae", "Gaussian VAE, conv, Gaussian decoder", {**VAE_TRUNK, "likelihood": "gaussian"}),
    ("vae", "Gaussian VAE, conv, Bernoulli decoder", {**VAE_TRUNK, "likelihood": "bernoulli"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="cap per training stage")
    parser.add_argument("--iw-samples", type=int, default=100, help="importance samples for the VAEs' likelihood")
    parser.add_argument("--out", default="runs/vq_vs_vae")
    args = parser.parse_args()

    data = load_dataset("mnist5k")
    cfg = TrainConfig(epochs=args.epochs, max_seconds=args.max_seconds, patience=0)
    rows = []
    for i, (kind, label, config) in enumerate(MODELS):
        run = Path(args.out) / f"{i}_{kind}"
        started = time.perf_counter()
        _, metrics = train_run(kind, data, run, model_config=config, train_config=cfg)
        wall = time.perf_counter() - started
        model, _ = load_run(run)
        results = evaluate_model(model, data, iw_samples=args.iw_samples)
        prior_parameters = sum(p.numel() for p in model.prior.parameters()) if kind == "vqvae" else 0
        stages = {"model": metrics, **metrics.get("stages", {})}
        row = {
            "model": label,
            "kind": kind,
            "config": model.config_dict(),
            "parameters": results["parameters"],
            "parameters_without_prior": results["parameters"] - prior_parameters,
            "train_wall_seconds": wall,
            "epochs": {name: len(doc["history"]) for name, doc in stages.items()},
            "stop_reason": {name: doc["stop_reason"] for name, doc in stages.items()},
            **{k: v for k, v in results.items() if k not in ("code_counts", "kl_per_dim", "active_unit_variance")},
        }
        rows.append(row)
        print(f"{label}: recon_error {row['recon_error']:.5f}, {row['parameters']} parameters, "
              f"trained in {wall:.0f} s", flush=True)
        if kind == "vqvae":
            x = data.evaluation_inputs("test")
            with torch.no_grad():
                recon = model.reconstruct(torch.from_numpy(x[:50])).numpy()
                for temperature, suffix in ((1.0, ""), (0.7, "_t07")):
                    samples = model.sample(100, generator=torch.Generator().manual_seed(0),
                                           temperature=temperature).numpy()
                    plot_grid(samples, RESULTS_DIR / f"vq_vs_vae_samples{suffix}.png",
                              f"VQ-VAE on mnist5k: samples of the learned prior (seed 0, temperature {temperature:g})")
            plot_reconstructions(x[:50], recon, RESULTS_DIR / "vq_vs_vae_reconstructions.png",
                                 "VQ-VAE on mnist5k: test data (odd rows) and reconstructions (even rows)")

    path = write_rows("vq_vs_vae", rows, meta={"data": "mnist5k (test split, 500 images, dequantized)",
                                               "torch_threads": torch.get_num_threads(),
                                               "train_config": dataclasses.asdict(cfg)})
    table = [(r["model"], r["parameters"], r["parameters_without_prior"], f"{r['recon_error']:.4f}",
              f"{r['train_wall_seconds']:.0f}", r.get("codes_used", "–"), r.get("codebook_perplexity", "–"),
              r.get("prior_nll_bits_per_code", "–")) for r in rows]
    print(markdown_table(["model", "parameters", "without prior", "test recon MSE/pixel", "train s (wall)",
                          "codes used", "perplexity", "prior bits/code"], table))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
