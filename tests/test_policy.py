"""Policy and world-model APIs on a tiny trained checkpoint with a stand-in image tokenizer."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import worldvla.policy as policy_mod
from worldvla.data.datasets import InMemoryCache
from worldvla.errors import DataError
from worldvla.policy import PolicyConfig, WorldVLAPolicy
from worldvla.train.checkpoint import load_for_inference
from worldvla.train.config import preset_inference, train_preset
from worldvla.train.loop import train
from worldvla.world_model import WorldModel


class PoolTokenizer:
    """Stand-in image tokenizer: 16x16 RGB -> 4x4 grid of 64 codes (mean brightness per cell)."""

    image_size = 16
    grid = (4, 4)
    codebook_size = 64

    def encode(self, images):
        x = torch.as_tensor(np.asarray(images)).float().mean(-1)  # (N, 16, 16)
        cells = x.view(-1, 4, 4, 4, 4).mean((2, 4))  # (N, 4, 4)
        return (cells / 256 * 64).long().clamp(0, 63)

    def decode(self, codes):
        v = (codes.float() * 4 + 2).clamp(0, 255).byte()  # (N, 4, 4)
        img = v.repeat_interleave(4, 1).repeat_interleave(4, 2)
        return img[..., None].expand(*img.shape, 3).numpy()

    def fingerprint(self):
        return "pool"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(replace(train_preset("debug"), keep_last=1), InMemoryCache.synthetic(), run, progress=False)
    return run


def _load(checkpoint):
    model, bundle = load_for_inference(checkpoint)
    bundle.image_tokenizer = PoolTokenizer()
    return model, bundle


def _obs(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "instruction": "task 1"}


def test_predict_action_chunk_shape_and_range(checkpoint):
    model, bundle = _load(checkpoint)
    pol = WorldVLAPolicy(model, bundle)
    chunk = pol.predict_action_chunk(_obs())
    assert chunk.shape == (bundle.layout.chunk_len, bundle.layout.action_dim)
    lo, hi = np.array(bundle.action_stats.low), np.array(bundle.action_stats.high)
    assert np.all(chunk >= lo - 1e-6) and np.all(chunk <= hi + 1e-6)


def test_select_action_executes_the_chunk_open_loop(checkpoint, monkeypatch):
    model, bundle = _load(checkpoint)
    calls = []
    real = policy_mod.generate_actions
    monkeypatch.setattr(policy_mod, "generate_actions", lambda *a, **k: calls.append(1) or real(*a, **k))
    pol = WorldVLAPolicy(model, bundle)
    k = bundle.layout.chunk_len
    first = pol.predict_action_chunk(_obs())
    pol.reset()
    calls.clear()
    acts = [pol.select_action(_obs(0 if t == 0 else t)) for t in range(2 * k)]
    assert len(calls) == 2  # one model call per chunk
    assert np.allclose(acts[0], first[0]) and np.allclose(acts[k - 1], first[k - 1])
    calls.clear()
    pol = WorldVLAPolicy(model, bundle, PolicyConfig(replan_every=1))
    for t in range(3):
        pol.select_action(_obs(t))
    assert len(calls) == 3


def test_batched_envs_equal_single_env(checkpoint):
    model, bundle = _load(checkpoint)
    obs = [_obs(i) for i in range(3)]
    batched = WorldVLAPolicy(model, bundle, num_envs=3).predict_action_chunk(obs)
    for i, o in enumerate(obs):
        assert np.allclose(WorldVLAPolicy(model, bundle).predict_action_chunk(o), batched[i], atol=1e-6)


def test_env_observations_are_accepted_as_they_come(checkpoint):
    """What an Env returns (images by camera + instruction) works as the dict form does."""
    from worldvla.envs.base import Observation

    model, bundle = _load(checkpoint)
    cam = bundle.layout.camera
    dicts = [_obs(i) for i in range(2)]
    env_obs = [Observation(images={cam: d["image"]}, instruction=d["instruction"]) for d in dicts]
    want = WorldVLAPolicy(model, bundle, num_envs=2).predict_action_chunk(dicts)
    got = WorldVLAPolicy(model, bundle, num_envs=2).predict_action_chunk(env_obs)
    assert np.allclose(got, want, atol=1e-6)
    pol = WorldVLAPolicy(model, bundle)
    assert np.allclose(pol.select_action(env_obs[0]), want[0][0], atol=1e-6)


def test_history_buffer_and_reset(checkpoint):
    model, bundle = _load(checkpoint)
    pol = WorldVLAPolicy(model, bundle)
    pol.predict_action_chunk(_obs(0))
    assert len(pol._history[0]) == bundle.layout.history  # padded with the first frame
    pol.predict_action_chunk(_obs(1))
    assert not np.array_equal(pol._history[0][0], pol._history[0][-1])
    pol.reset()
    assert len(pol._history[0]) == 0


def test_bad_observation_is_a_clear_error(checkpoint):
    model, bundle = _load(checkpoint)
    pol = WorldVLAPolicy(model, bundle)
    with pytest.raises(DataError, match="uint8"):
        pol.predict_action_chunk({"image": np.zeros((8, 8, 3), np.uint8), "instruction": "x"})
    with pytest.raises(DataError, match="image"):
        pol.predict_action_chunk({"instruction": "x"})


def test_world_model_next_frame_and_rollout(checkpoint):
    model, bundle = _load(checkpoint)
    wm = WorldModel(model, bundle)
    frames = np.stack([_obs(i)["image"] for i in range(2)])
    nxt = wm.predict_next_frame(frames, np.zeros((2, bundle.layout.action_dim), np.float32))
    assert nxt.shape == frames.shape and nxt.dtype == np.uint8
    out, codes = wm.rollout(frames, np.zeros((2, 3, bundle.layout.action_dim), np.float32), return_codes=True)
    assert out.shape == (2, 3, 16, 16, 3) and codes.shape == (2, 3, 4, 4)
    # Feeding the first predicted frame back gives the second one (the rollout is autoregressive).
    again = wm.next_codes(codes[:, 0], np.zeros((2, bundle.layout.action_dim), np.float32))
    assert np.array_equal(again, codes[:, 1])
    with pytest.raises(DataError, match="actions"):
        wm.predict_next_frame(frames, np.full((2, bundle.layout.action_dim), np.nan, np.float32))


def test_world_horizon_rollouts_go_from_anchor_to_anchor(tmp_path):
    """world_horizon=3: frames t+1..t+3 are imagined from the anchor frame t and the actions
    since it (one batched call, spans of different lengths side by side), frame t+3 is the
    next anchor; the layout records the horizon."""
    run = tmp_path / "run"
    cfg = replace(train_preset("debug"), keep_last=1, world_horizon=3)
    train(cfg, InMemoryCache.synthetic(), run, progress=False)
    model, bundle = _load(run)
    assert bundle.layout.world_horizon == 3
    wm = WorldModel(model, bundle)
    d = bundle.layout.action_dim
    frames = np.stack([_obs(i)["image"] for i in range(2)])
    acts = np.random.default_rng(0).uniform(-1, 1, (2, 5, d)).astype(np.float32)
    _, codes = wm.rollout(frames, acts, return_codes=True)
    assert codes.shape == (2, 5, 4, 4)
    first = wm.encode(frames)
    for k in (1, 2, 3):  # from the first frame, alone in its batch
        assert np.array_equal(wm.next_codes(first, acts[:, :k]), codes[:, k - 1])
    for k in (1, 2):  # from the anchor at frame 3
        assert np.array_equal(wm.next_codes(codes[:, 2], acts[:, 3 : 3 + k]), codes[:, 2 + k])
    with pytest.raises(DataError, match="k <= 3"):
        wm.next_codes(first, np.zeros((2, 4, d), np.float32))


def test_prompt_templates_travel_with_the_checkpoint(tmp_path, monkeypatch):
    cfg = replace(train_preset("debug"), keep_last=1, action_prompt="{instruction}", world_prompt="")
    train(cfg, InMemoryCache.synthetic(), tmp_path, progress=False)
    model, bundle = _load(tmp_path)
    assert (bundle.layout.prompts.action_prompt, bundle.layout.prompts.world_prompt) == ("{instruction}", "")
    seen = []
    real = policy_mod.action_prompt_ids
    monkeypatch.setattr(policy_mod, "action_prompt_ids", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    WorldVLAPolicy(model, bundle).predict_action_chunk(_obs())
    assert seen and seen[0].action_prompt == "{instruction}"


def test_action_readout_comes_from_the_checkpoint_unless_overridden(checkpoint, tmp_path):
    from worldvla.errors import ConfigError

    model, bundle = _load(checkpoint)
    assert bundle.inference.action_readout == "argmax"  # the default: greedy, as the reference
    greedy = WorldVLAPolicy(model, bundle)
    assert greedy.action_readout == "argmax"
    mean = WorldVLAPolicy(model, bundle, PolicyConfig(action_readout="mean"))
    assert mean.action_readout == "mean"
    assert not np.array_equal(greedy.predict_action_chunk(_obs()), mean.predict_action_chunk(_obs()))
    # A run whose checkpoints carry the mean readout (mw-quick's) hands it to the policy by default.
    run = tmp_path / "mean"
    cfg = replace(train_preset("debug"), keep_last=1)
    train(cfg, InMemoryCache.synthetic(), run, progress=False, inference=preset_inference("mw-quick"))
    model2, bundle2 = load_for_inference(run)
    bundle2.image_tokenizer = PoolTokenizer()
    assert WorldVLAPolicy(model2, bundle2).action_readout == "mean"
    assert WorldVLAPolicy(model2, bundle2, PolicyConfig(action_readout="argmax")).action_readout == "argmax"
    with pytest.raises(ConfigError, match="deterministic"):
        WorldVLAPolicy(model2, bundle2, PolicyConfig(temperature=0.5))
    with pytest.raises(ConfigError, match="readout"):
        WorldVLAPolicy(model, bundle, PolicyConfig(action_readout="mode"))
    assert preset_inference("mw-quick").action_readout == "mean"


class _ActionBlind(torch.nn.Module):
    """The checkpoint's model with every action bin replaced by bin 0 before it runs."""

    def __init__(self, model, vocab):
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, ids, attn_mask=None):
        bins = torch.as_tensor(self.vocab.is_action_bin(ids))
        return self.model(torch.where(bins, self.vocab.action_ids(0), ids), attn_mask=attn_mask)


def test_action_sensitivity_is_zero_for_a_model_blind_to_its_actions(checkpoint):
    from worldvla.eval.action_sensitivity import action_sensitivity, format_sensitivity, transitions

    model, bundle = _load(checkpoint)
    wm = WorldModel(model, bundle)
    rng = np.random.default_rng(0)
    d = bundle.layout.action_dim
    episodes = [
        (rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), rng.uniform(-1, 1, (5, d)).astype(np.float32))
        for _ in range(3)
    ]
    doc = action_sensitivity(wm, episodes, per_span=8)
    row = doc["per_span"]["1"]
    assert row["transitions"] == 8 and np.isfinite(row["ce_true"])
    assert row["gain_shuffled_ci95"][0] <= row["gain_shuffled"] <= row["gain_shuffled_ci95"][1]
    assert "span 1" in format_sensitivity(doc)
    wm.model = _ActionBlind(model, bundle.vocab)
    blind = action_sensitivity(wm, episodes, per_span=8)["per_span"]["1"]
    assert blind["gain_shuffled"] == pytest.approx(0.0, abs=1e-6)
    assert blind["gain_zero"] == pytest.approx(0.0, abs=1e-6)
    assert blind["ce_true"] == pytest.approx(row["ce_true"], abs=1.0)
    # Spans stay inside their episodes: (t, k) with t + k <= n transitions.
    picks = transitions([5, 2], horizon=3, per_span=100, seed=0)
    assert all(t + k <= (5, 2)[e] for e, t, k in picks)
    assert sum(k == 3 for _, _, k in picks) == 3  # only episode 0 has room for 3 steps


def test_ordinal_action_embeddings_are_a_training_option(tmp_path):
    """action_embedding_init="ordinal" starts the action bins' embeddings in order; the
    other rows and the run's other weights start as with the default."""
    from worldvla.train.distributed import DistInfo
    from worldvla.train.loop import Trainer

    cache, info = InMemoryCache.synthetic(), DistInfo(device="cpu")
    plain = Trainer(replace(train_preset("debug"), steps=1), cache, tmp_path / "a", info)
    cfg = replace(train_preset("debug"), steps=1, action_embedding_init="ordinal")
    ordinal = Trainer(cfg, cache, tmp_path / "b", info)
    v = plain.vocab
    a, b = plain.model.tok_emb.weight.detach(), ordinal.model.tok_emb.weight.detach()
    lo, hi = v.action_start, v.action_start + v.action_bins
    assert torch.equal(a[:lo], b[:lo]) and not torch.equal(a[lo:hi], b[lo:hi])
    assert torch.equal(plain.model.output.weight, ordinal.model.output.weight)
    step = (b[lo + 1 : hi] - b[lo : hi - 1]).norm(dim=1).mean()
    assert step < 0.5 * (a[lo + 1 : hi] - a[lo : hi - 1]).norm(dim=1).mean()
    with pytest.raises(Exception, match="action_embedding_init"):
        replace(train_preset("debug"), action_embedding_init="sorted")
