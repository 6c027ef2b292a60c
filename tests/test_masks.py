"""The attention mask against an independent, loop-based reading of SPEC §3."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import worldvla
from worldvla.model.masks import attention_mask
from worldvla.sequence import action_ids, build_action_sample, build_world_sample, frame_ids
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import Vocab, VocabConfig

# With state tokens, so that action samples with a state block are in every random test.
V = Vocab.build(VocabConfig(image_codes=32, action_bins=16, state_bins=8))
T = ByteTokenizer()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a shared machine (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference_mask(ids: list[int], vocab: Vocab, chunk_mask: bool) -> np.ndarray:
    """SPEC §3 spelled out with loops: find the blocks by scanning, then decide every (i, j)."""
    n = len(ids)
    blocks = []  # (start, end), inclusive; an unterminated block runs to the end
    i = 0
    while i < n:
        if ids[i] == vocab.boa:
            j = i
            while j + 1 < n and ids[j] != vocab.eoa:
                j += 1
            blocks.append((i, j))
            i = j + 1
        else:
            i += 1
    last_image_end = max([k for k in range(n) if ids[k] == vocab.eoi], default=-1)
    chunk_blocks = [b for b in blocks if b[0] > last_image_end]

    def block_of(k):
        for b in blocks:
            if b[0] <= k <= b[1]:
                return b
        return None

    def chunk_block_of(k):
        for b in chunk_blocks:
            if b[0] <= k <= b[1]:
                return b
        return None

    m = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for k in range(q + 1):  # causal
            allowed = ids[k] != vocab.pad
            if chunk_mask:
                bq, bk = chunk_block_of(q), block_of(k)
                if bq is not None and bk is not None and bk[0] < bq[0]:  # any earlier action block
                    allowed = False
            m[q, k] = allowed
        m[q, q] = True  # a PAD query sees itself so that no row is empty
    return m


def _frame(rng):
    return rng.integers(0, V.image_codes, (int(rng.integers(1, 3)), int(rng.integers(1, 4))))


def _action_sample(rng):
    frames = [_frame(rng) for _ in range(rng.integers(1, 4))]
    chunk = rng.integers(0, V.action_bins, (rng.integers(1, 5), rng.integers(1, 5)))
    state = rng.integers(0, V.state_bins, rng.integers(1, 5)) if rng.random() < 0.5 else None
    return build_action_sample(V, T, "go", frames, chunk, state_bins=state).ids


def _world_sample(rng):
    f = _frame(rng)
    nxt = rng.integers(0, V.image_codes, f.shape)
    return build_world_sample(V, T, f, rng.integers(0, V.action_bins, rng.integers(1, 5)), nxt).ids


def _mixture(rng):
    parts = [[V.bos]]
    for _ in range(rng.integers(1, 7)):
        kind = rng.integers(0, 4)
        if kind == 0:
            parts.append(V.text_ids(rng.integers(0, 256, rng.integers(1, 5))))
        elif kind == 1:
            parts.append(frame_ids(V, _frame(rng)))
        elif kind == 2:
            parts.append(action_ids(V, rng.integers(0, V.action_bins, (rng.integers(1, 4), 3))))
        else:
            parts.append([V.sep])
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def random_sequence(rng) -> list[int]:
    """Real layouts (action and world samples, packed pairs), their prefixes, random mixtures."""
    kind = rng.integers(0, 4)
    if kind == 0:
        ids = _action_sample(rng)
    elif kind == 1:
        ids = _world_sample(rng)
    elif kind == 2:  # two samples in one row: action blocks before the last image, then a chunk
        ids = np.concatenate([_world_sample(rng), _action_sample(rng)])
    else:
        ids = _mixture(rng)
    if rng.random() < 0.4:  # a prefix, as seen while decoding: may end inside an action block
        ids = ids[: rng.integers(1, len(ids) + 1)]
    elif rng.random() < 0.3:  # an explicit unterminated trailing block
        ids = np.concatenate([ids, [V.boa], V.action_ids(rng.integers(0, V.action_bins, rng.integers(0, 3)))])
    return [int(x) for x in ids]


def pad_batch(seqs, rng):
    longest = max(map(len, seqs)) + int(rng.integers(0, 3))
    rows = []
    for s in seqs:
        pad = [V.pad] * (longest - len(s))
        rows.append(pad + s if rng.random() < 0.5 else s + pad)
    return rows


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), chunk_mask=st.booleans())
def test_mask_matches_bruteforce_reference_on_random_sequences(seed, chunk_mask):
    rng = np.random.default_rng(seed)
    rows = pad_batch([random_sequence(rng) for _ in range(rng.integers(1, 4))], rng)
    got = worldvla.attention_mask(torch.tensor(rows), V, chunk_mask=chunk_mask)
    assert got.dtype == torch.bool and got.shape == (len(rows), len(rows[0]), len(rows[0]))
    for b, row in enumerate(rows):
        assert np.array_equal(got[b].numpy(), reference_mask(row, V, chunk_mask)), f"row {b}: {row}"


def test_action_sample_chunk_actions_see_images_but_not_each_other():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, V.image_codes, (2, 2)) for _ in range(2)]
    s = build_action_sample(V, T, "push", frames, rng.integers(0, V.action_bins, (3, 2)))
    ids = torch.tensor(s.ids)
    m = worldvla.attention_mask(ids, V)[0]
    boas = (ids == V.boa).nonzero().flatten().tolist()
    eoi = (ids == V.eoi).nonzero().flatten().max().item()
    second, third = boas[1], boas[2]
    assert m[third, : eoi + 1].all()  # the whole prompt, images included
    assert not m[third, second : second + 4].any()  # the previous action block (BOA, 2 bins, EOA)
    assert not m[third, boas[0] : boas[0] + 4].any()
    assert not m[second + 2, boas[0] : boas[0] + 4].any()
    assert m[second + 2, second : second + 3].all()  # causal inside its own block
    assert m[-1].all()  # the final SEP is in no block: it sees the whole chunk
    plain = worldvla.attention_mask(ids, V, chunk_mask=False)[0]
    assert torch.equal(plain, torch.tril(torch.ones_like(plain)))


def test_state_block_is_context_not_an_action_block():
    """A state block after the images: every chunk action sees all of it, it is causal itself,
    and the mask is exactly the mask of the same sample with the state ids read as text."""
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, V.image_codes, (2, 2)) for _ in range(2)]
    state = np.array([0, 3, V.state_bins - 1])
    s = build_action_sample(V, T, "push", frames, rng.integers(0, V.action_bins, (3, 2)), state_bins=state)
    ids = torch.tensor(s.ids)
    m = worldvla.attention_mask(ids, V)[0]
    bos_s = int((ids == V.bos_state).nonzero().item())
    eos_s = int((ids == V.eos_state).nonzero().item())
    assert eos_s - bos_s == len(state) + 1 and bos_s > int((ids == V.eoi).nonzero().max())
    assert ids[eos_s + 1] == V.sep and s.weights[: eos_s + 2].sum() == 0  # context, no loss
    boas = (ids == V.boa).nonzero().flatten().tolist()
    for b in boas:  # every action of the chunk, every token of its block, sees the whole state
        assert m[b : b + 4, bos_s : eos_s + 1].all()
    assert not m[boas[2], boas[1] : boas[1] + 4].any()  # the chunk rule still holds
    causal = torch.tril(torch.ones(len(ids), len(ids), dtype=torch.bool))
    assert torch.equal(m[bos_s : eos_s + 1], causal[bos_s : eos_s + 1])
    as_text = ids.clone()
    as_text[bos_s : eos_s + 1] = V.text_ids(torch.arange(eos_s + 1 - bos_s))
    assert torch.equal(m, worldvla.attention_mask(as_text, V)[0])
    assert np.array_equal(m.numpy(), reference_mask(s.ids.tolist(), V, chunk_mask=True))


def test_world_sample_mask_is_purely_causal():
    rng = np.random.default_rng(1)
    s = build_world_sample(
        V, T, rng.integers(0, 32, (2, 2)), rng.integers(0, 16, 3), rng.integers(0, 32, (2, 2))
    )
    ids = torch.tensor(s.ids)
    m = worldvla.attention_mask(ids, V)[0]
    assert torch.equal(m, torch.tril(torch.ones_like(m)))


def test_rows_for_new_queries_equal_the_full_mask():
    rng = np.random.default_rng(2)
    for _ in range(30):
        ids = torch.tensor(pad_batch([random_sequence(rng) for _ in range(2)], rng))
        full = worldvla.attention_mask(ids, V)
        start = int(rng.integers(0, ids.shape[1] + 1))
        assert torch.equal(attention_mask(ids, V, query_start=start), full[:, start:])


@pytest.mark.parametrize("make", [_action_sample, _world_sample])
def test_prefix_rows_equal_full_rows_for_spec_layouts(make):
    """What cached decoding relies on: a row never changes when later tokens arrive (SPEC §2 layouts)."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        ids = torch.tensor(make(rng))
        full = attention_mask(ids, V)[0]
        for cut in range(1, len(ids) + 1):
            assert torch.equal(attention_mask(ids[:cut], V, query_start=cut - 1)[0, 0], full[cut - 1, :cut])


def test_padding_queries_see_only_themselves_and_no_row_is_empty():
    ids = torch.tensor([[V.pad, V.pad, V.bos, V.sep], [V.bos, V.sep, V.pad, V.pad]])
    m = worldvla.attention_mask(ids, V)
    assert m.any(dim=-1).all()
    assert m[0, 0].tolist() == [True, False, False, False]
    assert m[0, 3].tolist() == [False, False, True, True]
    assert m[1, 3].tolist() == [True, True, False, True]


@pytest.mark.parametrize("vocab", [V, Vocab.chameleon_reference()])
def test_mask_uses_the_vocab_layout(vocab):
    seq = [vocab.bos, vocab.boi, vocab.eoi, vocab.boa, vocab.action_ids(1), vocab.eoa, vocab.boa]
    seq.append(vocab.action_ids(2))
    m = worldvla.attention_mask(torch.tensor([seq]), vocab)[0]
    assert not m[6, 3:6].any() and not m[7, 3:6].any() and m[7, :3].all() and m[7, 6:8].all()


def test_action_blocks_before_the_last_image_are_hidden_from_a_chunk_too():
    a = list(action_ids(V, np.array([[1, 2]])))
    seq = [V.bos, *frame_ids(V, np.zeros((1, 1), int)), *a, *frame_ids(V, np.ones((1, 1), int)), *a, *a]
    m = attention_mask(torch.tensor(seq), V)[0]
    first, second, third = [i for i, t in enumerate(seq) if t == V.boa]
    assert not m[second:, first : first + 4].any()  # SPEC §3: any earlier action block is hidden
    assert not m[third:, second : second + 4].any()  # earlier chunk block: hidden


def test_query_start_out_of_range_is_refused():
    with pytest.raises(ValueError, match="query_start"):
        attention_mask(torch.tensor([[V.bos, V.sep]]), V, query_start=3)
