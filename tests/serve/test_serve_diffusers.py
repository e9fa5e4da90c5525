"""`vaedeploy serve` with bundles imported from diffusers (docs/diffusers.md): a VQModel's bundle (a vq code grid of
any size, no prior) over tritonclient's HTTP and gRPC clients: its models are the operation table's (no sample and no
sample_codes), encode, decode of codes and of z_q, and reconstruct at two sizes (one non-square) equal the runtime,
and a grid of a size the bundle does not take is refused with a 400 and one sentence."""
import numpy as np
import pytest
from test_server import PROTOCOLS, TOLERANCE, client, infer
from tritonclient.utils import InferenceServerException
from vaedeploy.export.diffusers import photographs

from vaedeploy import load

SIZES = [(16, 16), (32, 24)]  # the reference size and a non-square one


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def vqgan(serve, diffusers_bundle):
    bundle = diffusers_bundle("vqgan")
    return serve([bundle], "--name", "vq", "--grpc-port", "0"), load(bundle)


def test_the_models_are_the_tables_without_a_sample(vqgan, protocol):
    server, _ = vqgan
    c = client(server, protocol=protocol)
    names = [m["name"] for m in c.get_model_repository_index()]
    assert sorted(names) == sorted(f"vq.{op}" for op in ("encode", "encode_params", "decode", "decode_codes",
                                                          "reconstruct"))
    shapes = [t["shape"] for t in c.get_model_metadata("vq.decode_codes")["inputs"]]
    assert shapes == [[-1, -1, -1]]  # N×h×w codes of any grid the bundle takes


@pytest.mark.parametrize("size", SIZES)
def test_encode_and_decode_of_codes_and_z_q_equal_the_runtime(vqgan, protocol, size):
    server, rt = vqgan
    c = client(server, protocol=protocol)
    x = photographs(*size, 2)
    codes, z_q = infer(c, protocol, "vq.encode", {"x": x}, ["codes", "z_q"])
    want_codes, want_z_q = rt.encode(x)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_allclose(z_q, want_z_q, **TOLERANCE)
    assert codes.shape == (2, size[0] // 2, size[1] // 2)
    (from_codes,) = infer(c, protocol, "vq.decode_codes", {"codes": codes}, ["x"])
    np.testing.assert_allclose(from_codes, rt.decode(codes), **TOLERANCE)
    (from_z_q,) = infer(c, protocol, "vq.decode", {"z_q": z_q}, ["x"])
    np.testing.assert_allclose(from_z_q, rt.decode(z_q), **TOLERANCE)
    (rebuilt,) = infer(c, protocol, "vq.reconstruct", {"x": x}, ["x"])
    np.testing.assert_allclose(rebuilt, rt.reconstruct(x), **TOLERANCE)


def test_codes_of_a_grid_the_bundle_does_not_take_are_a_400(vqgan):
    server, _ = vqgan
    c = client(server)
    with pytest.raises(InferenceServerException, match=r"vq.decode_codes: input 'codes': expected shape N×h×w with "
                                                       r"h = H/2, w = W/2 and H and W multiples of 2 from 16×16 to "
                                                       r"32×32, got 1×7×8") as refused:
        infer(c, "http", "vq.decode_codes", {"codes": np.zeros((1, 7, 8), np.int64)}, ["x"])
    assert refused.value.status() == "400"
