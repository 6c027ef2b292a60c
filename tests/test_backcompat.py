"""A run directory written by release 0.1.0 still loads and computes the same numbers.

The fixture (``tests/fixtures/v0_1``) was written by ``tests/fixtures/make_fixtures.py`` with
the project's own training and saving code; ``expected.npz`` holds what its checkpoint
computed then. A failure here means an existing checkpoint no longer loads, or loads but
means something else (prompt layout, mask, decoding, readout or weight names changed).
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from worldvla.policy import WorldVLAPolicy
from worldvla.train.checkpoint import (
    latest_checkpoint,
    load_bundle,
    load_trainer_state,
    resolve_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "v0_1" / "run"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import INSTRUCTION, evaluate  # noqa: E402


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "v0_1" / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def test_the_run_directory_resolves_to_its_checkpoint():
    ckpt = resolve_checkpoint(RUN)
    assert ckpt == latest_checkpoint(RUN) == RUN / "checkpoints" / "step_00000040"
    bundle = load_bundle(RUN)
    assert bundle.step == 40 and bundle.layout.chunk_len == 3 and bundle.layout.action_dim == 4
    assert bundle.image_tokenizer.fingerprint() == bundle.image_tokenizer_ref.fingerprint
    state = load_trainer_state(ckpt)  # what resuming reads
    assert state["step"] == 40


def test_the_checkpoint_evaluates_to_the_stored_numbers(expected, tmp_path):
    # A copy at another place: the image tokenizer is found relative to the checkpoint.
    run = shutil.copytree(RUN, tmp_path / "moved")
    got = evaluate(run, {"image": expected["image"], "action": expected["action"]})
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["chunk"], expected["chunk"], atol=1e-6)
    np.testing.assert_allclose(got["chunk_mean"], expected["chunk_mean"], atol=1e-5)
    np.testing.assert_array_equal(got["next_codes"], expected["next_codes"])


def test_from_pretrained_on_the_run_directory(expected):
    policy = WorldVLAPolicy.from_pretrained(RUN)
    chunk = policy.predict_action_chunk({"image": expected["image"], "instruction": INSTRUCTION})
    np.testing.assert_allclose(chunk, expected["chunk"], atol=1e-6)
