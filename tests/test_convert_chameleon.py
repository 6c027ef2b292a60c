"""Parity with transformers' Chameleon: models built and saved here, converted, compared.

Each case builds a randomly initialized ``ChameleonForConditionalGeneration`` at a tiny
size (every parameter randomized, norms included, so a mis-mapped tensor shows), saves
it with ``save_pretrained`` in small shards, converts it with ``worldvla convert`` and
compares fp32 logits on a mixed text / image / action sequence of the reference token
layout, under the plain causal mask and under the WorldVLA chunk mask (given to
transformers as a 4-D boolean mask). Greedy decoding of an action chunk and of a frame
is compared with a transformers loop that recomputes the full mask at every step, as the
reference does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from worldvla.cli import main as cli_main
from worldvla.convert.chameleon import UNUSED_VQ_CONFIG
from worldvla.convert.checkpoints import REFERENCE_LIBERO_ACTION_STATS, convert_from_hf, convert_to_hf
from worldvla.convert.reference_prompts import reference_vocab
from worldvla.errors import WorldVLAError
from worldvla.model.generation import action_plan, frame_plan, generate_actions, generate_frame
from worldvla.model.masks import attention_mask
from worldvla.sequence import action_ids, frame_ids
from worldvla.tokenizers.action import ActionTokenizer
from worldvla.train.checkpoint import load_for_inference
from worldvla.vocab import Vocab

transformers = pytest.importorskip("transformers")  # the dev extra pins it

V = Vocab.chameleon_reference()
GRID = (3, 4)
TOL = 1e-4

CASES = {
    "base": {},
    "gqa": {"num_key_value_heads": 2},
    "swin": {"swin_norm": True},
    "bias": {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 1},
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hf_model(seed: int = 0, **kw):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    cfg = ChameleonConfig(
        vocab_size=V.size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kw.pop("num_key_value_heads", 4),
        max_position_embeddings=kw.pop("max_position_embeddings", 256),
        rms_norm_eps=1e-6,  # not the QK-norm's 1e-5: the two epsilons must not be confused
        vocabulary_map={},  # no "IMGIMG" names: transformers masks no image logits
        vq_config=UNUSED_VQ_CONFIG,
        attn_implementation="eager",
        **kw,
    )
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vqmodel" in name:
                continue
            if name.endswith(("norm.weight", "layernorm.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def _save(model, folder, shard="60KB"):
    model.save_pretrained(folder, max_shard_size=shard, safe_serialization=True)
    assert len(list(folder.glob("*.safetensors"))) > 2  # really sharded
    return folder


def _convert(src, out, vq_dir, **kw):
    kw.setdefault("image_size", 32)  # 32² -> 2×2 codes, one 32-pixel patch: keeps prompts short
    return convert_from_hf(src, out, image_tokenizer=vq_dir, text_tokenizer="bytes", **kw)[0]


def _mixed_ids(rng: np.random.Generator) -> torch.Tensor:
    """BOS, text, two frames, SEP, three action blocks: the reference layout of a chunk sample."""
    text = rng.integers(20000, V.size, 6)
    frames = [frame_ids(V, rng.integers(0, V.image_codes, GRID)) for _ in range(2)]
    acts = [action_ids(V, rng.integers(0, V.action_bins, 7)) for _ in range(3)]
    return torch.as_tensor(np.concatenate([[V.bos], text, *frames, [V.sep], *acts])).long()[None]


def _hf_logits(model, ids, mask):
    """transformers takes a prepared 4-D mask as is; eager attention adds it to the scores."""
    additive = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=additive[:, None]).logits  # (B, 1, L, L) mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_equal_transformers_under_causal_and_chunk_masks(case, tmp_path, vq_dir):
    hf = _hf_model(**dict(CASES[case]))
    ckpt = _convert(_save(hf, tmp_path / "hf"), tmp_path / "ours", vq_dir)
    ours, bundle = load_for_inference(ckpt)
    assert bundle.vocab == reference_vocab() and bundle.model_config.swin_norm == (case == "swin")
    ids = _mixed_ids(np.random.default_rng(1))
    for chunk in (False, True):
        mask = attention_mask(ids, V, chunk_mask=chunk)
        with torch.no_grad():
            got = ours(ids, attn_mask=mask)
        want = _hf_logits(hf, ids, mask)
        assert (got - want).abs().max().item() < TOL, (case, chunk)
    # The chunk mask really changes the action rows (so the comparison above is not vacuous).
    plain, chunked = (_hf_logits(hf, ids, attention_mask(ids, V, chunk_mask=c)) for c in (False, True))
    assert (plain[0, -9:] - chunked[0, -9:]).abs().max() > 1e-3


def test_reference_qk_norm_shape_per_parallel_shard_is_expanded(tmp_path, vq_dir):
    """The vendored modeling_chameleon.py stores q/k_norm as (model_parallel_size, head_dim)."""
    hf = _hf_model(seed=3, num_key_value_heads=2)
    with torch.no_grad():  # one row shared by every head, as model_parallel_size=1 means
        for name, p in hf.named_parameters():
            if "_norm." in name and "self_attn" in name:
                p.copy_(p[:1].expand_as(p))
    src = _save(hf, tmp_path / "hf")
    for f in src.glob("*.safetensors"):
        state = load_file(f)
        state = {k: (v[:1].clone() if "self_attn." in k and "_norm." in k else v) for k, v in state.items()}
        save_file(state, f, metadata={"format": "pt"})
    ckpt = _convert(src, tmp_path / "ours", vq_dir)
    assert json.loads((ckpt / "config.json").read_text())["converted_from"]["qk_norm_shape"] == [1, 8]
    ours, _ = load_for_inference(ckpt)
    ids = _mixed_ids(np.random.default_rng(2))
    mask = attention_mask(ids, V)
    with torch.no_grad():
        assert (ours(ids, attn_mask=mask) - _hf_logits(hf, ids, mask)).abs().max().item() < TOL


def _hf_greedy(model, prompt: torch.Tensor, plan) -> torch.Tensor:
    """The reference's way: no cache, the whole mask recomputed for every new token."""
    ids = prompt
    for slot in plan:
        if slot.forced is not None:
            nxt = slot.forced
        else:
            logits = _hf_logits(model, ids, attention_mask(ids, V))[0, -1]
            nxt = slot.low + int(logits[slot.low : slot.high].argmax())
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return ids[0, prompt.shape[1] :]


@pytest.mark.parametrize("case", ["gqa", "swin"])
def test_greedy_chunk_and_frame_equal_transformers_with_the_mask_recomputed_each_step(case, tmp_path, vq_dir):
    hf = _hf_model(seed=5, **dict(CASES[case]))
    ours, _ = load_for_inference(_convert(_save(hf, tmp_path / "hf"), tmp_path / "ours", vq_dir))
    rng = np.random.default_rng(3)
    prompt = _mixed_ids(rng)[:, : 1 + 6 + 2 * (4 + GRID[0] * (GRID[1] + 1)) + 1]  # up to SEP
    k, d = 3, 7
    bins = generate_actions(ours, V, [prompt[0]], num_actions=k, action_dim=d)
    want = _hf_greedy(hf, prompt, action_plan(V, k, d)).view(k, d + 2)[:, 1:-1]
    assert torch.equal(bins[0], V.action_bins_of(want))
    assert len({tuple(r.tolist()) for r in bins[0]}) > 1 or k == 1  # not a degenerate constant chunk
    world = torch.cat(
        [prompt[:, :-1], torch.as_tensor(action_ids(V, bins[0, 0].numpy()))[None], prompt[:, -1:]], 1
    )
    codes = generate_frame(ours, V, [world[0]], grid=GRID)
    tokens = _hf_greedy(hf, world, frame_plan(V, *GRID))
    want_codes = V.image_codes_of(tokens[tokens < V.image_start + V.image_codes]).view(GRID)
    assert torch.equal(codes[0], want_codes)


def test_round_trip_to_hugging_face_loads_in_transformers_with_equal_logits(tmp_path, vq_dir):
    from transformers import ChameleonForConditionalGeneration

    hf = _hf_model(seed=7, num_key_value_heads=2, swin_norm=True)
    ckpt = _convert(_save(hf, tmp_path / "hf"), tmp_path / "ours", vq_dir)
    back = convert_to_hf(ckpt, tmp_path / "back", max_shard_bytes=60_000)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    again = ChameleonForConditionalGeneration.from_pretrained(back, attn_implementation="eager").eval()
    ids = _mixed_ids(np.random.default_rng(4))
    mask = attention_mask(ids, V)
    assert (_hf_logits(again, ids, mask) - _hf_logits(hf, ids, mask)).abs().max().item() < TOL


def test_bf16_load_on_a_chosen_device(tmp_path, vq_dir):
    from worldvla.policy import WorldVLAPolicy

    ckpt = _convert(_save(_hf_model(seed=2), tmp_path / "hf"), tmp_path / "ours", vq_dir)
    policy = WorldVLAPolicy.from_pretrained(ckpt, device="cpu", dtype=torch.bfloat16)
    assert policy.model.tok_emb.weight.dtype == torch.bfloat16
    model, _ = load_for_inference(ckpt, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in model.parameters())
    ids = _mixed_ids(np.random.default_rng(0))
    bins = generate_actions(model, V, [ids[0, :-27]], num_actions=2, action_dim=7)
    assert bins.shape == (1, 2, 7)


def test_unknown_module_missing_tensor_and_wrong_shape_are_refused_by_name(tmp_path, vq_dir):
    src = _save(_hf_model(seed=1), tmp_path / "hf")
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    key = next(k for k in weight_map if k.endswith("o_proj.weight"))
    first = src / weight_map[key]
    state = load_file(first)
    save_file(
        {**state, "action_head.transformer_encoder.layers.0.linear1.weight": torch.zeros(2, 2)},
        first,
        metadata={"format": "pt"},
    )
    with pytest.raises(WorldVLAError, match="action_head.*RynnVLA-002"):
        _convert(src, tmp_path / "a", vq_dir)
    save_file({**state, "model.mystery.weight": torch.zeros(2)}, first, metadata={"format": "pt"})
    with pytest.raises(WorldVLAError, match="model.mystery.weight"):
        _convert(src, tmp_path / "b", vq_dir)
    save_file({**state, key: torch.zeros(3, 3)}, first, metadata={"format": "pt"})
    with pytest.raises(WorldVLAError, match=key.replace(".", r"\.") + r".*\[3, 3\]"):
        _convert(src, tmp_path / "c", vq_dir)
    save_file({k: v for k, v in state.items() if k != key}, first, metadata={"format": "pt"})
    with pytest.raises(WorldVLAError, match="missing"):
        _convert(src, tmp_path / "d", vq_dir)
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing half-written


def test_rynnvla_action_head_architecture_is_refused_from_the_config(tmp_path, vq_dir):
    src = _save(_hf_model(), tmp_path / "hf")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["ChameleonXLLMXForConditionalGeneration_ck_action_head"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WorldVLAError, match="action_head"):
        _convert(src, tmp_path / "out", vq_dir)


def test_cli_convert_both_ways_and_one_line_errors(tmp_path, vq_dir, capsys):
    src = _save(_hf_model(seed=4), tmp_path / "hf")
    out = tmp_path / "ours"
    args = ["convert", str(src), str(out), "--image-tokenizer", str(vq_dir), "--text-tokenizer", "bytes"]
    assert cli_main([*args, "--image-size", "32", "--dtype", "bf16"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert cli_main(args) == 2  # the output exists: refused, not replaced
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["convert", "--to-hf", str(out), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors.index.json").exists()


def test_reference_action_grid_matches_the_reference_formulas():
    """item_processor.norm_action + np.digitize(linspace(-1, 1, 256)), and unnorm_min_max."""
    tok = ActionTokenizer(REFERENCE_LIBERO_ACTION_STATS, n_bins=256)
    lo, hi = np.array(REFERENCE_LIBERO_ACTION_STATS.low), np.array(REFERENCE_LIBERO_ACTION_STATS.high)
    rng = np.random.default_rng(0)
    a = rng.uniform(lo * 1.1, hi * 1.1, (500, 7))
    a[0], a[1] = lo, hi
    edges = np.linspace(-1, 1, 256)
    norm = np.clip(2 * (a - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    token = np.digitize(norm, edges) + 10004 + 1  # the reference's token id
    assert np.array_equal(V.action_ids(tok.encode(a)), token)
    centres = (edges[:-1] + edges[1:]) / 2
    ref = (centres[np.clip(token - 1 - 10004 - 1, 0, 254)] + 1) / 2 * (hi - lo + 1e-8) + lo
    assert np.allclose(tok.decode(tok.encode(a)), ref, atol=1e-6)


class _FakeLiberoEnv:
    """The four calls of a LIBERO ``OffScreenRenderEnv`` that the reference protocol makes."""

    def __init__(self, size: int) -> None:
        self.rng, self.size, self.actions = np.random.default_rng(0), size, []

    def _obs(self):
        return {"agentview_image": self.rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)}

    def reset(self):
        return self._obs()

    def set_init_state(self, state):
        return self._obs()

    def step(self, action):
        self.actions.append(action)
        return self._obs(), 0.0, False, {}


def test_converted_checkpoint_served_to_the_libero_reference_protocol_client(tmp_path, vq_dir):
    """Reference vocabulary, reference action grid and bounds, Chameleon VQGAN at 256²: the 7B path."""
    from worldvla.envs.libero_benchmark import NOOP_ACTION
    from worldvla.eval.libero_loop import chunk_actor, run_episode
    from worldvla.policy import WorldVLAPolicy
    from worldvla.serving.client import PolicyClient
    from worldvla.serving.server import PolicyServer

    # Two 16x16-code frames and a 7-D chunk of 5 need ~700 positions (the real model has 4,096).
    hf = _hf_model(seed=6, max_position_embeddings=1024)
    ckpt = _convert(_save(hf, tmp_path / "hf"), tmp_path / "ours", vq_dir, image_size=256)
    policy = WorldVLAPolicy.from_pretrained(ckpt)
    assert policy.image_tokenizer.grid == (16, 16) and policy.vocab == reference_vocab()
    server = PolicyServer(policy, host="127.0.0.1", port=0, metadata={"checkpoint": str(ckpt)})
    thread = server.start_in_thread()
    client = PolicyClient("127.0.0.1", server.port, connect_timeout=10, request_timeout=60)
    try:
        assert (client.metadata["image_size"], client.metadata["chunk_len"]) == (256, 5)
        calls = []

        def predict(obs):
            calls.append(1)
            return client.predict_action_chunk(obs)

        act, clear = chunk_actor(predict)
        env = _FakeLiberoEnv(256)
        result = run_episode(env, None, act, "put the bowl on the plate", max_steps=7, reset_policy=clear)
    finally:
        client.close()
        server.stop()
        thread.join(timeout=10)
    assert (result.steps, len(calls)) == (7, 2)  # 7 steps, chunks of K=5 executed open-loop
    assert env.actions[:10] == [list(NOOP_ACTION)] * 10  # the protocol's wait steps
    actions = np.array(env.actions[10:])
    # Every action is a reference bin centre, de-normalized with the reference's bounds.
    stats = REFERENCE_LIBERO_ACTION_STATS
    tok = ActionTokenizer(stats, n_bins=256)
    assert np.allclose(tok.decode(tok.encode(actions)), actions, atol=1e-6)
    assert np.all(actions >= np.array(stats.low) - 1e-6) and np.all(actions <= np.array(stats.high) + 1e-6)
