"""``vaedeploy train``, ``eval`` and ``plot``: the commands on a run directory, their options and what they print.
Training, evaluation and pictures import torch, so each command imports its library only when it runs."""
from __future__ import annotations

import json
import os

from .argtypes import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, commas
from .errors import ConfigError


def add_parser(subparsers) -> None:
    """The ``train``, ``eval`` and ``plot`` subcommands of the ``vaedeploy`` command."""
    train = subparsers.add_parser("train", help="train a model and write a run directory")
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
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser("eval", help="evaluate a run on its test split; writes RUN/eval.json")
    ev.add_argument("run")
    ev.add_argument("--iw-samples", type=POSITIVE_INT, default=1000)
    ev.add_argument("--elbo-samples", type=POSITIVE_INT, default=10)
    ev.set_defaults(func=run_eval)

    plot = subparsers.add_parser("plot", help="write PNG pictures of a run")
    plot.add_argument("run")
    plot.set_defaults(func=run_plot)


# the training options a --resume takes from the run instead of the command line; only --epochs may change
TRAIN_OPTIONS = ("batch_size", "lr", "seed", "kl_warmup", "free_bits", "patience", "max_seconds", "grad_clip")
MODEL_OPTIONS = ("latent_dim", "backbone", "hidden", "likelihood", "activation")


def _value(text: str):
    """A --set value: JSON when it parses (numbers, lists, true/false), a comma list, or a plain string."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or an integer past the 4,300-digit limit
        return [_value(part) for part in commas(text)] if "," in text else text


def _model_overrides(args) -> dict:
    overrides = {}
    for name in ("latent_dim", "backbone", "likelihood", "activation"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.hidden is not None:
        overrides["hidden"] = [_value(w) for w in commas(args.hidden)]
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


def run_train(args) -> int:
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


def run_eval(args) -> int:
    from .evaluate import evaluate_run

    results = evaluate_run(args.run, iw_samples=args.iw_samples, elbo_samples=args.elbo_samples)
    print(json.dumps(results, indent=2))
    return 0


def run_plot(args) -> int:
    from .pictures import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0
