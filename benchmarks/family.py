"""The family's "done when" figures: vae, bivae, biva and twostage (and klconv, spatial latents) trained for the same
time on digits and mnist5k.

Each model trains for at most ``--seconds`` per stage (two-stage: stage 1, then stage 2), early-stopping on the
validation loss, and is evaluated on the test split by ``vaedeploy.evaluate``. With several ``--seeds`` every model
trains once per seed and the checks compare the means over seeds (the spread is reported beside them). Writes
``benchmarks/results/family.json`` (every figure, the machine, the checks) and prints a markdown table. With
``--pictures`` each model's samples and reconstructions (``vaedeploy plot``'s) are kept beside it as
``NAME_KIND_samples.png`` and ``NAME_KIND_reconstructions.png``.

    python benchmarks/family.py                       # digits 60 s, mnist5k 120 s per model and stage (about 25 min)
    python benchmarks/family.py --data digits --seconds 10 --iw-samples 100 --name quick   # a quick look
    python benchmarks/family.py --kinds bivae          # re-measure one model; the other rows of the file are kept
    python benchmarks/family.py --data digits --seeds 0 1 2   # three seeds per model
    python benchmarks/family.py --data mnist5k --kinds vae bivae --backbone conv --name family_conv   # conv pair
    python benchmarks/family.py --kinds vae bivae biva --free-bits 0.5 --name family_free_bits   # one recipe
    python benchmarks/family.py --data mnist5k --kinds klconv --name family_klconv --pictures --epochs 10 \
        --iw-samples 100   # spatial latents, on an epoch budget (a conv model on 2 busy cores: ~1 min per epoch)
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, markdown_table, write_rows  # noqa: E402
from vaedeploy.data import load_dataset  # noqa: E402
from vaedeploy.evaluate import evaluate_run  # noqa: E402
from vaedeploy.io import read_json  # noqa: E402
from vaedeploy.pictures import plot_run  # noqa: E402
from vaedeploy.train import TrainConfig, train_run  # noqa: E402

KINDS = ("vae", "bivae", "biva", "twostage", "klconv")  # the order of the rows
FAMILY = KINDS[:4]  # the default --kinds: the vector-latent family whose checks the benchmark decides
DEFAULT_SECONDS = {"digits": 60.0, "mnist5k": 120.0}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def over_seeds(rows: list[dict], key: str) -> dict:
    """Mean, spread (sample standard deviation; 0 for one seed) and the values of ``key`` over a model's seeds."""
    values = [r[key] for r in rows]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def checks(rows: list[dict]) -> list[dict]:
    """The issue's criteria that the measured kinds allow, each decided on the means over seeds and stored with the
    figures behind it."""
    out = []
    for data in sorted({r["data"] for r in rows}):
        by = {kind: [r for r in rows if r["data"] == data and r["kind"] == kind] for kind in KINDS}
        ll = {kind: over_seeds(by[kind], "log_likelihood_iw") for kind in ("vae", "bivae", "biva") if by[kind]}
        if by["vae"] and by["bivae"]:
            ratio = by["bivae"][0]["parameters"] / by["vae"][0]["parameters"]
            gap = abs(ll["bivae"]["mean"] - ll["vae"]["mean"]) / abs(ll["vae"]["mean"])
            out += [
                {"data": data, "check": "bivae parameters <= 55% of vae", "value": ratio, "passed": ratio <= 0.55},
                {"data": data, "check": "bivae IW log-likelihood within 5% of vae", "value": gap,
                 "passed": gap <= 0.05, "vae": ll["vae"], "bivae": ll["bivae"]},
            ]
        if by["vae"] and by["biva"]:
            out.append({"data": data, "check": "biva IW log-likelihood > vae",
                        "value": ll["biva"]["mean"] - ll["vae"]["mean"],
                        "passed": ll["biva"]["mean"] > ll["vae"]["mean"], "vae": ll["vae"], "biva": ll["biva"]})
        if by["twostage"]:
            two, one = over_seeds(by["twostage"], "sample_fd"), over_seeds(by["twostage"], "stage1_sample_fd")
            out.append({"data": data, "check": "twostage sample_fd < its stage 1 from N(0, I)",
                        "value": two["mean"] - one["mean"], "passed": two["mean"] < one["mean"], "sample_fd": two,
                        "stage1_sample_fd": one})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--kinds", nargs="+", default=list(FAMILY))
    parser.add_argument("--seconds", type=float, help="training time per model and stage (default per data set)")
    parser.add_argument("--epochs", type=int, help="a fixed number of epochs per stage in place of the time limit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per model and seed")
    parser.add_argument("--backbone", choices=["mlp", "conv"], help="every model's backbone (default: each kind's)")
    parser.add_argument("--free-bits", type=float, help="every model's free bits (default: each kind's)")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--out", help="where the run directories go (default runs/NAME)")
    parser.add_argument("--name", default="family", help="results file name under benchmarks/results/")
    parser.add_argument("--pictures", action="store_true", help="keep each model's samples and reconstructions")
    args = parser.parse_args()

    model_config = {"backbone": args.backbone} if args.backbone else None
    rows = []
    for data_name in args.data:
        data = load_dataset(data_name)
        seconds = args.seconds or DEFAULT_SECONDS.get(data_name, 60.0)
        for kind, seed in ((kind, seed) for kind in args.kinds for seed in args.seeds):
            run = Path(args.out or f"runs/{args.name}") / data_name / f"{kind}_seed{seed}"
            cfg = TrainConfig(epochs=args.epochs or 2000, max_seconds=0.0 if args.epochs else seconds, patience=30,
                              seed=seed, free_bits=args.free_bits)
            _, metrics = train_run(kind, data, run, model_config=model_config, train_config=cfg, progress=False)
            stages = metrics.get("stages", {}).values()
            train_seconds = metrics["train_seconds"] + sum(s["train_seconds"] for s in stages)
            results = evaluate_run(run, iw_samples=args.iw_samples)
            if args.pictures:
                for picture in plot_run(run):
                    if picture.stem in ("samples", "reconstructions"):
                        shutil.copyfile(picture, RESULTS_DIR / f"{args.name}_{kind}_{picture.name}")
            row = {"data": data_name, "kind": kind, "seed": seed, "backbone": args.backbone or "default",
                   "free_bits": read_json(run / "config.json")["train"]["free_bits"], "run": str(run),
                   "measured": now(),
                   "train_seconds": train_seconds,
                   "epochs": len(metrics["history"]), "stop_reason": metrics["stop_reason"],
                   **{k: results[k] for k in ("parameters", "elbo", "log_likelihood_iw", "recon_error",
                                              "active_units", "mutual_information", "sample_fd") if k in results}}
            if "stage1_sample_fd" in results:
                row["stage1_sample_fd"] = results["stage1_sample_fd"]
            if "layers" in results:
                row["active_units_per_layer"] = [layer["active_units"] for layer in results["layers"]]
                row["kl_per_layer"] = [layer["kl"] for layer in results["layers"]]
            rows.append(row)
            print(f"{data_name} {kind}: {row}", flush=True)

    previous = RESULTS_DIR / f"{args.name}.json"
    if previous.exists():  # keep the rows of models not re-measured in this call
        fresh = {(r["data"], r["kind"]) for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if (r["data"], r["kind"]) not in fresh] + rows
    data_order = {d: i for i, d in enumerate(dict.fromkeys(r["data"] for r in rows))}
    rows.sort(key=lambda r: (data_order[r["data"]], KINDS.index(r["kind"]), r.get("seed", 0)))
    decided = checks(rows)
    budget = {"epochs_per_stage": args.epochs} if args.epochs else \
        {"seconds_per_stage": args.seconds or DEFAULT_SECONDS}
    path = write_rows(args.name, rows, meta={**budget,
                                             "seeds": {d: sorted({r.get("seed", 0) for r in rows if r["data"] == d})
                                                       for d in data_order}, "iw_samples": args.iw_samples,
                                             "checks": decided,
                                             "sample_fd_note": "classifier-feature Fréchet distance; not comparable "
                                                               "with Inception FID"})
    print(markdown_table(
        ["data", "model", "seed", "parameters", "train s", "ELBO", "IW log-lik", "active units", "sample FD",
         "stage-1 FD"],
        [[r["data"], r["kind"], r.get("seed", 0), r["parameters"], r["train_seconds"], r["elbo"],
          r["log_likelihood_iw"],
          r.get("active_units_per_layer", r["active_units"]), r["sample_fd"], r.get("stage1_sample_fd", "")]
         for r in rows]))
    if decided:
        print(markdown_table(["data", "check", "value", "passed"],
                             [[c["data"], c["check"], c["value"], c["passed"]] for c in decided]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
