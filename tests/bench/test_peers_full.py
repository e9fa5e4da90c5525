"""benchmarks/peers_full.py and benchmarks/ort_profile.py on a tiny TAESD (AutoencoderTiny) in place of the
full-size one: every provider decodes what PyTorch eager fp32 decodes, bf16 is left out with the measured reason
where this CPU's bf16 is too slow, and the profile's Conv FLOPs are the graph's."""
import tempfile
from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")

from benchmarks import diffusers_vae, ort_profile, peers_full  # noqa: E402

RATES = {"matmul": {"flops_per_s": 1e11}, "copy": [{"bytes": 1 << 40, "bytes_per_s": 1e10}]}


def tiny_taesd(name):
    import torch

    torch.manual_seed(0)
    return diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                     num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The bundles' folder, shared by the tests (each bundle is imported once), with the tiny model in place."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diffusers_vae, "build", tiny_taesd)
        patch.setattr(peers_full, "SIDES", {"taesd": 32})
        yield tmp_path_factory.mktemp("peers_full")


def _rows(model):
    return {row["provider"]: row for row in model["rows"]}


def test_every_fp32_provider_decodes_what_eager_does_and_slow_bf16_is_left_out_with_its_rate(tiny):
    notes, before = [], set(tiny.iterdir())
    probe = {"conv_fp32": 1e10, "conv_bf16": 1e3, "matmul_bf16": 1e9}  # a CPU whose bf16 conv crawls
    model = peers_full.measure_model("taesd", tiny, RATES, probe, compile_torch=False, notes=notes)
    rows = _rows(model)
    assert {"vaedeploy auto", "vaedeploy", "ort session.run", "ort default", "pytorch eager"} <= set(rows)
    assert not any("bf16" in name for name in rows if not name.startswith("openvino"))
    assert any("bf16" in note and "GFLOP/s on this CPU" in note for note in notes)
    assert not any("bf16" in p.name for p in set(tiny.iterdir()) - before), "no bf16 export where it would crawl"
    for name, row in rows.items():
        assert len(row["times_ms"]) == peers_full.ROUNDS and row["min_ms"] <= row["median_ms"]
        if "bf16" not in name:
            assert row["max_abs"] < 1e-3 and row["psnr_db"] > 80, name
    assert rows["pytorch eager"]["max_abs"] == 0
    assert model["gflop"] > 0 and model["floor_fp32_ms"] == pytest.approx(model["gflop"] * 1e9 / 1e11 * 1e3)
    assert "auto on the CPU" in model["auto"]


def test_bf16_is_exported_and_measured_where_it_is_fast_enough(tiny):
    notes = []
    probe = {"conv_fp32": 1e10, "conv_bf16": 1e10, "matmul_bf16": 1e9}
    rows = _rows(peers_full.measure_model("taesd", tiny, RATES, probe, compile_torch=False, notes=notes))
    assert (tiny / "taesd_bf16" / "manifest.json").exists()
    assert {"pytorch bf16 autocast", "vaedeploy auto, precision auto"} <= set(rows)
    assert rows["pytorch bf16 autocast"]["psnr_db"] < rows["vaedeploy"]["psnr_db"], "bf16 shows its loss"
    assert not any("GFLOP/s on this CPU" in note for note in notes)


def test_the_profile_counts_the_graphs_conv_flops_and_sums_its_kernel_time(tiny):
    from vaedeploy import load
    from vaedeploy.bench import floor

    _, bundle = peers_full.bundle_of("taesd", tiny, bf16=False)
    with load(bundle, backend="onnxruntime") as rt:
        path = str(rt.bundle.graph("decoder")["path"])
        total = floor.floor(floor.op_cost(rt, "decode", 1, (32, 32)), RATES)["flops"]
        z = np.random.default_rng(0).standard_normal((1, *rt.latent_shape_at((32, 32))), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        profile = ort_profile.ort_profile(path, z, 2, Path(folder))
    conv = sum(shape["gflop"] for shape in profile["conv_by_shape"]) * 1e9
    # nearly all of a conv decoder's FLOPs; a little more where NCHWc pads a layer's channels to its block (the
    # last layer's 3 output channels to 8: about a tenth of this tiny graph's work)
    assert 0.8 * total < conv < 1.2 * total
    assert sum(op["share"] for op in profile["by_op"]) == pytest.approx(1.0)
    assert profile["by_op"][0]["op"] == "Conv"
