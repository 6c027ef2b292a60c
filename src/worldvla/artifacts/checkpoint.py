"""Checkpoints as saved artifacts: their files, their verification, and loading them for inference.

This module is what training writes to and what everything that reads a checkpoint reads
from — the policy, the world model, the server, evaluation, conversion and resuming — so
inference never imports the training package (STYLE: inference must not import training).
The training side (:mod:`worldvla.train.checkpoint`) adds what only a trainer needs: RNG
states, the resume checks against a training config, setting corrupt checkpoints aside.

Layout of a run directory::

    RUN_DIR/checkpoints/step_00000200/
        model.safetensors      fp32 weights (full, unsharded, unwrapped names)
        config.json            {"format", "model", "train", "layout", "vocab_fingerprint",
                                "val_episodes", "step", "episodes" (the episode file's identity)}
        inference.json         the inference defaults (worldvla.artifacts.inference): how the
                               policy reads actions out unless told otherwise
        vocab.json             the token id layout (worldvla.vocab)
        action_stats.json      action normalization bounds (STYLE §8: stats are assets)
        state_stats.json       state normalization bounds, only for a model trained with use_state
        image_tokenizer.json   {"path", "fingerprint", "relative"} of the tokenizer that made the cache
        trainer_state.pt       optimizer (keyed by parameter name), step, data position,
                               tokens seen, RNG states of python / numpy / torch (per rank)
        manifest.json          size and sha256 of every other file, written last
    RUN_DIR/checkpoints/latest  the name of the newest complete checkpoint

Each checkpoint is built under a temporary name and renamed into place
(:func:`worldvla.utils.io.atomic_dir`); ``latest`` is rewritten atomically afterwards and
old checkpoints beyond ``keep_last`` are deleted last. A SIGKILL at any moment therefore
leaves ``latest`` pointing at a complete checkpoint.

**Verification.** Every loader checks the files it reads against ``manifest.json`` (size,
then sha256) before parsing them, so a truncated or bit-flipped file, or one edited after
the checkpoint was written, is a one-line :class:`CorruptCheckpointError` naming the file —
for training, serving, evaluation and ``from_pretrained`` alike. Checkpoints written before
manifests still load with what their formats allow to check: the safetensors header against
the file size, the CRC-32 of every record of ``trainer_state.pt`` (a zip archive; torch
itself does not check them); for every checkpoint, the weights' names and shapes are
checked against the model ``config.json`` describes.

The weights file is byte-reproducible: the same weights give the same bytes, hence the same
sha256 (safetensors orders tensors by dtype and name; the metadata is one key, see
:func:`_weights_metadata`).

:func:`load_for_inference` is what the policy and the world model use: it rebuilds the
model from ``config.json`` and returns a :class:`Bundle` with everything needed to build
prompts and decode outputs, and the checkpoint's inference defaults (``Bundle.inference``,
from ``inference.json``; a checkpoint written before the file has the readout its training
config recorded). The training config is kept as stored (``Bundle.train``); inference
reads nothing from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worldvla.artifacts.inference import DEFAULT_INFERENCE, InferenceDefaults
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError, DataError, WorldVLAError
from worldvla.model.config import ModelConfig
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.text import TextTokenizer, load_text_tokenizer
from worldvla.utils.io import atomic_dir, atomic_write_text, file_sha256
from worldvla.vocab import Vocab

FORMAT = 1
CKPT_DIR = "checkpoints"
LATEST = "latest"
CORRUPT_SUFFIX = ".corrupt"
_STEP_RE = re.compile(r"^step_(\d+)$")

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
STATS_FILE = "action_stats.json"
STATE_STATS_FILE = "state_stats.json"  # optional: models trained with the state in the prompt
TOKENIZER_FILE = "image_tokenizer.json"
INFERENCE_FILE = "inference.json"  # absent from checkpoints written before it (read_inference)
TRAINER_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
# What a loader reads: the bundle (inference and resume), the weights, the trainer state.
BUNDLE_FILES = (CONFIG_FILE, VOCAB_FILE, STATS_FILE, TOKENIZER_FILE)
ALL_FILES = (*BUNDLE_FILES, MODEL_FILE, TRAINER_FILE)
T = TypeVar("T")
_TRAINER_KEYS = ("step", "data_pos", "tokens_seen", "optimizer", "rng")


class CorruptCheckpointError(DataError):
    """A checkpoint file is missing, unreadable, or not what was written (manifest mismatch)."""


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
    model_config: ModelConfig
    layout: DataLayout
    text_tokenizer: TextTokenizer
    image_tokenizer_ref: ImageTokenizerRef
    val_episodes: list[str]
    step: int
    train: dict[str, Any] = field(default_factory=dict)  # the training config, as stored
    inference: InferenceDefaults = field(default_factory=InferenceDefaults)
    state_stats: ActionStats | None = None  # with a state block in the layout (use_state)
    # The training config as a worldvla.train.config.TrainConfig, when the bundle was loaded
    # through worldvla.train.checkpoint (inference does not need it).
    config: Any = None
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
        from worldvla.tokenizers.image_loader import load_image_tokenizer
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
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return path
    if path.is_dir() and (_STEP_RE.match(path.name) or (path / MANIFEST_FILE).is_file()):
        return path  # a checkpoint with a file missing: the loaders name it
    for run_dir in (path, path.parent):
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise ConfigError(
        f"{path}: no checkpoint found (expected model.safetensors + config.json, or a run directory)"
    )


# ---------------------------------------------------------------------------- write
def write_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    trainer_state: dict[str, Any],
    train: Mapping[str, Any],
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
    """Write ``checkpoints/step_<step>`` atomically, move ``latest`` to it, prune old ones.

    With ``dest`` the checkpoint is written to that directory instead (an existing one is
    replaced only once the new one is complete), and ``latest`` and the step checkpoints are
    left alone: the trainer's best checkpoints (``best/<kind>``, early stopping).

    ``train`` is the training config as a JSON object (``TrainConfig.to_dict()``);
    ``episodes`` is the identity (name, size, sha256) of the episode file the token cache was
    built from, when the cache records it; resuming refuses a cache built from another file.
    ``inference`` is what the checkpoint's policy does unless told otherwise (its readout).
    """
    root = checkpoints_dir(run_dir)
    target = root / f"step_{step:08d}" if dest is None else Path(dest)
    # safetensors refuses tensors sharing storage (tied embeddings): store independent copies.
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model_state.items()}
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / MODEL_FILE), metadata=_weights_metadata(step))
        config = {
            "format": FORMAT,
            "step": step,
            "model": model_cfg.__dict__,
            "train": dict(train),
            "layout": layout.to_dict(),
            "vocab_fingerprint": vocab.fingerprint(),
            "val_episodes": list(val_episodes),
        }
        if episodes is not None:
            config["episodes"] = dict(episodes)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        inference.save(tmp / INFERENCE_FILE)
        vocab.save(tmp / VOCAB_FILE)
        action_stats.save(tmp / STATS_FILE)
        if state_stats is not None:
            state_stats.save(tmp / STATE_STATS_FILE)
        tok_doc = image_tokenizer.saved_from(target)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(tok_doc, indent=2) + "\n")
        torch.save(trainer_state, tmp / TRAINER_FILE)
        write_manifest(tmp)  # last: it vouches for the files above
    if dest is not None:
        return target
    atomic_write_text(root / LATEST, target.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _weights_metadata(step: int) -> dict[str, str]:
    """The safetensors metadata: ONE key holding sorted JSON. safetensors keeps the metadata in
    a hash map whose order changes from process to process, so two keys would make the same
    weights give different bytes (and a different sha256)."""
    return {"worldvla": json.dumps({"format": FORMAT, "step": step}, sort_keys=True)}


def write_manifest(ckpt: Path) -> None:
    """``manifest.json``: size and sha256 of every file of the checkpoint directory."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(ckpt.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    doc = {"format": FORMAT, "files": files}
    atomic_write_text(ckpt / MANIFEST_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- verify
def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def read_manifest(ckpt: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's ``{file: {"size", "sha256"}}``, or None for a checkpoint written before manifests."""
    path = ckpt / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()
        ):
            raise ValueError("malformed file table")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"{path}: unreadable checkpoint manifest ({_one_line(e)})") from e
    return files


def verify_files(ckpt: Path, names: Iterable[str]) -> None:
    """Raise :class:`CorruptCheckpointError` unless each file exists and matches the manifest.

    Size first (a truncation costs no hashing), then sha256. Without a manifest (an older
    checkpoint) only presence is checked here; the loaders check what the formats allow.
    """
    manifest = read_manifest(ckpt)
    for name in names:
        path = ckpt / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: missing from the checkpoint")
        if manifest is None:
            continue
        entry = manifest.get(name)
        if entry is None:
            raise CorruptCheckpointError(f"{path}: not listed in {MANIFEST_FILE}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CorruptCheckpointError(
                f"{path}: {size} bytes, {MANIFEST_FILE} records {entry['size']} "
                "(truncated or altered since the checkpoint was written)"
            )
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise CorruptCheckpointError(
                f"{path}: sha256 {digest[:12]}… differs from {entry['sha256'][:12]}… in {MANIFEST_FILE} "
                "(corrupted or altered since the checkpoint was written)"
            )


def parse_file(ckpt: Path, name: str, parse: Callable[[Path], T]) -> T:
    """``parse(ckpt / name)`` with any failure as one error naming the file."""
    try:
        return parse(ckpt / name)
    except WorldVLAError:
        raise
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptCheckpointError(f"{ckpt / name}: malformed ({_one_line(e)})") from e


def _check_zip(path: Path) -> None:
    """The CRC-32 of every record of a torch.save archive (``torch.load`` does not check them)."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise CorruptCheckpointError(f"{path}: record {bad!r} fails its CRC-32 check (corrupted)")


# ---------------------------------------------------------------------------- load
def read_config(ckpt: Path) -> dict[str, Any]:
    verify_files(ckpt, [CONFIG_FILE])
    path = ckpt / CONFIG_FILE
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: cannot read checkpoint config: {_one_line(e)}") from e
    if not isinstance(d, dict):
        raise CorruptCheckpointError(f"{path}: cannot read checkpoint config: not a JSON object")
    if d.get("format") != FORMAT:
        raise ConfigError(f"{path}: checkpoint format {d.get('format')!r}, this version reads {FORMAT}")
    return d


def read_inference(ckpt: Path, train: dict[str, Any]) -> InferenceDefaults:
    """The checkpoint's inference defaults, verified: ``inference.json`` where the checkpoint has
    one (or its manifest lists one), else those an older checkpoint kept in its training
    config ``train``."""
    manifest = read_manifest(ckpt)
    if (ckpt / INFERENCE_FILE).exists() or (manifest is not None and INFERENCE_FILE in manifest):
        verify_files(ckpt, [INFERENCE_FILE])
        return parse_file(ckpt, INFERENCE_FILE, InferenceDefaults.load)
    try:
        return InferenceDefaults.from_legacy_train(train)
    except ConfigError as e:
        raise ConfigError(f"{ckpt / CONFIG_FILE}: {e}") from e


def read_tokenizer_ref(path: Path) -> ImageTokenizerRef:
    doc = json.loads(path.read_text())
    return ImageTokenizerRef(doc.get("path"), doc.get("fingerprint"), doc.get("relative"))


def load_model_state(
    ckpt: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The weights, verified (manifest, safetensors structure, finite values), as stored or
    cast to ``dtype``, read tensor by tensor straight onto ``device``."""
    verify_files(ckpt, [MODEL_FILE])
    path = ckpt / MODEL_FILE
    try:
        if dtype is None and str(device) == "cpu":
            state = load_file(str(path))
        else:
            state = {}
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    t = f.get_tensor(k)
                    state[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    except Exception as e:  # safetensors raises its own error types
        raise CorruptCheckpointError(f"{path}: unreadable safetensors file ({_one_line(e)})") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CorruptCheckpointError(
            f"{path}: non-finite values in {bad[:3]} (corrupted, or saved from a diverged run)"
        )
    return state


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Optimizer, step, data position, RNG states; verified (manifest, or the archive's CRCs)."""
    verify_files(ckpt, [TRAINER_FILE])
    path = ckpt / TRAINER_FILE
    try:
        if read_manifest(ckpt) is None:
            _check_zip(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except WorldVLAError:
        raise
    except Exception as e:  # zip, pickle and torch raise many types
        raise CorruptCheckpointError(f"{path}: unreadable trainer state ({_one_line(e)})") from e
    missing = [k for k in _TRAINER_KEYS if k not in state] if isinstance(state, dict) else list(_TRAINER_KEYS)
    if missing:
        raise CorruptCheckpointError(f"{path}: not a trainer state (missing {', '.join(missing)})")
    return state


def expected_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model ``model_cfg`` describes (built on the meta device: no memory)."""
    from worldvla.model.transformer import Transformer

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(model_cfg).state_dict().items()}


def _legacy_qk_norm(key: str, t: torch.Tensor, want: tuple[int, ...]) -> bool:
    """QK-norm weights stored as (heads, 1, head_dim) before they took Chameleon's
    (heads, head_dim); the model reshapes them on load."""
    return key.endswith(("q_norm.weight", "k_norm.weight")) and tuple(t.shape) == (want[0], 1, *want[1:])


def check_weights(state: dict[str, torch.Tensor], model_cfg: ModelConfig, ckpt: Path) -> None:
    """Unless the weights have exactly the names and shapes the model config implies, the
    checkpoint contradicts itself: CorruptCheckpointError."""
    want = expected_shapes(model_cfg)
    problems = [f"missing {k}" for k in sorted(set(want) - set(state))[:3]]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(want))[:3]]
    problems += [
        f"{k} is {tuple(state[k].shape)}, config implies {want[k]}"
        for k in want
        if k in state and tuple(state[k].shape) != want[k] and not _legacy_qk_norm(k, state[k], want[k])
    ][:3]
    if problems:
        c = model_cfg
        raise CorruptCheckpointError(
            f"{ckpt / MODEL_FILE} does not fit the model in {ckpt / CONFIG_FILE} (d_model={c.d_model}, "
            f"n_layers={c.n_layers}, vocab_size={c.vocab_size}): " + "; ".join(problems)
        )


def _bundle_from_config(ckpt: Path, d: dict[str, Any]) -> tuple[ModelConfig, DataLayout, dict[str, Any]]:
    try:
        train = d.get("train", {})
        if not isinstance(train, dict):
            raise TypeError("the training config is not a JSON object")
        return ModelConfig(**d["model"]), DataLayout.from_dict(d["layout"]), train
    except WorldVLAError as e:
        raise ConfigError(f"{ckpt / CONFIG_FILE}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(
            f"{ckpt / CONFIG_FILE}: malformed ({type(e).__name__}: {_one_line(e)})"
        ) from e


def load_bundle(path: str | Path) -> Bundle:
    """The non-model half of a checkpoint (vocab, stats, configs, tokenizers), verified."""
    ckpt = resolve_checkpoint(path)
    verify_files(ckpt, BUNDLE_FILES)
    d = read_config(ckpt)
    vocab = parse_file(ckpt, VOCAB_FILE, Vocab.load)
    if vocab.fingerprint() != d.get("vocab_fingerprint"):
        raise CorruptCheckpointError(f"{ckpt}: vocab.json does not match the fingerprint in config.json")
    model_cfg, layout, train = _bundle_from_config(ckpt, d)
    if model_cfg.vocab_size != vocab.size:  # the checkpoint contradicts itself
        raise CorruptCheckpointError(
            f"{ckpt / CONFIG_FILE}: the model has vocab_size={model_cfg.vocab_size}, vocab.json "
            f"{vocab.size} ids"
        )
    state_stats = None
    if layout.state_dim:
        verify_files(ckpt, [STATE_STATS_FILE])
        state_stats = parse_file(ckpt, STATE_STATS_FILE, ActionStats.load)
    return Bundle(
        path=ckpt,
        vocab=vocab,
        state_stats=state_stats,
        action_stats=parse_file(ckpt, STATS_FILE, ActionStats.load),
        model_config=model_cfg,
        layout=layout,
        text_tokenizer=load_text_tokenizer(layout.text_tokenizer),
        image_tokenizer_ref=parse_file(ckpt, TOKENIZER_FILE, read_tokenizer_ref),
        val_episodes=list(d.get("val_episodes", [])),
        step=int(d.get("step", 0)),
        train=train,
        inference=read_inference(ckpt, train),
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

    try:
        bundle = load_bundle(path)
        if dtype is not None:
            return _load_direct(bundle, Transformer, device, dtype), bundle
        state = load_model_state(bundle.path)
        check_weights(state, bundle.model_config, bundle.path)  # before allocating the model
    except CorruptCheckpointError as e:
        # Inference never falls back silently (the numbers would belong to another step), but
        # it points at the alternative.
        bad = resolve_checkpoint(path)
        older = [p for p in list_checkpoints(bad.parent.parent) if p.name < bad.name]
        if not older:
            raise
        raise CorruptCheckpointError(f"{e}; an older checkpoint of the run: {older[-1]}") from e
    model = Transformer(bundle.model_config)
    model.load_state_dict(state)
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
