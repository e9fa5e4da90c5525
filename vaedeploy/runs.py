"""The run directory that ``vaedeploy train`` writes and every other tool reads; one place for its format.

    config.json            format, kind, model config, data spec, training config (rebuilds everything)
    model.safetensors      the weights with the best validation loss
    metrics.json           per-epoch history and the best epoch
    checkpoint.safetensors / checkpoint.json   the last epoch's weights, optimizer and RNG state, for --resume
    training_curve.png
    STAGE.safetensors, STAGE_metrics.json, ...  the same for each extra stage of a kind (a VQ-VAE's prior)
    eval.json, *.png, fd_classifier.safetensors  written later by eval and plot

A run is the user's work: nothing here deletes a file that a run does not own, and training into an existing run
needs ``resume`` or ``overwrite`` (``check_target``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import RunError
from .fid import CACHE_NAME as FD_CACHE  # the sample-FD feature classifier, cached in the run it evaluated
from .io import load_tensors, read_json
from .models import Model, build_model

FORMAT_VERSION = 1
CONFIG = "config.json"
EVAL = "eval.json"
PICTURES = ("samples.png", "reconstructions.png", "latent_space.png")  # what `vaedeploy plot` draws for every model


def stage_files(run_dir: str | os.PathLike, stage: str) -> dict[str, Path]:
    """The files of one training stage: ``model`` for the main model, an extra stage's name (``prior``) otherwise."""
    run_dir = Path(run_dir)
    prefix = "" if stage == "model" else f"{stage}_"
    return {
        "weights": run_dir / f"{stage}.safetensors",
        "metrics": run_dir / f"{prefix}metrics.json",
        "checkpoint": run_dir / f"{prefix}checkpoint.safetensors",
        "state": run_dir / f"{prefix}checkpoint.json",
        "curve": run_dir / f"{prefix}training_curve.png",
    }


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run, checked for the keys every reader needs and a format this build reads."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run directory (expected the --out of `vaedeploy train`)")
    config = read_json(run_dir / CONFIG, "the config.json of a `vaedeploy train` run")
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("model", "data", "train")) \
            or not isinstance(config.get("kind"), str):
        raise RunError(f"{run_dir / CONFIG}: expected an object with 'kind' (a string) and 'model', 'data', 'train' "
                       "(objects), as `vaedeploy train` writes it")
    version = config.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunError(f"{run_dir}: run format {version!r} is not one this vaedeploy reads (1 to {FORMAT_VERSION}); "
                       "upgrade vaedeploy")
    return config


def load_run(run_dir: str | os.PathLike, *, require_stages: bool = True) -> tuple[Model, dict]:
    """The trained model (best weights, eval mode) and the config document of a run directory.

    The weights of a model's extra stages load from their own files (``prior.safetensors``); a missing one is an
    error unless ``require_stages`` is False (then that part keeps its initial weights).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model = build_model(config["kind"], config["model"])
    _load_weights(model, run_dir / "model.safetensors", strict=True)
    for stage in model.extra_stages:
        path = stage_files(run_dir, stage)["weights"]
        if not path.exists():
            if require_stages:
                raise FileNotFoundError(f"{path}: missing; the {stage} stage of this run was not trained "
                                        f"(vaedeploy train {config['kind']} --stage {stage} --out {run_dir})")
            continue
        _load_weights(model, path, strict=False)
    return model.eval(), config


def _load_weights(model: Model, path: Path, strict: bool) -> None:
    """Load a weights file into ``model``, naming the file when its tensors are not this model's."""
    weights = load_tensors(path)
    expected = model.state_dict()
    unknown = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights)) if strict else []
    wrong = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)
    if unknown or missing or wrong:
        problems = (("unknown tensors", unknown), ("missing tensors", missing), ("wrong shapes", wrong))
        found = "; ".join(f"{what} {names[:3]}" for what, names in problems if names)
        raise RunError(f"{path}: does not fit a {model.kind} model built from config.json ({found})")
    model.load_state_dict(weights, strict=strict)


def owned_files(run_dir: str | os.PathLike, kind: str) -> list[Path]:
    """The files of a ``kind`` run that exist in ``run_dir``: what ``overwrite`` may replace, and nothing else."""
    from .models import model_class

    stages = ("model", *model_class(kind).extra_stages)
    names = [p for stage in stages for p in stage_files(run_dir, stage).values()]
    names += [Path(run_dir) / n for n in (CONFIG, EVAL, FD_CACHE, *PICTURES)]
    return [p for p in names if p.is_file()]


def check_target(out: str | os.PathLike, kind: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any file is touched, to train into ``out`` when that would lose or corrupt a run.

    A new run needs ``out`` absent or an empty directory; an existing run needs ``resume`` (same kind, a
    checkpoint to continue from) or ``overwrite`` (which replaces that run's own files and no other file).
    """
    out = Path(out)
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory (expected a run directory to write)")
    if resume:
        state = stage_files(out, "model")["state"]
        if not (out / CONFIG).is_file():
            raise FileNotFoundError(f"{out}: no run to resume ({CONFIG} missing); train without --resume first")
        if not state.exists():
            raise FileNotFoundError(f"{state}: no checkpoint to resume from")
        saved = read_config(out)
        if saved["kind"] != kind:
            raise RunError(f"{out}: the run holds a {saved['kind']} model, not {kind}; resume it with "
                           f"`vaedeploy train {saved['kind']} --resume`")
        return
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / CONFIG).is_file():
        raise RunError(f"{out}: exists, holds files and is not a run directory; choose another --out (training "
                       "never writes into a folder of other files)")
    if not overwrite:
        raise RunError(f"{out}: already holds a run; pass --resume to continue it or --overwrite to replace it")
    read_config(out)  # an overwrite, too, must know which files are the run's


def remove_owned_files(out: str | os.PathLike) -> list[Path]:
    """Delete the files the run in ``out`` owns (``owned_files``) and return them; other files stay."""
    config = read_config(out)
    removed = owned_files(out, config["kind"])
    for path in removed:
        path.unlink()
    return removed
