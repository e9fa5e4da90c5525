"""A short real run of `vaedeploy bench` on the CPU backends (what CI runs), its JSON, table, plots and --compare."""
import copy
import json

import numpy as np
import pytest

from vaedeploy.bench import local, output, run
from vaedeploy.cli import main
from vaedeploy.errors import ConfigError


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def result(exported):
    """One run: the demo-shaped VAE and AE on both CPU backends, three ops, two batch sizes, a 10 s budget."""
    bundles = [exported("vae")[1], exported("ae")[1]]
    return run.measure_bundles(bundles, backends=["onnxruntime", "torch"], ops=["encode", "decode", "sample"],
                               batches=[1, 16], budget_s=10.0, notes=["a test run"])


def test_every_case_has_a_row_with_figures_and_the_floor(result):
    output.check(result)
    keys = {(r["bundle"], r["backend"], r["op"], r["batch"]) for r in result["rows"]}
    vae, ae = (b["label"] for b in result["bundles"])
    expected = {(vae, be, op, b) for be in ("onnxruntime", "torch") for op in ("encode", "decode", "sample")
                for b in (1, 16)}
    expected |= {(ae, be, op, b) for be in ("onnxruntime", "torch") for op in ("encode", "decode") for b in (1, 16)}
    assert keys == expected, "one row per case; the AE has no sample"
    for row in result["rows"]:
        assert row["calls"] >= 5 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["items_per_s"] > 0 and row["status"] in ("stable", "unstable", "budget")
        assert row["floor"]["floor_ms"] > 0 and row["floor"]["flops"] > 0 and row["floor"]["bound"]
        assert row["x_floor"] == pytest.approx(row["p50_ms"] / row["floor"]["floor_ms"])
        assert row["copies"] is None and row["cuda_graphs"] is None and row["device"] == "cpu"


def test_the_result_names_the_machine_the_versions_and_the_bundles(result):
    env = result["environment"]
    assert env["cpu"] and env["cpu_cores_available"] >= 1 and env["load_average_at_start"] is not None
    assert isinstance(env["cpu_flags"], list)
    assert {"vaedeploy", "numpy", "onnxruntime", "torch", "onnx-tool"} <= set(env["versions"])
    assert env["command"] and env["date"] and env["gpu"] is None
    for bundle in result["bundles"]:
        assert len(bundle["sha256"]) == 64 and "test images of digits" in bundle["inputs"]
    assert result["rates"]["matmul"]["flops_per_s"] > 0 and result["notes"] == ["a test run"]
    json.dumps(result)  # plain JSON all through


def test_table_plots_and_json_on_disk(result, tmp_path):
    text = output.table(result["rows"])
    assert "× floor" in text and "p50 ms" in text and text.count("\n") >= len(result["rows"])
    files = output.write(result, tmp_path / "bench.json")
    assert [f.name for f in files] == ["bench.json", "bench_latency.png"]
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.load(files[0])["rows"] == json.loads(json.dumps(result["rows"]))


def test_compare_gives_ratios_row_by_row(result):
    faster = copy.deepcopy(result)
    for row in faster["rows"]:
        row["p50_ms"] /= 2
        row["items_per_s"] *= 2
    faster["rows"] = faster["rows"][1:]
    faster["environment"]["versions"]["onnxruntime"] = "9.9.9"
    text = output.compare(result, faster)
    assert "onnxruntime: " in text and "→ 9.9.9" in text
    assert text.count("0.50×") == len(faster["rows"]) and text.count("2.00×") == len(faster["rows"])
    assert "only in A" in text


def test_malformed_results_are_refused_in_a_sentence(result, tmp_path):
    broken = copy.deepcopy(result)
    del broken["rows"][0]["p50_ms"]
    with pytest.raises(ConfigError, match=r"rows\[0\]: a row with calls needs p50_ms"):
        output.check(broken)
    (tmp_path / "old.json").write_text(json.dumps({**result, "schema_version": 0}))
    with pytest.raises(ConfigError, match="expected schema_version 1, got 0"):
        output.load(tmp_path / "old.json")


def test_inputs_are_real_images_and_rotate(exported):
    from vaedeploy import load

    with load(exported("vae")[1]) as rt:
        images, source = local.load_images(rt, None)
        inputs = local.Inputs(rt, images)
        pool = inputs.images_of(4)
        assert len(pool) == 16 and len({a.tobytes() for a in pool}) == 16 and all(np.any(a) for a in pool)
        rows = {row.tobytes() for row in images}
        assert all(row.tobytes() in rows for a in pool for row in a), "every row is a test image"
        latents = inputs.latents_of(4)
        assert abs(np.concatenate(latents).std() - 1) < 0.2
        call = local.op_call(rt, "encode", 4, inputs)
        assert not np.array_equal(call(0), call(1)), "every call draws new noise (a new seed)"


def test_the_command_line_runs_compares_and_refuses(exported, tmp_path, capsys):
    bundle = exported("vae")[1]
    out = tmp_path / "r.json"
    assert main(["bench", str(bundle), "--backends", "onnxruntime", "--ops", "decode", "--batch-sizes", "1",
                 "--budget-s", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "floor rates: matmul" in printed and "decode" in printed and f"wrote {out}" in printed
    assert main(["bench", "--compare", str(out), str(out)]) == 0
    assert "1.00×" in capsys.readouterr().out
    assert main(["bench", str(bundle), "--ops", "decode,fly", "--budget-s", "1"]) == 2
    assert "--ops: expected some of encode, encode_params, decode, reconstruct, sample, decode_codes, sample_codes, " \
        "got fly" in capsys.readouterr().err
    if not torch_cuda():
        assert main(["bench", str(bundle), "--device", "cuda", "--budget-s", "1"]) == 2
        assert "--device cuda: no CUDA device here" in capsys.readouterr().err
    assert main(["bench"]) == 2 and "expected BUNDLE directories" in capsys.readouterr().err
