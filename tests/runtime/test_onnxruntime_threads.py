"""A runtime's ONNX Runtime sessions stop their threads' spinning when a run ends (no pool spinning for work while
another session of the same call runs), and a caller's session config still has the last word."""
import numpy as np
from helpers import images

from vaedeploy import load

STOP = "session.force_spinning_stop"


def test_every_session_stops_spinning_when_its_run_ends(exported):
    with load(exported("vae")[1], backend="onnxruntime") as rt:
        assert len(rt.runners) == 2
        for runner in rt.runners.values():
            assert runner.session.get_session_options().get_session_config_entry(STOP) == "1"
        x = images(130)  # split at max_batch: both sessions run in turn, twice
        np.testing.assert_allclose(rt.reconstruct(x), rt.decode(rt.encode_params(x)[0]), atol=1e-6)


def test_a_callers_session_config_comes_after_the_runtimes_own(exported):
    config = {"session.intra_op.allow_spinning": "0", STOP: "0"}
    with load(exported("vae")[1], backend="onnxruntime", session_config=config) as rt:
        for runner in rt.runners.values():
            options = runner.session.get_session_options()
            assert {key: options.get_session_config_entry(key) for key in config} == config
