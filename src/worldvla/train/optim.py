"""AdamW with decoupled weight decay, warmup + cosine/constant schedule, clipping, precision.

Weight decay (0.1, SPEC §5) applies to the weight *matrices* of attention, MLP and the
output head only. Norm gains, biases and embedding tables are not decayed: decay pulls
them towards zero, which for a norm gain shrinks the activations and for an embedding row
of a rare token (an action bin or image code seen seldom) erases what little it learned;
this is the usual practice of GPT-style training (nanoGPT, Llama). Betas (0.9, 0.95).

The learning rate is a pure function of the step (:func:`lr_at`), so a resumed run needs
no scheduler state. Linear warmup from ``lr/warmup`` to ``lr`` over ``warmup_steps``,
then either constant (reference recipe) or a cosine decay to ``min_lr_ratio·lr`` at
``steps``. A run stopped early by a time budget keeps the schedule of the configured
``steps`` (its LR is simply not annealed to the end).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from worldvla.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices and everything else (see module docstring)."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    seen = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # The fused/foreach kernels differ in reduction order; `foreach=False` keeps the update
    # independent of how the parameters are grouped, which the resume test relies on.
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        foreach=None if torch.cuda.is_available() else False,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip to ``max_norm`` (0 = only measure) and return the pre-clip global norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor reduced over the shards
        norm = norm.full_tensor()
    return float(norm)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast (fp32 master weights and optimizer) on CPU and GPU, or nothing for fp32.

    Under FSDP the :class:`MixedPrecisionPolicy` casts the parameters instead, and this is
    disabled by the caller.
    """
    if precision == "bf16" and enabled:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
