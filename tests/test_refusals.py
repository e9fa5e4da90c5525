"""Options a hostile probe tried: each is refused before any work with one sentence, and a failure names only
files that exist."""
import re

import pytest

from vaedeploy.bundle import MAX_BATCH
from vaedeploy.cli import main
from vaedeploy.errors import ConfigError


def test_export_max_batch_of_a_billion_is_refused_before_anything_is_allocated(exported, tmp_path, capsys):
    from vaedeploy.export import export_run

    run = exported("ae")[0]
    with pytest.raises(SystemExit) as info:  # argparse: a usage line, exit 2, nothing exported
        main(["export", str(run), "--out", str(tmp_path / "b"), "--max-batch", "1000000000"])
    assert info.value.code == 2
    assert f"--max-batch: expected an integer ≥ 1 and ≤ {MAX_BATCH}, got '1000000000'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=f"max_batch must be an integer from 1 to {MAX_BATCH}"):
        export_run(run, tmp_path / "b", max_batch=10**9)  # the Python API: refused before the validation rows
    assert not (tmp_path / "b").exists()


def test_train_lr_1e30_diverges_naming_only_files_that_exist(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--lr", "1e30", "--epochs", "3", "--out", str(run), "--no-progress"]) == 1
    message = capsys.readouterr().err
    assert "loss became nan in epoch 1" in message
    named = re.findall(re.escape(str(run)) + r"/[\w.]+", message)
    assert all((tmp_path / "run" / name.rsplit("/", 1)[1]).is_file() for name in named), message
    assert named or "before anything was saved" in message
    assert "--resume" not in message or (run / "checkpoint.safetensors").is_file()


@pytest.mark.parametrize("value", [str(10**400), "1e999", "nan"])
def test_a_number_option_past_floats_range_is_a_usage_line_not_a_traceback(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "vae", "--epochs", value, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs: expected an integer ≥ 1, got '" in err and len(err.splitlines()[-1]) < 200
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting", ["hidden=" + "9" * 5000, f"min_logvar={10**400}"])
def test_a_set_value_past_pythons_integer_or_floats_range_is_one_short_sentence(setting, tmp_path, capsys):
    assert main(["train", "vae", "--set", setting, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: VAEConfig.") and "expected" in err and len(err) < 300, err[:300]
    assert not (tmp_path / "run").exists()
