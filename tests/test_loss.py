"""The two loss forms of SPEC §4, the z-loss, global normalization and the metrics."""

from __future__ import annotations

import math

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


def _batch(image_weight: float):
    cache = InMemoryCache.synthetic(n_episodes=2, length=6, grid=(2, 3), action_dim=2, codebook_size=16)
    vocab = Vocab.build(VocabConfig(image_codes=16))
    bins = encode_actions(cache.actions, ActionTokenizer(ActionStats.from_actions(cache.actions)))
    layout = DataLayout(action_dim=2, grid=(2, 3), history=2, chunk_len=2)
    args = (cache, [0, 1], layout, vocab, ByteTokenizer(), bins, image_weight)
    a, w = ActionSamples(*args), WorldSamples(*args)
    batch = collate([a[0], w[1], a[3], w[4]], [ACTION, WORLD, ACTION, WORLD], vocab)
    return batch, vocab


def _norm(batch):
    return LossNorm.from_global_sums(LossNorm.local_sums([batch]))


def _select(full_logits, batch):
    rows, cols = target_index(batch)
    return full_logits[rows, cols], rows, cols


def test_reference_form_is_per_class_weighted_cross_entropy():
    batch, vocab = _batch(ALPHA)
    torch.manual_seed(0)
    full = torch.randn(*batch.ids.shape, vocab.size)  # (B, L, V)
    logits, rows, cols = _select(full, batch)
    loss, _ = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), "reference", ALPHA, z_loss=0.0)
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
    batch, vocab = _batch(1.0)  # the split form's samples weigh every target 1
    torch.manual_seed(1)
    full = torch.randn(*batch.ids.shape, vocab.size)
    logits, rows, cols = _select(full, batch)
    loss, stats = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), "split", ALPHA, z_loss=0.0)
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
    batch, vocab = _batch(ALPHA)
    torch.manual_seed(2)
    logits = torch.randn(int((batch.weights[:, 1:] > 0).sum()), vocab.size) * 3
    rows, cols = target_index(batch)
    base, _ = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), "reference", ALPHA, z_loss=0.0)
    with_z, _ = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), "reference", ALPHA, z_loss=1e-5)
    want = 1e-5 * torch.logsumexp(logits, -1).square().mean()
    assert (with_z - base).item() == pytest.approx(want.item(), abs=2e-6)  # fp32 difference of ~7


@pytest.mark.parametrize("form", ["reference", "split"])
def test_micro_batches_with_global_norm_equal_the_full_batch(form):
    """Summing micro-batch losses normalized by step-wide counts == the loss of the whole batch."""
    batch, vocab = _batch(ALPHA if form == "reference" else 1.0)
    torch.manual_seed(3)
    full = torch.randn(*batch.ids.shape, vocab.size, requires_grad=True)
    logits, rows, cols = _select(full, batch)
    whole, _ = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), form, ALPHA)
    (g_whole,) = torch.autograd.grad(whole, full)
    halves = [
        type(batch)(batch.ids[s], batch.weights[s], batch.is_world[s], batch.lengths[s])
        for s in (slice(0, 1), slice(1, 4))
    ]
    norm = LossNorm.from_global_sums(LossNorm.local_sums(halves))
    total = 0.0
    for s, h in zip((slice(0, 1), slice(1, 4)), halves):
        lg, r, c = _select(full[s], h)
        total = total + compute_loss(lg, h, r, c, vocab, norm, form, ALPHA)[0]
    (g_parts,) = torch.autograd.grad(total, full)
    assert total.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_parts, g_whole, atol=1e-9)
    # Two "ranks" with world_size=2: each loss is scaled so that the average is the whole loss.
    norm2 = LossNorm.from_global_sums(LossNorm.local_sums(halves), world_size=2)
    per_rank = []
    for s, h in zip((slice(0, 1), slice(1, 4)), halves):
        lg, r, c = _select(full[s], h)
        per_rank.append(compute_loss(lg, h, r, c, vocab, norm2, form, ALPHA)[0])
    assert (sum(per_rank) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_accuracy_metrics_count_bins_and_codes():
    batch, vocab = _batch(ALPHA)
    rows, cols = target_index(batch)
    targets = batch.ids[rows, cols + 1]
    logits = torch.zeros(len(targets), vocab.size)
    logits[torch.arange(len(targets)), targets] = 10.0  # perfect predictions ...
    is_bin = vocab.is_action_bin(targets)
    first_bin = int(torch.nonzero(is_bin)[0])
    logits[first_bin, targets[first_bin]] = -10.0  # ... except one action bin
    _, stats = compute_loss(logits, batch, rows, cols, vocab, _norm(batch), "reference", ALPHA)
    m = summarize(stats)
    assert m["image_acc"] == 1.0
    n_bins = int(is_bin.sum())
    assert m["action_acc"] == pytest.approx((n_bins - 1) / n_bins)
    assert m["action_loss"] > 0 and math.isfinite(m["world_loss"])


def test_unknown_form_is_rejected():
    batch, vocab = _batch(ALPHA)
    rows, cols = target_index(batch)
    with pytest.raises(ValueError, match="loss form"):
        compute_loss(torch.zeros(len(rows), vocab.size), batch, rows, cols, vocab, _norm(batch), "mean")
