"""Token cache: build, verification against tokenizer and episode file, resume after a kill."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from worldvla.data.datasets import split_episodes
from worldvla.data.episodes import Episode, write_episodes
from worldvla.data.token_cache import META_FILE, PROGRESS_FILE, TokenCache, build_token_cache
from worldvla.errors import DataError
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.vq import VQTokenizer, vq_preset


def _episodes(n=5, length=7, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Episode(
            key=f"demo_{i}",
            actions=rng.normal(size=(length + i, 4)).astype(np.float32),
            frames={"corner": rng.integers(0, 256, (length + i, size, size, 3), dtype=np.uint8)},
            instruction=f"push the block {i % 2}",
            task=f"push-{i % 2}",
            attrs={"variation": i % 3},
        )
        for i in range(n)
    ]


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "eps.hdf5"
    write_episodes(path, _episodes(), {"env": "test"})
    return path


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokenizer(seed):
    torch.manual_seed(seed)
    t = VQTokenizer(vq_preset("tiny-vq"))
    t.init_codebook(np.random.default_rng(seed).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    t.model.eval()
    return t


@pytest.fixture(scope="module")
def tok():
    return _tokenizer(0)


class CountingTokenizer:
    """Wraps a tokenizer; raises KeyboardInterrupt (a simulated kill) after ``fail_after`` encode calls."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls, self.frames = inner, fail_after, 0, 0
        self.image_size, self.grid, self.codebook_size = inner.image_size, inner.grid, inner.codebook_size

    def fingerprint(self):
        return self.inner.fingerprint()

    def encode(self, images):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.frames += len(images)
        return self.inner.encode(images)


def test_build_contents(store, tmp_path, tok):
    cache = build_token_cache(store, tok, tmp_path / "cache", tokenizer_path="tok", progress=False)
    eps = _episodes()
    n = sum(len(e) for e in eps)
    assert cache.codes.shape == (n, 4, 4) and cache.codes.dtype == np.uint16
    assert cache.actions.shape == (n, 4) and cache.actions.dtype == np.float32
    assert cache.grid == (4, 4) and cache.action_dim == 4 and cache.codebook_size == 32
    assert cache.meta["camera"] == "corner" and cache.meta["image_size"] == 16
    assert cache.meta["image_tokenizer"]["fingerprint"] == tok.fingerprint()
    for rec, ep in zip(cache.episodes, eps):
        sl = slice(rec.start, rec.start + rec.length)
        np.testing.assert_array_equal(cache.codes[sl], tok.encode(ep.frames["corner"]).numpy())
        np.testing.assert_array_equal(cache.actions[sl], ep.actions)
        assert (rec.key, rec.instruction, rec.task, rec.variation) == (
            ep.key,
            ep.instruction,
            ep.task,
            ep.attrs["variation"],
        )
    stats = ActionStats.load(cache.stats_path)
    np.testing.assert_allclose(stats.low, np.concatenate([e.actions for e in eps]).min(0), rtol=1e-6)
    # The datasets' view: the cache opens with verification and splits into episodes.
    again = TokenCache.open(tmp_path / "cache", tokenizer_fingerprint=tok.fingerprint(), episodes_path=store)
    assert len(again) == 5 and split_episodes(len(again), 0.2, 0)[1].size == 1


def test_refuses_other_tokenizer(store, tmp_path, tok):
    build_token_cache(store, tok, tmp_path / "cache", progress=False)
    other = _tokenizer(1)  # different weights
    assert other.fingerprint() != tok.fingerprint()
    with pytest.raises(DataError, match="image tokenizer"):
        TokenCache.open(tmp_path / "cache", tokenizer_fingerprint=other.fingerprint())
    with pytest.raises(DataError, match="does not match"):
        build_token_cache(store, other, tmp_path / "cache", progress=False)
    rebuilt = build_token_cache(store, other, tmp_path / "cache", overwrite=True, progress=False)
    assert rebuilt.meta["image_tokenizer"]["fingerprint"] == other.fingerprint()


def test_refuses_changed_episode_file(store, tmp_path, tok):
    build_token_cache(store, tok, tmp_path / "cache", progress=False)
    # A copy with identical content (new mtime, so it is rehashed) is accepted.
    shutil.copyfile(store, tmp_path / "copy.hdf5")
    TokenCache.open(tmp_path / "cache", episodes_path=tmp_path / "copy.hdf5")
    # Same path, same number of episodes, different content.
    write_episodes(store, _episodes(seed=1), {"env": "test"})
    with pytest.raises(DataError, match="different episode file"):
        TokenCache.open(tmp_path / "cache", episodes_path=store)
    with pytest.raises(DataError, match="does not match"):
        build_token_cache(store, tok, tmp_path / "cache", progress=False)


def test_resume_after_interruption(store, tmp_path, tok):
    total = sum(len(e) for e in _episodes())
    full = build_token_cache(store, tok, tmp_path / "ref", progress=False)
    killed = CountingTokenizer(tok, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(store, killed, tmp_path / "cache", batch_size=4, chunk_frames=1, progress=False)
    meta = json.loads((tmp_path / "cache" / META_FILE).read_text())
    assert meta["complete"] is False
    done = json.loads((tmp_path / "cache" / PROGRESS_FILE).read_text())["episodes_done"]
    assert 0 < done < 5
    with pytest.raises(DataError, match="incomplete"):
        TokenCache.open(tmp_path / "cache")
    resumed = CountingTokenizer(tok)
    cache = build_token_cache(
        store, resumed, tmp_path / "cache", batch_size=4, chunk_frames=1, progress=False
    )
    assert 0 < resumed.frames < total  # only the episodes after the last recorded chunk
    np.testing.assert_array_equal(cache.codes, full.codes)
    assert not (tmp_path / "cache" / PROGRESS_FILE).exists()
    again = CountingTokenizer(tok)
    build_token_cache(store, again, tmp_path / "cache", progress=False)  # complete: reused, no encoding
    assert again.calls == 0


def test_wrong_image_size_is_refused(tmp_path, tok):
    path = tmp_path / "big.hdf5"
    write_episodes(path, _episodes(n=1, size=24), {})
    with pytest.raises(DataError, match="expects"):
        build_token_cache(path, tok, tmp_path / "cache", progress=False)
