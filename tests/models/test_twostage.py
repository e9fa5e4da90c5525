"""The two-stage VAE: both stages train into one run."""
import shutil

import torch

from vaedeploy.evaluate import evaluate_run
from vaedeploy.io import load_tensors
from vaedeploy.train import TrainConfig, load_run, train_run

TINY_TWOSTAGE = {"hidden": [32], "latent_dim": 4, "stage2_hidden": [16]}


def test_twostage_trains_both_stages_into_one_run(tmp_path, digits, fd_classifier):
    model, metrics = train_run("twostage", digits, tmp_path, model_config=TINY_TWOSTAGE,
                               train_config=TrainConfig(epochs=3, patience=0), progress=False)
    assert metrics["stages"]["stage2"]["stage"] == "stage2"
    for name in ("stage2.safetensors", "stage2_metrics.json", "stage2_checkpoint.safetensors",
                 "stage2_training_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    stage2 = load_tensors(tmp_path / "stage2.safetensors")
    assert stage2 and all(k.startswith("stage2.") for k in stage2)  # loads straight into the two-stage model
    loaded, _ = load_run(tmp_path)
    with torch.no_grad():
        a = loaded.sample(4, generator=torch.Generator().manual_seed(0))
        b = model.eval().sample(4, generator=torch.Generator().manual_seed(0))
        c = loaded.sample_stage1(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)

    shutil.copy(fd_classifier, tmp_path)
    results = evaluate_run(tmp_path, iw_samples=20, elbo_samples=2)
    assert results["sample_fd"] > 0 and results["stage1_sample_fd"] > 0
    assert "not comparable with Inception FID" in results["sample_fd_note"].replace("NOT", "not")
    assert {"active_units", "kl_per_dim", "mutual_information", "log_likelihood_iw_of_latent_means"} <= \
        set(results["stage2"])
    assert (tmp_path / "fd_classifier.safetensors").exists()
