"""`vaedeploy bench --sizes` and `--tile` on a bundle that takes any image size (issue 28): the tiny klconv bundle
(its example config: 1×H×W images, any H, W multiple of 4 from 8 to 32, 2×H/4×W/4 latents), its rows per size and
tiling with the floor at each size, the peak memory of a case, and the refusals."""
import numpy as np
import pytest

from vaedeploy.bench import local, output, run
from vaedeploy.cli import main
from vaedeploy.errors import ConfigError

SIZES = [(8, 8), (16, 16), (32, 32)]  # each 4× the pixels of the one before
TILE = (16, 16)


@pytest.fixture(scope="module")
def spatial(exported):
    return exported("klconv")[1]


@pytest.fixture(scope="module")
def result(spatial):
    return run.measure_bundles([spatial], backends=["onnxruntime"], ops=["decode", "encode_params", "sample"],
                               batches=[2], sizes=SIZES, tiling=[None, TILE], budget_s=6.0)


def _rows(result, **match) -> list[dict]:
    return [r for r in result["rows"] if all(r[k] == v for k, v in match.items())]


def test_every_op_has_a_row_at_every_size_with_its_floor(result):
    output.check(result)
    for op in ("decode", "encode_params", "sample"):
        rows = _rows(result, op=op, tile="none")
        assert sorted(tuple(r["size"]) for r in rows) == SIZES
        for row in rows:
            assert row["p50_ms"] > 0 and row["floor"]["floor_ms"] > 0 and row["floor"]["flops"] > 0


def test_tiled_rows_for_decode_and_encode_params_only(result):
    for op in ("decode", "encode_params"):
        assert sorted(tuple(r["size"]) for r in _rows(result, op=op, tile="16x16")) == SIZES
    assert {r["tile"] for r in _rows(result, op="sample")} == {"none"}, "sample has no input to tile"
    assert "16x16" in output.table(result["rows"]) and "32x32" in output.table(result["rows"])


def test_the_floor_grows_with_the_pixels(result):
    for op in ("decode", "encode_params", "sample"):
        flops = {tuple(r["size"]): r["floor"]["flops"] for r in _rows(result, op=op, tile="none")}
        data = {tuple(r["size"]): r["floor"]["bytes"] for r in _rows(result, op=op, tile="none")}
        for small, large in zip(SIZES, SIZES[1:]):
            assert flops[large] / flops[small] == pytest.approx(4, rel=0.1), (op, small, large)
            assert data[large] > data[small]


def test_inputs_and_latents_at_a_size(spatial):
    from vaedeploy import load

    with load(spatial, backend="onnxruntime") as rt:
        images = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
        inputs = local.Inputs(rt, images, size=(12, 20))
        assert inputs.images_of(2)[0].shape == (2, 1, 12, 20)
        assert set(np.unique(inputs.images_of(2)[0])) <= set(np.unique(images)), "resized, not made up"
        assert inputs.latents_of(3)[0].shape == (3, 2, 3, 5)
        z = local.Inputs(rt, None, size=(32, 32)).latents_of(2)[0]
        tiled = local.tiled_run(rt, "decode", TILE)(rt, (z,), 2, None, 0, 1.0)[0]
        whole = rt.decode(z)
        assert tiled.shape == whole.shape == (2, 1, 32, 32)
        # the first tile's corner is far from every seam: what the whole call gives
        np.testing.assert_allclose(tiled[..., :4, :4], whole[..., :4, :4], atol=1e-5)
        assert not np.allclose(tiled, whole, atol=1e-5), "the seams are blended, so some pixels differ"


def test_peak_memory_of_a_case_tiled_and_whole(spatial):
    doc = run.measure_bundles([spatial], backends=["onnxruntime"], ops=["decode"], batches=[16], sizes=[(32, 32)],
                              tiling=[None, TILE], budget_s=2.0, peak_memory=True)
    output.check(doc)
    rows = {r["tile"]: r for r in doc["rows"]}
    assert set(rows) == {"none", "16x16"}
    for row in rows.values():
        assert isinstance(row["peak_rss_growth_bytes"], int) and row["peak_rss_growth_bytes"] > 0
    assert "peak MiB" in output.table(doc["rows"])


def test_sizes_outside_the_range_or_for_a_fixed_size_bundle_are_refused(spatial, exported):
    for sizes, expected in (([(64, 64)], "--sizes: expected H and W multiples of 4 from 8×8 to 32×32"),
                            ([(8, 10)], "got 8x10")):
        with pytest.raises(ConfigError, match=expected):
            run.measure_bundles([spatial], sizes=sizes, budget_s=1.0)
    vector = exported("vae")[1]
    with pytest.raises(ConfigError, match="--sizes: expected a bundle that takes any image size"):
        run.measure_bundles([vector], sizes=[(8, 8)], budget_s=1.0)
    with pytest.raises(ConfigError, match="--tile: expected a bundle that takes any image size"):
        run.measure_bundles([vector], tiling=["auto"], budget_s=1.0)


def test_the_command_line_takes_sizes_and_tiles_and_refuses_bad_ones(spatial, capsys):
    assert main(["bench", str(spatial), "--backends", "onnxruntime", "--ops", "decode", "--batch-sizes", "1",
                 "--sizes", "8,12x20", "--tile", "none,auto", "--budget-s", "2"]) == 0
    printed = capsys.readouterr().out
    assert "12x20" in printed and "auto" in printed
    for option, value in (("--sizes", "0"), ("--sizes", "3x4x5"), ("--tile", "big")):
        with pytest.raises(SystemExit) as stop:
            main(["bench", str(spatial), option, value])
        assert stop.value.code == 2
        assert f"argument {option}: expected" in capsys.readouterr().err
    assert main(["bench", str(spatial), "--sizes", "36", "--budget-s", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
