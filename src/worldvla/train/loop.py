"""The joint training loop: one stream of action-model and world-model samples (SPEC §1, §5).

``train(cfg, cache, run_dir)`` reads top to bottom:

1. join the process group if run under torchrun (:mod:`.distributed`);
2. build the vocabulary, tokenizers, data layout and the mixed sample stream over the
   training episodes, plus a fixed validation set over held-out episodes
   (:mod:`.data`, which assembles them with :mod:`worldvla.data.streams`);
3. build the single-device transformer, then wrap it from outside (DDP / FSDP2,
   activation checkpointing, ``torch.compile``);
4. restore the latest checkpoint with ``resume=True`` (refusing a different config);
5. per optimizer step: fetch this rank's micro-batches, all-reduce the token counts that
   normalize the loss, forward with the SPEC §3 mask and logits only at target positions,
   backward, clip, AdamW; log, validate and checkpoint on their intervals;
6. stop at ``cfg.steps`` — or when the time budget is spent, or, with early stopping, when
   no held-out loss improves any more (:mod:`.early_stop`) — and write a final checkpoint.

``cfg.init_from`` starts a new run from another run's weights (fine-tuning); a resumed run
takes its own checkpoint's.

Sample positions: optimizer step ``s`` consumes global stream positions
``[s·B, (s+1)·B)`` (``B = batch_size``); micro-batch ``m`` of rank ``r`` takes the slice
``s·B + m·B/A + r·B/(A·W) …`` (``A = grad_accum``, ``W`` ranks). So the data seen by a step
does not depend on how it is split across accumulation and ranks.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldvla.artifacts.inference import DEFAULT_INFERENCE, InferenceDefaults
from worldvla.data.datasets import Batch, CacheLike, MixedStream
from worldvla.data.token_cache import open_cache
from worldvla.errors import ConfigError
from worldvla.model import build as model_build
from worldvla.model.build import build_model, init_ordinal_embeddings
from worldvla.model.config import ModelConfig, model_preset
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TrainConfig
from worldvla.train.data import build_data
from worldvla.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    enable_activation_checkpointing,
    init_distributed,
    parallelize,
    shutdown,
)
from worldvla.train.early_stop import BEST_DIR, EarlyStop
from worldvla.train.logs import RunLogger
from worldvla.train.loss import STAT_NAMES, LossNorm, compute_loss, summarize, target_index
from worldvla.train.optim import autocast, build_optimizer, clip_grad_norm, lr_at, set_lr
from worldvla.vocab import Vocab


# ---------------------------------------------------------------------------- model
class TargetLogits(nn.Module):
    """``forward(ids, mask, rows, cols) -> logits (N, V)`` at the N target positions only.

    The output head (a ``d_model x V`` matmul) is applied to the selected hidden states
    rather than to all ``B·L`` positions: with half of every sample being context, this
    halves the largest matmul of a small model. This module is what DDP/FSDP wrap, so
    their forward hooks run.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        model = self.model
        if hasattr(model, "hidden_states") and hasattr(model, "output_logits"):
            hidden = model.hidden_states(ids, attn_mask=mask)  # (B, L, d)
            return model.output_logits(hidden[rows, cols])  # (N, V)
        # A model without the split API: full logits, then the same rows (correct, slower).
        return model(ids, attn_mask=mask)[rows, cols]  # (N, V)


def build_model_config(cfg: TrainConfig, vocab: Vocab) -> ModelConfig:
    """The model ``cfg`` asks for, sized to ``vocab``."""
    return model_build.build_model_config(cfg.model, vocab.size, cfg.dropout)


def _attention_mask(ids: torch.Tensor, vocab: Vocab, chunk_mask: bool) -> torch.Tensor:
    from worldvla.model.masks import attention_mask

    return attention_mask(ids, vocab, chunk_mask=chunk_mask)


# ---------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # training loss of every step run in this call
    last_train: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    stopped_by_budget: bool = False
    tokens_per_s: float = float("nan")
    # Early stopping: whether the run stopped before ``cfg.steps`` because no held-out loss
    # improved, and the best validation of each kind ({kind: {"metric", "best", "step"}}).
    stopped_early: bool = False
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Wall time of the run's steps so far, over every command that trained it (the work of
    # a killed command after its last checkpoint is redone, so not counted), counted from
    # step ``wall_from_step`` (> 0 when it resumed a checkpoint written before this count).
    wall_seconds: float = 0.0
    wall_from_step: int = 0


class Trainer:
    """Holds the state of one run; :func:`train` is the entry point."""

    def __init__(
        self,
        cfg: TrainConfig,
        cache: str | Path | CacheLike,
        run_dir: str | Path,
        info: DistInfo,
        progress: bool = True,
        inference: InferenceDefaults = DEFAULT_INFERENCE,
    ) -> None:
        self.cfg = cfg
        self.inference = inference  # written into every checkpoint, not used in training
        if inference.world_guidance != 1.0 and not cfg.world_action_dropout > 0:
            raise ConfigError(
                f"the inference default world_guidance={inference.world_guidance:g} needs a model "
                f"trained with null-action world samples, and world_action_dropout is "
                f"{cfg.world_action_dropout:g}; set world_action_dropout > 0 or use another preset"
            )
        self.info = info
        self.run_dir = Path(run_dir)
        self.device = info.device
        if cfg.batch_size % (cfg.grad_accum * info.world_size):
            raise ConfigError(
                f"batch_size={cfg.batch_size} must be divisible by grad_accum x ranks = "
                f"{cfg.grad_accum} x {info.world_size}"
            )
        self.rank_batch = cfg.batch_size // (cfg.grad_accum * info.world_size)
        base = model_preset(cfg.model)
        self.data = build_data(cfg, open_cache(cache), base.max_seq_len)
        self.vocab = self.data.vocab
        self.model_cfg = build_model_config(cfg, self.vocab)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(self.model_cfg)
        if cfg.action_embedding_init == "ordinal":
            init_ordinal_embeddings(self.model, self.vocab.action_start, self.vocab.action_bins)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        if hasattr(self.model, "set_attention_kernel"):
            self.model.set_attention_kernel(cfg.attention)
        if cfg.compile:
            for block in _blocks(self.model):
                block.compile()
        if not cfg.fsdp or not info.distributed:
            self.model.to(self.device)
        self.module = parallelize(TargetLogits(self.model), self.model, info, cfg.fsdp, cfg.precision)
        self.fsdp = cfg.fsdp and info.distributed
        self.optimizer = build_optimizer(self.model, cfg)
        # Under FSDP the mixed-precision policy casts parameters; autocast would be redundant.
        self.use_autocast = not self.fsdp
        self.step = 0
        self.tokens_seen = 0
        # Wall seconds of the steps before this command, and the step that count starts at.
        self.wall_before = 0.0
        self.wall_from_step = 0
        self._t_command = time.monotonic()
        self.progress = progress
        kinds = tuple(k for k, on in (("action", cfg.use_action_data), ("world", cfg.use_world_data)) if on)
        self.early = EarlyStop(kinds, cfg.early_stop_patience)
        if cfg.early_stop_patience and self.data.val is None:
            raise ConfigError(
                "early_stop_patience needs held-out samples of every kind the run trains, and the "
                "token cache has none (val_fraction, or episodes too short)"
            )

    # ------------------------------------------------------------------ state
    def model_state(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def wall_seconds(self) -> float:
        """Wall time of the run's steps up to now, over every command that trained it."""
        return self.wall_before + time.monotonic() - self._t_command

    def optimizer_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def save(self) -> Path | None:
        model_state = self.model_state()  # collective under FSDP
        optim_state = self.optimizer_state()
        rngs = all_gather_object(ckpt.rng_state(), self.info)
        path = None
        if self.info.is_main:
            trainer_state = {
                "step": self.step,
                "data_pos": self.step * self.cfg.batch_size,
                "tokens_seen": self.tokens_seen,
                "world_size": self.info.world_size,
                "optimizer": optim_state,
                "rng": rngs,
                "early_stop": self.early.state_dict(),
                "wall_seconds": self.wall_seconds(),
                "wall_from_step": self.wall_from_step,
            }
            path = self._write(model_state, trainer_state)
        barrier(self.info)
        return path if path is not None else ckpt.latest_checkpoint(self.run_dir)

    def _write(
        self, model_state: dict[str, torch.Tensor], trainer_state: dict[str, Any], dest: Path | None = None
    ) -> Path:
        """One checkpoint of the current step (the next step checkpoint, or ``dest``)."""
        return ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            model_state,
            trainer_state,
            self.cfg,
            self.model_cfg,
            self.data.layout,
            self.vocab,
            self.data.action_stats,
            self.data.image_tokenizer,
            self.data.val_episodes,
            self.cfg.keep_last,
            episodes=self.data.episodes,
            state_stats=self.data.state_stats,
            inference=self.inference,
            dest=dest,
        )

    def save_best(self, kind: str) -> Path:
        """The current weights as ``run/best/<kind>`` (a checkpoint without optimizer state)."""
        model_state = self.model_state()  # collective under FSDP
        dest = self.run_dir / BEST_DIR / kind
        if self.info.is_main:
            trainer_state = {
                "step": self.step,
                "data_pos": self.step * self.cfg.batch_size,
                "tokens_seen": self.tokens_seen,
                "world_size": self.info.world_size,
                "best": {"kind": kind, **self.early.summary()[kind]},
            }
            self._write(model_state, trainer_state, dest)
        barrier(self.info)
        return dest

    def load_initial_weights(self, source: str | Path) -> Path:
        """Start from the weights of checkpoint ``source`` (a run or checkpoint directory): same
        model, vocabulary and image tokenizer, or ConfigError naming what differs."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        path = ckpt.resolve_checkpoint(source)
        ckpt.verify_files(path, ckpt.BUNDLE_FILES)
        d = ckpt.read_config(path)
        diffs = []
        if d.get("vocab_fingerprint") != self.vocab.fingerprint():
            diffs.append(f"vocabulary {d.get('vocab_fingerprint')} != {self.vocab.fingerprint()}")
        saved_model = d.get("model") if isinstance(d.get("model"), dict) else {}
        for k, v in self.model_cfg.__dict__.items():
            if k in saved_model and saved_model[k] != v:
                diffs.append(f"model.{k} {saved_model[k]!r} != {v!r}")
        ref = ckpt.parse_file(path, ckpt.TOKENIZER_FILE, ckpt.read_tokenizer_ref)
        now = self.data.image_tokenizer
        if ref.fingerprint and now.fingerprint and ref.fingerprint != now.fingerprint:
            diffs.append(f"image tokenizer {ref.fingerprint} != the cache's {now.fingerprint}")
        if diffs:
            raise ConfigError(
                f"init_from={source}: the checkpoint {path} does not fit this run (" + "; ".join(diffs) + ")"
            )
        weights = ckpt.load_model_state(path)
        ckpt.check_weights(weights, self.model_cfg, path)
        opts = StateDictOptions(full_state_dict=True) if self.fsdp else StateDictOptions()
        set_model_state_dict(self.model, weights, options=opts)
        return path

    def restore(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        data = self.data
        ckpt.check_resumable(
            path,
            self.cfg,
            data.layout,
            self.vocab,
            data.image_tokenizer,
            data.episodes,
            data.action_stats,
            self.model_cfg,
        )
        # Read and verify everything before changing anything: a corrupt file leaves the trainer
        # as it was, so :meth:`resume` can try an older checkpoint.
        state = ckpt.load_trainer_state(path)
        weights = ckpt.load_model_state(path)
        ckpt.check_weights(weights, self.model_cfg, path)
        step = int(state["step"])
        if int(state["data_pos"]) != step * self.cfg.batch_size:
            raise ckpt.CorruptCheckpointError(
                f"{path / ckpt.TRAINER_FILE}: data position {state['data_pos']} does not match step {step}"
            )
        opts = StateDictOptions(full_state_dict=True) if self.fsdp else StateDictOptions()
        set_model_state_dict(self.model, weights, options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
        self.step = step
        self.tokens_seen = int(state["tokens_seen"])
        self.early.load_state_dict(state.get("early_stop"))
        # Checkpoints written before the count began start it at their step.
        self.wall_before = float(state.get("wall_seconds", 0.0))
        self.wall_from_step = int(state.get("wall_from_step", step if "wall_seconds" not in state else 0))
        self._t_command = time.monotonic()
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])

    def resume(self) -> tuple[Path, list[tuple[Path, str]]]:
        """Restore the newest checkpoint of the run that verifies.

        Returns it and the newer checkpoints skipped, each with the reason. A checkpoint from
        another configuration or token cache is refused, not skipped: an older one of the same
        run would be refused for the same reason.
        """
        skipped: list[tuple[Path, str]] = []
        for path in reversed(ckpt.list_checkpoints(self.run_dir)):
            try:
                self.restore(path)
            except ckpt.CorruptCheckpointError as e:
                skipped.append((path, str(e)))
                continue
            return path, skipped
        raise ckpt.CorruptCheckpointError(
            f"{self.run_dir}: no checkpoint to resume from verifies ("
            + "; ".join(why for _, why in skipped)
            + "); nothing was changed"
        )

    # ------------------------------------------------------------------ batches
    def micro_batches(self, stream: MixedStream, step: int) -> list[Batch]:
        cfg, info = self.cfg, self.info
        micro = cfg.micro_batch_size
        base = step * cfg.batch_size
        return [
            stream.batch(base + m * micro + info.rank * self.rank_batch, self.rank_batch, self.vocab)
            for m in range(cfg.grad_accum)
        ]

    def _forward(self, batch: Batch, norm: LossNorm) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.to(self.device)
        mask = _attention_mask(batch.ids, self.vocab, self.cfg.chunk_mask)  # (B, L, L)
        rows, cols = target_index(batch)
        with autocast(self.device, self.cfg.precision, self.use_autocast):
            logits = self.module(batch.ids, mask, rows, cols)  # (N, V)
        return compute_loss(
            logits,
            batch,
            rows,
            cols,
            self.vocab,
            norm,
            self.cfg.loss_form,
            self.cfg.image_weight,
            self.cfg.z_loss,
        )

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if last or not self.info.distributed:
            return contextlib.nullcontext()
        if self.fsdp:
            self.module.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.module.no_sync()

    def forward_backward(self, step: int) -> torch.Tensor:
        """Accumulate the gradients of optimizer step ``step``; returns this rank's metric sums.

        The returned vector is ``STAT_NAMES`` sums, then the loss, then the token count.
        """
        batches = self.micro_batches(self.data.train, step)
        sums = all_reduce_sum(LossNorm.local_sums(batches, self.vocab, self.cfg.image_weight), self.info)
        norm = LossNorm.from_global_sums(sums, self.info.world_size)
        self.module.train()
        total = torch.zeros(len(STAT_NAMES) + 2, dtype=torch.float64)
        for m, batch in enumerate(batches):
            last = m == len(batches) - 1
            if self.fsdp and last:
                self.module.set_requires_gradient_sync(True)
            with self._sync_context(last):
                loss, stats = self._forward(batch, norm)
                loss.backward()
            total[: len(STAT_NAMES)] += stats.cpu()
            total[-2] += float(loss.detach())
            total[-1] += batch.n_tokens
        return total

    def train_step(self) -> dict[str, float]:
        """One optimizer step: gradients, clipping, learning rate, AdamW; returns the step's metrics."""
        cfg = self.cfg
        total = self.forward_backward(self.step)
        grad_norm = clip_grad_norm(self.model, cfg.grad_clip)
        lr = lr_at(self.step, cfg)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        all_reduce_sum(total, self.info)
        self.step += 1
        tokens = int(total[-1])
        self.tokens_seen += tokens
        metrics = summarize(total[: len(STAT_NAMES)])
        # Each rank's loss is scaled by 1/world_size-normalized denominators (LossNorm): the sum
        # over ranks divided by the world size is the loss of the global batch.
        metrics.update(
            loss=float(total[-2]) / self.info.world_size, lr=lr, grad_norm=grad_norm, tokens=float(tokens)
        )
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss and accuracies over a fixed set of held-out samples (the same every time)."""
        if self.data.val is None:
            return {}
        cfg = self.cfg
        batches = [b for s in range(cfg.val_batches) for b in self.micro_batches(self.data.val, s)]
        sums = all_reduce_sum(LossNorm.local_sums(batches, self.vocab, self.cfg.image_weight), self.info)
        norm = LossNorm.from_global_sums(sums, self.info.world_size)
        self.module.eval()
        total = torch.zeros(len(STAT_NAMES) + 1, dtype=torch.float64)
        for batch in batches:
            loss, stats = self._forward(batch, norm)
            total[: len(STAT_NAMES)] += stats.cpu()
            total[-1] += float(loss)
        all_reduce_sum(total, self.info)
        self.module.train()
        metrics = summarize(total[: len(STAT_NAMES)])
        metrics["loss"] = float(total[-1]) / self.info.world_size
        return metrics


def _blocks(model: nn.Module) -> list[nn.Module]:
    from worldvla.train.distributed import decoder_blocks

    return decoder_blocks(model)


def _flag_any(flag: bool, info: DistInfo) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t, info).item() > 0)


def train(
    cfg: TrainConfig,
    cache: str | Path | CacheLike,
    run_dir: str | Path,
    resume: bool = False,
    minutes: float | None = None,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    inference: InferenceDefaults = DEFAULT_INFERENCE,
) -> TrainResult:
    """Train (or resume) a run; returns where it ended. See the module docstring.

    ``minutes`` is an optional wall-clock cap (a positive number): when it is spent the run
    stops after the current step, writes a checkpoint and sets ``stopped_by_budget``; the LR
    schedule stays that of ``cfg.steps``. ``resume=True`` continues from the run directory's
    latest checkpoint and is refused when there is none (a mistyped run directory must not
    start a new run unnoticed). ``stop_after`` ends this call after that many optimizer steps
    (tests and tools), also with a checkpoint, as if the process had been stopped there.
    ``inference`` are the inference defaults every checkpoint of the call carries (a
    preset's: :func:`worldvla.train.config.preset_inference`); they do not change training,
    and a resumed run writes the ones given now.
    """
    if minutes is not None and not 0 < minutes < math.inf:
        raise ConfigError(f"the time cap must be a positive number of minutes, got {minutes}")
    if resume and ckpt.latest_checkpoint(run_dir) is None:
        raise ConfigError(
            f"{run_dir}: nothing to resume (no checkpoint); run without --resume to start a new run"
        )
    info = init_distributed(device)
    try:
        return _train(cfg, cache, Path(run_dir), resume, minutes, info, progress, stop_after, inference)
    finally:
        shutdown(info)


def _train(
    cfg: TrainConfig,
    cache: str | Path | CacheLike,
    run_dir: Path,
    resume: bool,
    minutes: float | None,
    info: DistInfo,
    progress: bool,
    stop_after: int | None,
    inference: InferenceDefaults,
) -> TrainResult:
    t_start = time.monotonic()
    trainer = Trainer(cfg, cache, run_dir, info, progress, inference)
    existing = ckpt.latest_checkpoint(run_dir)
    if existing is not None and not resume:
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass --resume to continue, or use a new --out"
        )
    skipped: list[tuple[Path, str]] = []
    if resume and existing is not None:
        existing, skipped = trainer.resume()
    if info.is_main:
        ckpt.remove_partial(run_dir)
    log = RunLogger(run_dir, trainer.step, cfg.steps, progress and info.is_main, enabled=info.is_main)
    for path, why in skipped:
        # Kept for inspection under another name; pruning and later resumes pass it by.
        aside = ckpt.set_aside(path) if info.is_main else path
        log.message(f"skipped checkpoint {path.name}, it does not verify: {why}; moved to {aside.name}")
    if resume and existing is not None:
        log.message(f"resumed from {existing} at step {trainer.step}")
    elif cfg.init_from:
        source = trainer.load_initial_weights(cfg.init_from)
        log.message(f"initial weights from {source}")
    result = TrainResult(run_dir=run_dir, step=trainer.step, checkpoint=existing)
    early = trainer.early
    deadline = t_start + minutes * 60 if minutes else None
    end = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    saved_at = trainer.step if existing is not None else -1
    t_window, tok_window = time.perf_counter(), 0
    try:
        while trainer.step < end and not early.done:
            metrics = trainer.train_step()
            step = trainer.step
            if not math.isfinite(metrics["loss"]):
                raise ConfigError(f"training diverged at step {step}: loss {metrics['loss']} (lower lr?)")
            result.losses.append(metrics["loss"])
            result.last_train = metrics
            tok_window += int(metrics["tokens"])
            if step % cfg.log_every == 0 or step == end:
                dt = time.perf_counter() - t_window
                metrics["tokens_per_s"] = tok_window / dt if dt > 0 else float("nan")
                metrics["wall_s"] = trainer.wall_seconds()
                result.tokens_per_s = metrics["tokens_per_s"]
                log.log(step, "train", metrics)
                t_window, tok_window = time.perf_counter(), 0
            log.advance(1, {"loss": f"{metrics['loss']:.3f}", "tok/s": f"{result.tokens_per_s:.0f}"})
            if cfg.val_every and step % cfg.val_every == 0:
                result.last_val = trainer.validate()
                if result.last_val:
                    log.log(step, "val", result.last_val)
                    _track_best(trainer, step, result.last_val)
            out_of_time = deadline is not None and _flag_any(time.monotonic() > deadline, info)
            if step % cfg.ckpt_every == 0 or out_of_time:
                result.checkpoint = trainer.save()
                saved_at = step
            if out_of_time:
                result.stopped_by_budget = True
                log.message(f"time budget of {minutes} min spent at step {step}; checkpoint written")
                break
            if early.done:
                log.message(f"early stop at step {step} of {cfg.steps}: " + _best_line(early))
        if trainer.step != saved_at:
            result.checkpoint = trainer.save()
        if trainer.step >= cfg.steps and cfg.val_every and trainer.step % cfg.val_every:
            result.last_val = trainer.validate()
            if result.last_val:
                log.log(trainer.step, "val", result.last_val)
                _track_best(trainer, trainer.step, result.last_val)
        if cfg.early_stop_patience and trainer.step >= cfg.steps and not early.done:
            log.message(
                f"reached the step cap ({cfg.steps}) before every held-out loss stopped improving: "
                + _best_line(early)
            )
    finally:
        log.close()
    result.step = trainer.step
    result.stopped_early = early.done and trainer.step < cfg.steps
    result.best = early.summary()
    result.wall_seconds, result.wall_from_step = trainer.wall_seconds(), trainer.wall_from_step
    return result


def _track_best(trainer: Trainer, step: int, val: dict[str, float]) -> None:
    """With early stopping: record the validation and write the kinds that reached a new best."""
    if not trainer.cfg.early_stop_patience:
        return
    for kind in trainer.early.update(step, val):
        trainer.save_best(kind)


def _best_line(early: EarlyStop) -> str:
    return "; ".join(
        f"best {v['metric']} {v['best']:.4f} at step {v['step']} ({early.stale.get(k, 0)} validations since)"
        for k, v in early.summary().items()
    )
