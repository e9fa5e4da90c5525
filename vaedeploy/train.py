"""Training: Adam on minibatches with KL warm-up, free bits, early stopping, resumable checkpoints and DDP.

``fit`` trains any module whose ``forward(x, kl_weight=, free_bits=)`` returns ``(loss, metrics)``; ``train_run``
builds a model from the registry on a data set and writes a run directory (its files: ``vaedeploy.runs``).
Training into an existing run needs ``resume`` or ``overwrite``, and nothing in the run directory is written until
the model is built and a first batch has given a finite loss, so a bad option or data set leaves no half-made run.

Under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel, gloo on CPU and NCCL on GPU: each rank takes
its share of every epoch's permutation, and only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from . import __version__
from .data import Dataset
from .errors import ConfigError, JobFailed, RunError, VaedeployError
from .io import load_tensors, read_json, save_tensors, write_json
from .models import Model, build_model
from .runs import CONFIG, FORMAT_VERSION, check_target, load_run, read_config, remove_owned_files, stage_files


class TrainingDiverged(JobFailed):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""


@dataclass
class TrainConfig:
    """How to train.

    Args:
        epochs: the most passes over the training split; early stopping usually ends training well before this
            ceiling (a vae on digits stops near epoch 300). Default 2000.
        batch_size: examples per step, summed over all DDP ranks. Default 128.
        lr: Adam learning rate. Default 1e-3.
        seed: seeds weights, shuffling and noise. Default 0.
        kl_warmup_epochs: the KL weight rises linearly from 0 to 1 over this many epochs (0: off). Default 0.
        free_bits: nats per latent dimension below which the KL is not pushed (0: off; None: the model's
            ``default_free_bits``, which is 0 for every model but ``bivae``). Default None.
        patience: stop when the validation loss has not improved for this many epochs (0: never). Default 30.
        max_seconds: stop after this much training time (0: no limit). Default 0.
        grad_clip: clip the gradient norm to this value (0: off). Default 0.
        checkpoint_seconds: write the checkpoint and best weights at most this often, and at the end. Default 10.
    """

    epochs: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    kl_warmup_epochs: int = 0
    free_bits: float | None = None
    patience: int = 30
    max_seconds: float = 0.0
    grad_clip: float = 0.0
    checkpoint_seconds: float = 10.0

    def __post_init__(self):
        def bad(name: str, expected: str):
            raise ConfigError(f"training option {name}: expected {expected}, got {getattr(self, name)!r}")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                bad(name, "a finite number")
            return value

        for name in ("epochs", "batch_size", "kl_warmup_epochs", "patience", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, "an integer")
        if self.epochs < 1:
            bad("epochs", "at least 1")
        if self.batch_size < 1:
            bad("batch_size", "at least 1")
        if not 0 <= self.seed < 2**63:
            bad("seed", "an integer in [0, 2**63)")
        if number("lr") <= 0:
            bad("lr", "a positive number")
        for name in ("kl_warmup_epochs", "patience"):
            if getattr(self, name) < 0:
                bad(name, "0 (off) or more")
        for name in ("max_seconds", "grad_clip", "checkpoint_seconds"):
            if number(name) < 0:
                bad(name, "0 (off) or a positive number")
        if self.free_bits is not None and number("free_bits") < 0:
            bad("free_bits", "None (the model's default), 0 (off) or a positive number")

    def kl_weight(self, epoch: int) -> float:
        return 1.0 if self.kl_warmup_epochs <= 0 else min(1.0, (epoch + 1) / self.kl_warmup_epochs)



def _diverged(loss: float, epoch: int, best: dict, files: dict) -> str:
    """What to say when the loss stops being finite, naming only files that are on disk: a run that diverges
    before its first checkpoint has none, and then --resume has nothing to continue."""
    kept = []
    if files["weights"].is_file():
        kept.append(f"the best weights so far (epoch {best['epoch']}) are in {files['weights']}")
    if files["checkpoint"].is_file():
        kept.append(f"the last checkpoint is in {files['checkpoint']}")
    stopped = f"loss became {loss} in epoch {epoch}; training stopped"
    if not kept:
        return f"{stopped} before anything was saved; try a lower --lr or --grad-clip and train again."
    return f"{stopped}; {' and '.join(kept)}; try a lower --lr or --grad-clip, then --resume."

def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    state = opt.state_dict()
    tensors = {f"optim.{pid}.{key}": value for pid, s in state["state"].items() for key, value in s.items()}
    return tensors, state["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


@torch.no_grad()
def _validation_loss(module: torch.nn.Module, val: np.ndarray, batch_size: int) -> tuple[float, dict]:
    """Mean loss (KL weight 1, no free bits) over the validation split, with fixed noise so every rank agrees."""
    module.eval()
    total, metrics = 0.0, {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        for start in range(0, len(val), batch_size):
            x = torch.from_numpy(val[start : start + batch_size])
            loss, m = module(x)
            total += float(loss.detach()) * len(x)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * len(x)
    module.train()
    return total / len(val), {k: v / len(val) for k, v in metrics.items()}


@dataclass
class _Progress:
    """Where a stage's training stands: what its checkpoint saves and ``resume`` restores."""

    epoch: int = 0  # the next epoch to train
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_loss": math.inf, "epoch": -1})
    bad_epochs: int = 0
    elapsed: float = 0.0
    best_weights: dict = field(default_factory=dict)

    def record(self, row: dict, model: torch.nn.Module) -> None:
        """Add an epoch's row; a better validation loss makes its weights the best ones."""
        self.history.append(row)
        if row["val_loss"] < self.best["val_loss"]:
            self.best, self.bad_epochs = {"val_loss": row["val_loss"], "epoch": row["epoch"]}, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    def stop_reason(self, cfg: TrainConfig, epoch: int) -> str:
        """Why training stops after ``epoch``, or "" to go on."""
        if cfg.patience and self.bad_epochs >= cfg.patience:
            return f"early stop: no validation improvement for {cfg.patience} epochs"
        if cfg.max_seconds and self.elapsed >= cfg.max_seconds:
            return f"time limit of {cfg.max_seconds:g} s"
        return "epochs" if epoch + 1 == cfg.epochs else ""


def _resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, files: dict) -> _Progress:
    """Load the stage's checkpoint into ``model`` and ``optimizer``; returns where its training stood."""
    if not files["state"].exists():
        raise FileNotFoundError(f"{files['state']}: no checkpoint to resume from")
    state = read_json(files["state"], "a training checkpoint's state (checkpoint.json)")
    keys = ("epoch", "history", "best", "bad_epochs", "elapsed", "param_groups")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise RunError(f"{files['state']}: expected a checkpoint state with {list(keys)}; the file is damaged")
    tensors = load_tensors(files["checkpoint"])
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(optimizer, tensors, state["param_groups"])
    return _Progress(epoch=state["epoch"] + 1, history=state["history"], best=state["best"],
                     bad_epochs=state["bad_epochs"], elapsed=state["elapsed"],
                     best_weights={k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")})


class _Trainer:
    """One stage's model, optimizer and files on this rank: trains an epoch and saves checkpoints."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, files: dict):
        self.model, self.optimizer, self.cfg, self.files = model, optimizer, cfg, files
        self.rank, self.world = _distributed()
        self.module = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        self.per_rank = max(1, cfg.batch_size // self.world)

    def train_epoch(self, epoch: int, kl_weight: float, train_raw: np.ndarray, prepare: Callable,
                    progress: _Progress) -> float:
        """One pass over this rank's share of the training split; returns its mean loss."""
        cfg = self.cfg
        # Noise is seeded per (seed, epoch, rank): a resumed run draws what the uninterrupted one would have, and
        # ranks draw different noise. DDP itself broadcasts rank 0's initial weights.
        rng = np.random.default_rng([cfg.seed, epoch, self.rank])
        torch.manual_seed(int(rng.integers(2**62)))
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_raw))[self.rank::self.world]
        total, count = 0.0, 0
        for start in range(0, len(order), self.per_rank):
            x = torch.from_numpy(prepare(train_raw[order[start : start + self.per_rank]], rng).astype(np.float32))
            loss, _ = self.module(x, kl_weight=kl_weight, free_bits=cfg.free_bits or 0.0)  # train_run resolves None
            if not torch.isfinite(loss):
                self._stop_diverged(float(loss.detach()), epoch, progress)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        return total / count

    def _stop_diverged(self, loss: float, epoch: int, progress: _Progress) -> None:
        """Keep the best weights so far and raise: a NaN step must not overwrite what is on disk."""
        if self.rank == 0 and progress.best_weights:
            save_tensors(self.files["weights"], progress.best_weights, {"format": str(FORMAT_VERSION)})
        raise TrainingDiverged(_diverged(loss, epoch + 1, progress.best, self.files))

    def save_checkpoint(self, epoch: int, progress: _Progress) -> None:
        """The best weights, then the last epoch's full state; a crash between the two loses nothing."""
        files = self.files
        save_tensors(files["weights"], progress.best_weights, {"format": str(FORMAT_VERSION)})
        opt_tensors, groups = _optimizer_tensors(self.optimizer)
        save_tensors(files["checkpoint"], {**{f"model.{k}": v for k, v in self.model.state_dict().items()},
                                           **{f"best.{k}": v for k, v in progress.best_weights.items()},
                                           **opt_tensors})
        write_json(files["state"], {"epoch": epoch, "history": progress.history, "best": progress.best,
                                    "bad_epochs": progress.bad_epochs, "elapsed": progress.elapsed,
                                    "param_groups": groups})


def _epochs(trainer: _Trainer, progress: _Progress, train_raw: np.ndarray, val: np.ndarray, prepare: Callable,
            bar) -> str:
    """Train epochs until a stopping rule fires, checkpointing on rank 0; returns the rule's reason."""
    cfg = trainer.cfg
    last_saved = time.perf_counter()
    trainer.model.train()
    for epoch in range(progress.epoch, cfg.epochs):
        t0 = time.perf_counter()
        kl_weight = cfg.kl_weight(epoch)
        train_loss = trainer.train_epoch(epoch, kl_weight, train_raw, prepare, progress)
        val_loss, val_metrics = _validation_loss(trainer.model, val, cfg.batch_size)
        progress.elapsed += time.perf_counter() - t0
        progress.record({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "kl_weight": kl_weight,
                         "seconds": progress.elapsed, **{f"val_{k}": v for k, v in val_metrics.items()}},
                        trainer.model)
        stop_reason = progress.stop_reason(cfg, epoch)
        if trainer.rank == 0 and (stop_reason or time.perf_counter() - last_saved >= cfg.checkpoint_seconds):
            trainer.save_checkpoint(epoch, progress)
            last_saved = time.perf_counter()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.2f}", val=f"{val_loss:.2f}", best=progress.best["epoch"])
        if stop_reason:
            return stop_reason
    return ""


def fit(
    model: torch.nn.Module,
    train_raw: np.ndarray,
    val_raw: np.ndarray,
    prepare: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    stage: str = "model",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``model`` and write its stage files into ``run_dir``; returns the metrics document.

    Args:
        model: a module whose ``forward(x, kl_weight=, free_bits=)`` returns ``(loss, metrics)``.
        train_raw, val_raw: raw training and validation examples; ``prepare(raw, rng)`` makes model inputs
            (fresh noise for each training batch; a fixed seed for validation).
        cfg: the training configuration.
        run_dir: where files go (only rank 0 writes).
        stage: ``model`` for the main model; another name (``prior``) prefixes that stage's files.
        resume: continue from the stage's checkpoint in ``run_dir``.
        progress: show a progress bar (rank 0 only).
    """
    files = stage_files(Path(run_dir), stage)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = _resume(model, optimizer, files) if resume else _Progress()
    trainer = _Trainer(model, optimizer, cfg, files)  # after the resume: DDP broadcasts rank 0's resumed weights
    val = prepare(val_raw, np.random.default_rng(1234)).astype(np.float32)
    bar = _progress_bar(cfg, stage, state.epoch) if progress and trainer.rank == 0 else None
    stop_reason = _epochs(trainer, state, train_raw, val, prepare, bar)
    if bar is not None:
        bar.close()
    doc = {"stage": stage, "world_size": trainer.world, "stop_reason": stop_reason or "epochs", "best": state.best,
           "train_seconds": state.elapsed, "history": state.history}
    if trainer.rank == 0:
        write_json(files["metrics"], doc)
        _plot_curve(state.history, files["curve"], stage)
    if trainer.world > 1:
        dist.barrier()
    return doc


def _progress_bar(cfg: TrainConfig, stage: str, start_epoch: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {stage}", unit="epoch", dynamic_ncols=True)


def _plot_curve(history: list[dict], path: Path, stage: str) -> None:
    from .plots import plot_training_curve

    plot_training_curve(history, path, title=f"{stage}: loss per epoch")


def train_run(
    kind: str,
    data: Dataset,
    out: str | os.PathLike,
    *,
    model_config: dict | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stage: str = "all",
) -> tuple[Model, dict]:
    """Build a ``kind`` model for ``data``, train it and write the run directory ``out``.

    ``out`` must be absent or empty, unless ``resume`` (continue the run there: the model and training
    configuration come from its config.json, only ``epochs`` from ``train_config``, and a ``model_config`` that
    disagrees with the run's is refused) or ``overwrite`` (replace that run's own files; other files stay).

    A model with ``extra_stages`` (the VQ-VAE's prior) trains them after the main stage, on the main stage's best
    weights and with the same ``train_config``; each stage gets its own progress bar, weights, checkpoint and
    metrics files. ``stage="NAME"`` (re)trains only that extra stage of the existing run in ``out``. The returned
    metrics are the main stage's, with each extra stage's under ``metrics["stages"][NAME]``. The returned model holds
    the best weights of every stage, in eval mode, as ``load_run(out)`` gives it.
    """
    out = Path(out)
    cfg = train_config or TrainConfig()
    if stage != "all":
        return _train_one_stage(kind, stage, data, out, cfg, resume, progress)
    rank, world = _distributed()
    check_target(out, kind, resume=resume, overwrite=overwrite)
    if resume:
        saved = read_config(out)
        if model_config and (changed := {k: v for k, v in model_config.items() if saved["model"].get(k) != v}):
            raise RunError(f"{out}: the run was trained with another model config ({changed} given, the run has "
                           f"{ {k: saved['model'].get(k) for k in changed} }); with --resume it comes from the run")
        model_config = saved["model"]
        try:
            cfg = dataclasses.replace(TrainConfig(**saved["train"]), epochs=cfg.epochs)
        except TypeError as e:
            raise RunError(f"{out / CONFIG}: its 'train' options are not this vaedeploy's ({e})") from None
    else:
        model_config = {"input_shape": list(data.image_shape), **(model_config or {})}
    torch.manual_seed(cfg.seed)
    model = build_model(kind, model_config)
    cfg = _with_model_defaults(cfg, model)
    _first_batch_runs(model, data, cfg)
    if world > 1:
        dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
    if rank == 0:
        if overwrite and (out / CONFIG).is_file():
            remove_owned_files(out)
        write_json(out / CONFIG, {
            "format": FORMAT_VERSION,
            "kind": kind,
            "model": model.config_dict(),
            "data": data.spec(),
            "train": dataclasses.asdict(cfg),
            "vaedeploy_version": __version__,
        })
    metrics = fit(model, data.train.raw, data.val.raw, data.prepare, cfg, out, resume=resume, progress=progress)
    model.load_state_dict(load_tensors(out / "model.safetensors"))  # the best weights; later stages build on them
    if model.extra_stages:
        metrics["stages"] = {name: _fit_stage(model, name, data, cfg, out, resume, progress)
                             for name in model.extra_stages}
    return model.eval(), metrics


def _train_one_stage(kind: str, stage: str, data: Dataset, out: Path, cfg: TrainConfig, resume: bool,
                     progress: bool) -> tuple[Model, dict]:
    """(Re)train one extra stage of the existing run in ``out`` on its main stage's best weights."""
    model, saved = load_run(out, require_stages=False)
    if saved["kind"] != kind:
        raise RunError(f"{out}: the run holds a {saved['kind']} model, not {kind}")
    if stage not in model.extra_stages:
        raise RunError(f"{out}: a {saved['kind']} run has no stage {stage!r} to train on its own; "
                       f"expected one of {list(model.extra_stages)} (or 'all')")
    torch.manual_seed(cfg.seed)
    cfg = _with_model_defaults(cfg, model)
    metrics = {"stages": {stage: _fit_stage(model, stage, data, cfg, out, resume, progress)}}
    return model.eval(), metrics


@torch.no_grad()
def _first_batch_runs(model: Model, data: Dataset, cfg: TrainConfig) -> None:
    """Run the model once on a first training batch, before any file is written: a config that does not fit the
    data (shapes, sizes) is refused here with a sentence instead of leaving a half-made run."""
    x = torch.from_numpy(data.prepare(data.train.raw[: cfg.batch_size], np.random.default_rng(cfg.seed))
                         .astype(np.float32))
    model.eval()  # no training-mode side effects (the VQ codebook's k-means start, dropout)
    try:
        with torch.random.fork_rng(devices=[]):
            loss, _ = model(x)
    except (RuntimeError, ValueError, IndexError) as e:
        if isinstance(e, VaedeployError):
            raise
        raise ConfigError(f"a {model.kind} model with this config cannot run on {data.name} (inputs "
                          f"{'×'.join(map(str, data.image_shape))}): {str(e).splitlines()[0]}") from e
    finally:
        model.train()
    if not torch.isfinite(loss):
        raise ConfigError(f"a {model.kind} model with this config gives a loss of {float(loss)} on the first batch "
                          f"of {data.name} before any training; check the model options")


def _with_model_defaults(cfg: TrainConfig, model: Model) -> TrainConfig:
    """``cfg`` with what it leaves to the model filled in, so config.json records what training used."""
    return cfg if cfg.free_bits is not None else dataclasses.replace(cfg, free_bits=model.default_free_bits)


def _fit_stage(model: Model, stage: str, data: Dataset, cfg: TrainConfig, out: Path, resume: bool,
               progress: bool) -> dict:
    """Train one extra stage of ``model``; ``resume`` continues it only where that stage left a checkpoint."""
    module, train, val, prepare = model.stage_objective(stage, data)
    files = stage_files(out, stage)
    metrics = fit(module, train, val, prepare, cfg, out, stage=stage, resume=resume and files["state"].exists(),
                  progress=progress)
    model.load_state_dict(load_tensors(files["weights"]), strict=False)  # the stage's best weights, as load_run has
    return metrics
