"""The `vaedeploy` command: every subcommand end to end, and every expected failure as one line on stderr with exit
code 2; runs are never lost or half-made."""
import errno
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import KINDS, VQVAE_GRAPHS, images, spec_graphs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from vaedeploy.export import ValidationError, export_run
from vaedeploy.export import validate as validate_module

from vaedeploy import load
from vaedeploy.bundle import load_bundle
from vaedeploy.cli import main
from vaedeploy.train import load_run

VQ_TINY = {"channels": [8, 16], "embedding_dim": 4, "num_codes": 16, "prior_width": 32, "prior_layers": 1,
        "prior_heads": 2}
TINY = ["--hidden", "8", "--latent-dim", "2", "--no-progress"]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae", "--epochs", "2", "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture()
def run_copy(vae_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(vae_run, copy)
    return copy


def test_training_into_an_existing_run_needs_resume_or_overwrite(run_copy, capsys):
    before = files(run_copy)
    assert main(["train", "vae", "--epochs", "1", "--out", str(run_copy), *TINY]) == 2
    one_line_error(capsys, "already holds a run; pass --resume to continue it or --overwrite to replace it")
    assert files(run_copy) == before
    (run_copy / "my_notes.txt").write_text("keep me")
    (run_copy / "prior.safetensors").write_bytes(b"")  # not a vae run's file: overwrite leaves it alone
    assert main(["train", "vae", "--epochs", "1", "--overwrite", "--out", str(run_copy), *TINY]) == 0
    capsys.readouterr()
    assert (run_copy / "my_notes.txt").read_text() == "keep me" and (run_copy / "prior.safetensors").exists()
    assert len(json.loads((run_copy / "metrics.json").read_text())["history"]) == 1


def test_resume_checks_the_kind_and_options_before_touching_any_file(run_copy, capsys):
    before = files(run_copy)
    assert main(["train", "ae", "--resume", "--epochs", "3", "--out", str(run_copy), "--no-progress"]) == 2
    one_line_error(capsys, "the run holds a vae model, not ae")
    assert main(["train", "vae", "--resume", "--epochs", "3", "--lr", "0.1", "--out", str(run_copy)]) == 2
    one_line_error(capsys, "only --epochs may change, got --lr")
    assert files(run_copy) == before
    assert main(["train", "vae", "--resume", "--epochs", "3", "--out", str(run_copy), "--no-progress"]) == 0
    assert json.loads((run_copy / "config.json").read_text())["kind"] == "vae"


def test_a_folder_of_other_files_is_not_a_place_to_train(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    for flag in ([], ["--overwrite"]):
        assert main(["train", "vae", "--epochs", "1", "--out", str(tmp_path), *TINY, *flag]) == 2
        one_line_error(capsys, "is not a run directory")
    assert files(tmp_path) == {"thesis.tex": b"years of work"}


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_examples_is_a_sentence_and_no_half_made_run(tmp_path, capsys, n):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).random((n, 4, 4)))
    out = tmp_path / "run"
    assert main(["train", "vae", "--data", str(tmp_path / "few.npy"), "--out", str(out), *TINY]) == 2
    one_line_error(capsys, "expected at least 3 examples", f"got {n}")
    assert not out.exists()


def test_a_directory_named_like_an_array_file(tmp_path, capsys):
    (tmp_path / "x.npy").mkdir()
    assert main(["train", "vae", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "x.npy: is a directory, not a file")


def test_damaged_weights_and_checkpoints_are_named(run_copy, capsys):
    (run_copy / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    assert main(["eval", str(run_copy)]) == 2
    one_line_error(capsys, "model.safetensors: not a readable safetensors file")
    (run_copy / "checkpoint.safetensors").write_bytes(b"garbage")
    assert main(["train", "vae", "--resume", "--epochs", "3", "--out", str(run_copy)]) == 2
    one_line_error(capsys, "checkpoint.safetensors: not a readable safetensors file")
    (run_copy / "config.json").write_text("[1, 2")
    assert main(["eval", str(run_copy)]) == 2
    one_line_error(capsys, "config.json: not valid JSON")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, code, words):
    def refuse(src, dst):
        raise OSError(code, words)

    monkeypatch.setattr("vaedeploy.io.os.replace", refuse)
    assert main(["train", "vae", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY]) == 2
    one_line_error(capsys, f"cannot write {tmp_path / 'r' / 'config.json'}: {words}")
    assert not [p for p in (tmp_path / "r").rglob("*.tmp")], "a temporary file was left behind"


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: expected an integer ≥ 1, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer ≥ 1, got '0'"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got '-1'"),
    (["--patience", "x"], "argument --patience: expected an integer ≥ 0, got 'x'"),
])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["train", "vae", "--out", str(tmp_path / "r"), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("setting, message", [
    ("latent_dim=abc", "VAEConfig.latent_dim: expected an integer, got 'abc'"),
    ("hidden=-4", "hidden: expected sizes of at least 1"),
    ("min_logvar=[1]", "VAEConfig.min_logvar: expected a finite number, got [1]"),
    ("colour=blue", "unknown option(s) ['colour']"),
    ("nonsense", "--set: expected KEY=VALUE, got 'nonsense'"),
])
def test_bad_model_settings_are_one_line_and_leave_no_run(tmp_path, capsys, setting, message):
    out = tmp_path / "r"
    assert main(["train", "vae", "--epochs", "1", "--out", str(out), "--set", setting]) == 2
    one_line_error(capsys, message)
    assert not out.exists()


def test_a_config_that_does_not_fit_the_data_is_refused_before_the_run_is_written(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "vae", "--epochs", "1", "--out", str(out), "--set", "input_shape=[1,4,4]"]) == 2
    one_line_error(capsys, "cannot run on digits")
    assert not out.exists()


def test_debug_shows_the_traceback_and_a_bug_is_never_hidden(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", str(tmp_path / "absent")])
    monkeypatch.setattr("vaedeploy.run_commands.run_eval", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["eval", str(tmp_path)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(st.sampled_from([np.float32, np.float64, np.uint8, np.int16, np.bool_]),
                        hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=6)))
def test_any_data_array_trains_or_is_refused_with_one_line(tmp_path_factory, capsys, array):
    tmp = tmp_path_factory.mktemp("data")
    np.save(tmp / "data.npy", array)
    code = main(["train", "vae", "--data", str(tmp / "data.npy"), "--epochs", "1", "--out", str(tmp / "run"), *TINY])
    if code == 0:
        capsys.readouterr()
        assert (tmp / "run" / "model.safetensors").exists()
    else:
        assert code == 2
        one_line_error(capsys)
        assert not (tmp / "run").exists()


def test_a_missing_optional_package_names_the_extra_to_install(vae_run, monkeypatch, capsys):

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the train extra were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert main(["plot", str(vae_run)]) == 2
    one_line_error(capsys, "vaedeploy plot needs the 'matplotlib' package: pip install 'vaedeploy[train]'")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bivae", "biva", "twostage"])
def test_cli_trains_evaluates_and_plots_every_family_model(tmp_path, kind, fd_classifier):
    run = str(tmp_path / kind)
    assert main(["train", kind, "--data", "digits", "--epochs", "25", "--patience", "0", "--hidden", "64", "--out", run,
                 "--no-progress"]) == 0
    shutil.copy(fd_classifier, run)
    assert main(["eval", run, "--iw-samples", "50", "--elbo-samples", "2"]) == 0
    results = json.loads((tmp_path / kind / "eval.json").read_text())
    # an untrained model scores far below 0 nats per digit; 25 epochs lift every kind well above it
    assert results["log_likelihood_iw"] > 10.0, results["log_likelihood_iw"]
    assert results["elbo"] < results["log_likelihood_iw"]
    assert main(["plot", run]) == 0
    assert (tmp_path / kind / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_train_eval_plot_meet_the_foundation_figures(tmp_path, capsys):
    run = str(tmp_path / "vae")
    # a fixed number of epochs, not a time limit: the figures must not depend on how busy the machine is
    assert main(["train", "vae", "--data", "digits", "--epochs", "80", "--patience", "0", "--out", run,
                 "--no-progress"]) == 0
    assert main(["eval", run, "--iw-samples", "200"]) == 0
    results = json.loads((tmp_path / "vae" / "eval.json").read_text())
    assert results["log_likelihood_iw"] > results["elbo"]
    assert results["log_likelihood_iw"] > results["baseline_ppca_log_likelihood"] + 10
    assert results["active_units"] > 0
    assert len(results["kl_per_dim"]) == 16
    assert main(["plot", run]) == 0
    for name in ("samples.png", "reconstructions.png", "latent_space.png"):
        assert (tmp_path / "vae" / name).stat().st_size > 1000


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["train", "vae", "--data", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing-run")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_two_stage_training_eval_plot_and_prior_stage_alone(tmp_path, capsys):
    run = tmp_path / "vq"
    # 12 steps per epoch on digits: codes unused for 5 steps are re-seeded several times within the run
    options = [f"--set={k}={json.dumps(v)}" for k, v in {**VQ_TINY, "num_codes": 32, "dead_code_steps": 5}.items()]
    assert main(["train", "vqvae", "--data", "digits", "--epochs", "6", "--out", str(run), "--no-progress",
                 *options]) == 0
    assert "(prior)" in capsys.readouterr().out
    for name in ("model.safetensors", "prior.safetensors", "prior_metrics.json", "prior_training_curve.png"):
        assert (run / name).stat().st_size > 0
    prior_history = json.loads((run / "prior_metrics.json").read_text())["history"]
    assert prior_history[-1]["val_loss"] < prior_history[0]["val_loss"]

    assert main(["eval", str(run)]) == 0
    results = json.loads((run / "eval.json").read_text())
    assert results["codes_used"] >= 0.5 and results["dead_codes"] == 32 - round(32 * results["codes_used"])
    assert 1 < results["codebook_perplexity"] <= 32
    # the learned prior beats the uniform distribution over codes (5 bits) on the test split
    assert results["prior_nll_bits_per_code"] < 5.0
    assert "elbo" not in results  # the VQ-VAE gives no density of x
    assert main(["plot", str(run)]) == 0
    for name in ("samples.png", "reconstructions.png", "codebook_usage.png"):
        assert (run / name).stat().st_size > 1000

    before = load_run(run)[0].prior.state_dict()
    assert main(["train", "vqvae", "--stage", "prior", "--epochs", "2", "--seed", "1", "--out", str(run),
                 "--no-progress"]) == 0
    after, _ = load_run(run)
    assert len(json.loads((run / "prior_metrics.json").read_text())["history"]) == 2
    assert any(not torch.equal(before[k], v) for k, v in after.prior.state_dict().items())
    assert main(["train", "vae", "--stage", "prior", "--out", str(run), "--no-progress"]) == 2
    assert "holds a vqvae model, not vae" in capsys.readouterr().err


def test_the_export_command_writes_a_bundle_with_half_precision_graphs(exported, tmp_path, capsys):
    run, _ = exported("ae")
    out = tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(out), "--exporter", "legacy", "--precision", "fp16",
                 "--max-batch", "8"]) == 0
    assert f"exported ae to {out}" in capsys.readouterr().out
    manifest = load_bundle(out).manifest
    assert set(manifest["graphs"]["decoder"]) == {"fp32", "fp16"} and manifest["max_batch"] == 8
    assert manifest["validation"]["passed"] and manifest["graphs"]["encoder"]["fp32"]["exporter"] == "legacy"


def test_a_failed_validation_writes_no_bundle_and_exits_non_zero(exported, tmp_path, monkeypatch, capsys):
    run, _ = exported("ae")
    monkeypatch.setitem(validate_module.TOLERANCES, "fp32", {"max_abs": -1.0, "rel_l2": -1.0})
    out = tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(out), "--exporter", "legacy", "--max-batch", "8"]) == 1
    assert "validation failed" in capsys.readouterr().err
    assert not out.exists()
    report = json.loads((tmp_path / "bundle.failed" / "validation.json").read_text())
    assert not report["passed"] and report["failures"]
    with pytest.raises(ValidationError):
        export_run(run, out, exporter="legacy", max_batch=8)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_export_command_exports_every_kind(exported, kind, tmp_path, capsys):
    run, _ = exported(kind)
    out = tmp_path / "bundle"
    assert main(["export", str(run), "--out", str(out), "--max-batch", "4"]) == 0
    assert f"exported {kind} to {out}" in capsys.readouterr().out
    manifest = load_bundle(out).manifest
    graphs = spec_graphs(load_run(run)[0])
    assert set(manifest["graphs"]) == graphs and manifest["validation"]["passed"]
    if kind == "vqvae":  # the spec checked against a hand-written truth (helpers.VQVAE_GRAPHS says why)
        assert graphs == VQVAE_GRAPHS
    assert load(out).reconstruct(images(6)).shape == (6, 1, 8, 8)  # 6 rows: split at the max batch of 4


def test_the_export_command_refuses_to_overwrite_its_own_run_with_one_line(exported, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported("ae")[0], run)
    before = files(run)
    assert main(["export", str(run), "--out", str(run), "--exporter", "legacy"]) == 2
    one_line_error(capsys, "is a training run")
    assert files(run) == before


@pytest.mark.parametrize("opset", [5, 17, 99])
def test_an_opset_outside_the_exporters_range_is_refused_before_any_work(exported, tmp_path, opset, capsys):
    assert main(["export", str(exported("ae")[0]), "--out", str(tmp_path / "b"), "--opset", str(opset)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: opset: the dynamo exporter writes opsets 18 to") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx")),
                    reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_sentence_naming_the_package(capsys, tmp_path):
    # before the bundle is even looked at (it does not exist): no TensorRT is the first thing a user hears
    assert main(["build", str(tmp_path / "no_bundle")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: vaedeploy build needs TensorRT, which is not installed: pip install 'vaedeploy[trt]'")
    for bad in (["--opt-level", "6"], ["--buckets", "1,x"], ["--device", "cpu"]):
        with pytest.raises(SystemExit) as exit_:
            main(["build", "b", *bad])
        assert exit_.value.code == 2


def test_the_command_line_loads_without_torch_until_a_command_needs_it():
    import subprocess
    import sys

    script = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
              "from vaedeploy.cli import build_parser\n"
              "for argv in (['serve', 'b'], ['web', 'b', '--out', 'o'], ['triton-repo', 'b', '--out', 'o'], "
              "['train', 'vae', '--out', 'r'], ['export', 'r', '--out', 'b'], ['build', 'b']):\n"
              "    build_parser().parse_args(argv)\n"
              "import vaedeploy.deploy.triton_repo\n"
              "print('ok')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
