"""Websocket policy server: msgpack/numpy round trip, error replies, keeps serving (loopback only)."""

import subprocess
import sys

import msgpack
import numpy as np
import pytest

from worldvla.serving.client import PolicyClient
from worldvla.serving.protocol import PROTOCOL_VERSION, ProtocolError, ServerError, packb, unpackb
from worldvla.serving.server import PolicyServer, StandInPolicy


def _obs(size=32):
    return {"image": np.full((size, size, 3), 7, np.uint8), "instruction": "pick up the bowl"}


@pytest.fixture
def served():
    """A stand-in policy on an ephemeral loopback port; stopped after the test."""
    server = PolicyServer(
        StandInPolicy(chunk_len=4, action_dim=7, image_size=32),
        host="127.0.0.1",
        port=0,
        metadata={"checkpoint": "stand-in"},
    )
    thread = server.start_in_thread()
    client = PolicyClient("127.0.0.1", server.port, connect_timeout=10, request_timeout=10)
    yield server, client
    client.close()
    server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64, np.bool_])
def test_numpy_round_trip_keeps_dtype_shape_and_values(dtype):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    msg = {"obs": {"image": arr, "nested": [arr[0], {"x": arr[:, 1:, ::2]}]}, "n": np.int32(3), "s": "é"}
    back = unpackb(packb(msg))
    assert back["obs"]["image"].dtype == arr.dtype and back["obs"]["image"].shape == arr.shape
    np.testing.assert_array_equal(back["obs"]["image"], arr)
    np.testing.assert_array_equal(back["obs"]["nested"][1]["x"], arr[:, 1:, ::2])  # non-contiguous view
    assert back["n"] == 3 and back["s"] == "é"
    back["obs"]["image"][...] = 0  # decoded arrays are writable


def test_object_arrays_and_truncated_arrays_are_rejected():
    with pytest.raises(ProtocolError, match="dtype"):
        packb({"a": np.array([object()], dtype=object)})
    bad = msgpack.packb({"__ndarray__": True, "dtype": "<f4", "shape": [4], "data": b"\0" * 12})
    with pytest.raises(ProtocolError, match="needs 16 bytes"):
        unpackb(bad)
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpackb(b"\xc1\xc1\xc1")


def test_metadata_on_connect(served):
    server, client = served
    meta = client.metadata
    assert meta["protocol"] == PROTOCOL_VERSION
    assert (meta["chunk_len"], meta["action_dim"], meta["image_size"]) == (4, 7, 32)
    assert meta["checkpoint"] == "stand-in"


def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(served):
    _, client = served
    bad_frames = [
        b"\xc1 not msgpack",  # invalid bytes
        "a text frame",  # text instead of binary
        packb([1, 2, 3]),  # not a map
        packb({"op": "fly"}),  # unknown op
        packb({"op": "act"}),  # no observation
        packb({"op": "act", "obs": {"image": np.zeros((32, 32), np.uint8), "instruction": "x"}}),  # 2-D image
        packb({"op": "act", "obs": {"image": np.zeros((32, 32, 3), np.float32), "instruction": "x"}}),
        packb({"op": "infer", "obs": {"image": np.zeros((16, 16, 3), np.uint8), "instruction": "x"}}),  # size
    ]
    for frame in bad_frames:
        with pytest.raises(ServerError):
            client.send_raw(frame)
    client.reset()
    chunk = client.predict_action_chunk(_obs())
    assert chunk.shape == (4, 7) and chunk.dtype == np.float32
    np.testing.assert_array_equal(chunk[:, -1], -1.0)


def test_act_pops_the_queued_chunk_and_reset_restarts_it(served):
    _, client = served
    client.reset()
    chunk = client.predict_action_chunk(_obs())
    client.reset()
    actions = np.stack([client.select_action(_obs()) for _ in range(4)])  # (K, D) popped one by one
    np.testing.assert_array_equal(actions, chunk)  # same seed after reset -> same chunk
    assert not np.array_equal(client.select_action(_obs()), chunk[0])  # queue empty -> next chunk


class _Exploding(StandInPolicy):
    def predict_action_chunk(self, obs):
        if obs["instruction"] == "boom":
            raise RuntimeError("kaboom")
        return super().predict_action_chunk(obs)


def test_an_exception_inside_the_policy_is_reported_and_serving_continues():
    server = PolicyServer(_Exploding(image_size=32), port=0)
    thread = server.start_in_thread()
    try:
        with PolicyClient("127.0.0.1", server.port, connect_timeout=10, request_timeout=10) as client:
            with pytest.raises(ServerError, match="kaboom"):
                client.predict_action_chunk({**_obs(), "instruction": "boom"})
            assert client.predict_action_chunk(_obs()).shape == (5, 7)
    finally:
        server.stop()
        thread.join(timeout=10)


def test_server_refuses_objects_without_the_policy_interface():
    with pytest.raises(TypeError, match="select_action"):
        PolicyServer(object(), port=0)


def test_the_libero_client_imports_neither_torch_nor_the_rest_of_worldvla():
    """The LIBERO client runs in LIBERO's own environment, which has no torch (docs/libero.md)."""
    code = (
        "import sys, worldvla.eval.libero_client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'h5py', 'PIL', 'einops')"
        " or (m.startswith('worldvla.') and m not in ALLOWED))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    allowed = {
        "worldvla.vocab",
        "worldvla.errors",
        "worldvla.serving",
        "worldvla.serving.protocol",
        "worldvla.serving.client",
        "worldvla.eval",
        "worldvla.eval.libero_loop",
        "worldvla.envs",
        "worldvla.envs.base",
        "worldvla.envs.libero_benchmark",
        "worldvla.eval.libero_client",
    }
    out = subprocess.run(
        [sys.executable, "-c", f"ALLOWED = {sorted(allowed)!r}\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
