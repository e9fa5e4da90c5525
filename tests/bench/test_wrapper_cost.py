"""benchmarks/wrapper_cost.py on a real bundle: every op's three figures, the stubbed call cheaper than the real
one, and the stubs return what the sessions gave (the API's results are unchanged by them)."""
import numpy as np

from benchmarks.wrapper_cost import OPS, calls, measure, stub_sessions


def test_each_op_gets_a_call_its_sessions_and_the_runtime_alone(exported):
    rows = measure(exported("vae")[1], rounds=1, block=20)
    assert [row["op"] for row in rows] == list(OPS)
    for row in rows:
        assert 0 < row["wrapper_us"] < row["call_us"] and 0 < row["session_us"] < row["call_us"]
        assert row["overhead_us"] == row["call_us"] - row["session_us"]


def test_the_stubbed_sessions_give_the_api_what_the_real_ones_gave(exported):
    from vaedeploy import load

    rt = load(exported("vae")[1], backend="onnxruntime")
    cases = calls(rt)
    before = {op: np.asarray(call()[0] if op == "encode_params" else call()) for op, (call, _) in cases.items()}
    stub_sessions(rt, cases)
    for op in ("encode_params", "encode", "decode"):  # the ops whose graphs see the input the stub was made on
        call = cases[op][0]
        np.testing.assert_array_equal(np.asarray(call()[0] if op == "encode_params" else call()), before[op])
