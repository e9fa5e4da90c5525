"""The contract every registered kind keeps, run over the registry: a new kind is covered by construction.

Config round trip; export into a bundle that validates and passes the schema; both runtime backends serving it like
the PyTorch model (reconstruct, encode shapes and seeds, sample where the kind has a prior).
"""
import numpy as np
import pytest
import torch
from helpers import images

from vaedeploy import load
from vaedeploy.bundle import LATENT_TYPES, load_bundle
from vaedeploy.models import MODELS, build_model
from vaedeploy.runs import load_run
from vaedeploy.runtime.latents import RUNTIMES

KINDS = sorted(MODELS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_an_example_config_that_round_trips(kind):
    cls = MODELS[kind]
    assert cls.example_config, f"{kind} has no example_config for the contract test"
    model = build_model(kind, cls.example_config)
    again = build_model(kind, model.config_dict())
    assert again.config_dict() == model.config_dict()
    assert sorted(again.state_dict()) == sorted(model.state_dict())


def test_the_runtime_serves_every_latent_type_the_schema_defines():
    assert set(RUNTIMES) == set(LATENT_TYPES)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_every_kind_exports_validates_and_serves_like_its_model(exported, kind, backend):
    run, bundle = exported(kind)
    manifest = load_bundle(bundle).manifest
    assert manifest["kind"] == kind and manifest["validation"]["passed"]
    model, _ = load_run(run)
    x = images(70)  # above the test bundles' max batch of 64: split and reassembled
    with load(bundle, backend=backend) as rt:
        with torch.no_grad():
            expected = model.reconstruct(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(rt.reconstruct(x), expected, atol=1e-4)
        z = rt.encode(x, seed=3)
        z = z[1] if isinstance(z, tuple) else z  # a VQ bundle gives (indices, z_q)
        assert len(z) == 70 and np.isfinite(np.asarray(z)).all()
        if model.has_prior:
            samples = rt.sample(5, seed=1)
            assert samples.shape == (5, 1, 8, 8) and np.isfinite(samples).all()
            np.testing.assert_array_equal(samples, rt.sample(5, seed=1))
