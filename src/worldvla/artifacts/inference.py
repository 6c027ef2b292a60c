"""Inference defaults: how a checkpoint's policy acts unless the caller says otherwise.

They travel with the checkpoint but apart from the training config (``inference.json``
beside ``config.json``, listed in the manifest like every file; written by
:func:`worldvla.artifacts.checkpoint.write_checkpoint`): they do not shape the weights, so
changing one is neither another run for the ablation driver nor a reason to refuse
resuming. A training preset chooses the defaults of the checkpoints it writes
(:func:`worldvla.train.config.preset_inference`; mw-quick reads actions out as the expected
bin, mw-quick-guided also guides its world model), and :class:`worldvla.policy.PolicyConfig`
overrides them per policy.

Checkpoints written before ``inference.json`` kept the action readout among the training
fields (``train.action_readout`` in ``config.json``); :meth:`InferenceDefaults.from_legacy_train`
reads it from there, and a checkpoint without either has the defaults below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from worldvla.errors import ConfigError
from worldvla.tokenizers.action import Readout, check_readout
from worldvla.utils.io import atomic_write_text

# Training-config keys of older checkpoints that held inference defaults (same names here).
LEGACY_TRAIN_KEYS = ("action_readout",)


def check_guidance(w: Any, name: str = "guidance") -> float:
    """``w`` as a classifier-free guidance strength (a finite number >= 0), or ConfigError."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {w!r}")
    return float(w)


@dataclass(frozen=True)
class InferenceDefaults:
    """What a checkpoint's policy does by default at inference.

    Attributes:
        action_readout: how an action bin is read out of the model's distribution over the
            bins (:data:`worldvla.tokenizers.action.READOUTS`): ``"argmax"`` (greedy, the
            reference) or ``"mean"`` (the bin nearest to the expected one).
        world_guidance: classifier-free guidance w of the world model's frames, logits
            ``u + w·(c − u)`` of the prompt with its actions and with null actions
            (:class:`worldvla.world_model.WorldModel`); 1 is the plain model, and any other
            value needs a checkpoint trained with null-action world samples.
    """

    action_readout: Readout = "argmax"
    world_guidance: float = 1.0

    def __post_init__(self) -> None:
        check_readout(self.action_readout)
        check_guidance(self.world_guidance, "world_guidance")

    def to_dict(self) -> dict[str, Any]:
        """The stored object; ``world_guidance`` only when it is not 1, so that a checkpoint
        without guidance stays readable by releases that predate the field."""
        d = asdict(self)
        if d["world_guidance"] == 1.0:
            del d["world_guidance"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceDefaults:
        """From a stored object; fields it lacks take their defaults, unknown ones are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown inference defaults {unknown}")
        return cls(**d)

    @classmethod
    def from_legacy_train(cls, train: Mapping[str, Any]) -> InferenceDefaults:
        """The defaults a checkpoint written before ``inference.json`` kept in its training config."""
        return cls.from_dict({k: train[k] for k in LEGACY_TRAIN_KEYS if train.get(k)})

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> InferenceDefaults:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        try:
            return cls.from_dict(doc)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e


DEFAULT_INFERENCE = InferenceDefaults()  # the reference's: greedy
