"""The GPU side: what the CPU can check (variants, notes, the launch floor's arithmetic is in test_floor.py), and a
real short run where a CUDA device exists (marked gpu: skipped without one)."""
import pytest

from vaedeploy.bench import local, output


def test_cuda_graphs_on_and_off_only_where_load_takes_the_option(monkeypatch):
    def load_with_graphs(bundle, backend="auto", device="cpu", precision="fp32", verify=True, cuda_graphs=False):
        raise AssertionError("not called")

    both = [{"backend": "onnxruntime"}, {"backend": "torch", "cuda_graphs": False},
            {"backend": "torch", "cuda_graphs": True}]
    one_each = [{"backend": "onnxruntime"}, {"backend": "torch"}]
    assert local.variants(["onnxruntime", "torch"], "cuda") in (one_each, both)
    monkeypatch.setattr(local, "load", load_with_graphs)
    assert local.variants(["onnxruntime", "torch"], "cuda") == both
    assert local.variants(["torch"], "cpu") == [{"backend": "torch"}], "graphs are a GPU matter"


def gpu_row(**given):
    row = {"bundle": "vae", "backend": "torch", "device": "cuda", "precision": "fp32", "op": "decode", "batch": 1,
           "concurrency": 1, "copies": True, "cuda_graphs": False, "p50_ms": 0.1, "floor": {"floor_ms": 0.01}}
    return {**row, **given}


def test_launch_bound_and_copy_bound_rows_say_so():
    rows = output.annotate([gpu_row(device_p50_ms=0.02), gpu_row(copies=False, p50_ms=0.03, device_p50_ms=0.025)])
    assert "launch-bound: the device works 20% of the host latency (CUDA graphs" in rows[0]["note"]
    assert "copies dominate: 3.3× the call on device tensors" in rows[0]["note"]
    assert "note" not in rows[1] and rows[1]["x_floor"] == pytest.approx(3.0)
    graphs = output.annotate([gpu_row(cuda_graphs=True, copies=False, device_p50_ms=0.02)])[0]
    assert graphs["note"] == "launch-bound: the device works 20% of the host latency", "no advice to do what is done"


@pytest.mark.gpu
def test_a_short_run_on_the_gpu_times_host_device_and_enqueue(exported):
    from vaedeploy.bench import run

    doc = run.measure_bundles([exported("vae")[1]], backends=["torch"], device="cuda", ops=["decode", "sample"],
                              batches=[1, 64], budget_s=10.0)
    output.check(doc)
    assert doc["environment"]["gpu"]["name"] and doc["rates"]["launch"]["kernel_s"] > 0
    assert {r["copies"] for r in doc["rows"]} == {True, False}
    for row in doc["rows"]:
        assert row["device_p50_ms"] > 0 and row["enqueue_p50_ms"] > 0 and row["floor"]["launch_ms"] > 0
