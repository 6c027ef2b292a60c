import numpy as np
import pytest
import torch

from worldvla.config import model_preset
from worldvla.model.generation import action_plan, decode, frame_plan, generate_actions, generate_frame
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.sequence import action_prompt_ids, frame_template, world_prompt_ids
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import Vocab, VocabConfig

V = Vocab.build(VocabConfig(image_codes=64))
T = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(model_preset("tiny").with_vocab(V.size)).eval()


def _prompts(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        action_prompt_ids(V, T, "open the drawer" + "!" * i, [rng.integers(0, 64, (3, 3)) for _ in range(2)])
        for i in range(n)
    ]


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("chunk_mask", [True, False])
def test_cached_decoding_logits_equal_full_forward(model, k, chunk_mask):
    prompts = _prompts()
    plan = action_plan(V, k, 4)
    gen = torch.Generator().manual_seed(0)
    out = decode(model, V, prompts, plan, chunk_mask, temperature=1.0, generator=gen, return_logits=True)
    sampled = [i for i, s in enumerate(plan) if s.forced is None]
    for b, p in enumerate(prompts):  # each row alone, no padding, one full forward pass
        full = torch.cat([torch.as_tensor(p), out.tokens[b]])[None]
        logits = model(full, attn_mask=attention_mask(full, V, chunk_mask))[0]
        ref = logits[[len(p) + i - 1 for i in sampled]]
        got = torch.stack([step[b] for step in out.logits])
        assert (ref - got).abs().max().item() < 1e-4


def test_chunk_mask_changes_later_actions_only(model):
    prompts = _prompts(1)
    plan = action_plan(V, 3, 4)
    a = decode(model, V, prompts, plan, chunk_mask=True, return_logits=True)
    b = decode(model, V, prompts, plan, chunk_mask=False, return_logits=True)
    assert torch.allclose(a.logits[0], b.logits[0])  # first action: nothing to hide yet
    assert not torch.allclose(a.logits[-1], b.logits[-1])


def test_constrained_decoding_never_leaves_the_allowed_ranges(model):
    gen = torch.Generator().manual_seed(3)
    bins = generate_actions(model, V, _prompts(4), 5, 7, temperature=5.0, generator=gen)
    assert bins.shape == (4, 5, 7) and bins.min() >= 0 and bins.max() < V.action_bins
    out = decode(model, V, _prompts(2), action_plan(V, 5, 7), temperature=5.0, generator=gen)
    layout = out.tokens.view(2, 5, 9)
    assert (layout[:, :, 0] == V.boa).all() and (layout[:, :, -1] == V.eoa).all()
    assert V.is_action_bin(layout[:, :, 1:-1]).all()
    rng = np.random.default_rng(0)
    wp = [world_prompt_ids(V, T, rng.integers(0, 64, (3, 4)), rng.integers(0, 256, 4)) for _ in range(2)]
    out = decode(model, V, wp, frame_plan(V, 3, 4), temperature=5.0, top_k=7, generator=gen)
    template = torch.as_tensor(frame_template(V, 3, 4))
    fixed = template >= 0
    assert (out.tokens[:, fixed] == template[fixed]).all()
    assert V.is_image_code(out.tokens[:, ~fixed]).all()
    codes = generate_frame(model, V, wp, (3, 4), temperature=5.0, generator=gen)
    assert codes.shape == (2, 3, 4) and codes.min() >= 0 and codes.max() < V.image_codes


def test_batched_equals_one_by_one(model):
    prompts = _prompts(3)
    batched = generate_actions(model, V, prompts, 5, 4)
    for i, p in enumerate(prompts):
        assert torch.equal(generate_actions(model, V, [p], 5, 4)[0], batched[i])


def test_seeded_sampling_is_reproducible(model):
    def run():
        return generate_actions(
            model, V, _prompts(2), 5, 4, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7)
        )

    assert torch.equal(run(), run())
