import json
import os
import subprocess
import sys

import pytest
import torch

from vaedeploy.io import load_tensors
from vaedeploy.train import TrainConfig, TrainingDiverged, load_run, train_run

SMALL = {"hidden": [64], "latent_dim": 8}


def test_training_lowers_the_loss_and_writes_a_run(tmp_path, digits):
    _, metrics = train_run("vae", digits, tmp_path, model_config=SMALL,
                           train_config=TrainConfig(epochs=6), progress=False)
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 10
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    for name in ("config.json", "model.safetensors", "metrics.json", "checkpoint.safetensors", "training_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left behind"


def test_free_bits_left_unset_take_the_models_default_and_the_run_records_them(tmp_path, digits):
    for kind, options, expected in [("bivae", {}, 0.5), ("vae", {}, 0.0), ("bivae", {"free_bits": 0.0}, 0.0)]:
        run = tmp_path / f"{kind}{len(options)}"
        train_run(kind, digits, run, model_config=SMALL, train_config=TrainConfig(epochs=1, **options),
                  progress=False)
        assert json.loads((run / "config.json").read_text())["train"]["free_bits"] == expected, (kind, options)


def test_the_trained_model_is_the_runs_best_epoch_bit_for_bit(tmp_path, digits, monkeypatch):
    # validation losses that make epoch 2 of 4 the best, so the last epoch's weights are not what the run keeps
    losses = iter([3.0, 1.0, 2.0, 4.0])
    monkeypatch.setattr("vaedeploy.train._validation_loss", lambda *args: (next(losses), {}))
    model, metrics = train_run("vae", digits, tmp_path, model_config=SMALL,
                               train_config=TrainConfig(epochs=4, patience=0), progress=False)
    assert metrics["best"]["epoch"] == 2 and not model.training
    loaded, config = load_run(tmp_path)
    x = torch.from_numpy(digits.evaluation_inputs())
    with torch.no_grad():
        for a, b in zip(model.encoder(x), loaded.encoder(x)):
            assert torch.equal(a, b)
        assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    assert config["kind"] == "vae" and config["model"]["latent_dim"] == 8


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, digits):
    straight, _ = train_run("vae", digits, tmp_path / "a", model_config=SMALL,
                            train_config=TrainConfig(epochs=4, patience=0), progress=False)
    train_run("vae", digits, tmp_path / "b", model_config=SMALL, train_config=TrainConfig(epochs=2, patience=0),
              progress=False)
    resumed, metrics = train_run("vae", digits, tmp_path / "b", train_config=TrainConfig(epochs=4), resume=True,
                                 progress=False)
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_weights(tmp_path, digits, monkeypatch):
    from vaedeploy.models.vae import VAE as model_cls
    original = model_cls.forward
    calls = {"n": 0}

    def poisoned(self, x, **kw):
        loss, metrics = original(self, x, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 15:  # past the first epoch (12 batches)
                loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(model_cls, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 2"):
        train_run("vae", digits, tmp_path, model_config=SMALL, train_config=TrainConfig(epochs=5), progress=False)
    weights = load_tensors(tmp_path / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, digits):
    (tmp_path / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train_run("vae", digits, tmp_path, train_config=TrainConfig(epochs=1), resume=True, progress=False)


@pytest.mark.slow
def test_distributed_data_parallel_with_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaedeploy.cli", "train", "vae", "--data", "digits", "--epochs", "2", "--hidden", "64",
           "--out", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 2
    model, _ = load_run(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
