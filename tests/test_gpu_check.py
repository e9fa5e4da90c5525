"""benchmarks/gpu_check.py without a GPU: its dry mode (each step's set-up in its own process, the JSON, a step that
hangs stopped at its budget), the records of failed and unstarted steps, the wheel's source check, docs/gpu.md."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check, report

RESULTS = ("hang", "ceilings", "tests", "kernels", "runtime", "bench", "spatial")


def fake_bundles(root, **shapes):
    """Bundle folders holding only a manifest with an input shape: enough for the steps' set-up."""
    for name, shape in shapes.items():
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(json.dumps({"input": {"shape": shape}}))
    return root


def records(folder):
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}


def test_dry_mode_checks_every_step_and_stops_the_step_that_hangs(tmp_path, capsys):
    bundles = fake_bundles(tmp_path / "bundles", demo_vae_bundle=[1, 8, 8], mnist5k_conv_vae_bundle=[1, 28, 28],
                           sd_bundle=[3, 512, 512])
    started = time.monotonic()
    assert gpu_check.main(["dry", "--results", str(tmp_path / "results"), "--bundles", str(bundles)]) == 0
    assert time.monotonic() - started < 20
    got = records(tmp_path / "results")
    assert sorted(got) == sorted(RESULTS)
    hang = got.pop("hang")
    assert hang["status"] == "timed out" and hang["seconds"] < 5 and "budget of 1 s" in hang["reason"]
    assert {name: r["status"] for name, r in got.items()} == dict.fromkeys(got, "dry"), "every step after the hang ran"
    setup = {name: r["setup"] for name, r in got.items()}
    assert "tests/runtime/test_gpu.py" in setup["tests"]["argv"] and setup["tests"]["argv"][:2] == ["-m", "gpu"]
    assert setup["kernels"] == {"reparameterize_sizes": [2**24, 2**26], "vq_shape": [65_536, 1_024, 64]}
    assert setup["runtime"]["argv"][:2] == ["--bundles", str(bundles)]
    assert setup["bench"]["argv"][:4] == ["bench", str(bundles / "demo_vae_bundle"), "--device", "cuda"]
    assert setup["spatial"]["argv"][1] == str(bundles / "sd_bundle"), "only the 512×512 bundle is decoded there"
    out = capsys.readouterr().out
    assert "== gpu_check summary" in out and "hang (1 of 1 s): timed out" in out


def test_without_prepared_bundles_the_steps_that_need_them_skip_and_say_why(tmp_path, capsys):
    code = gpu_check.main(["dry", "--results", str(tmp_path), "--bundles", str(tmp_path / "none"),
                           "--only", "runtime", "bench", "spatial"])
    assert code == 0
    got = records(tmp_path)
    assert sorted(got) == ["bench", "hang", "runtime", "spatial"]
    for name in ("runtime", "bench"):
        assert got[name]["status"] == "skipped" and "`make gpu-check-prepare` exports them" in got[name]["reason"]
    assert got["spatial"]["reason"].startswith("no bundle with 512×512 images was prepared: vaedeploy has no spatial")
    assert "skipped: no bundle at" in capsys.readouterr().out


def test_a_step_whose_process_fails_is_recorded_with_its_last_line(tmp_path):
    ctx = gpu_check.Context(work=tmp_path, bundles=tmp_path, dry=True)
    env = gpu_check.environment(dry=True)
    unknown = gpu_check.Step("nosuch", "a step its process does not know", 30, gpu_check._hang, gpu_check._hang)
    record = gpu_check.drive_step(unknown, ctx, env, 30)
    assert record["status"] == "failed" and record["reason"].startswith("its process exited with 1: KeyError")
    assert "Traceback" in record["log_tail"]


def test_steps_left_without_time_are_skipped_not_started(tmp_path):
    ctx = gpu_check.Context(work=tmp_path, bundles=tmp_path, dry=True)
    done = gpu_check.drive(gpu_check.STEPS[:2], ctx, {}, tmp_path / "results", None, total_s=1)
    assert [r["status"] for r in done] == ["skipped", "skipped"]
    assert done[0]["reason"] == "the run's total budget of 1 s was spent before it"
    assert records(tmp_path / "results")["tests"]["status"] == "skipped", "written like any other step"


def test_each_step_is_written_before_the_next_one_starts(tmp_path, monkeypatch):
    """So a run cut off in the middle keeps every step that ended."""
    results, seen = tmp_path / "results", []

    def drive_step(step, ctx, env, budget_s):
        seen.append(sorted(path.name for path in results.glob("*.json")))
        return {"step": step.name, "title": step.title, "budget_s": budget_s, "seconds": 0.0, "status": "ran"}

    monkeypatch.setattr(gpu_check, "drive_step", drive_step)
    ctx = gpu_check.Context(work=tmp_path, bundles=tmp_path, dry=False)
    gpu_check.drive(gpu_check.STEPS[:3], ctx, {}, results, {"gpu": None})
    assert seen == [[], ["ceilings.json"], ["ceilings.json", "tests.json"]]
    assert records(results)["kernels"]["machine"] == {"gpu": None}, "each record carries the machine"


def test_a_stale_vaedeploy_wheel_is_rebuilt_from_the_tree_before_the_install(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    for name in ("vaedeploy-0.1.0-py3-none-any.whl", "mlxtend-0.25.0-py3-none-any.whl"):
        (tmp_path / "wheels" / name).touch()
    (tmp_path / "prepared.json").write_text(json.dumps({"sources_sha256": "0" * 64}))
    calls = []

    def run(args, **options):  # the import check fails (nothing installed), pip's install is recorded
        calls.append(args)
        return subprocess.CompletedProcess(args, 1 if "-c" in args else 0)

    monkeypatch.setattr(gpu_check, "PREPARED", tmp_path)
    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    monkeypatch.setattr(gpu_check, "vaedeploy_wheel", lambda target: target / "vaedeploy-0.1.0-py3-none-any.whl")
    monkeypatch.setattr(gpu_check.sys, "path", list(gpu_check.sys.path))
    env = gpu_check.environment(dry=False)
    installed = [str(Path(arg).relative_to(tmp_path)) for arg in calls[-1] if arg.endswith(".whl")]
    assert installed == ["wheels/mlxtend-0.25.0-py3-none-any.whl", "rebuilt/vaedeploy-0.1.0-py3-none-any.whl"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "site"), "the installed package comes first"
    (tmp_path / "prepared.json").unlink()
    with pytest.raises(SystemExit, match="prepared.json is missing: run `make gpu-check-prepare`"):
        gpu_check.environment(dry=False)


def test_the_sources_hash_follows_the_python_sources_only(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "vaedeploy").mkdir()
    (tmp_path / "vaedeploy" / "a.py").write_text("x = 1\n")
    first = gpu_check.sources_sha256(tmp_path)
    (tmp_path / "vaedeploy" / "notes.txt").write_text("not a source")
    assert gpu_check.sources_sha256(tmp_path) == first
    (tmp_path / "vaedeploy" / "a.py").write_text("x = 2\n")
    assert gpu_check.sources_sha256(tmp_path) != first


def test_prepare_leaves_a_folder_it_did_not_write_alone(tmp_path):
    (tmp_path / ".gpu_check").mkdir()
    (tmp_path / ".gpu_check" / "mine.txt").write_text("someone's")
    with pytest.raises(SystemExit, match="was not written by it"):
        gpu_check.prepare(tmp_path / ".gpu_check")
    assert (tmp_path / ".gpu_check" / "mine.txt").read_text() == "someone's"


def test_prepare_replaces_its_own_folder_whole(tmp_path, monkeypatch):
    from benchmarks import gpu_runtime

    def bundles(root):  # what gpu_runtime.bundles writes, without training
        return {name: fake_bundles(root, **{gpu_runtime.bundle_path(root, name).name: [1, 8, 8]})
                / gpu_runtime.bundle_path(root, name).name for name in gpu_runtime.MODELS}

    def wheel(target):
        target.mkdir(parents=True, exist_ok=True)
        (target / "vaedeploy-0.1.0-py3-none-any.whl").write_bytes(b"w")

    monkeypatch.setattr(gpu_runtime, "bundles", bundles)
    monkeypatch.setattr(gpu_check, "vaedeploy_wheel", wheel)
    monkeypatch.setattr(gpu_check, "_carried_wheels", lambda target: None)
    target = tmp_path / ".gpu_check"
    assert gpu_check.prepare(target) == 0
    (target / "bundles" / "stale_bundle").mkdir()
    assert gpu_check.prepare(target) == 0
    record = json.loads((target / "prepared.json").read_text())
    assert record["sources_sha256"] == gpu_check.sources_sha256()
    assert record["bundles"] == ["demo_vae_bundle", "mnist5k_conv_vae_bundle"], "the earlier folder is gone whole"
    assert record["wheels"] == ["vaedeploy-0.1.0-py3-none-any.whl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gpu_check"], "no staging or backup folder is left"


MACHINE = {"gpu": {"name": "NVIDIA H200", "driver": "580.159.04", "cuda": "13.0"},
           "versions": {"torch": "2.11.0", "triton": "3.6.0", "vaedeploy": "0.1.0"}}


def ran(step, figures, goals):
    return {"step": step, "title": "t", "status": "ran", "seconds": 12.3, "budget_s": 45, "date": "2026-12-07T22:00",
            "machine": MACHINE, "figures": figures, "goals": goals}


def test_the_summary_and_docs_say_met_or_missed_with_the_device_in_every_row():
    ceilings = ran("ceilings", {"copy_bytes_per_s": 4.3e12, "fp32_matmul_flops_per_s": 5.1e13,
                                "tf32_matmul_flops_per_s": 4.0e14, "bf16_matmul_flops_per_s": 7.9e14,
                                "empty_kernel_launch_s": 2.5e-6, "empty_graph_replay_s": 2.0e-6}, [])
    kernels = ran("kernels", {}, [gpu_check._goal("vq_nearest ≥ 5×", 6.2, 5.0, True),
                                  gpu_check._goal("reparameterize ≥ 85%", 0.7, 0.85, False)])
    tests = ran("tests", {"passed": 3, "failed": 1, "errors": 0, "skipped": 2}, [])
    assert gpu_check.headline(tests) == "3 passed, 1 failed, 0 errors, 2 skipped"
    docs = {"ceilings": ceilings, "kernels": kernels}
    text = gpu_check.summary([ceilings, kernels])
    assert "copy 4.30 TB/s" in text and "bf16 790 TFLOP/s" in text and "graph replay 2.0 µs" in text
    assert "met: vq_nearest ≥ 5×: 6.2 (threshold 5)" in text and "MISSED: reparameterize ≥ 85%: 0.7" in text
    steps, goals = report.gpu_steps(docs).splitlines()[2:], report.gpu_goals(docs).splitlines()[2:]
    device = "| NVIDIA H200 | 580.159.04, CUDA 13.0 | torch 2.11.0, triton 3.6.0, vaedeploy 0.1.0 | 2026-12-07 |"
    assert steps[0].endswith(device) and "| 12 / 45 |" in steps[0]
    assert [row.endswith(device) for row in goals].count(True) == 2
    assert "| reparameterize ≥ 85% | 0.7 | 0.85 | missed |" in report.gpu_goals(docs)
    not_measured = [row for row in steps + goals if "not yet measured" in row]
    assert len(not_measured) == len(steps) - 2 + sum(len(s.claims) for s in gpu_check.STEPS
                                                     if s.name not in docs)
    assert all(row.endswith("| — | — | — | — |") for row in not_measured)
