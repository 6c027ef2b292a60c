"""Bad inputs to the policy, the world model, the server and the action statistics (issue 17).

Table-driven: each case is the input, the expected error, a phrase of its message, and a
check that nothing was touched (the policy's history and queue, the model not called) and
that a valid request still works afterwards. Servers listen on 127.0.0.1 only, on ephemeral
ports; every wait is bounded, and every server is stopped by its fixture.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

import worldvla.policy as policy_mod
from worldvla.errors import ConfigError, DataError
from worldvla.policy import WorldVLAPolicy
from worldvla.serving.client import PolicyClient
from worldvla.serving.protocol import ServerError, packb
from worldvla.serving.random_checkpoint import write_random_checkpoint
from worldvla.serving.server import PolicyServer, ServerLimits, StandInPolicy, is_loopback
from worldvla.tokenizers.action import ActionOutlierWarning, ActionStats, ActionTokenizer
from worldvla.world_model import WorldModel


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on a busy 2-core machine make each tiny model call ~30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SIZE = 32  # the random checkpoint's image size: 8×8 codes, tiny model (max_seq_len 512)
TIMEOUT = 30.0  # every client request is bounded


def _img(seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _obs(seed=0, **over):
    return {"image": _img(seed), "instruction": "put the bowl on the plate", **over}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("rand"), action_dim=7, image_size=SIZE)


@pytest.fixture(scope="module")
def policy(ckpt):
    return WorldVLAPolicy.from_pretrained(ckpt)


def _state(pol):
    """A copy of everything select_action may change."""
    return (
        [[c.copy() for c in h] for h in pol._history],
        [[a.copy() for a in q] for q in pol._queue],
        list(pol._since_plan),
    )


def _same_state(a, b):
    (ha, qa, sa), (hb, qb, sb) = a, b
    return (
        sa == sb
        and [len(h) for h in ha] == [len(h) for h in hb]
        and all(np.array_equal(x, y) for h1, h2 in zip(ha, hb) for x, y in zip(h1, h2))
        and [len(q) for q in qa] == [len(q) for q in qb]
        and all(np.array_equal(x, y) for q1, q2 in zip(qa, qb) for x, y in zip(q1, q2))
    )


# ------------------------------------------------------------------------------ in-process policy
def _long(policy, extra):
    return "a" * (policy.max_instruction_tokens + extra)


POLICY_CASES = [
    # (case id, observation builder, phrase of the DataError)
    ("no instruction", lambda p: {"image": _img()}, "needs an 'instruction'"),
    ("instruction None", lambda p: _obs(instruction=None), "must be a str, got NoneType"),
    ("instruction 123", lambda p: _obs(instruction=123), "must be a str, got int"),
    ("instruction bytes", lambda p: _obs(instruction=b"go"), "must be a str, got bytes"),
    ("lone surrogate", lambda p: _obs(instruction="go \ud800"), "not valid unicode"),
    ("one token over the limit", lambda p: _obs(instruction=_long(p, 1)), "over the model's max_seq_len"),
    ("100k characters", lambda p: _obs(instruction="x" * 100_000), "too long: 100,000 characters"),
    ("no image", lambda p: {"instruction": "go"}, "needs an 'image'"),
    ("image too small", lambda p: _obs(image=_img(size=16)), f"uint8 ({SIZE}, {SIZE}, 3)"),
    ("image float", lambda p: _obs(image=_img().astype(np.float32)), "got float32"),
    ("image 2-D", lambda p: _obs(image=_img()[..., 0]), f"uint8 ({SIZE}, {SIZE}, 3)"),
    ("image as a list", lambda p: _obs(image=_img().tolist()), "got list"),
    ("images not a dict", lambda p: {"images": [_img()], "instruction": "go"}, "must be a dict camera"),
    ("camera missing", lambda p: {"images": {"wrist": _img()}, "instruction": "go"}, "needs 'agentview'"),
    ("observation None", lambda p: None, "must be a dict"),
    ("observation str", lambda p: "pick it up", "must be a dict"),
]


@pytest.mark.parametrize("build,phrase", [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
@pytest.mark.parametrize("method", ["select_action", "predict_action_chunk"])
def test_bad_observation_is_refused_before_any_state_or_compute(policy, monkeypatch, build, phrase, method):
    policy.reset()
    policy.select_action(_obs(1))  # a history and a queue to protect
    before = _state(policy)
    calls = []
    for name in ("generate_actions",):
        real = getattr(policy_mod, name)
        monkeypatch.setattr(policy_mod, name, lambda *a, _r=real, **k: calls.append(1) or _r(*a, **k))
    real_encode = policy.image_tokenizer.encode
    monkeypatch.setattr(policy.image_tokenizer, "encode", lambda x: calls.append(1) or real_encode(x))
    with pytest.raises(DataError) as err:
        getattr(policy, method)(build(policy))
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)  # one readable line
    assert not calls  # neither the image tokenizer nor the model ran
    assert _same_state(before, _state(policy))
    assert policy.select_action(_obs(2)).shape == (7,)  # still serves


def test_the_instruction_limit_is_exact(policy):
    """An instruction of exactly max_instruction_tokens bytes fits; one more does not."""
    n = policy.max_instruction_tokens
    assert n > 0 and policy.sequence_length("a" * n) == policy.max_seq_len
    assert policy.predict_action_chunk(_obs(instruction="a" * n)).shape == (5, 7)
    with pytest.raises(DataError, match=f"at most {n:,} text tokens"):
        policy.predict_action_chunk(_obs(instruction="a" * (n + 1)))
    # Offline evaluation goes through the same check.
    codes = [np.zeros((2, 8, 8), np.int64)]
    with pytest.raises(DataError, match="too long"):
        policy.predict_chunks_from_codes(codes, ["a" * (n + 1)])


def test_one_bad_observation_in_a_batch_touches_no_env(ckpt):
    pol = WorldVLAPolicy.from_pretrained(ckpt, num_envs=2)
    pol.select_action([_obs(0), _obs(1)])
    before = _state(pol)
    for bad_batch, ids in [
        ([_obs(2), _obs(3, instruction=None)], None),
        ([_obs(2)], [5]),  # an env that does not exist
        ([_obs(2), _obs(3)], [0, 0]),  # the same env twice
        ([_obs(2)] * 3, None),  # more observations than envs
    ]:
        with pytest.raises(DataError):
            pol.select_action(bad_batch, env_ids=ids)
        assert _same_state(before, _state(pol))


# ------------------------------------------------------------------------------ world model
WORLD_CASES = [
    ("frame size", lambda w: w.predict_next_frame(_img(size=16), np.zeros(7)), "frames must be uint8"),
    ("action dim", lambda w: w.predict_next_frame(_img(), np.zeros(6)), "actions must be (1, 7)"),
    ("NaN action", lambda w: w.predict_next_frame(_img(), np.full(7, np.nan)), "NaN or inf"),
    ("codes grid", lambda w: w.next_codes(np.zeros((1, 4, 4), np.int64), np.zeros((1, 7))), "(N, 8, 8)"),
    ("codes range", lambda w: w.next_codes(np.full((1, 8, 8), 10**6), np.zeros((1, 7))), "must lie in"),
    ("codes float", lambda w: w.next_codes(np.zeros((1, 8, 8)), np.zeros((1, 7))), "integer"),
    (
        "rollout NaN late",
        lambda w: w.rollout(_img()[None], np.r_[np.zeros((3, 7)), np.full((1, 7), np.inf)][None]),
        "NaN or inf",
    ),
    ("rollout dims", lambda w: w.rollout(_img()[None], np.zeros((1, 3, 6))), "(N, T, 7)"),
]


@pytest.mark.parametrize("call,phrase", [c[1:] for c in WORLD_CASES], ids=[c[0] for c in WORLD_CASES])
def test_world_model_bad_inputs(ckpt, monkeypatch, call, phrase):
    import worldvla.world_model as wm_mod

    world = WorldModel.from_pretrained(ckpt)
    calls = []
    monkeypatch.setattr(wm_mod, "generate_frame", lambda *a, **k: calls.append(1))
    with pytest.raises(DataError) as err:
        call(world)
    assert phrase in str(err.value) and not calls


# ------------------------------------------------------------------------------ server
def _serve(policy, **kw):
    server = PolicyServer(policy, host="127.0.0.1", port=0, **kw)
    thread = server.start_in_thread()
    return server, thread


def _client(server, **kw):
    return PolicyClient("127.0.0.1", server.port, connect_timeout=10, request_timeout=TIMEOUT, **kw)


@pytest.fixture(scope="module")
def served(policy):
    server, thread = _serve(policy)
    yield server
    server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def _act(obs):
    return packb({"op": "act", "obs": obs})


SERVER_CASES = [
    # (case id, frame builder(metadata), phrase of the error, the connection survives)
    ("not msgpack", lambda m: b"\xc1\xc1", "not valid msgpack", True),
    ("text frame", lambda m: "hello", "text frame", True),
    ("unknown op", lambda m: packb({"op": "fly"}), "unknown op", True),
    ("no obs", lambda m: packb({"op": "act"}), "'obs' must be a map", True),
    ("instruction None", lambda m: _act(_obs(instruction=None)), "'instruction' string", True),
    ("instruction 123", lambda m: _act(_obs(instruction=123)), "'instruction' string", True),
    ("20 KB instruction", lambda m: _act(_obs(instruction="x" * 20_000)), "over this server's limit", True),
    (
        "over max_seq_len",
        lambda m: _act(_obs(instruction="a" * (m["max_instruction_tokens"] + 1))),
        "over the model's max_seq_len",
        True,
    ),
    ("image too big", lambda m: _act(_obs(image=_img(size=64))), f"uint8 ({SIZE}, {SIZE}, 3)", True),
    ("image int64", lambda m: _act(_obs(image=_img().astype(np.int64))), "uint8", True),
    ("image 4-D", lambda m: _act(_obs(image=_img()[None])), "uint8 (H, W, 3)", True),
    (
        "oversized message",
        lambda m: b"\0" * (m["max_message_bytes"] + 1),
        "code 1009",
        False,
    ),
    (
        "oversized image",
        lambda m: _act(_obs(image=np.zeros((1024, 1024, 3), np.uint8))),
        "exceeds limit",
        False,
    ),
]


@pytest.mark.parametrize(
    "build,phrase,survives", [c[1:] for c in SERVER_CASES], ids=[c[0] for c in SERVER_CASES]
)
def test_server_refuses_bad_requests_and_keeps_serving(served, build, phrase, survives):
    with _client(served) as client:
        client.reset()
        first = client.select_action(_obs(1))
        with pytest.raises(ServerError) as err:
            client.send_raw(build(client.metadata))
        assert phrase in str(err.value)
        if survives:  # the bad request left this connection's state alone: the queue continues
            again = _client(served)
            again.reset()
            chunk = again.predict_action_chunk(_obs(1))
            again.close()
            assert np.allclose(first, chunk[0])
            assert np.allclose(client.select_action(_obs(2)), chunk[1])
    with _client(served) as other:  # and the server still answers a valid client
        assert other.select_action(_obs(3)).shape == (7,)


def test_metadata_announces_the_limits(served, policy):
    with _client(served) as client:
        meta = client.metadata
    assert meta["max_instruction_tokens"] == policy.max_instruction_tokens
    assert meta["max_seq_len"] == 512 and meta["max_instruction_chars"] == 1000
    assert meta["max_message_bytes"] == 4 * 3 * SIZE * SIZE + (1 << 20) and meta["auth"] is False


def test_each_connection_has_its_own_state(served):
    """Client B's first act is its own chunk's first action, never A's queued second one."""
    with _client(served) as a, _client(served) as b:
        a.reset()
        b.reset()
        chunk_a = a.predict_action_chunk(_obs(1))
        a.reset()
        a0 = a.select_action(_obs(1))  # A's queue now holds chunk_a[1:]
        b0 = b.select_action(_obs(2))
        b.reset()  # a reset on B leaves A's queue alone
        a1 = a.select_action(_obs(1))
    assert np.allclose(a0, chunk_a[0]) and np.allclose(a1, chunk_a[1])
    with _client(served) as c:
        c.reset()
        assert np.allclose(b0, c.predict_action_chunk(_obs(2))[0])


def test_stand_in_sessions_do_not_share_a_queue():
    """The stand-in's chunk has distinct actions, so cross-talk would show as a different action."""
    server, thread = _serve(StandInPolicy(image_size=SIZE))
    try:
        with _client(server) as a, _client(server) as b:
            a.reset(), b.reset()
            a0, b0, a1 = a.select_action(_obs()), b.select_action(_obs()), a.select_action(_obs())
        assert np.array_equal(a0, b0) and not np.array_equal(a1, b0)
    finally:
        server.stop()
        thread.join(timeout=10)


class _Unshareable(StandInPolicy):
    new_session = None  # one state only: the server must serve one client at a time


def _connect_eventually(server, **kw):
    """Connect once the server has seen an earlier client leave (it learns that asynchronously)."""
    for _ in range(100):
        try:
            return _client(server, **kw)
        except ServerError as e:
            if "busy" not in str(e):
                raise
            threading.Event().wait(0.05)
    raise AssertionError("the server never let a new client in")


@pytest.mark.parametrize(
    "policy_,limits,n_ok,phrase",
    [
        (_Unshareable(image_size=SIZE), None, 1, "serves one client at a time"),
        (StandInPolicy(image_size=SIZE), ServerLimits(max_clients=2), 2, "at most 2 clients"),
    ],
    ids=["unshareable policy", "max_clients"],
)
def test_extra_clients_are_refused_clearly(policy_, limits, n_ok, phrase):
    server, thread = _serve(policy_, limits=limits)
    try:
        clients = [_client(server) for _ in range(n_ok)]
        with pytest.raises(ServerError, match=phrase):
            _client(server)
        assert clients[0].select_action(_obs()).shape == (7,)
        clients.pop().close()
        clients.append(_connect_eventually(server))
        assert clients[-1].select_action(_obs()).shape == (7,)
        for c in clients:
            c.close()
    finally:
        server.stop()
        thread.join(timeout=10)


class _Gated(StandInPolicy):
    """A policy whose model call waits for a gate: stands for a long inference."""

    gate = threading.Event()
    entered = threading.Event()

    def new_session(self):
        return self

    def predict_action_chunk(self, obs):
        if obs["instruction"] == "slow":
            type(self).entered.set()
            assert type(self).gate.wait(TIMEOUT)
        return super().predict_action_chunk(obs)


def test_a_long_inference_does_not_stall_other_clients():
    """While one client's model call runs, others get resets and refusals answered at once.

    Not timed: the slow call waits for a gate that opens only after the other client got
    its replies, so a blocked event loop would make this test hit its request timeout.
    """
    _Gated.gate.clear(), _Gated.entered.clear()
    server, thread = _serve(_Gated(image_size=SIZE))
    try:
        slow, fast = _client(server), _client(server)
        result = {}
        worker = threading.Thread(
            target=lambda: result.update(a=slow.select_action(_obs(instruction="slow")))
        )
        worker.start()
        assert _Gated.entered.wait(TIMEOUT)
        fast.reset()
        with pytest.raises(ServerError, match="over this server's limit"):
            fast.select_action(_obs(instruction="x" * 20_000))
        with pytest.raises(ServerError, match="1009"):
            fast.send_raw(b"\0" * (server.max_message_bytes + 1))
        _Gated.gate.set()
        worker.join(TIMEOUT)
        assert result["a"].shape == (7,)
        slow.close()
    finally:
        _Gated.gate.set()
        server.stop()
        thread.join(timeout=10)


AUTH_CASES = [
    # (case id, how the client authenticates, phrase of the refusal or None)
    ("no key", {}, "HTTP 401"),
    ("wrong key", {"api_key": "guess"}, "HTTP 401"),
    ("key with a prefix", {"api_key": "s3cret-but-longer"}, "HTTP 401"),
    ("right key", {"api_key": "s3cret"}, None),
    ("key from the environment", {"env": "s3cret"}, None),
]


@pytest.mark.parametrize("how,phrase", [c[1:] for c in AUTH_CASES], ids=[c[0] for c in AUTH_CASES])
def test_api_key(monkeypatch, how, phrase):
    monkeypatch.delenv("WORLDVLA_API_KEY", raising=False)
    if "env" in how:
        monkeypatch.setenv("WORLDVLA_API_KEY", how["env"])
    server, thread = _serve(StandInPolicy(image_size=SIZE), api_key="s3cret")
    try:
        kw = {"api_key": how["api_key"]} if "api_key" in how else {}
        if phrase is None:
            with _client(server, **kw) as client:
                assert client.metadata["auth"] is True
                assert client.select_action(_obs()).shape == (7,)
        else:
            with pytest.raises(ServerError, match=phrase):
                _client(server, **kw)
            with _client(server, api_key="s3cret") as client:  # still serves the right key
                assert client.select_action(_obs()).shape == (7,)
    finally:
        server.stop()
        thread.join(timeout=10)


def test_a_wrong_authorization_scheme_is_refused():
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server, thread = _serve(StandInPolicy(image_size=SIZE), api_key="s3cret")
    try:
        with pytest.raises(InvalidStatus, match="401"):
            connect(f"ws://127.0.0.1:{server.port}", additional_headers={"Authorization": "Bearer s3cret"})
    finally:
        server.stop()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("", False),
     ("192.168.1.5", False), ("robot-lab.example", False)],
)  # fmt: skip
def test_which_hosts_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_binding_the_network_without_a_key_warns(caplog):
    """Checked without binding: the warning is decided before the socket is opened."""
    for host, key, warned in [("0.0.0.0", None, True), ("0.0.0.0", "k", False), ("127.0.0.1", None, False)]:
        caplog.clear()
        PolicyServer(StandInPolicy(), host=host, port=0, api_key=key).warn_if_exposed()
        assert ("without an API key" in caplog.text) is warned


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["--stand-in", "--max-clients", "0"], "max_clients"),
        (["--stand-in", "--max-message-bytes", "-5"], "max_message_bytes"),
        (["--stand-in", "--api-key", " "], "API key must not be empty"),
    ],
)
def test_serve_refuses_bad_limits(argv, phrase):
    from worldvla.commands import serve

    with pytest.raises(ConfigError, match=phrase):
        serve.main(argv)


# ------------------------------------------------------------------------------ action statistics
def _episodes(n=4, t=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"demo_{i}", rng.uniform(-1, 1, (t, d))) for i in range(n)]


def test_one_huge_action_warns_naming_the_episode_and_percentile_is_unaffected():
    eps = _episodes()
    eps[2][1][17, 1] = 1e30
    with pytest.warns(ActionOutlierWarning, match=r"dimension 1: .*episode 'demo_2' at step 17"):
        mm = ActionStats.from_episodes(eps)
    assert mm.high[1] == 1e30  # min/max keeps its meaning; the warning says what it costs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pc = ActionStats.from_episodes(eps, mode="percentile")
    assert pc.high[1] < 1.0
    real = np.concatenate([a for _, a in _episodes()])  # (160, 3), the data without the outlier
    assert len(np.unique(ActionTokenizer(mm).encode(real)[:, 1])) == 1  # the collapse it warns about
    assert len(np.unique(ActionTokenizer(pc).encode(real)[:, 1])) > 100  # percentile bins still resolve


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_refused_naming_the_episode(bad):
    eps = _episodes()
    eps[3][1][5, 0] = bad
    with pytest.raises(DataError, match=r"episode 'demo_3' at step 5: action dimension 0 is .* not finite"):
        ActionStats.from_episodes(eps)


def test_episodes_of_another_action_size_are_refused():
    eps = _episodes()
    eps.append(("demo_odd", np.zeros((10, 4))))
    with pytest.raises(DataError, match=r"episode 'demo_odd': actions must be \(T, 3\)"):
        ActionStats.from_episodes(eps)


def test_clean_data_gives_no_warning():
    rng = np.random.default_rng(1)
    clean = [
        ("gauss", rng.normal(size=(5000, 3))),
        ("gripper", np.where(rng.random((5000, 3)) < 0.3, 1.0, -1.0)),  # bimodal, like a gripper
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for key, a in clean:
            ActionStats.from_episodes([(key, a)])


def test_the_token_cache_refuses_a_non_finite_action_naming_file_and_episode(tmp_path):
    import h5py

    from worldvla.data.episodes import Episode, write_episodes
    from worldvla.data.token_cache import build_token_cache
    from worldvla.tokenizers.vq import VQTokenizer, vq_preset

    rng = np.random.default_rng(0)
    eps = [
        Episode(
            key=f"demo_{i}",
            actions=rng.normal(size=(6, 4)).astype(np.float32),
            frames={"corner": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)},
            instruction="push",
            task="push",
        )
        for i in range(2)
    ]
    write_episodes(tmp_path / "eps.hdf5", eps, {"env": "test"})
    with h5py.File(tmp_path / "eps.hdf5", "r+") as f:  # a file from another writer: the store refuses NaN
        f["data/demo_1/actions"][3, 2] = np.nan
    torch.manual_seed(0)
    tok = VQTokenizer(vq_preset("tiny-vq"))
    with pytest.raises(DataError, match=r"eps.hdf5: .*demo_1.*step 3"):  # the reader or the statistics
        build_token_cache(tmp_path / "eps.hdf5", tok, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "action_stats.json").exists()
