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

V = Vocab.build(VocabConfig(image_codes=32, action_bins=16))
T = ByteTokenizer()


def reference_mask(ids: list[int], vocab: Vocab, chunk_mask: bool) -> np.ndarray:
    """SPEC §3 spelled out with explicit loops: blocks found by scanning, then i/j pairs."""
    n = len(ids)
    blocks = []  # (start, end) inclusive
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

    def block_of(k):
        for b, (s, e) in enumerate(blocks):
            if s <= k <= e:
                return b
        return None

    m = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for k in range(q + 1):
            allowed = ids[k] != vocab.pad
            if chunk_mask:
                bq, bk = block_of(q), block_of(k)
                if bq is not None and blocks[bq][0] > last_image_end and bk is not None and bk < bq:
                    allowed = False
            m[q, k] = allowed
        m[q, q] = True
    return m


def random_frame(rng, h=2, w=3):
    return frame_ids(V, rng.integers(0, V.image_codes, (h, w)))


def random_sequence(rng) -> list[int]:
    """Random mixtures of text, frames and action blocks, as training and decoding produce."""
    parts = [[V.bos]]
    for _ in range(rng.integers(1, 7)):
        kind = rng.integers(0, 4)
        if kind == 0:
            parts.append(list(V.text_ids(rng.integers(0, 256, rng.integers(1, 5)))))
        elif kind == 1:
            parts.append(list(random_frame(rng)))
        elif kind == 2:
            parts.append(list(action_ids(V, rng.integers(0, V.action_bins, (rng.integers(1, 4), 3)))))
        else:
            parts.append([V.sep])
    if rng.random() < 0.5:  # an unterminated trailing action block, as seen while decoding
        parts.append([V.boa] + list(V.action_ids(rng.integers(0, V.action_bins, rng.integers(0, 3)))))
    return [int(x) for p in parts for x in p]


def pad_batch(seqs, rng):
    longest = max(map(len, seqs))
    rows = []
    for s in seqs:
        pad = [V.pad] * (longest - len(s))
        rows.append(pad + s if rng.random() < 0.5 else s + pad)
    return rows


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), chunk_mask=st.booleans())
def test_mask_matches_bruteforce_reference_on_random_sequences(seed, chunk_mask):
    rng = np.random.default_rng(seed)
    rows = pad_batch([random_sequence(rng) for _ in range(rng.integers(1, 4))], rng)
    got = worldvla.attention_mask(torch.tensor(rows), V, chunk_mask=chunk_mask)
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
    assert not m[second + 2, boas[0] : boas[0] + 4].any()
    assert m[second + 2, second : second + 3].all()  # causal inside its own block
    plain = worldvla.attention_mask(ids, V, chunk_mask=False)[0]
    assert torch.equal(plain, torch.tril(torch.ones_like(plain)))


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
    for _ in range(20):
        ids = torch.tensor([random_sequence(rng)])
        full = worldvla.attention_mask(ids, V)
        start = int(rng.integers(0, ids.shape[1]))
        assert torch.equal(attention_mask(ids, V, query_start=start)[0], full[0, start:])


def test_padding_queries_see_only_themselves_and_no_row_is_empty():
    ids = torch.tensor([[V.pad, V.pad, V.bos, V.sep], [V.bos, V.sep, V.pad, V.pad]])
    m = worldvla.attention_mask(ids, V)
    assert m.any(dim=-1).all()
    assert m[0, 0].tolist() == [True, False, False, False]
    assert m[0, 3].tolist() == [False, False, True, True]
    assert m[1, 3].tolist() == [True, True, False, True]


@pytest.mark.parametrize("vocab", [V, Vocab.chameleon_reference()])
def test_mask_uses_the_vocab_layout(vocab):
    seq = [
        vocab.bos,
        vocab.boi,
        vocab.eoi,
        vocab.boa,
        vocab.action_ids(1),
        vocab.eoa,
        vocab.boa,
        vocab.action_ids(2),
    ]
    m = worldvla.attention_mask(torch.tensor([seq]), vocab)[0]
    assert not m[6, 3:6].any() and not m[7, 3:6].any() and m[7, :3].all()
