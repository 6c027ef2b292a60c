import torch

from worldvla.config import MODEL_PRESETS, model_preset
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import KVCache, Transformer
from worldvla.vocab import Vocab

V = Vocab.build()


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = model_preset("tiny").with_vocab(V.size)
    from dataclasses import replace

    return Transformer(replace(cfg, **kw)).eval()


def test_tiny_preset_is_under_one_million_parameters():
    assert _tiny().num_params() < 1_000_000


def test_every_preset_builds_and_chameleon_shape_is_7b_on_meta_device():
    for name, cfg in MODEL_PRESETS.items():
        with torch.device("meta"):
            m = Transformer(cfg)
        assert sum(p.numel() for p in m.parameters()) > 0, name
    with torch.device("meta"):
        big = Transformer(MODEL_PRESETS["chameleon-7b"])
    assert 6.5e9 < big.num_params() < 7.5e9
    assert big.cfg.qk_norm and big.cfg.vocab_size == 65536


def test_forward_shapes_and_hidden_plus_head_equals_forward():
    m = _tiny()
    ids = torch.randint(0, V.size, (2, 9))
    logits = m(ids)
    assert logits.shape == (2, 9, V.size)
    assert torch.allclose(m.output_logits(m.hidden_states(ids)), logits)


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


def test_kv_cache_step_matches_full_forward():
    m = _tiny()
    ids = torch.randint(10, V.size, (2, 11))
    full = m(ids, attn_mask=attention_mask(ids, V))
    cache = KVCache(m.cfg, 2, 11)
    first = m(ids[:, :6], attn_mask=attention_mask(ids[:, :6], V), cache=cache)
    rest = m(ids[:, 6:], attn_mask=attention_mask(ids, V, query_start=6), cache=cache)
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5)


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


def test_flops_per_token_is_about_six_times_params_for_training():
    m = _tiny()
    n = m.num_params(embeddings=False)
    f = m.flops_per_token(256)
    assert 6 * n <= f <= 6 * n * 1.5
