"""The two loss forms of SPEC §4, the z-loss, global normalization and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldvla.data.datasets import (
    ACTION,
    WORLD,
    ActionSamples,
    DataLayout,
    InMemoryCache,
    WorldSamples,
    collate,
    encode_actions,
)
from worldvla.tokenizers.action import ActionStats, ActionTokenizer
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.train.loss import LossNorm, compute_loss, summarize, target_index
from worldvla.vocab import Vocab, VocabConfig

ALPHA = 0.04


def _batch(changed_weight: float = 1.0):
    cache = InMemoryCache.synthetic(n_episodes=2, length=6, grid=(2, 3), action_dim=2, codebook_size=16)
    cache.codes[:, 0, 0] = 0  # one code that never changes from frame to frame; the others do
    vocab = Vocab.build(VocabConfig(image_codes=16))
    bins = encode_actions(cache.actions, ActionTokenizer(ActionStats.from_actions(cache.actions)))
    layout = DataLayout(action_dim=2, grid=(2, 3), history=2, chunk_len=2)
    args = (cache, [0, 1], layout, vocab, ByteTokenizer(), bins)
    a, w = ActionSamples(*args), WorldSamples(*args, changed_weight=changed_weight)
    batch = collate([a[0], w[1], a[3], w[4]], [ACTION, WORLD, ACTION, WORLD], vocab)
    return batch, vocab


def _norm(batch, vocab):
    return LossNorm.from_global_sums(LossNorm.local_sums([batch], vocab, ALPHA))


def _select(full_logits, batch):
    rows, cols = target_index(batch)
    return full_logits[rows, cols], rows, cols


def test_reference_form_is_per_class_weighted_cross_entropy():
    batch, vocab = _batch()
    torch.manual_seed(0)
    full = torch.randn(*batch.ids.shape, vocab.size)  # (B, L, V)
    logits, rows, cols = _select(full, batch)
    norm = _norm(batch, vocab)
    loss, _ = compute_loss(logits, batch, rows, cols, vocab, norm, "reference", ALPHA, z_loss=0.0)
    # The reference implementation: a class-weight vector (α on image codes) in a mean CE over
    # every next-token position, context and PAD ignored.
    class_w = torch.ones(vocab.size)
    class_w[vocab.is_image_code(torch.arange(vocab.size))] = ALPHA
    labels = batch.ids[:, 1:].clone()
    labels[batch.weights[:, 1:] == 0] = -100
    want = F.cross_entropy(
        full[:, :-1].reshape(-1, vocab.size), labels.reshape(-1), weight=class_w, ignore_index=-100
    )
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_split_form_is_action_mean_plus_alpha_world_mean():
    batch, vocab = _batch()
    torch.manual_seed(1)
    full = torch.randn(*batch.ids.shape, vocab.size)
    logits, rows, cols = _select(full, batch)
    norm = _norm(batch, vocab)
    loss, stats = compute_loss(logits, batch, rows, cols, vocab, norm, "split", ALPHA, z_loss=0.0)
    ce = F.cross_entropy(full[:, :-1].reshape(-1, vocab.size), batch.ids[:, 1:].reshape(-1), reduction="none")
    ce = ce.view(len(batch), -1)  # (B, L-1)
    target = batch.weights[:, 1:] > 0
    world = batch.is_world[:, None].expand_as(target)
    l_action = ce[target & ~world].mean()
    l_world = ce[target & world].mean()
    assert loss.item() == pytest.approx((l_action + ALPHA * l_world).item(), rel=1e-6)
    m = summarize(stats)
    assert m["action_loss"] == pytest.approx(l_action.item(), rel=1e-6)
    assert m["world_loss"] == pytest.approx(l_world.item(), rel=1e-6)


def test_z_loss_term():
    batch, vocab = _batch()
    torch.manual_seed(2)
    logits = torch.randn(int((batch.weights[:, 1:] > 0).sum()), vocab.size) * 3
    rows, cols = target_index(batch)
    norm = _norm(batch, vocab)
    base, _ = compute_loss(logits, batch, rows, cols, vocab, norm, "reference", ALPHA, z_loss=0.0)
    with_z, _ = compute_loss(logits, batch, rows, cols, vocab, norm, "reference", ALPHA, z_loss=1e-5)
    want = 1e-5 * torch.logsumexp(logits, -1).square().mean()
    assert (with_z - base).item() == pytest.approx(want.item(), abs=2e-6)  # fp32 difference of ~7


@pytest.mark.parametrize("form", ["reference", "split"])
def test_micro_batches_with_global_norm_equal_the_full_batch(form):
    """Summing micro-batch losses normalized by step-wide counts == the loss of the whole batch."""
    batch, vocab = _batch(changed_weight=3.0)
    torch.manual_seed(3)
    full = torch.randn(*batch.ids.shape, vocab.size, requires_grad=True)
    logits, rows, cols = _select(full, batch)
    whole, _ = compute_loss(logits, batch, rows, cols, vocab, _norm(batch, vocab), form, ALPHA)
    (g_whole,) = torch.autograd.grad(whole, full)
    halves = [
        type(batch)(batch.ids[s], batch.weights[s], batch.is_world[s], batch.lengths[s])
        for s in (slice(0, 1), slice(1, 4))
    ]
    norm = LossNorm.from_global_sums(LossNorm.local_sums(halves, vocab, ALPHA))
    total = 0.0
    for s, h in zip((slice(0, 1), slice(1, 4)), halves):
        lg, r, c = _select(full[s], h)
        total = total + compute_loss(lg, h, r, c, vocab, norm, form, ALPHA)[0]
    (g_parts,) = torch.autograd.grad(total, full)
    assert total.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_parts, g_whole, atol=1e-9)
    # Two "ranks" with world_size=2: each loss is scaled so that the average is the whole loss.
    norm2 = LossNorm.from_global_sums(LossNorm.local_sums(halves, vocab, ALPHA), world_size=2)
    per_rank = []
    for s, h in zip((slice(0, 1), slice(1, 4)), halves):
        lg, r, c = _select(full[s], h)
        per_rank.append(compute_loss(lg, h, r, c, vocab, norm2, form, ALPHA)[0])
    assert (sum(per_rank) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_accuracy_metrics_count_bins_and_codes():
    batch, vocab = _batch()
    rows, cols = target_index(batch)
    targets = batch.ids[rows, cols + 1]
    logits = torch.zeros(len(targets), vocab.size)
    logits[torch.arange(len(targets)), targets] = 10.0  # perfect predictions ...
    is_bin = vocab.is_action_bin(targets)
    first_bin = int(torch.nonzero(is_bin)[0])
    logits[first_bin, targets[first_bin]] = -10.0  # ... except one action bin
    _, stats = compute_loss(logits, batch, rows, cols, vocab, _norm(batch, vocab), "reference", ALPHA)
    m = summarize(stats)
    assert m["image_acc"] == 1.0
    n_bins = int(is_bin.sum())
    assert m["action_acc"] == pytest.approx((n_bins - 1) / n_bins)
    assert m["action_loss"] > 0 and math.isfinite(m["world_loss"])


def test_unknown_form_is_rejected():
    batch, vocab = _batch()
    rows, cols = target_index(batch)
    with pytest.raises(ValueError, match="loss form"):
        compute_loss(
            torch.zeros(len(rows), vocab.size), batch, rows, cols, vocab, _norm(batch, vocab), "mean", ALPHA
        )


def _weights_with_alpha_in_the_samples(batch, vocab, changed_weight):
    """The sample weights as they were built when the samples carried α: α on image-code
    targets, α·changed_weight on the world-model codes that differ from the input frame's."""
    ids = batch.ids.numpy()
    old = batch.weights.numpy().copy()
    for b in range(len(batch)):
        target = np.flatnonzero(old[b] > 0)
        codes = target[vocab.is_image_code(ids[b, target])]
        old[b, codes] = ALPHA
        if batch.is_world[b]:
            frame = np.flatnonzero(vocab.is_image_code(ids[b, : target[0]]))  # the input frame's codes
            changed = codes[ids[b, codes] != ids[b, frame]]
            old[b, changed] = np.float32(ALPHA) * np.float32(changed_weight)
    return torch.from_numpy(old)


@pytest.mark.parametrize("changed_weight", [1.0, 5.0])
@pytest.mark.parametrize("form", ["reference", "split"])
def test_alpha_applied_in_the_loss_equals_alpha_carried_by_the_samples(form, changed_weight):
    """The loss with α applied to image-code targets is the loss of samples that carried α:
    reference Σ(w·ce) / Σ w over the old weights, split mean_A ce + α·mean_W ce."""
    batch, vocab = _batch(changed_weight)
    codes = vocab.is_image_code(batch.ids) & (batch.weights > 0)
    assert (batch.weights[codes] == 1).any() and (batch.weights[codes] == changed_weight).any()
    old = _weights_with_alpha_in_the_samples(batch, vocab, changed_weight)
    torch.manual_seed(4)
    full = torch.randn(*batch.ids.shape, vocab.size)
    logits, rows, cols = _select(full, batch)
    norm = _norm(batch, vocab)
    assert norm.weight_sum == old[:, 1:].double().sum().item()
    loss, _ = compute_loss(logits, batch, rows, cols, vocab, norm, form, ALPHA, z_loss=0.0)
    ce = F.cross_entropy(full[:, :-1].reshape(-1, vocab.size), batch.ids[:, 1:].reshape(-1), reduction="none")
    ce = ce.view(len(batch), -1)  # (B, L-1)
    if form == "reference":
        w = old[:, 1:]
        want = (w * ce).sum() / w.sum()
    else:
        target = batch.weights[:, 1:] > 0
        world = batch.is_world[:, None].expand_as(target)
        want = ce[target & ~world].mean() + ALPHA * ce[target & world].mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
