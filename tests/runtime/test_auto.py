"""backend="auto" on the CPU: measured on the bundle, cached in the bundle's calibration/ folder by key, said why."""

import numpy as np
import pytest
from helpers import edit_manifest, images, uncalibrated_copy

from vaedeploy import load
from vaedeploy.owned import MARKER
from vaedeploy.runtime import calibrate


@pytest.fixture
def bundle(exported, tmp_path):
    """A copy of the vae bundle of its own (calibration writes into the bundle)."""
    return uncalibrated_copy(exported("vae")[1], tmp_path / "vae")


def test_auto_measures_the_installed_backends_keeps_one_and_says_why(bundle):
    with load(bundle) as rt:
        assert rt.backend in calibrate.ORDER
        assert rt.backend_reason.startswith(f"auto on the CPU: {rt.backend}, ")
        assert "decode ms at batch 1/64: onnxruntime " in rt.backend_reason and "calibrated now" in rt.backend_reason
        (record_path,) = (bundle / "calibration").glob("[0-9a-f]*.json")
        np.testing.assert_allclose(rt.reconstruct(images(3)), load(bundle, backend=rt.backend).reconstruct(images(3)))
    assert sorted(p.name for p in (bundle / "calibration").iterdir()) == sorted([MARKER, record_path.name])
    record = calibrate.read_json(record_path)
    assert record["chosen"] == rt.backend and record["key"]["precision"] == "fp32"
    assert set(record["times_s"]) == {name for name, _ in calibrate.candidates(rt.bundle, ["fp32"])[0]}
    assert record["precision"] == "fp32"


def test_a_cached_choice_is_read_not_measured_again_and_a_new_key_measures(bundle, monkeypatch):
    load(bundle).close()
    measured = []
    original = calibrate.measure
    monkeypatch.setattr(calibrate, "measure", lambda *a: measured.append(a) or original(*a))
    with load(bundle) as rt:
        assert "calibrated earlier, read from" in rt.backend_reason and not measured
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {"cpu": "Another CPU", "flags": ["amx_bf16"]})
    with load(bundle) as rt:
        assert "calibrated now" in rt.backend_reason and "on Another CPU" in rt.backend_reason and measured
    assert len(list((bundle / "calibration").glob("[0-9a-f]*.json"))) == 2  # one record per key, the first kept


def test_another_backend_must_be_clearly_faster_than_the_default():
    times = {"onnxruntime": {1: 1.0, 64: 10.0}, "openvino": {1: 1.2, 64: 7.8}}  # 0.968 of the default's mean
    assert calibrate.pick(times, "onnxruntime") == "onnxruntime"
    times["openvino"][64] = 6.0  # 0.85 of it
    assert calibrate.pick(times, "onnxruntime") == "openvino"
    times["torch"] = {1: 0.5, 64: 5.0}
    assert calibrate.pick(times, "onnxruntime") == "torch"


def test_a_folder_it_does_not_own_is_left_alone_and_auto_still_chooses(bundle):
    (bundle / "calibration").mkdir()
    (bundle / "calibration" / "notes.txt").write_text("the user's")
    with load(bundle) as rt:
        assert "not cached: " in rt.backend_reason and "notes.txt" in rt.backend_reason
    assert [p.name for p in (bundle / "calibration").iterdir()] == ["notes.txt"]


def test_with_one_backend_installed_nothing_is_measured(bundle, monkeypatch):
    monkeypatch.setattr(calibrate, "installed", lambda name: name == "onnxruntime")
    monkeypatch.setattr(calibrate, "measure", lambda *a: pytest.fail("measured with one candidate"))
    with load(bundle) as rt:
        assert rt.backend == "onnxruntime"
        assert rt.backend_reason == ("auto on the CPU: onnxruntime, the only CPU backend that can run it (openvino is "
                                     "not installed; torch is not installed)")


def test_a_bundle_with_a_calibration_folder_can_be_exported_again(exported, tmp_path):
    from vaedeploy.export import export_run

    run, bundle = exported("ae")
    out = uncalibrated_copy(bundle, tmp_path / "ae")
    load(out).close()
    assert (out / "calibration" / MARKER).is_file()
    export_run(run, out, max_batch=8)
    assert not (out / "calibration").exists()  # the bundle's own folder, replaced with the bundle


def test_a_backend_that_cannot_load_the_bundle_is_left_out_with_its_sentence(bundle):
    edit_manifest(bundle, lambda m: m["graphs"]["decoder"]["fp32"].update(module="no.such.module"))  # torch's alone
    with load(bundle) as rt:
        assert rt.backend != "torch"
        assert "torch cannot run it (" in rt.backend_reason and "graphs.decoder.fp32.module" in rt.backend_reason
