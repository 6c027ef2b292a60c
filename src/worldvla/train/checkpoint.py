"""Checkpoints from the trainer's side: saving with a training config, RNG states, resuming.

The files of a checkpoint, their verification and loading them for inference live in
:mod:`worldvla.artifacts.checkpoint` (the layout is documented there), so the policy, the
world model and the server load weights without importing training. This module adds what
only a trainer needs, and re-exports the artifact names it has always offered
(``from worldvla.train.checkpoint import load_for_inference`` keeps working).

Resuming takes the newest checkpoint that verifies (:meth:`worldvla.train.loop.Trainer.resume`)
and sets the newer, corrupt ones aside under ``step_<n>.corrupt`` (never deleted); resuming
also refuses a token cache other than the one the run was trained on (:func:`check_resumable`).

The LR schedule is a pure function of the step and the data order a pure function of
the data position (:mod:`worldvla.data.datasets`), so step + position + optimizer +
weights + RNG states are the whole state: resuming reproduces an uninterrupted run
bit for bit on CPU (``tests/test_train_resume.py``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldvla.artifacts import checkpoint as artifacts
from worldvla.artifacts.checkpoint import (  # noqa: F401 - re-exported: the names this module always offered
    ALL_FILES,
    BUNDLE_FILES,
    CKPT_DIR,
    CONFIG_FILE,
    CORRUPT_SUFFIX,
    FORMAT,
    INFERENCE_FILE,
    LATEST,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_STATS_FILE,
    STATS_FILE,
    TOKENIZER_FILE,
    TRAINER_FILE,
    VOCAB_FILE,
    Bundle,
    CorruptCheckpointError,
    ImageTokenizerRef,
    check_weights,
    checkpoints_dir,
    expected_shapes,
    latest_checkpoint,
    list_checkpoints,
    load_model_state,
    load_trainer_state,
    parse_file,
    read_config,
    read_inference,
    read_manifest,
    read_tokenizer_ref,
    resolve_checkpoint,
    verify_files,
    write_manifest,
)
from worldvla.artifacts.inference import DEFAULT_INFERENCE, InferenceDefaults
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError, DataError, WorldVLAError
from worldvla.model.config import ModelConfig
from worldvla.tokenizers.action import ActionStats
from worldvla.train.config import TrainConfig, config_diff, resumable_fields
from worldvla.utils.field_defaults import with_defaults
from worldvla.vocab import Vocab


# ---------------------------------------------------------------------------- save
def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch, as tensors and plain values (loadable with weights_only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    layout: DataLayout,
    vocab: Vocab,
    action_stats: ActionStats,
    image_tokenizer: ImageTokenizerRef,
    val_episodes: list[str],
    keep_last: int,
    episodes: dict[str, Any] | None = None,
    state_stats: ActionStats | None = None,
    inference: InferenceDefaults = DEFAULT_INFERENCE,
    dest: str | Path | None = None,
) -> Path:
    """:func:`worldvla.artifacts.checkpoint.write_checkpoint` with the training config ``cfg``
    and the inference defaults ``inference`` (stored apart from it); ``dest``: write there
    instead of the next step checkpoint (a best checkpoint)."""
    return artifacts.write_checkpoint(
        run_dir,
        step,
        model_state,
        trainer_state,
        cfg.to_dict(),
        model_cfg,
        layout,
        vocab,
        action_stats,
        image_tokenizer,
        val_episodes,
        keep_last,
        episodes,
        state_stats,
        inference,
        dest,
    )


def set_aside(ckpt: Path) -> Path:
    """Rename a corrupt checkpoint to ``<name>.corrupt`` (kept for inspection, never deleted);
    it no longer counts as a checkpoint, so pruning and resuming pass it by."""
    target = ckpt.with_name(ckpt.name + CORRUPT_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{ckpt.name}{CORRUPT_SUFFIX}{n}")
    try:
        os.replace(ckpt, target)
    except OSError as e:
        raise ConfigError(f"{ckpt}: cannot set the corrupt checkpoint aside: {e}") from e
    return target


def remove_partial(run_dir: str | Path) -> None:
    """Delete temporary directories left by a checkpoint write that was killed."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- resume
def _identity(e: dict[str, Any]) -> tuple[Any, Any]:
    return (e.get("sha256"), e.get("size"))


def _episodes_desc(e: dict[str, Any]) -> str:
    return f"{e.get('name')} ({e.get('size')} bytes, sha256 {str(e.get('sha256'))[:12]}…)"


def check_resumable(
    ckpt: Path,
    cfg: TrainConfig,
    layout: DataLayout,
    vocab: Vocab,
    image_tokenizer: ImageTokenizerRef | None = None,
    episodes: dict[str, Any] | None = None,
    action_stats: ActionStats | None = None,
    model_cfg: ModelConfig | None = None,
) -> None:
    """Refuse to resume from a checkpoint trained with a different config (ConfigError naming the
    fields: training config, data layout, vocabulary, model) or on another token cache (DataError
    with both identities: image tokenizer, episode file, action statistics). An identity one
    side does not record is not compared."""
    verify_files(ckpt, BUNDLE_FILES)
    d = read_config(ckpt)
    try:
        saved = TrainConfig.from_dict(d["train"])
    except (ConfigError, KeyError, TypeError) as e:
        raise ConfigError(f"{ckpt}/config.json: cannot read the training config: {e}") from e
    # Verified like every file of the checkpoint, but not compared: a resumed run writes the
    # inference defaults it is given.
    read_inference(ckpt, d["train"])
    diffs = [
        f"{k}: checkpoint {a!r} != requested {b!r}"
        for k, (a, b) in config_diff(saved, cfg, resumable_fields(cfg)).items()
    ]
    saved_layout = with_defaults(d.get("layout"), DataLayout)  # fields added since at their defaults
    if not isinstance(saved_layout, dict):
        raise CorruptCheckpointError(f"{ckpt}/config.json: no data layout recorded")
    for k, v in layout.to_dict().items():
        if saved_layout.get(k) != v:
            diffs.append(f"layout.{k}: checkpoint {saved_layout.get(k)!r} != data {v!r}")
    if d.get("vocab_fingerprint") != vocab.fingerprint():
        diffs.append(f"vocab: checkpoint {d.get('vocab_fingerprint')} != data {vocab.fingerprint()}")
    saved_model = with_defaults(d.get("model"), ModelConfig)
    if model_cfg is not None and isinstance(saved_model, dict):
        for k, v in model_cfg.__dict__.items():
            if saved_model.get(k) != v:
                diffs.append(f"model.{k}: checkpoint {saved_model.get(k)!r} != requested {v!r}")
    if diffs:
        raise ConfigError(
            f"cannot resume from {ckpt}: it was trained with a different configuration ("
            + "; ".join(diffs)
            + "). Use a new --out directory, or the checkpoint's settings."
        )
    data_diffs = []
    ref = parse_file(ckpt, TOKENIZER_FILE, read_tokenizer_ref)
    now = image_tokenizer
    if now is not None and ref.fingerprint and now.fingerprint and ref.fingerprint != now.fingerprint:
        data_diffs.append(
            f"image tokenizer: checkpoint {ref.fingerprint} ({ref.path}) != cache "
            f"{now.fingerprint} ({now.path})"
        )
    saved_eps = d.get("episodes") if isinstance(d.get("episodes"), dict) else {}
    if (
        saved_eps.get("sha256")
        and episodes
        and episodes.get("sha256")
        and _identity(saved_eps) != _identity(episodes)
    ):
        data_diffs.append(
            f"episode file: checkpoint {_episodes_desc(saved_eps)} != cache {_episodes_desc(episodes)}"
        )
    if action_stats is not None:
        saved_stats = parse_file(ckpt, STATS_FILE, ActionStats.load)
        if (saved_stats.low, saved_stats.high) != (action_stats.low, action_stats.high):
            data_diffs.append("action statistics: checkpoint's action_stats.json != the cache's")
    if data_diffs:
        raise DataError(
            f"cannot resume from {ckpt}: the token cache is not the one the run was trained on ("
            + "; ".join(data_diffs)
            + "). Resume with the original cache, or train into a new --out."
        )


def training_config(bundle: Bundle) -> TrainConfig:
    """The training config the bundle's checkpoint records, validated."""
    try:
        return TrainConfig.from_dict(bundle.train)
    except WorldVLAError as e:
        raise ConfigError(f"{bundle.path / CONFIG_FILE}: {e}") from e
    except (TypeError, ValueError) as e:
        raise CorruptCheckpointError(
            f"{bundle.path / CONFIG_FILE}: malformed training config ({type(e).__name__}: {e})"
        ) from e


def load_bundle(path: str | Path) -> Bundle:
    """:func:`worldvla.artifacts.checkpoint.load_bundle` with ``config``, the training config."""
    bundle = artifacts.load_bundle(path)
    return dataclasses.replace(bundle, config=training_config(bundle))


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, Bundle]:
    """:func:`worldvla.artifacts.checkpoint.load_for_inference` with the bundle's ``config``."""
    model, bundle = artifacts.load_for_inference(path, device=device, dtype=dtype)
    return model, dataclasses.replace(bundle, config=training_config(bundle))
