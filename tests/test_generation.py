import numpy as np
import pytest
import torch

from worldvla.errors import ConfigError
from worldvla.model.config import model_preset
from worldvla.model.generation import (
    Sampling,
    Slot,
    _sample,
    action_plan,
    decode,
    decode_chunk,
    frame_plan,
    generate_actions,
    generate_frame,
)
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.sequence import action_ids, action_prompt_ids, frame_ids, frame_template, world_prompt_ids
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import Vocab, VocabConfig

V = Vocab.build(VocabConfig(image_codes=64))
T = ByteTokenizer()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a shared machine (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(model_preset("tiny").with_vocab(V.size)).eval()


def _prompts(n=3, seed=0):
    """Action-model prompts of different lengths (so the batch is left-padded)."""
    rng = np.random.default_rng(seed)
    return [
        action_prompt_ids(V, T, "open the drawer" + "!" * i, [rng.integers(0, 64, (3, 3)) for _ in range(2)])
        for i in range(n)
    ]


def _world_prompts(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [world_prompt_ids(V, T, rng.integers(0, 64, (3, 4)), rng.integers(0, 256, 4)) for _ in range(n)]


def _full_forward_logits(model, seq, chunk_mask):
    seq = torch.as_tensor(seq)[None]
    return model(seq, attn_mask=attention_mask(seq, V, chunk_mask))[0]  # (L, V)


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("chunk_mask, parallel", [(True, True), (True, False), (False, False)])
def test_cached_decoding_logits_equal_full_forward(model, k, chunk_mask, parallel):
    prompts = _prompts()
    gen = torch.Generator().manual_seed(0)
    out = decode_chunk(
        model,
        V,
        prompts,
        k,
        4,
        sampling=Sampling(temperature=1.0, generator=gen),
        chunk_mask=chunk_mask,
        return_logits=True,
        parallel=parallel,
    )
    plan = action_plan(V, k, 4)
    sampled = [i for i, s in enumerate(plan) if s.forced is None]
    assert len(out.logits) == len(sampled)
    for b, p in enumerate(prompts):  # each row alone, no padding, one full forward pass
        full = _full_forward_logits(model, torch.cat([torch.as_tensor(p), out.tokens[b]]), chunk_mask)
        ref = full[[len(p) + i - 1 for i in sampled]]
        got = torch.stack([step[b] for step in out.logits])
        assert (ref - got).abs().max().item() < 1e-4


@pytest.mark.parametrize("d", [4, 7])
def test_parallel_chunk_decoding_equals_one_by_one(model, d):
    prompts = _prompts(3)
    par = generate_actions(model, V, prompts, 5, d)
    assert torch.equal(par, generate_actions(model, V, prompts, 5, d, parallel=False))
    # a prompt that ends inside an open action block: its new blocks still start fresh
    open_block = [np.concatenate([prompts[0], [V.boa, V.action_ids(3)]])]
    assert torch.equal(
        decode_chunk(model, V, open_block, 2, d).tokens,
        decode(model, V, open_block, action_plan(V, 2, d)).tokens,
    )


def _after_chunk_and_frame(n, seed):
    """SEP, a new frame and SEP: what follows an earlier chunk before the next one is decoded."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([[V.sep], frame_ids(V, rng.integers(0, 64, (3, 3))), [V.sep]]) for _ in range(n)]


def _chunk_case(model, case):
    """``(prompts, state)`` for a new chunk: after a plain prompt, or after an earlier chunk and a
    new frame, given in the prompt or continued from the state that decoded the earlier chunk."""
    prompts = _prompts(2)
    if case == "plain":
        return prompts, None
    if case == "history in the prompt":
        rng = np.random.default_rng(4)
        earlier = [action_ids(V, rng.integers(0, 256, (3, 4))) for _ in prompts]
        return [
            np.concatenate([p, a, f]) for p, a, f in zip(prompts, earlier, _after_chunk_and_frame(2, 4))
        ], None
    parallel = case == "continued after a parallel chunk"
    _, state = generate_actions(model, V, prompts, 3, 4, return_state=True, parallel=parallel)
    return _after_chunk_and_frame(2, 4), state


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "history in the prompt",
        "continued after a parallel chunk",
        "continued after a one-by-one chunk",
    ],
)
def test_parallel_chunk_decoding_follows_the_mask_after_an_earlier_chunk_and_a_frame(model, case):
    """Side by side or one by one, a chunk gets the same tokens and logits, and those of one full
    forward pass under masks.attention_mask: the chunk sees neither its own other actions nor the
    earlier chunk before the new frame (SPEC §3: any earlier action block).

    One exception to the full-pass reference: a chunk decoded one by one leaves its keys in the
    cache as they were computed, before the frame existed; once the frame's EOI exists, the full
    mask reads that chunk as ordinary context (the masks module docstring). Both decoders still
    agree on a continuation of that state."""
    outs = []
    for parallel in (True, False):
        prompts, state = _chunk_case(model, case)
        outs.append(decode_chunk(model, V, prompts, 3, 4, return_logits=True, state=state, parallel=parallel))
    par, seq = outs
    assert torch.equal(par.tokens, seq.tokens) and torch.equal(par.ids, seq.ids)
    assert all((a - b).abs().max().item() < 1e-4 for a, b in zip(par.logits, seq.logits))
    if case == "continued after a one-by-one chunk":
        return
    sampled = [i for i, s in enumerate(action_plan(V, 3, 4)) if s.forced is None]
    n = par.tokens.shape[1]
    for b, row in enumerate(par.ids):
        row = row[row != V.pad]  # each row alone, no padding, one full forward pass
        full = _full_forward_logits(model, row, chunk_mask=True)
        ref = full[[len(row) - n + i - 1 for i in sampled]]
        assert (ref - torch.stack([step[b] for step in par.logits])).abs().max().item() < 1e-4


def test_a_parallel_chunk_state_continues_like_a_one_by_one_state(model):
    """After a chunk, SEP and a frame: same logits whether the chunk was decoded in parallel or not.

    (A full forward pass is no reference here: the frame's EOI would turn the chunk blocks into
    ordinary context, see the masks module docstring.)
    """
    prompts = _prompts(2)
    outs = []
    for parallel in (True, False):
        bins, state = generate_actions(model, V, prompts, 3, 4, return_state=True, parallel=parallel)
        outs.append(
            (bins, decode(model, V, [[V.sep]] * 2, frame_plan(V, 2, 2), state=state, return_logits=True))
        )
    (bins_p, par), (bins_s, seq) = outs
    assert torch.equal(bins_p, bins_s) and torch.equal(par.tokens, seq.tokens)
    assert all((a - b).abs().max().item() < 1e-4 for a, b in zip(par.logits, seq.logits))


def test_chunk_mask_changes_later_actions_only(model):
    prompts = _prompts(1)
    plan = action_plan(V, 3, 4)
    a = decode(model, V, prompts, plan, chunk_mask=True, return_logits=True)
    b = decode(model, V, prompts, plan, chunk_mask=False, return_logits=True)
    assert torch.allclose(a.logits[0], b.logits[0])  # first action: nothing to hide yet
    assert not torch.allclose(a.logits[-1], b.logits[-1])


@pytest.mark.parametrize("chunk_mask", [True, False])
def test_with_the_mask_an_action_does_not_depend_on_earlier_sampled_actions(model, chunk_mask):
    """SPEC §3: the actions of a chunk differ only by their positions, not by what was sampled before."""
    k, d = 4, 3
    runs = [
        decode(
            model,
            V,
            _prompts(1),
            action_plan(V, k, d),
            sampling=Sampling(temperature=5.0, generator=torch.Generator().manual_seed(seed)),
            chunk_mask=chunk_mask,
            return_logits=True,
        )
        for seed in (1, 2)
    ]
    assert not torch.equal(runs[0].tokens, runs[1].tokens)
    first_bins = [i * d for i in range(1, k)]  # the first bin of every later action
    same = [torch.allclose(runs[0].logits[i], runs[1].logits[i], atol=1e-5) for i in first_bins]
    assert all(same) if chunk_mask else not any(same)


def test_constrained_decoding_never_leaves_the_allowed_ranges(model):
    gen = torch.Generator().manual_seed(3)
    hot = Sampling(temperature=5.0, generator=gen)
    bins = generate_actions(model, V, _prompts(4), 5, 7, sampling=hot)
    assert bins.shape == (4, 5, 7) and bins.min() >= 0 and bins.max() < V.action_bins
    out = decode(model, V, _prompts(2), action_plan(V, 5, 7), sampling=hot)
    layout = out.tokens.view(2, 5, 9)
    assert (layout[:, :, 0] == V.boa).all() and (layout[:, :, -1] == V.eoa).all()
    assert V.is_action_bin(layout[:, :, 1:-1]).all()
    wp = _world_prompts()
    out = decode(
        model, V, wp, frame_plan(V, 3, 4), sampling=Sampling(temperature=5.0, top_k=7, generator=gen)
    )
    template = torch.as_tensor(frame_template(V, 3, 4))
    fixed = template >= 0
    assert (out.tokens[:, fixed] == template[fixed]).all()
    assert V.is_image_code(out.tokens[:, ~fixed]).all()
    codes = generate_frame(model, V, wp, (3, 4), sampling=hot)
    assert codes.shape == (2, 3, 4) and codes.min() >= 0 and codes.max() < V.image_codes


def test_high_temperature_sampling_actually_varies(model):
    gen = torch.Generator().manual_seed(0)
    bins = generate_actions(model, V, _prompts(1), 10, 7, sampling=Sampling(temperature=5.0, generator=gen))
    assert len(torch.unique(bins)) > 20  # sampling, not argmax: the constraint is not a collapse


def test_batched_equals_one_by_one(model):
    prompts = _prompts(3)
    batched = generate_actions(model, V, prompts, 5, 4)
    wp = _world_prompts(3) + [_prompts(1)[0]]
    frames = generate_frame(model, V, wp, (3, 4))
    for i, p in enumerate(prompts):
        assert torch.equal(generate_actions(model, V, [p], 5, 4)[0], batched[i])
    for i, p in enumerate(wp):
        assert torch.equal(generate_frame(model, V, [p], (3, 4))[0], frames[i])


def test_seeded_sampling_is_reproducible(model):
    def run():
        sampling = Sampling(temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
        return generate_actions(model, V, _prompts(2), 5, 4, sampling=sampling)

    assert torch.equal(run(), run())


def test_world_model_rollout_continues_from_the_state(model):
    """Frame, then the next action appended to the cache, then the next frame: equals decoding the
    whole prefix afresh. (It need not equal one full pass over the finished sequence: once the new
    frame's EOI exists, the appended action is no longer a chunk block, see worldvla.model.masks.)"""
    rng = np.random.default_rng(5)
    wp = _world_prompts(2, seed=1)
    codes, state = generate_frame(model, V, wp, (3, 4), return_state=True)
    assert codes.shape == (2, 3, 4)
    more = [np.concatenate([[V.sep], action_ids(V, rng.integers(0, 256, (1, 4))), [V.sep]]) for _ in wp]
    plan = frame_plan(V, 3, 4)
    out = decode(model, V, more, plan, state=state, return_logits=True)
    sampled = [i for i, s in enumerate(plan) if s.forced is None]
    for b in range(2):
        first = state.ids[b, : len(wp[0]) + len(plan)].cpu()  # both world prompts have the same length
        seq = torch.cat([first, torch.as_tensor(more[b]), out.tokens[b]])
        assert len(out.logits) == len(sampled)
        fresh = generate_frame(model, V, [seq[: len(seq) - len(plan)]], (3, 4))[0]
        assert torch.equal(
            fresh, V.image_codes_of(out.tokens[b, torch.as_tensor(frame_template(V, 3, 4)) < 0]).view(3, 4)
        )
    with pytest.raises(ValueError, match="equal length"):
        decode(model, V, [more[0], more[1][:-1]], plan, state=out.state)
    with pytest.raises(ValueError, match="already continued"):
        decode(model, V, more, plan, state=state)


def test_empty_prompt_is_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate_actions(model, V, [np.array([], dtype=np.int64)], 1, 2)


@pytest.mark.parametrize("parallel", [True, False])
def test_mean_readout_takes_the_bin_nearest_to_the_expected_one(model, parallel):
    """Every bin read out is round(E[bin]) under the softmax of that slot's logits; the
    argmax readout of the same prompts differs (an untrained model is far from one-hot)."""
    prompts = _prompts(3)
    mean = Sampling(readout="mean")
    out = decode_chunk(model, V, prompts, 5, 4, sampling=mean, return_logits=True, parallel=parallel)
    bins = out.tokens.view(3, 5, 6)[:, :, 1:-1].reshape(3, -1) - V.action_start  # (B, K·D) in slot order
    index = torch.arange(V.action_bins, dtype=torch.float32)
    for j, logits in enumerate(out.logits):
        probs = torch.softmax(logits[:, V.action_start : V.action_start + V.action_bins].float(), -1)
        assert torch.equal(bins[:, j], (probs @ index).round().long())
    greedy = generate_actions(model, V, prompts, 5, 4, parallel=parallel)
    assert not torch.equal(
        greedy, generate_actions(model, V, prompts, 5, 4, sampling=mean, parallel=parallel)
    )


def test_mean_readout_between_two_modes_and_its_errors():
    logits = torch.full((1, 300), -1e9)
    logits[0, 10 + 200] = np.log(0.6)  # bins start at id 10
    logits[0, 10 + 100] = np.log(0.4)
    bins = Slot(low=10, high=266, ordered=True)
    assert _sample(logits, bins, Sampling()).item() == 10 + 200
    assert _sample(logits, bins, Sampling(readout="mean")).item() == 10 + 160
    assert _sample(logits, Slot(low=10, high=266), Sampling(readout="mean")).item() == 10 + 200  # unordered
    with pytest.raises(ConfigError, match="readout"):
        Sampling(readout="median")
    with pytest.raises(ConfigError, match="deterministic"):
        Sampling(temperature=1.0, readout="mean")


@pytest.mark.parametrize(
    "options, phrase",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1.0, "top_k": 0}, "top_k"),
    ],
)
def test_sampling_options_are_validated_when_built(options, phrase):
    with pytest.raises(ConfigError, match=phrase):
        Sampling(**options)
