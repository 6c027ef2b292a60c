"""The proprioceptive state as an optional policy input (training config ``use_state``):
token cache, samples, a tiny 2-step train, the policy, the evaluation agent, the server."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import worldvla.policy as policy_mod
from worldvla.data.datasets import InMemoryCache
from worldvla.data.episodes import Episode, write_episodes
from worldvla.data.token_cache import META_FILE, STATE_STATS_FILE, STATES_FILE, TokenCache, build_token_cache
from worldvla.envs.base import Observation
from worldvla.errors import ConfigError, DataError
from worldvla.eval.policy_eval import PolicyAgent
from worldvla.policy import WorldVLAPolicy
from worldvla.sequence import state_bins_from_ids
from worldvla.serving.protocol import MAX_STATE_DIM, ProtocolError, packb, parse_request
from worldvla.serving.server import PolicyServer, policy_metadata
from worldvla.tokenizers.state import StateTokenizer
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TrainConfig, apply_overrides, train_preset
from worldvla.train.data import build_data
from worldvla.train.loop import train

S = 3  # state dimensions of the synthetic data


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class PoolTokenizer:
    """Stand-in image tokenizer: 16x16 RGB -> 4x4 grid of 64 codes (mean brightness per cell)."""

    image_size = 16
    grid = (4, 4)
    codebook_size = 64

    def encode(self, images):
        x = torch.as_tensor(np.asarray(images)).float().mean(-1)  # (N, 16, 16)
        cells = x.view(-1, 4, 4, 4, 4).mean((2, 4))  # (N, 4, 4)
        return (cells / 256 * 64).long().clamp(0, 63)

    def fingerprint(self):
        return "pool"


def _cfg(**kw) -> TrainConfig:
    return replace(train_preset("debug"), use_state=True, state_bins=32, **kw)


# ---------------------------------------------------------------------------- config
def test_use_state_defaults_off_and_old_configs_load_with_it_off():
    assert TrainConfig().use_state is False
    old = TrainConfig().to_dict()
    del old["use_state"], old["state_bins"]  # a config saved before the option
    assert TrainConfig.from_dict(old).use_state is False
    assert apply_overrides(TrainConfig(), ["use_state=true"]).use_state is True
    with pytest.raises(ConfigError, match="use_state needs action-model samples"):
        TrainConfig(use_state=True, use_action_data=False)


# ---------------------------------------------------------------------------- samples
def test_action_samples_carry_the_state_of_step_t_and_world_samples_none():
    cache = InMemoryCache.synthetic(state_dim=S)
    data = build_data(_cfg(), cache, max_seq_len=512)
    assert data.layout.state_dim == S and data.vocab.has_state and data.vocab.state_bins == 32
    assert data.state_stats is not None and data.state_stats.dim == S
    tok = StateTokenizer(data.state_stats, n_bins=32)
    acts = data.train.sets[0]
    for i in (0, len(acts) // 2, len(acts) - 1):
        ids = acts[i].ids
        start = int(np.flatnonzero(ids == data.vocab.bos_state)[0])
        block = ids[start : start + S + 2]
        g = int(acts.frame[i])
        assert np.array_equal(state_bins_from_ids(data.vocab, block), tok.encode(cache.states[g]))
        assert start > int(np.flatnonzero(ids == data.vocab.eoi).max())  # after the images
        assert ids[start + S + 2] == data.vocab.sep
    world = data.train.sets[1]
    assert not np.isin(world[0].ids, [data.vocab.bos_state, data.vocab.eos_state]).any()
    assert not data.vocab.is_state_bin(world[0].ids).any()
    # The longest sample the layout announces includes the state block.
    longest = max(len(acts[i]) for i in range(len(acts)))
    assert data.max_len >= longest


def test_use_state_without_states_is_one_clear_error():
    with pytest.raises(DataError, match=r"use_state=true needs proprioceptive states.*use_state=false"):
        build_data(_cfg(), InMemoryCache.synthetic(), max_seq_len=512)


def test_without_use_state_nothing_changes():
    """The same cache, with states, trains exactly the old layout and vocabulary when the switch is off."""
    plain = build_data(train_preset("debug"), InMemoryCache.synthetic(), max_seq_len=512)
    with_states = build_data(train_preset("debug"), InMemoryCache.synthetic(state_dim=S), max_seq_len=512)
    assert with_states.layout == plain.layout and with_states.layout.state_dim == 0
    assert with_states.vocab == plain.vocab and not plain.vocab.has_state
    assert with_states.state_stats is None
    assert np.array_equal(with_states.train.sets[0][3].ids, plain.train.sets[0][3].ids)


# ---------------------------------------------------------------------------- token cache
def test_token_cache_carries_states_and_old_caches_still_open(tmp_path):
    from worldvla.tokenizers.vq import VQTokenizer, vq_preset

    rng = np.random.default_rng(0)
    eps = [
        Episode(
            key=f"demo_{i}",
            actions=rng.normal(size=(6, 4)).astype(np.float32),
            frames={"corner": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)},
            instruction="push",
            task="push",
            state=rng.uniform(-1, 1, (6, S)).astype(np.float32),
        )
        for i in range(3)
    ]
    write_episodes(tmp_path / "eps.hdf5", eps, {"env": "test"})
    torch.manual_seed(0)
    tok = VQTokenizer(vq_preset("tiny-vq"))
    tok.init_codebook(rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    tok.model.eval()
    cache = build_token_cache(tmp_path / "eps.hdf5", tok, tmp_path / "cache", progress=False)
    want = np.concatenate([e.state for e in eps])
    assert cache.state_dim == S and np.array_equal(cache.states, want)
    assert cache.state_stats.low == tuple(map(float, want.min(0)))
    assert cache.meta["state_dim"] == S
    # A cache written before states were cached: no states.npy, no state_dim in meta.
    (tmp_path / "cache" / STATES_FILE).unlink()
    (tmp_path / "cache" / STATE_STATS_FILE).unlink()
    meta = json.loads((tmp_path / "cache" / META_FILE).read_text())
    del meta["state_dim"]
    (tmp_path / "cache" / META_FILE).write_text(json.dumps(meta))
    old = TokenCache.open(tmp_path / "cache")
    assert old.states is None and old.state_dim == 0 and old.state_stats is None
    with pytest.raises(DataError, match="rebuild it with 'worldvla tokenize --overwrite'"):
        build_data(_cfg(), old, max_seq_len=512)


# ---------------------------------------------------------------------------- train + policy
@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("state_run")
    cache = InMemoryCache.synthetic(state_dim=S)
    result = train(_cfg(steps=2, keep_last=1, val_every=0, ckpt_every=2), cache, run, progress=False)
    assert result.step == 2 and all(np.isfinite(result.losses))
    return run, cache


def _policy(run, num_envs=1):
    model, bundle = ckpt.load_for_inference(run)
    bundle.image_tokenizer = PoolTokenizer()
    return WorldVLAPolicy(model, bundle, num_envs=num_envs)


def _obs(seed=0, state=None):
    rng = np.random.default_rng(seed)
    o = {"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "instruction": "task 1"}
    if state is not None:
        o["state"] = state
    return o


def test_checkpoint_saves_the_state_statistics_and_the_policy_reads_them(state_run):
    run, cache = state_run
    path = ckpt.latest_checkpoint(run)
    assert (path / ckpt.STATE_STATS_FILE).is_file()
    manifest = json.loads((path / ckpt.MANIFEST_FILE).read_text())["files"]
    assert ckpt.STATE_STATS_FILE in manifest  # verified like every other file
    bundle = ckpt.load_bundle(path)
    assert bundle.layout.state_dim == S and bundle.config.use_state
    want = build_data(_cfg(), cache, 512).state_stats
    assert (bundle.state_stats.low, bundle.state_stats.high) == (want.low, want.high)
    pol = _policy(run)
    assert pol.state_dim == S
    chunk = pol.predict_action_chunk(_obs(0, cache.states[0]))
    assert chunk.shape == (pol.chunk_len, pol.action_dim) and np.isfinite(chunk).all()


def test_the_prompt_carries_the_binned_state(state_run, monkeypatch):
    run, cache = state_run
    seen = []
    real = policy_mod.generate_actions
    monkeypatch.setattr(
        policy_mod, "generate_actions", lambda m, v, p, **k: seen.append(p) or real(m, v, p, **k)
    )
    pol = _policy(run)
    state = np.array([0.5, -0.25, 0.0])
    pol.predict_action_chunk(_obs(0, state))
    ids = seen[-1][0].numpy()
    start = int(np.flatnonzero(ids == pol.vocab.bos_state)[0])
    assert np.array_equal(
        state_bins_from_ids(pol.vocab, ids[start : start + S + 2]), pol.state_tokenizer.encode(state)
    )
    assert len(ids) + pol.chunk_len * (pol.action_dim + 2) + 1 == pol.sequence_length("task 1")


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (None, "needs a 'state'"),
        (np.zeros(S + 1), r"shape \(3,\)"),
        (np.array([0.0, np.nan, 0.0]), "NaN or inf"),
        ("0 0 0", "numeric"),
        (np.array(["a", "b", "c"]), "numeric"),
    ],
)
def test_a_bad_state_is_refused_before_any_state_changes(state_run, state, match):
    run, cache = state_run
    pol = _policy(run, num_envs=2)
    good = _obs(1, cache.states[1])
    with pytest.raises(DataError, match=match):
        pol.select_action([good, _obs(2, state)])
    assert all(len(h) == 0 for h in pol._history)  # the good observation was not pushed either


def test_env_observations_pass_their_state(state_run):
    run, cache = state_run
    o = _obs(3, cache.states[3])
    env_obs = Observation(
        images={_policy(run).layout.camera: o["image"]}, instruction=o["instruction"], state=o["state"]
    )
    assert np.allclose(_policy(run).predict_action_chunk(env_obs), _policy(run).predict_action_chunk(o))
    with pytest.raises(DataError, match="needs a 'state'"):
        _policy(run).predict_action_chunk(Observation(images=env_obs.images, instruction="task 1"))


def test_the_evaluation_agent_passes_the_env_state(state_run):
    run, cache = state_run
    pol = _policy(run, num_envs=2)
    agent = PolicyAgent(pol, pol.layout.camera)
    obs = [
        Observation(images={pol.layout.camera: _obs(i)["image"]}, instruction="task 1", state=cache.states[i])
        for i in range(2)
    ]
    agent.reset([0, 1], ["t", "t"])
    acts = agent.act([0, 1], obs)
    assert acts.shape == (2, pol.action_dim)
    direct = _policy(run, num_envs=2).select_action(
        [_obs(i, cache.states[i]) for i in range(2)], env_ids=[0, 1]
    )
    assert np.allclose(acts, direct)


def test_offline_chunks_need_states_for_a_state_checkpoint(state_run):
    run, cache = state_run
    pol = _policy(run)
    codes = [cache.codes[:1].astype(np.int64)]
    with pytest.raises(DataError, match="no states for 1 histories"):
        pol.predict_chunks_from_codes(codes, ["task 1"])
    assert pol.predict_chunks_from_codes(codes, ["task 1"], [cache.states[0]]).shape[0] == 1


def test_a_checkpoint_without_state_ignores_a_state(tmp_path):
    train(
        replace(train_preset("debug"), steps=2, keep_last=1, val_every=0),
        InMemoryCache.synthetic(),
        tmp_path,
        progress=False,
    )
    pol = _policy(tmp_path)
    assert pol.state_dim == 0 and pol.state_tokenizer is None
    a = pol.predict_action_chunk(_obs(0))
    pol.reset()
    assert np.array_equal(pol.predict_action_chunk(_obs(0, np.array([1.0, 2.0]))), a)
    assert policy_metadata(pol)["state_dim"] == 0


def test_a_state_checkpoint_without_its_statistics_is_refused(state_run):
    run, _ = state_run
    model, bundle = ckpt.load_for_inference(run)
    bundle.image_tokenizer = PoolTokenizer()
    bundle.state_stats = None
    with pytest.raises(ConfigError, match="state_stats.json"):
        WorldVLAPolicy(model, bundle)


# ---------------------------------------------------------------------------- serving
def test_the_protocol_bounds_the_state():
    img = np.zeros((16, 16, 3), np.uint8)

    def req(state):
        return packb({"op": "act", "obs": {"image": img, "instruction": "x", "state": state}})

    assert parse_request(req([0.5, 1, -2.0]))["obs"]["state"].tolist() == [0.5, 1.0, -2.0]
    assert parse_request(req(np.ones(4, np.float32)))["obs"]["state"].shape == (4,)
    for bad, match in [
        ([0.0] * (MAX_STATE_DIM + 1), "over the limit"),
        (np.zeros(MAX_STATE_DIM + 1), "1-D with 1 to"),
        (np.zeros((2, 2)), "1-D"),
        (["a"], "list of numbers"),
        ([True], "list of numbers"),
        ([float("nan")], "NaN or inf"),
        ("1,2", "numeric"),
        (np.zeros(2, bool), "numeric"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            parse_request(req(bad))


def test_the_server_checks_the_state_before_inference(state_run):
    from worldvla.serving.protocol import unpackb

    run, cache = state_run
    pol = _policy(run)
    server = PolicyServer(pol, port=0)
    assert server.metadata["state_dim"] == S
    img = _obs(0)["image"]
    reply = unpackb(server.handle(packb({"op": "act", "obs": {"image": img, "instruction": "task 1"}}), pol))
    assert not reply["ok"] and "needs a 'state'" in reply["error"]
    assert len(pol._history[0]) == 0
    ok = unpackb(
        server.handle(
            packb(
                {
                    "op": "infer",
                    "obs": {"image": img, "instruction": "task 1", "state": cache.states[0].tolist()},
                }
            ),
            pol,
        )
    )
    assert ok["ok"] and ok["actions"].shape == (pol.chunk_len, pol.action_dim)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.sim
@pytest.mark.slow
def test_mt50_debug_end_to_end_with_the_state(tmp_path):
    """Collect mt50-debug (the state recorded beside the frames), tokenize with a random image
    tokenizer, train 2 steps with use_state, evaluate under LeRobot's protocol: the env's state
    reaches every prompt of the policy."""
    from worldvla.commands.eval_policy import main as eval_main
    from worldvla.data.collect import collect
    from worldvla.envs.suites import suite_preset
    from worldvla.serving.random_checkpoint import random_tokenizer_config
    from worldvla.tokenizers.vq import VQTokenizer

    demos = tmp_path / "demos.hdf5"
    collect(suite_preset("mt50-debug"), demos, workers=1, progress=False)
    torch.manual_seed(0)
    tok = VQTokenizer(random_tokenizer_config(64))
    tok.model.eval()
    tok.save(tmp_path / "tok")
    cache = build_token_cache(demos, tok, tmp_path / "cache", tokenizer_path=tmp_path / "tok", progress=False)
    assert cache.state_dim == 4
    cfg = replace(
        _cfg(steps=2, keep_last=1, val_every=0, ckpt_every=2, history=1, chunk_len=2),
        action_prompt="{instruction}",
        world_prompt="",
    )
    train(cfg, cache, tmp_path / "run", progress=False)
    assert ckpt.load_bundle(tmp_path / "run").layout.state_dim == 4
    # Offline action error reads the recorded states of the held-out episodes.
    from worldvla.eval.offline_actions import evaluate_offline_actions

    doc = evaluate_offline_actions(tmp_path / "run", demos, stride=8)
    assert doc["state_dim"] == 4 and doc["samples"] > 0 and np.isfinite(doc["l1"])

    seen = []
    real = WorldVLAPolicy.check_state
    WorldVLAPolicy.check_state = lambda self, s: seen.append(s) or real(self, s)
    try:
        argv = [str(tmp_path / "run"), "--protocol", "lerobot-mt50", "--suite", "mt50-debug"]
        argv += ["--episodes-per-task", "1", "--max-steps", "2", "--envs", "2", "--episodes", str(demos)]
        argv += ["--out", str(tmp_path / "eval"), "--gifs", "0", "--no-baselines"]
        assert eval_main(argv) == 0
    finally:
        WorldVLAPolicy.check_state = real
    states = [s for s in seen if s is not None]
    assert states and all(np.asarray(s).shape == (4,) for s in states)
    table = json.loads((tmp_path / "eval" / "mt50.json").read_text())
    assert set(table["agents"]["worldvla"]["tasks"]) == set(suite_preset("mt50-debug").tasks)
