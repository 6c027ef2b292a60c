"""Cross-entropy on the target tokens in the two forms of SPEC §4, plus the z-loss.

Notation: the *targets* of a batch are the positions whose sample weight is > 0
(everything after the ``|`` of SPEC §2; context and PAD have weight 0). ``ce_i`` is the
cross-entropy of target ``i``, ``w_i`` its sample weight (1, or the world-model
``changed_weight`` on image codes that change, :func:`worldvla.sequence.build_world_sample`),
``A`` the targets of action-model samples, ``W`` the targets of world-model samples,
``T = A ∪ W``. The image-loss weight α (SPEC §4) is not in the samples: this module applies
it, knowing the image-code targets from the vocabulary.

- ``"reference"`` (what the reference code trains with): one weighted mean
  ``L = Σ_T a_i·w_i·ce_i / Σ_T a_i·w_i`` with ``a_i = α`` on image-code targets and 1
  elsewhere (:func:`loss_weights`) — a per-class weight of α on image codes inside a
  weighted-mean cross-entropy. With α = 0.04 a world-model sample's ~65 image codes
  weigh about as much as a few structural tokens, so the action tokens dominate.
- ``"split"`` (the paper's formula): ``L = L_action + α·L_world`` with
  ``L_action = mean_A ce_i`` (action bins, BOA/EOA and the closing SEP of action-model
  samples) and ``L_world = mean_W ce_i`` (every target of world-model samples: the image
  codes and the frame's BOI, grid, ROW_SEP, EOI tokens and the closing SEP). The sample
  weights only mark the targets here, and α enters only through this formula. A term whose
  set is empty in a step is 0.

Both add the z-loss ``z · mean_T logsumexp(logits_i)²`` (z = 1e-5, reference), which keeps
the softmax normalizer near 1 in bf16.

Every mean is over the *whole optimizer step*: all micro-batches of gradient accumulation
and all data-parallel ranks. :class:`LossNorm` carries those global denominators, so the
sum of the micro-batch losses (and the DDP/FSDP gradient average) equals the loss of the
full global batch computed in one piece — which is what makes N processes match one.

Logged metrics are form-independent: ``action_loss`` = mean_A ce, ``world_loss`` = mean_W ce,
``action_acc`` = argmax accuracy on action-bin targets, ``image_acc`` = on image-code targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldvla.data.datasets import Batch
from worldvla.vocab import Vocab

LOSS_FORMS = ("reference", "split")

# Order of the running sums returned by compute_loss (summed over micro-batches and ranks).
STAT_NAMES = (
    "action_ce",
    "action_n",
    "world_ce",
    "world_n",
    "action_correct",
    "action_bins",
    "image_correct",
    "image_codes",
    "z",
    "targets",
)


@dataclass(frozen=True)
class LossNorm:
    """Denominators of the means over one optimizer step, divided by the number of ranks.

    Dividing by the world size compensates the gradient *average* of DDP/FSDP: each rank's
    loss is ``Σ_local / (Σ_global / world_size)``, so the averaged gradient is that of
    ``Σ_global / Σ_global``.
    """

    weight_sum: float
    target_count: float
    action_count: float
    world_count: float

    @staticmethod
    def local_sums(batches: list[Batch], vocab: Vocab, image_weight: float) -> torch.Tensor:
        """``(4,)`` float64 sums of this rank's micro-batches, to be all-reduced; the weight sum
        with α on image codes, as :func:`compute_loss` weighs them."""
        out = torch.zeros(4, dtype=torch.float64)
        for b in batches:
            t = (b.weights[:, 1:] > 0).double()  # (B, L-1): the targets 1..L-1
            w = loss_weights(b.ids[:, 1:], b.weights[:, 1:], vocab, image_weight).double()
            world = b.is_world[:, None].double()
            out += torch.stack([w.sum(), t.sum(), (t * (1 - world)).sum(), (t * world).sum()])
        return out

    @classmethod
    def from_global_sums(cls, sums: torch.Tensor, world_size: int = 1) -> LossNorm:
        s = (sums.double() / world_size).tolist()
        return cls(*s)


def loss_weights(
    targets: torch.Tensor, weights: torch.Tensor, vocab: Vocab, image_weight: float
) -> torch.Tensor:
    """The reference form's weight of each target: its sample weight, times α where the
    target is an image code (``targets`` and ``weights`` aligned, any shape; float32)."""
    weights = weights.float()
    return torch.where(vocab.is_image_code(targets), weights * image_weight, weights)


def target_index(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the positions whose logits predict a target.

    The logits at position ``i`` predict ``ids[i+1]``; a target at column ``c`` (weight > 0,
    always ``c >= 1``) is predicted at column ``c - 1``.
    """
    rows, cols = torch.nonzero(batch.weights[:, 1:] > 0, as_tuple=True)
    return rows, cols  # predicting column `cols`, target at `cols + 1`


def compute_loss(
    logits: torch.Tensor,
    batch: Batch,
    rows: torch.Tensor,
    cols: torch.Tensor,
    vocab: Vocab,
    norm: LossNorm,
    form: str,
    image_weight: float,
    z_loss: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one micro-batch and its ``(len(STAT_NAMES),)`` metric sums.

    ``logits`` (N, V) are the model's outputs at the N positions ``(rows, cols)`` of
    :func:`target_index` only — the vocabulary matmul is skipped everywhere else.
    ``image_weight`` is α (module docstring); ``norm`` must come from the same α.
    """
    if form not in LOSS_FORMS:
        raise ValueError(f"unknown loss form {form!r} (use one of {LOSS_FORMS})")
    logits = logits.float()  # (N, V); CE in fp32 even under bf16 autocast
    targets = batch.ids[rows, cols + 1]  # (N,)
    world = batch.is_world[rows]  # (N,)
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    ce = lse - logits.gather(1, targets[:, None]).squeeze(1)  # (N,)
    zero = logits.new_zeros(())
    if form == "reference":
        weights = loss_weights(targets, batch.weights[rows, cols + 1], vocab, image_weight)  # (N,)
        main = (weights * ce).sum() / norm.weight_sum if norm.weight_sum > 0 else zero
    else:
        a = ce[~world].sum() / norm.action_count if norm.action_count > 0 else zero
        w = ce[world].sum() / norm.world_count if norm.world_count > 0 else zero
        main = a + image_weight * w
    z = lse.square()
    loss = main + (z_loss * z.sum() / norm.target_count if norm.target_count > 0 and z_loss > 0 else zero)

    with torch.no_grad():
        pred = logits.argmax(dim=-1)
        correct = pred == targets
        is_bin = vocab.is_action_bin(targets)
        is_code = vocab.is_image_code(targets)
        stats = torch.stack(
            [
                ce[~world].sum(),
                (~world).sum(),
                ce[world].sum(),
                world.sum(),
                (correct & is_bin).sum(),
                is_bin.sum(),
                (correct & is_code).sum(),
                is_code.sum(),
                z.sum(),
                torch.tensor(len(targets), device=logits.device),
            ]
        ).double()
    return loss, stats


def summarize(stats: torch.Tensor) -> dict[str, float]:
    """Metric sums (over micro-batches and ranks) -> the logged means."""
    s = dict(zip(STAT_NAMES, stats.double().tolist()))

    def ratio(a: str, b: str) -> float:
        return s[a] / s[b] if s[b] > 0 else float("nan")

    return {
        "action_loss": ratio("action_ce", "action_n"),
        "world_loss": ratio("world_ce", "world_n"),
        "action_acc": ratio("action_correct", "action_bins"),
        "image_acc": ratio("image_correct", "image_codes"),
        "z": ratio("z", "targets"),
    }
