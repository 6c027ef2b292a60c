from dataclasses import replace

import pytest
import torch

from worldvla.errors import ConfigError
from worldvla.model.config import MODEL_PRESETS, ModelConfig, model_preset
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import KVCache, Transformer
from worldvla.vocab import Vocab

V = Vocab.build()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a shared machine (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(**kw):
    torch.manual_seed(0)
    return Transformer(replace(model_preset("tiny").with_vocab(V.size), **kw)).eval()


def _expected_params(cfg: ModelConfig) -> int:
    """Llama/Chameleon parameter count written out independently of the module tree."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.kv_heads)  # q, o and k, v
    ffn = 3 * cfg.d_model * cfg.ffn_hidden
    norms = 2 * cfg.d_model + (2 * cfg.head_dim * (cfg.n_heads + cfg.kv_heads) if cfg.qk_norm else 0)
    embed = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * (attn + ffn + norms) + embed + cfg.d_model


def test_tiny_preset_is_under_one_million_parameters():
    assert _tiny().num_params() < 1_000_000


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_every_preset_builds_on_the_meta_device_with_the_expected_size(name):
    with torch.device("meta"):
        m = Transformer(model_preset(name))
    assert m.num_params() == _expected_params(m.cfg)


def test_chameleon_shape_is_7b():
    cfg = model_preset("chameleon-7b")
    with torch.device("meta"):
        big = Transformer(cfg)
    assert 6.9e9 < big.num_params() < 7.2e9  # Chameleon-7B: 7.0B
    assert cfg.qk_norm and cfg.vocab_size == 65536 and cfg.d_model == 4096 and cfg.n_layers == 32


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ConfigError, match="small"):
        model_preset("smal")


def test_forward_shapes_and_hidden_plus_head_equals_forward():
    m = _tiny()
    ids = torch.randint(0, V.size, (2, 9))
    logits = m(ids)
    assert logits.shape == (2, 9, V.size)
    assert torch.allclose(m.output_logits(m.hidden_states(ids)), logits, atol=1e-5)
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 8])
    assert torch.allclose(m.output_logits(m.hidden_states(ids)[rows, cols]), logits[rows, cols], atol=1e-5)


def test_explicit_causal_mask_equals_is_causal_path():
    m = _tiny(qk_norm=True, n_kv_heads=2)
    ids = torch.randint(10, V.size, (2, 12))
    mask = torch.tril(torch.ones(12, 12, dtype=torch.bool)).expand(2, 12, 12)
    assert torch.allclose(m(ids), m(ids, attn_mask=mask), atol=1e-5)


def test_model_is_causal_future_tokens_do_not_change_past_logits():
    m = _tiny()
    ids = torch.randint(10, V.size, (1, 10))
    a = m(ids, attn_mask=attention_mask(ids, V))
    ids2 = ids.clone()
    ids2[0, 7:] = torch.randint(10, V.size, (3,))
    b = m(ids2, attn_mask=attention_mask(ids2, V))
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6)
    assert not torch.allclose(a[0, 7:], b[0, 7:])


def test_left_padding_with_positions_equals_the_unpadded_row():
    m = _tiny(qk_norm=True)
    ids = torch.randint(10, V.size, (1, 8))
    padded = torch.cat([torch.full((1, 3), V.pad), ids], 1)
    positions = torch.tensor([[0, 0, 0, *range(8)]])
    got = m(padded, attn_mask=attention_mask(padded, V), positions=positions)[0, 3:]
    assert torch.allclose(got, m(ids)[0], atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "n_kv_heads": 2}])
def test_kv_cache_steps_match_full_forward_and_the_cache_grows(kw):
    m = _tiny(**kw)
    ids = torch.randint(10, V.size, (2, 11))
    full = m(ids, attn_mask=attention_mask(ids, V))
    cache = KVCache(m.cfg, 2, 2)  # too small on purpose: it must grow
    parts, start = [], 0
    for end in (6, 7, 9, 11):
        mask = attention_mask(ids[:, :end], V, query_start=start)
        parts.append(m(ids[:, start:end], attn_mask=mask, cache=cache))
        start = end
    assert cache.length == 11 and cache.capacity >= 11
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_cache_without_mask_is_refused():
    m = _tiny()
    with pytest.raises(ValueError, match="explicit attention mask"):
        m(torch.ones(1, 2, dtype=torch.long), cache=m.new_cache(1, 4))


def test_residual_dropout_only_in_training():
    m = _tiny(dropout=0.5)
    ids = torch.randint(10, V.size, (1, 6))
    assert torch.equal(m(ids), m(ids))
    m.train()
    assert not torch.equal(m(ids), m(ids))


def test_activation_checkpointing_gives_same_gradients():
    m = _tiny()
    m.train()
    ids = torch.randint(10, V.size, (2, 8))
    m(ids).sum().backward()
    g = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_activation_checkpointing(True)
    m(ids).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g, m.parameters()))


def _chunk_ids(b: int = 2) -> torch.Tensor:
    """Text, an image, SEP and two action blocks, the second row right-padded: the mask bites."""
    img = [V.boi, *torch.randint(V.image_start, V.image_start + 8, (4,)).tolist(), V.eoi]
    act = [V.boa, V.action_start + 1, V.action_start + 2, V.eoa]
    row = [V.bos, *torch.randint(V.text_start, V.text_start + 20, (5,)).tolist(), *img, V.sep, *act, *act]
    ids = torch.tensor([row] * b)
    ids[1, -3:] = V.pad
    return ids


def _cached_tail(m: Transformer, ids: torch.Tensor, split: int) -> torch.Tensor:
    """Logits of ``ids[:, split:]`` fed after ``ids[:, :split]`` through a KV cache."""
    cache = m.new_cache(ids.shape[0], ids.shape[1])
    m(ids[:, :split], attn_mask=attention_mask(ids[:, :split], V), cache=cache)
    return m(ids[:, split:], attn_mask=attention_mask(ids, V, query_start=split), cache=cache)


@pytest.mark.parametrize("kw", [{}, {"qk_norm": True, "n_kv_heads": 2}])
def test_math_attention_equals_sdpa_masked_causal_and_cached(kw):
    m = _tiny(**kw)
    ids = _chunk_ids()
    mask = attention_mask(ids, V)
    want = m(ids, attn_mask=mask), m(ids), _cached_tail(m, ids, 9)
    m.set_attention_kernel("math")
    got = m(ids, attn_mask=mask), m(ids), _cached_tail(m, ids, 9)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
    with pytest.raises(ValueError, match="unknown attention kernel"):
        m.set_attention_kernel("flash")


def _bf16_step(m: Transformer, ids: torch.Tensor, compiled: bool = False) -> tuple[float, list[torch.Tensor]]:
    m.zero_grad()
    run = torch.compile(m) if compiled else m
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = run(ids[:, :-1], attn_mask=attention_mask(ids[:, :-1], V))
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in m.parameters()]


def _close_grads(a: list[torch.Tensor], b: list[torch.Tensor], rel: float) -> bool:
    return all((x - y).norm() <= rel * y.norm() + 1e-6 for x, y in zip(a, b))


def test_math_attention_trains_like_sdpa_under_bf16_autocast():
    m = _tiny(qk_norm=True).train()
    ids = _chunk_ids()
    loss, grads = _bf16_step(m, ids)
    m.set_attention_kernel("math")
    loss_math, grads_math = _bf16_step(m, ids)
    assert abs(loss_math - loss) < 1e-2 * loss
    assert _close_grads(grads_math, grads, 0.05)


@pytest.mark.slow
def test_compiled_math_attention_trains_like_eager_sdpa():
    """The fast training path (TrainConfig compile=True, attention="math") against the plain one."""
    m = _tiny(qk_norm=True).train()
    ids = _chunk_ids()
    loss, grads = _bf16_step(m, ids)
    m.set_attention_kernel("math")
    loss_fast, grads_fast = _bf16_step(m, ids, compiled=True)
    assert abs(loss_fast - loss) < 1e-2 * loss
    assert _close_grads(grads_fast, grads, 0.05)


def test_flops_per_token_counts_matmuls_attention_and_selected_logits():
    m = _tiny()
    cfg = m.cfg
    head = cfg.d_model * cfg.vocab_size
    body = m.num_params() - 2 * head - cfg.d_model - cfg.n_layers * 2 * cfg.d_model  # matmul weights
    attn = 2 * cfg.n_layers * 256 * cfg.d_model
    assert m.flops_per_token(256, training=False) == pytest.approx(2 * (body + head) + attn)
    assert m.flops_per_token(256) == pytest.approx(3 * (2 * (body + head) + attn))
    assert m.flops_per_token(256, target_fraction=0.25) == pytest.approx(3 * (2 * (body + head / 4) + attn))
    tied = _tiny(tie_embeddings=True)
    assert tied.num_params(embeddings=False) == tied.num_params()  # the table is the output head
    assert tied.flops_per_token(256) == pytest.approx(m.flops_per_token(256))


def test_rope_preserves_norms_and_scores_depend_only_on_relative_position():
    from worldvla.model.transformer import apply_rope, rope_angles

    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)

    def rotated(x, pos):
        cos, sin = rope_angles(torch.tensor([[pos]]), 16, 10000.0)
        return apply_rope(x, cos, sin)

    assert torch.allclose(rotated(q, 7).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    score = (rotated(q, 9) * rotated(k, 4)).sum(-1)
    assert torch.allclose(score, (rotated(q, 25) * rotated(k, 20)).sum(-1), atol=1e-4)
    assert not torch.allclose(score, (rotated(q, 25) * rotated(k, 21)).sum(-1), atol=1e-4)
    assert torch.allclose(rotated(q, 0), q)


def test_ordinal_embeddings_order_the_bins_and_touch_nothing_else():
    from worldvla.model.build import init_ordinal_embeddings

    torch.manual_seed(0)
    model = Transformer(model_preset("tiny").with_vocab(300))
    before = model.tok_emb.weight.detach().clone()
    init_ordinal_embeddings(model, 40, 256)
    w = model.tok_emb.weight.detach()
    assert torch.equal(w[:40], before[:40]) and torch.equal(w[296:], before[296:])
    bins = w[40:296]
    ends = bins[-1] - bins[0]
    proj = (bins - bins[128]) @ ends / ends.norm()
    # the projection on the end-to-end direction rises with the bin (up to the noise)
    assert torch.corrcoef(torch.stack([proj, torch.arange(256.0)]))[0, 1] > 0.97
    # neighbours start closer together than two random rows of the table
    assert (bins[1:] - bins[:-1]).norm(dim=1).mean() < 0.5 * (before[1:40] - before[:39]).norm(dim=1).mean()
    with pytest.raises(ValueError, match="outside a vocabulary"):
        init_ordinal_embeddings(model, 200, 256)
