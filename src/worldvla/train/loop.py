"""The joint training loop: one stream of action-model and world-model samples (SPEC §1, §5).

``train(cfg, cache, run_dir)`` reads top to bottom:

1. join the process group if run under torchrun (:mod:`.distributed`);
2. build the vocabulary, tokenizers, data layout and the mixed sample stream over the
   training episodes (:mod:`worldvla.data.datasets`), plus a fixed validation set over
   held-out episodes;
3. build the single-device transformer, then wrap it from outside (DDP / FSDP2,
   activation checkpointing, ``torch.compile``);
4. restore the latest checkpoint with ``resume=True`` (refusing a different config);
5. per optimizer step: fetch this rank's micro-batches, all-reduce the token counts that
   normalize the loss, forward with the SPEC §3 mask and logits only at target positions,
   backward, clip, AdamW; log, validate and checkpoint on their intervals;
6. stop at ``cfg.steps`` — or when the time budget is spent — and write a final checkpoint.

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

import numpy as np
import torch
from torch import nn

from worldvla.config import ModelConfig, model_preset
from worldvla.data.datasets import (
    ActionSamples,
    Batch,
    CacheLike,
    DataLayout,
    MixedStream,
    WorldSamples,
    encode_actions,
    episode_field,
    episode_kind,
    split_episodes,
)
from worldvla.errors import ConfigError, DataError
from worldvla.model import build as model_build
from worldvla.model.build import build_model
from worldvla.sequence import PromptConfig
from worldvla.tokenizers.action import ActionStats, ActionTokenizer
from worldvla.tokenizers.state import StateTokenizer, state_stats_from_episodes
from worldvla.tokenizers.text import TextTokenizer, load_text_tokenizer
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TrainConfig
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
from worldvla.train.logs import RunLogger
from worldvla.train.loss import STAT_NAMES, LossNorm, compute_loss, summarize, target_index
from worldvla.train.optim import autocast, build_optimizer, clip_grad_norm, lr_at, set_lr
from worldvla.vocab import Vocab, VocabConfig


# ---------------------------------------------------------------------------- data setup
@dataclass
class TrainData:
    """Everything built from the token cache for one run."""

    vocab: Vocab
    layout: DataLayout
    text_tokenizer: TextTokenizer
    action_stats: ActionStats
    state_stats: ActionStats | None  # bounds of the states in the prompt (use_state), else None
    image_tokenizer: ckpt.ImageTokenizerRef
    episodes: dict[str, Any] | None  # identity of the episode file the cache was built from
    train: MixedStream
    val: MixedStream | None
    val_episodes: list[str]
    max_len: int


def open_cache(cache: str | Path | CacheLike) -> CacheLike:
    if not isinstance(cache, (str, Path)):
        return cache
    from worldvla.data.token_cache import TokenCache

    # The episode file the cache was built from, if it is still where it was: a file changed
    # since tokenizing means a stale cache.
    return TokenCache.open(cache, verify_source=True)


def _meta(cache: CacheLike) -> dict[str, Any]:
    meta = getattr(cache, "meta", None)
    return dict(meta) if isinstance(meta, dict) else dict(getattr(meta, "__dict__", {}) or {})


def cache_vocab(
    cache: CacheLike, text_tokenizer: TextTokenizer, action_bins: int = 256, state_bins: int = 0
) -> Vocab:
    """The cache's own vocabulary if it has one, else the compact layout for its codebook
    (with ``state_bins`` state tokens; 0 = none, the layout of every run without state)."""
    vocab = getattr(cache, "vocab", None)
    if isinstance(vocab, Vocab):
        if vocab.action_bins != action_bins:
            raise ConfigError(
                f"the token cache's vocabulary has {vocab.action_bins} action bins, the config asks for "
                f"{action_bins}"
            )
        if vocab.state_bins != state_bins:
            raise ConfigError(
                f"the token cache's vocabulary has {vocab.state_bins} state bins, the config asks for "
                f"{state_bins} (use_state / state_bins)"
            )
        return vocab
    meta = _meta(cache)
    codebook = getattr(cache, "codebook_size", None) or meta.get("codebook_size")
    if not codebook:
        raise DataError("the token cache records neither a vocabulary nor the image codebook size")
    return Vocab.build(
        VocabConfig(
            text_size=text_tokenizer.size,
            image_codes=int(codebook),
            action_bins=action_bins,
            state_bins=state_bins,
        )
    )


def cache_action_stats(cache: CacheLike) -> ActionStats:
    stats = getattr(cache, "action_stats", None)
    if isinstance(stats, ActionStats):
        return stats
    path = getattr(cache, "stats_path", None)
    if path is not None:
        return ActionStats.load(path)
    return ActionStats.from_actions(cache.actions)


def cache_states(cache: CacheLike) -> tuple[np.ndarray, ActionStats]:
    """The cache's ``(N_frames, S)`` states and their bounds; DataError when it has none."""
    states = getattr(cache, "states", None)
    if states is None:
        where = getattr(cache, "path", None) or "the token cache"
        raise DataError(
            f"{where}: use_state=true needs proprioceptive states, but the token cache has none (its "
            "episode file records no obs/state in some or all episodes, or the cache was built before "
            "states were cached: rebuild it with 'worldvla tokenize --overwrite'); or set use_state=false"
        )
    states = np.asarray(states, dtype=np.float32)
    if states.ndim != 2 or len(states) != len(cache.actions) or states.shape[1] < 1:
        raise DataError(f"token cache states must be (N_frames={len(cache.actions)}, S), got {states.shape}")
    stats = getattr(cache, "state_stats", None)
    if not isinstance(stats, ActionStats):
        # Like the cache's action bounds: over the demonstrations, whose states the policy reads.
        demos = []
        for e in cache.episodes:
            if episode_kind(e) == "demo":
                start, length = int(episode_field(e, "start")), int(episode_field(e, "length"))
                demos.append((str(episode_field(e, "key")), states[start : start + length]))
        stats = state_stats_from_episodes(demos)
    if stats.dim != states.shape[1]:
        raise DataError(f"state statistics have {stats.dim} dimensions, the cache's states {states.shape[1]}")
    return states, stats


def cache_image_tokenizer(cache: CacheLike) -> ckpt.ImageTokenizerRef:
    info = _meta(cache).get("image_tokenizer") or {}
    if isinstance(info, str):
        info = {"path": info}
    return ckpt.ImageTokenizerRef(path=info.get("path"), fingerprint=info.get("fingerprint"))


def cache_episodes(cache: CacheLike) -> dict[str, Any] | None:
    """``{"name", "size", "sha256"}`` of the episode file the cache records, if any."""
    info = _meta(cache).get("episodes")
    if not isinstance(info, dict) or not info.get("sha256"):
        return None
    return {k: info.get(k) for k in ("name", "size", "sha256")}


def build_data(cfg: TrainConfig, cache: CacheLike, max_seq_len: int) -> TrainData:
    text_tokenizer = load_text_tokenizer(cfg.text_tokenizer)
    states, state_stats = cache_states(cache) if cfg.use_state else (None, None)
    vocab = cache_vocab(cache, text_tokenizer, cfg.action_bins, cfg.state_bins if cfg.use_state else 0)
    if text_tokenizer.size > vocab.text_size:
        raise ConfigError(
            f"text tokenizer {cfg.text_tokenizer!r} has {text_tokenizer.size} ids, the vocabulary "
            f"only {vocab.text_size}"
        )
    stats = cache_action_stats(cache)
    action_dim = int(cache.actions.shape[1])
    if stats.dim != action_dim:
        raise DataError(f"action statistics have {stats.dim} dimensions, the cache's actions {action_dim}")
    meta = _meta(cache)
    layout = DataLayout(
        action_dim=action_dim,
        grid=(int(cache.codes.shape[1]), int(cache.codes.shape[2])),
        history=cfg.history,
        chunk_len=cfg.chunk_len,
        chunk_mask=cfg.chunk_mask,
        prompts=PromptConfig(action_prompt=cfg.action_prompt, world_prompt=cfg.world_prompt),
        text_tokenizer=cfg.text_tokenizer,
        camera=meta.get("camera"),
        image_size=meta.get("image_size"),
        view=meta.get("view"),
        state_dim=0 if states is None else int(states.shape[1]),
    )
    action_tokenizer = ActionTokenizer(stats, n_bins=vocab.action_bins)
    state_bins = None
    if states is not None:
        state_bins = encode_actions(states, StateTokenizer(state_stats, n_bins=vocab.state_bins))
    bins = encode_actions(cache.actions, action_tokenizer)
    executed = getattr(cache, "world_actions", None)
    world_bins = bins if executed is None else encode_actions(executed, action_tokenizer)
    # Sample weights carry α only for the reference loss; the split form applies α itself.
    image_weight = cfg.image_weight if cfg.loss_form == "reference" else 1.0
    f = cfg.effective_world_fraction
    is_demo = np.array([episode_kind(e) == "demo" for e in cache.episodes])
    # Demonstrations and exploratory segments are held out separately, so the held-out
    # demonstrations do not depend on how much exploration the data has.
    train_eps, val_eps = [], []
    for ids in (np.flatnonzero(is_demo), np.flatnonzero(~is_demo)):
        if len(ids):
            tr, va = split_episodes(len(ids), cfg.val_fraction, cfg.split_seed)
            train_eps.append(ids[tr])
            val_eps.append(ids[va])
    train_eps, val_eps = np.concatenate(train_eps), np.concatenate(val_eps)

    def stream(episodes, seed: int) -> MixedStream:
        # Only demonstrations teach the policy; exploratory segments feed the world model
        # unless the config keeps it on demonstrations too.
        demos = episodes[is_demo[episodes]]
        world_eps = episodes if cfg.world_data == "all" else demos
        common = (layout, vocab, text_tokenizer)
        return MixedStream(
            ActionSamples(cache, demos, *common, bins, image_weight, state_bins=state_bins)
            if f < 1
            else None,
            WorldSamples(
                cache, world_eps, *common, world_bins, image_weight, changed_weight=cfg.world_changed_weight
            )
            if f > 0
            else None,
            f,
            seed,
        )

    train_stream = stream(train_eps, cfg.seed)
    val_stream = None
    if len(val_eps):
        try:
            val_stream = stream(val_eps, seed=0)
        except DataError:
            val_stream = None  # held-out episodes too short for a sample of each kind
    prompt_len = max(
        len(
            text_tokenizer.encode(
                layout.prompts.action_prompt.format(instruction=str(episode_field(e, "instruction")))
            )
        )
        for e in cache.episodes
    )
    world_len = len(text_tokenizer.encode(layout.prompts.world_prompt))
    max_len = max(
        layout.action_sample_length(prompt_len) if f < 1 else 0,
        layout.world_sample_length(world_len) if f > 0 else 0,
    )
    if max_len > max_seq_len:
        raise ConfigError(
            f"samples reach {max_len} tokens but the model {cfg.model!r} has max_seq_len={max_seq_len} "
            f"(grid {layout.grid}, history {cfg.history}, chunk {cfg.chunk_len})"
        )
    return TrainData(
        vocab=vocab,
        layout=layout,
        text_tokenizer=text_tokenizer,
        action_stats=stats,
        state_stats=state_stats,
        image_tokenizer=cache_image_tokenizer(cache),
        episodes=cache_episodes(cache),
        train=train_stream,
        val=val_stream,
        # Held-out demonstrations only: evaluations start rollouts from them.
        val_episodes=[str(episode_field(cache.episodes[int(e)], "key")) for e in val_eps if is_demo[e]],
        max_len=max_len,
    )


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


class Trainer:
    """Holds the state of one run; :func:`train` is the entry point."""

    def __init__(
        self,
        cfg: TrainConfig,
        cache: str | Path | CacheLike,
        run_dir: str | Path,
        info: DistInfo,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
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
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.model)
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
        self.progress = progress

    # ------------------------------------------------------------------ state
    def model_state(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

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
            }
            path = ckpt.save_checkpoint(
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
            )
        barrier(self.info)
        return path if path is not None else ckpt.latest_checkpoint(self.run_dir)

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
        sums = all_reduce_sum(LossNorm.local_sums(batches), self.info)
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
        sums = all_reduce_sum(LossNorm.local_sums(batches), self.info)
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
) -> TrainResult:
    """Train (or resume) a run; returns where it ended. See the module docstring.

    ``minutes`` is an optional wall-clock cap (a positive number): when it is spent the run
    stops after the current step, writes a checkpoint and sets ``stopped_by_budget``; the LR
    schedule stays that of ``cfg.steps``. ``resume=True`` continues from the run directory's
    latest checkpoint and is refused when there is none (a mistyped run directory must not
    start a new run unnoticed). ``stop_after`` ends this call after that many optimizer steps
    (tests and tools), also with a checkpoint, as if the process had been stopped there.
    """
    if minutes is not None and not 0 < minutes < math.inf:
        raise ConfigError(f"the time cap must be a positive number of minutes, got {minutes}")
    if resume and ckpt.latest_checkpoint(run_dir) is None:
        raise ConfigError(
            f"{run_dir}: nothing to resume (no checkpoint); run without --resume to start a new run"
        )
    info = init_distributed(device)
    try:
        return _train(cfg, cache, Path(run_dir), resume, minutes, info, progress, stop_after)
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
) -> TrainResult:
    t_start = time.monotonic()
    trainer = Trainer(cfg, cache, run_dir, info, progress)
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
    result = TrainResult(run_dir=run_dir, step=trainer.step, checkpoint=existing)
    deadline = t_start + minutes * 60 if minutes else None
    end = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    saved_at = trainer.step if existing is not None else -1
    t_window, tok_window = time.perf_counter(), 0
    try:
        while trainer.step < end:
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
                result.tokens_per_s = metrics["tokens_per_s"]
                log.log(step, "train", metrics)
                t_window, tok_window = time.perf_counter(), 0
            log.advance(1, {"loss": f"{metrics['loss']:.3f}", "tok/s": f"{result.tokens_per_s:.0f}"})
            if cfg.val_every and step % cfg.val_every == 0:
                result.last_val = trainer.validate()
                if result.last_val:
                    log.log(step, "val", result.last_val)
            out_of_time = deadline is not None and _flag_any(time.monotonic() > deadline, info)
            if step % cfg.ckpt_every == 0 or out_of_time:
                result.checkpoint = trainer.save()
                saved_at = step
            if out_of_time:
                result.stopped_by_budget = True
                log.message(f"time budget of {minutes} min spent at step {step}; checkpoint written")
                break
        if trainer.step != saved_at:
            result.checkpoint = trainer.save()
        if trainer.step >= cfg.steps and cfg.val_every and trainer.step % cfg.val_every:
            result.last_val = trainer.validate()
            if result.last_val:
                log.log(trainer.step, "val", result.last_val)
    finally:
        log.close()
    result.step = trainer.step
    return result
