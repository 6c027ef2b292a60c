"""Checkpoints: self-contained directories, written atomically, that resume exactly.

Layout of a run directory::

    RUN_DIR/checkpoints/step_00000200/
        model.safetensors      fp32 weights (full, unsharded, unwrapped names)
        config.json            {"format", "model", "train", "layout", "vocab_fingerprint",
                                "val_episodes", "step"}
        vocab.json             the token id layout (worldvla.vocab)
        action_stats.json      action normalization bounds (STYLE §8: stats are assets)
        image_tokenizer.json   {"path", "fingerprint", "relative"} of the tokenizer that made the cache
        trainer_state.pt       optimizer (keyed by parameter name), step, data position,
                               tokens seen, RNG states of python / numpy / torch (per rank)
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

Each checkpoint is built under a temporary name and renamed into place
(:func:`worldvla.utils.io.atomic_dir`); ``latest`` is rewritten atomically afterwards and
old checkpoints beyond ``keep_last`` are deleted last. A SIGKILL at any moment therefore
leaves ``latest`` pointing at a complete checkpoint.

The LR schedule is a pure function of the step and the data order a pure function of
the data position (:mod:`worldvla.data.datasets`), so step + position + optimizer +
weights + RNG states are the whole state: resuming reproduces an uninterrupted run
bit for bit on CPU (``tests/test_train_resume.py``).

:func:`load_for_inference` is what the policy and the world model use: it rebuilds the
model from ``config.json`` and returns a :class:`Bundle` with everything needed to build
prompts and decode outputs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worldvla.config import ModelConfig
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.text import TextTokenizer, load_text_tokenizer
from worldvla.train.config import RESUMABLE_FIELDS, TrainConfig, config_diff
from worldvla.utils.io import atomic_dir, atomic_write_text
from worldvla.utils.stored import with_defaults
from worldvla.vocab import Vocab

FORMAT = 1
CKPT_DIR = "checkpoints"
LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class ImageTokenizerRef:
    """Which image tokenizer produced the cache's codes; the checkpoint's codes mean nothing without it."""

    path: str | None
    fingerprint: str | None
    relative: str | None = None  # the path relative to the checkpoint directory, when saved

    def saved_from(self, ckpt: Path) -> dict[str, Any]:
        """As written into ``ckpt``: with the path relative to it, so a moved run still finds it."""
        doc: dict[str, Any] = {"path": self.path, "fingerprint": self.fingerprint}
        if self.path:
            doc["relative"] = os.path.relpath(Path(self.path).resolve(), ckpt.resolve())
        return doc


@dataclass
class Bundle:
    """Everything around the model that inference needs (STYLE §7: the model owns only logits)."""

    path: Path
    vocab: Vocab
    action_stats: ActionStats
    config: TrainConfig
    model_config: ModelConfig
    layout: DataLayout
    text_tokenizer: TextTokenizer
    image_tokenizer_ref: ImageTokenizerRef
    val_episodes: list[str]
    step: int
    _image_tokenizer: Any = None

    @property
    def image_tokenizer(self) -> Any:
        """The image tokenizer, loaded on first use and checked against the recorded fingerprint."""
        if self._image_tokenizer is None:
            self._image_tokenizer = _load_image_tokenizer(self.image_tokenizer_ref, self.path)
        return self._image_tokenizer

    @image_tokenizer.setter
    def image_tokenizer(self, tokenizer: Any) -> None:
        self._image_tokenizer = tokenizer


def _load_image_tokenizer(ref: ImageTokenizerRef, ckpt: Path) -> Any:
    if not ref.path:
        raise ConfigError(f"{ckpt}: the checkpoint records no image tokenizer path (image_tokenizer.json)")
    try:
        from worldvla.tokenizers.image import load_image_tokenizer
    except ImportError as e:
        raise ConfigError(f"{ckpt}: cannot import the image tokenizer loader: {e}") from e
    # The recorded path first, then the same place relative to the checkpoint (a run directory
    # moved or copied together with its tokenizer).
    candidates = [Path(ref.path)]
    if ref.relative:
        moved = Path(os.path.normpath(ckpt / ref.relative))
        if moved.resolve() != candidates[0].resolve():
            candidates.append(moved)
    problems = []
    for where in candidates:
        if not where.exists():
            problems.append(f"{where} does not exist")
            continue
        tok = load_image_tokenizer(where)
        if not ref.fingerprint or tok.fingerprint() == ref.fingerprint:
            return tok
        problems.append(f"{where} has fingerprint {tok.fingerprint()}")
    raise ConfigError(
        f"{ckpt}: the model was trained on codes of image tokenizer {ref.fingerprint or '?'}, but "
        + "; ".join(problems)
    )


# ---------------------------------------------------------------------------- locate
def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` points at (or the newest one if the pointer is missing)."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / "trainer_state.pt").is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run directory or its ``checkpoints/`` folder."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    for run_dir in (path, path.parent):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise ConfigError(
        f"{path}: no checkpoint found (expected model.safetensors + config.json, or a run directory)"
    )


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
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically, move ``latest`` to it, prune old ones."""
    root = checkpoints_dir(run_dir)
    name = f"step_{step:08d}"
    # safetensors refuses tensors sharing storage (tied embeddings): store independent copies.
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model_state.items()}
    with atomic_dir(root / name) as tmp:
        save_file(
            tensors, str(tmp / "model.safetensors"), metadata={"format": str(FORMAT), "step": str(step)}
        )
        config = {
            "format": FORMAT,
            "step": step,
            "model": model_cfg.__dict__,
            "train": cfg.to_dict(),
            "layout": layout.to_dict(),
            "vocab_fingerprint": vocab.fingerprint(),
            "val_episodes": list(val_episodes),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        vocab.save(tmp / "vocab.json")
        action_stats.save(tmp / "action_stats.json")
        tok_doc = image_tokenizer.saved_from(root / name)
        (tmp / "image_tokenizer.json").write_text(json.dumps(tok_doc, indent=2) + "\n")
        torch.save(trainer_state, tmp / "trainer_state.pt")
    atomic_write_text(root / LATEST, name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def remove_partial(run_dir: str | Path) -> None:
    """Delete temporary directories left by a checkpoint write that was killed."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- load
def read_config(ckpt: Path) -> dict[str, Any]:
    path = ckpt / "config.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read checkpoint config: {e}") from e
    if d.get("format") != FORMAT:
        raise ConfigError(f"{path}: checkpoint format {d.get('format')!r}, this version reads {FORMAT}")
    return d


def check_resumable(ckpt: Path, cfg: TrainConfig, layout: DataLayout, vocab: Vocab) -> None:
    """Refuse to resume from a checkpoint trained with a different config (ConfigError naming the fields)."""
    d = read_config(ckpt)
    try:
        saved = TrainConfig.from_dict(d["train"])
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{ckpt}/config.json: cannot read the training config: {e}") from e
    diffs = [
        f"{k}: checkpoint {a!r} != requested {b!r}"
        for k, (a, b) in config_diff(saved, cfg, RESUMABLE_FIELDS).items()
    ]
    saved_layout = with_defaults(d["layout"], DataLayout)  # fields added since at their defaults
    for k, v in layout.to_dict().items():
        if saved_layout.get(k) != v:
            diffs.append(f"layout.{k}: checkpoint {saved_layout.get(k)!r} != data {v!r}")
    if d.get("vocab_fingerprint") != vocab.fingerprint():
        diffs.append(f"vocab: checkpoint {d.get('vocab_fingerprint')} != data {vocab.fingerprint()}")
    if diffs:
        raise ConfigError(
            f"cannot resume from {ckpt}: it was trained with a different configuration ("
            + "; ".join(diffs)
            + "). Use a new --out directory, or the checkpoint's settings."
        )


def load_model_state(
    ckpt: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The weights, as stored or cast to ``dtype``, read tensor by tensor straight onto ``device``."""
    if dtype is None and str(device) == "cpu":
        return load_file(str(ckpt / "model.safetensors"))
    state = {}
    with safe_open(str(ckpt / "model.safetensors"), framework="pt", device=str(device)) as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
            t = f.get_tensor(k)
            state[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return state


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)


def load_bundle(path: str | Path) -> Bundle:
    """The non-model half of a checkpoint (vocab, stats, configs, tokenizers)."""
    ckpt = resolve_checkpoint(path)
    d = read_config(ckpt)
    try:
        vocab = Vocab.load(ckpt / "vocab.json")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if vocab.fingerprint() != d.get("vocab_fingerprint"):
        raise ConfigError(f"{ckpt}: vocab.json does not match the fingerprint in config.json")
    layout = DataLayout.from_dict(d["layout"])
    img = json.loads((ckpt / "image_tokenizer.json").read_text())
    return Bundle(
        path=ckpt,
        vocab=vocab,
        action_stats=ActionStats.load(ckpt / "action_stats.json"),
        config=TrainConfig.from_dict(d["train"]),
        model_config=ModelConfig(**d["model"]),
        layout=layout,
        text_tokenizer=load_text_tokenizer(layout.text_tokenizer),
        image_tokenizer_ref=ImageTokenizerRef(img.get("path"), img.get("fingerprint"), img.get("relative")),
        val_episodes=list(d.get("val_episodes", [])),
        step=int(d.get("step", 0)),
    )


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[torch.nn.Module, Bundle]:
    """``(model in eval mode on device, bundle)`` from a checkpoint or run directory.

    ``dtype`` (e.g. ``torch.bfloat16``) builds the model without allocating fp32 weights
    first: on the meta device, then each stored tensor cast and placed on ``device`` once
    (a 7B model in bf16 needs its ~14 GB, not 28 GB + 14 GB). None keeps the fp32 model.
    """
    from worldvla.model.transformer import Transformer

    bundle = load_bundle(path)
    if dtype is not None:
        return _load_direct(bundle, Transformer, device, dtype), bundle
    model = Transformer(bundle.model_config)
    missing, unexpected = model.load_state_dict(load_model_state(bundle.path), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{bundle.path}/model.safetensors does not fit the model in config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), bundle


def _load_direct(
    bundle: Bundle, cls: type, device: str | torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    with torch.device("meta"):
        model = cls(bundle.model_config)
    state = load_model_state(bundle.path, dtype=dtype, device=device)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(
            f"{bundle.path}/model.safetensors does not fit the model in config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, assign=True)
    if bundle.model_config.tie_embeddings:  # assign=True replaced the shared tensor: tie again
        model.output.weight = model.tok_emb.weight
    return model.eval()
