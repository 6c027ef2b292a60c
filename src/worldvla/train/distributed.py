"""Data parallelism applied from outside the single-device model (STYLE §1, torchtitan).

``worldvla train`` under ``torchrun --nproc_per_node=N`` reads ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` from the environment and initializes a process group (NCCL on GPUs, gloo on
CPU). The model code never changes; this module wraps it:

- **DDP** (default): every rank holds the full model; gradients are averaged.
- **FSDP2** (``fsdp=True``, for large presets, reference recipe SPEC §5): ``fully_shard``
  on every decoder block and then on the root, with
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` when ``precision=bf16``:
  parameters, gradients and optimizer states are sharded across ranks, the sharded fp32
  parameters are the master weights, compute runs in bf16 and gradients are reduced in fp32.
- **Activation checkpointing** (``activation_checkpointing=True``): each block recomputes
  its activations in the backward pass instead of storing them (the block's own switch).

The loss is normalized by global token counts (:class:`worldvla.train.loss.LossNorm`), so
with the same global batch, N ranks produce the gradients of one process
(``tests/test_distributed.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from worldvla.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str | None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: the local GPU if there is one, else the CPU."""
    if spec in (None, "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (or stay single-process without one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=pick_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small tensor over ranks (in place and returned); a no-op on one process."""
    if info.distributed:
        # gloo and NCCL both reduce float64 on the tensor's device.
        dev = t.device
        work = t.to(info.device)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        t.copy_(work.to(dev))
    return t


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks (the unit of FSDP sharding and activation checkpointing)."""
    for name in ("blocks", "layers"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, (nn.ModuleList, list)):
            return list(blocks)
    raise ConfigError(f"{type(model).__name__} exposes no list of decoder blocks (.blocks)")


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Turn on the per-block recomputation switch of the model."""
    if hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(True)
        return
    for block in decoder_blocks(model):
        if not hasattr(block, "activation_checkpointing"):
            raise ConfigError(f"{type(block).__name__} has no activation_checkpointing switch")
        block.activation_checkpointing = True


def parallelize(module: nn.Module, model: nn.Module, info: DistInfo, fsdp: bool, precision: str) -> nn.Module:
    """Wrap ``module`` (whose forward runs ``model``) for data parallelism; returns the module to call.

    ``model`` is the single-device transformer inside ``module``; its blocks are sharded
    individually so only one block's full parameters exist at a time.
    """
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not info.distributed:
            return module  # one process: nothing to shard
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if precision == "bf16"
            else MixedPrecisionPolicy()
        )
        blocks = decoder_blocks(model)
        for i, block in enumerate(blocks):
            # The last block's parameters are needed again right away in backward: keep them.
            fully_shard(block, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(module, mp_policy=mp)
        return module
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    return module
