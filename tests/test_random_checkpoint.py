"""The tiny random checkpoint loads through the real inference path and fails clearly on bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worldvla.errors import ConfigError, DataError
from worldvla.policy import WorldVLAPolicy
from worldvla.serving.random_checkpoint import write_random_checkpoint
from worldvla.serving.server import policy_metadata
from worldvla.tokenizers.action import ActionStats
from worldvla.world_model import WorldModel

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("random"), action_dim=7, image_size=256)


def _image(size=256, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_random_checkpoint_predicts_a_chunk_inside_the_saved_action_bounds(checkpoint):
    policy = WorldVLAPolicy.from_pretrained(checkpoint.parent.parent)  # the run directory resolves too
    assert policy.bundle.path == checkpoint
    chunk = policy.predict_action_chunk({"image": _image(), "instruction": INSTRUCTION})
    assert chunk.shape == (5, 7) and np.isfinite(chunk).all()
    stats = ActionStats.load(checkpoint / "action_stats.json")
    assert np.all(chunk >= np.array(stats.low)) and np.all(chunk <= np.array(stats.high))
    # What the server announces to a client (docs/libero.md).
    meta = policy_metadata(policy)
    assert (meta["chunk_len"], meta["action_dim"], meta["image_size"], meta["history"]) == (5, 7, 256, 2)
    assert meta["camera"] == "agentview"


def test_same_seed_same_weights_and_the_global_rng_is_left_alone(checkpoint, tmp_path):
    before = torch.get_rng_state()
    again = write_random_checkpoint(tmp_path, action_dim=7, image_size=256)
    assert torch.equal(torch.get_rng_state(), before)
    a, b = load_file(str(checkpoint / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fingerprints = [
        json.loads((c / "image_tokenizer.json").read_text())["fingerprint"] for c in (checkpoint, again)
    ]
    assert fingerprints[0] == fingerprints[1]  # the tokenizer's path differs, its weights do not


def test_wrong_image_size_or_action_dim_is_a_clear_error(checkpoint):
    policy = WorldVLAPolicy.from_pretrained(checkpoint)
    with pytest.raises(DataError, match=r"uint8 \(256, 256, 3\)"):
        policy.predict_action_chunk({"image": _image(128), "instruction": INSTRUCTION})
    with pytest.raises(DataError, match=r"uint8 \(256, 256, 3\)"):
        policy.predict_action_chunk({"image": _image().astype(np.float32), "instruction": INSTRUCTION})
    # The same checkpoint as a world model takes 7-D actions only.
    world = WorldModel.from_pretrained(checkpoint)
    with pytest.raises(DataError, match=r"actions must be \(1, 7\)"):
        world.next_codes(np.zeros((1, 8, 8), np.int64), np.zeros((1, 6), np.float32))
    with pytest.raises(ConfigError, match="image_size"):
        write_random_checkpoint(checkpoint.parent / "bad", image_size=100)
    with pytest.raises(ConfigError, match="action_dim"):
        write_random_checkpoint(checkpoint.parent / "bad", action_dim=0)


def test_serve_builds_and_serves_a_random_checkpoint_and_serves_it_again_by_path(tmp_path, monkeypatch):
    from worldvla.commands import serve
    from worldvla.serving.server import PolicyServer

    served = []
    monkeypatch.setattr(PolicyServer, "serve_forever", lambda self: served.append(self))
    assert serve.main(["--random-init", str(tmp_path / "run"), "--action-dim", "4", "--port", "0"]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000000"
    assert serve.main([str(ckpt), "--port", "0"]) == 0
    for server in served:
        assert isinstance(server.policy, WorldVLAPolicy) and server.metadata["checkpoint"] == str(
            ckpt.resolve()
        )
        assert (server.metadata["action_dim"], server.metadata["chunk_len"]) == (4, 5)
    with pytest.raises(ConfigError, match="one of"):
        serve.main([str(ckpt), "--random-init", str(tmp_path / "other")])


def test_a_moved_run_directory_still_finds_its_image_tokenizer(tmp_path):
    """The checkpoint records the tokenizer's path and where it lies relative to itself."""
    import shutil

    from worldvla.train.checkpoint import load_for_inference

    ckpt = write_random_checkpoint(tmp_path / "a", action_dim=7, image_size=256)
    moved = tmp_path / "b"
    shutil.move(str(tmp_path / "a"), str(moved))  # the recorded absolute path is gone now
    _, bundle = load_for_inference(moved)
    assert bundle.image_tokenizer.fingerprint() == bundle.image_tokenizer_ref.fingerprint
    # Without the tokenizer anywhere, the error names the places tried.
    tok_dir = moved / ckpt.relative_to(tmp_path / "a") / bundle.image_tokenizer_ref.relative
    shutil.rmtree(tok_dir.resolve())
    _, bundle = load_for_inference(moved)
    with pytest.raises(ConfigError, match="does not exist.*does not exist"):
        bundle.image_tokenizer  # noqa: B018
