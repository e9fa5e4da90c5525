"""What ``fit`` decides from epoch to epoch: the KL warm-up schedule, free bits, early stopping and the best weights.

The module trained here is a stand-in: it records the KL weight and free bits of every training call, and its
validation loss follows a script, so each decision has one known right answer.
"""
import numpy as np
import pytest
import torch
from torch import nn

from vaedeploy.io import load_tensors
from vaedeploy.train import TrainConfig, fit


class ScriptedObjective(nn.Module):
    """Trains a 2-vector towards the data mean; validation losses come from ``script``, one per epoch."""

    def __init__(self, script):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.script, self.validations = list(script), 0
        self.training_calls: list[tuple[float, float]] = []  # (kl_weight, free_bits) of every training step
        self.weights_at_validation: list[torch.Tensor] = []

    def forward(self, x, kl_weight: float = 1.0, free_bits: float = 0.0):
        if self.training:
            self.training_calls.append((kl_weight, free_bits))
            return ((self.w - x.mean()) ** 2).sum(), {}
        self.weights_at_validation.append(self.w.detach().clone())
        loss = torch.tensor(float(self.script[self.validations]))
        self.validations += 1
        return loss, {"scripted": loss}


TRAIN = np.arange(16, dtype=np.float32).reshape(8, 2)  # two steps per epoch at batch size 4
VAL = np.ones((4, 2), np.float32)  # one validation call per epoch


def _fit(module, tmp_path, **config):
    return fit(module, TRAIN, VAL, lambda raw, rng: raw, TrainConfig(batch_size=4, **config), tmp_path,
               progress=False)


def test_kl_weight_rises_linearly_over_the_warmup_epochs_then_stays_at_one():
    assert [TrainConfig(kl_warmup_epochs=4).kl_weight(e) for e in range(7)] == [0.25, 0.5, 0.75, 1, 1, 1, 1]
    assert [TrainConfig(kl_warmup_epochs=1).kl_weight(e) for e in range(3)] == [1, 1, 1]
    assert [TrainConfig(kl_warmup_epochs=0).kl_weight(e) for e in range(3)] == [1, 1, 1]


def test_fit_trains_each_epoch_with_its_warmup_weight_and_the_configured_free_bits(tmp_path):
    module = ScriptedObjective([5, 4, 3, 2, 1])
    doc = _fit(module, tmp_path, epochs=5, kl_warmup_epochs=4, free_bits=0.7)
    weights = [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert module.training_calls == [(w, 0.7) for w in weights]
    assert [row["kl_weight"] for row in doc["history"]] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # validation is the objective itself, KL weight 1 and no free bits: the module's defaults
    assert [row["val_loss"] for row in doc["history"]] == [5, 4, 3, 2, 1]


def test_early_stopping_stops_after_patience_epochs_without_a_strictly_lower_validation_loss(tmp_path):
    # best at epoch 3; epoch 4 only ties it, 5 and 6 are worse: three epochs without improvement
    module = ScriptedObjective([5, 4, 3, 3, 3.5, 3.2, 1, 1, 1, 1])
    doc = _fit(module, tmp_path, epochs=10, patience=3)
    assert len(doc["history"]) == 6
    assert doc["stop_reason"] == "early stop: no validation improvement for 3 epochs"
    assert doc["best"] == {"val_loss": 3.0, "epoch": 3}
    # the weights file holds the best epoch's weights, not the last epoch's
    saved = load_tensors(tmp_path / "model.safetensors")["w"]
    torch.testing.assert_close(saved, module.weights_at_validation[2], rtol=0, atol=0)
    assert not torch.equal(saved, module.weights_at_validation[-1])


def test_patience_zero_never_stops_early(tmp_path):
    module = ScriptedObjective([1, 2, 3, 4, 5, 6])
    doc = _fit(module, tmp_path, epochs=6, patience=0)
    assert len(doc["history"]) == 6 and doc["stop_reason"] == "epochs"
    assert doc["best"] == {"val_loss": 1.0, "epoch": 1}


def test_a_time_limit_stops_after_the_epoch_that_reaches_it(tmp_path):
    doc = _fit(ScriptedObjective([3, 2, 1]), tmp_path, epochs=3, max_seconds=1e-9)
    assert len(doc["history"]) == 1 and doc["stop_reason"] == "time limit of 1e-09 s"


@pytest.mark.parametrize("free_bits", [None, 0.0])
def test_free_bits_left_to_the_model_train_with_none(tmp_path, free_bits):
    module = ScriptedObjective([1])
    _fit(module, tmp_path, epochs=1, free_bits=free_bits)
    assert module.training_calls == [(1.0, 0.0), (1.0, 0.0)]
