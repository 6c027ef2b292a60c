"""The one place that knows token ids.

WorldVLA reads and writes a single stream of ids that mixes text, image codes and action
bins (SPEC §2). Every other module asks a :class:`Vocab` for ids and ranges; no literal id
appears anywhere else in the package.

Two layouts are provided:

``Vocab.build(VocabConfig(...))`` — the compact layout used by models trained with this
package. Ids, in order::

    0 PAD   1 BOS   2 SEP (end of turn)   3 BOI   4 EOI   5 ROW_SEP   6 BOA   7 EOA
    8 .. 8+max_grid          grid-size tokens  (grid token n says "n rows" / "n columns")
    text_start ..            text tokens       (text_size ids, e.g. 256 bytes)
    image_start ..           image codes       (image_codes ids, code c -> image_start + c)
    action_start ..          action bins       (action_bins ids, bin b -> action_start + b)
    [bos_state, eos_state,   only with state_bins > 0: the state block's delimiters and
     state_start ..]         state bins        (state_bins ids, bin b -> state_start + b)
    [null_action]            only with null_action: the "no action given" token
    .. size                  unused padding up to a multiple of ``pad_to_multiple``

**State tokens are optional and additive.** A vocabulary built with ``state_bins=0`` (the
default, and every vocabulary written before state tokens existed) has no state ids at
all: its ids, its size, its ``to_dict()`` / ``vocab.json`` and its fingerprint are exactly
what they were, so every existing checkpoint and token cache keeps its meaning. With
``state_bins > 0`` the two delimiters and the bins are appended after the action bins, so
every other id keeps its value. A state block (``BOS_STATE, bin_1 … bin_S, EOS_STATE``,
:mod:`worldvla.sequence`) is context in an action-model prompt, never an action block: the
attention mask (:mod:`worldvla.model.masks`) keys on BOA/EOA only.

**The null action is optional and additive in the same way.** ``null_action=True`` appends
one id after everything else; a world-model sample whose action block holds only that id
(``BOA, NULL … NULL, EOA``, as many as the bins it stands for) says "some actions were
taken, which is not given". Models trained with some such samples
(``TrainConfig.world_action_dropout``) can be guided towards their actions when they
imagine a frame (:class:`worldvla.world_model.WorldModel`, ``guidance``). A vocabulary
without it has ``null_action = -1`` and writes no such field.

``Vocab.chameleon_reference()`` — the layout of the reference Chameleon-based checkpoints
(65,536 ids): image codes 4–8195, EOI 8196, BOI 8197, SEP 8710, row separator 8803, grid
token 8804+n, BOA 10004, EOA 15004, action bins 10006–10261. There the BPE text tokenizer
owns the whole id space, so the text range overlaps the carved-out image and action ranges.
The reference code looks these ids up by token name (:data:`CHAMELEON_TOKEN_NAMES`,
:func:`chameleon_token_names`), so a converted checkpoint can check them against the real
tokenizer file.

**Grid unit.** A grid token says how many *units* a frame has per side. In the compact
layout, and in ``chameleon_reference()`` as every earlier checkpoint recorded it, the unit
is one code. The released WorldVLA checkpoints count 32-pixel patches instead: their
VQGAN makes one code per 16 pixels, so a 256² frame (16×16 codes) is announced as 8×8
(``item_processor.py``: ``get_n_grids_token(image.size[1] // 32)``).
``chameleon_reference(grid_unit=2)`` is that layout; ``grid_unit`` appears in
``to_dict()`` (and the fingerprint) only when it is not 1, so every vocabulary written
before it existed keeps its meaning.

Functions here work on Python ints, numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

ArrayLike = TypeVar("ArrayLike")

SPECIAL_NAMES = ("pad", "bos", "sep", "boi", "eoi", "row_sep", "boa", "eoa")
# Fields of the optional state tokens; absent from to_dict() when state_bins == 0.
STATE_FIELDS = ("bos_state", "eos_state", "state_start", "state_bins")
_NO_STATE = {"bos_state": -1, "eos_state": -1, "state_start": -1, "state_bins": 0}
# Codes per grid-token unit of the released Chameleon checkpoints: one 32-pixel patch is
# 2×2 codes of the 16-pixel VQGAN (module docstring).
CHAMELEON_GRID_UNIT = 2

# Names the reference code gives the special tokens of Vocab.chameleon_reference() (its
# item processors look them up in the tokenizer by these names), by Vocab field.
CHAMELEON_TOKEN_NAMES = {
    "bos": "<s>",
    "pad": "<pad>",
    "boi": "<racm3:break>",
    "eoi": "<eoss>",
    "sep": "<reserved08706>",
    "row_sep": "<reserved08799>",
    "boa": "<reserved10000>",
    "eoa": "<reserved15000>",
}


@dataclass(frozen=True)
class VocabConfig:
    """Sizes from which the compact layout is built."""

    text_size: int = 256  # byte-level text tokenizer by default
    image_codes: int = 512
    action_bins: int = 256
    max_grid: int = 64  # largest image grid side (rows or columns) that can be announced
    pad_to_multiple: int = 64  # round the vocabulary up so the output matmul is aligned
    state_bins: int = 0  # bins per proprioceptive-state dimension; 0 = no state tokens
    null_action: bool = False  # append the null-action id (module docstring)

    def __post_init__(self) -> None:
        if self.state_bins < 0 or self.state_bins == 1:
            raise ValueError(
                f"VocabConfig.state_bins must be 0 (no state tokens) or >= 2, got {self.state_bins}"
            )
        for f in fields(self):
            if f.name not in ("state_bins", "null_action") and getattr(self, f.name) < 1:
                raise ValueError(f"VocabConfig.{f.name} must be >= 1, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class Vocab:
    """Token id layout. Build with :meth:`build` or :meth:`chameleon_reference`."""

    name: str
    size: int
    pad: int
    bos: int
    sep: int
    boi: int
    eoi: int
    row_sep: int
    boa: int
    eoa: int
    grid_start: int
    max_grid: int
    text_start: int
    text_size: int
    image_start: int
    image_codes: int
    action_start: int
    action_bins: int
    # Optional state tokens (module docstring); the defaults mean "none".
    bos_state: int = -1
    eos_state: int = -1
    state_start: int = -1
    state_bins: int = 0
    # Codes per unit of a grid token (module docstring); 1 = grid tokens count codes.
    grid_unit: int = 1
    # The null-action id (module docstring); -1 = none.
    null_action: int = -1

    def __post_init__(self) -> None:
        if self.grid_unit < 1:
            raise ValueError(f"vocab {self.name!r}: grid_unit must be >= 1, got {self.grid_unit}")
        special_names = list(SPECIAL_NAMES)
        if self.state_bins < 0 or self.state_bins == 1:
            raise ValueError(f"vocab {self.name!r}: state_bins must be 0 or >= 2, got {self.state_bins}")
        if not self.has_state and (self.bos_state, self.eos_state, self.state_start) != (-1, -1, -1):
            raise ValueError(f"vocab {self.name!r}: state ids given but state_bins is 0")
        if self.has_state:
            special_names += ["bos_state", "eos_state"]
        if self.has_null_action:
            special_names.append("null_action")
        elif self.null_action != -1:
            raise ValueError(f"vocab {self.name!r}: null_action must be an id >= 0 or -1 (none)")
        specials = [getattr(self, n) for n in special_names]
        if len(set(specials)) != len(specials):
            raise ValueError(f"vocab {self.name!r}: special ids are not distinct: {specials}")
        ranges = {
            "image": (self.image_start, self.image_start + self.image_codes),
            "action": (self.action_start, self.action_start + self.action_bins),
            "grid": (self.grid_start, self.grid_start + self.max_grid + 1),
        }
        if self.has_state:
            ranges["state"] = (self.state_start, self.state_start + self.state_bins)
        names = list(ranges)
        for i, a in enumerate(names):
            lo, hi = ranges[a]
            if lo < 0 or hi > self.size:
                raise ValueError(f"vocab {self.name!r}: {a} range [{lo}, {hi}) outside [0, {self.size})")
            for s_name, s in zip(special_names, specials):
                if lo <= s < hi:
                    raise ValueError(f"vocab {self.name!r}: special {s_name}={s} inside the {a} range")
            for b in names[i + 1 :]:
                lo2, hi2 = ranges[b]
                if lo < hi2 and lo2 < hi:
                    raise ValueError(f"vocab {self.name!r}: {a} and {b} ranges overlap")
        if self.text_start < 0 or self.text_start + self.text_size > self.size:
            raise ValueError(f"vocab {self.name!r}: text range outside the vocabulary")
        if any(not 0 <= s < self.size for s in specials):
            raise ValueError(f"vocab {self.name!r}: a special id is outside [0, {self.size})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, cfg: VocabConfig | None = None) -> Vocab:
        cfg = cfg or VocabConfig()
        grid_start = len(SPECIAL_NAMES)
        text_start = grid_start + cfg.max_grid + 1
        image_start = text_start + cfg.text_size
        action_start = image_start + cfg.image_codes
        used = action_start + cfg.action_bins
        state = dict(_NO_STATE)
        if cfg.state_bins:  # appended after everything else: no other id moves
            state = {
                "bos_state": used,
                "eos_state": used + 1,
                "state_start": used + 2,
                "state_bins": cfg.state_bins,
            }
            used += 2 + cfg.state_bins
        null_action = -1
        if cfg.null_action:  # after everything else too
            null_action = used
            used += 1
        size = -(-used // cfg.pad_to_multiple) * cfg.pad_to_multiple
        return cls(
            name="worldvla",
            size=size,
            **{n: i for i, n in enumerate(SPECIAL_NAMES)},
            grid_start=grid_start,
            max_grid=cfg.max_grid,
            text_start=text_start,
            text_size=cfg.text_size,
            image_start=image_start,
            image_codes=cfg.image_codes,
            action_start=action_start,
            action_bins=cfg.action_bins,
            **state,
            null_action=null_action,
        )

    @classmethod
    def chameleon_reference(cls, grid_unit: int = 1) -> Vocab:
        """Layout of the reference WorldVLA / Chameleon-7B checkpoints (see module docstring).

        ``grid_unit``: codes per grid-token unit; :data:`CHAMELEON_GRID_UNIT` is what the
        released checkpoints were trained with, 1 (the default) what this project's own
        Chameleon-sized presets and every earlier converted checkpoint use.
        """
        return cls(
            name="chameleon-reference",
            size=65536,
            bos=0,  # Chameleon "<s>"
            pad=1,  # Chameleon "<pad>"
            image_start=4,
            image_codes=8192,
            eoi=8196,
            boi=8197,
            sep=8710,  # "<reserved08706>", the reference's end-of-turn separator
            row_sep=8803,
            grid_start=8804,
            max_grid=64,
            boa=10004,
            eoa=15004,
            action_start=10006,
            action_bins=256,
            text_start=0,  # the BPE owns the whole space; image/action ids are carved out of it
            text_size=65536,
            grid_unit=grid_unit,
        )

    # ------------------------------------------------------------------ id <-> value maps
    def image_ids(self, codes: ArrayLike) -> ArrayLike:
        """Image code(s) in [0, image_codes) -> token id(s)."""
        return codes + self.image_start

    def image_codes_of(self, ids: ArrayLike) -> ArrayLike:
        """Token id(s) of image codes -> code(s) in [0, image_codes)."""
        return ids - self.image_start

    def action_ids(self, bins: ArrayLike) -> ArrayLike:
        """Action bin(s) in [0, action_bins) -> token id(s)."""
        return bins + self.action_start

    def action_bins_of(self, ids: ArrayLike) -> ArrayLike:
        """Token id(s) of action bins -> bin(s) in [0, action_bins)."""
        return ids - self.action_start

    def state_ids(self, bins: ArrayLike) -> ArrayLike:
        """State bin(s) in [0, state_bins) -> token id(s); only for a vocabulary with state tokens."""
        self._need_state()
        return bins + self.state_start

    def state_bins_of(self, ids: ArrayLike) -> ArrayLike:
        """Token id(s) of state bins -> bin(s) in [0, state_bins)."""
        self._need_state()
        return ids - self.state_start

    def _need_state(self) -> None:
        if not self.has_state:
            raise ValueError(f"vocab {self.name!r} has no state tokens (built with state_bins=0)")

    def text_ids(self, tokens: ArrayLike) -> ArrayLike:
        """Text tokenizer ids in [0, text_size) -> token id(s)."""
        return tokens + self.text_start

    def text_tokens_of(self, ids: ArrayLike) -> ArrayLike:
        return ids - self.text_start

    def grid_id(self, n: int) -> int:
        """Token announcing a grid side of ``n`` codes (``n / grid_unit`` units)."""
        units, rest = divmod(n, self.grid_unit)
        if rest:
            raise ValueError(
                f"grid side {n} is not a whole number of {self.grid_unit}-code units for vocab {self.name!r}"
            )
        if not 1 <= units <= self.max_grid:
            raise ValueError(f"grid side {n} outside [1, {self.max_grid}] units for vocab {self.name!r}")
        return self.grid_start + units

    # ------------------------------------------------------------------ predicates
    def is_image_code(self, ids: ArrayLike) -> ArrayLike:
        return (ids >= self.image_start) & (ids < self.image_start + self.image_codes)

    def is_action_bin(self, ids: ArrayLike) -> ArrayLike:
        return (ids >= self.action_start) & (ids < self.action_start + self.action_bins)

    def is_state_bin(self, ids: ArrayLike) -> ArrayLike:
        """True for state-bin ids; all False for a vocabulary without state tokens."""
        if not self.has_state:
            return ids != ids
        return (ids >= self.state_start) & (ids < self.state_start + self.state_bins)

    @property
    def has_null_action(self) -> bool:
        """Whether the layout has the null-action id (``VocabConfig.null_action``)."""
        return self.null_action >= 0

    @property
    def has_state(self) -> bool:
        """Whether the layout has state tokens (``state_bins > 0``)."""
        return self.state_bins > 0

    def is_text(self, ids: ArrayLike) -> ArrayLike:
        return (ids >= self.text_start) & (ids < self.text_start + self.text_size)

    @property
    def specials(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in SPECIAL_NAMES}

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.has_state:  # vocab.json and the fingerprint stay as they were before state tokens
            for k in STATE_FIELDS:
                del d[k]
        if self.grid_unit == 1:  # ... and as they were before the grid unit
            del d["grid_unit"]
        if not self.has_null_action:  # ... and before the null action
            del d["null_action"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        # The state fields come all together or not at all (a layout without state tokens).
        given_state = set(STATE_FIELDS) & set(d)
        optional = {"grid_unit", "null_action"}
        missing = known - set(d) - (set(STATE_FIELDS) if not given_state else set()) - optional
        if unknown or missing:
            raise ValueError(
                f"vocab dict does not match: unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            )
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from worldvla.utils.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read vocabulary: {e}") from e
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: invalid vocabulary: {e}") from e

    def fingerprint(self) -> str:
        """Short hash of the layout; checkpoints and caches record it."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def chameleon_token_names(vocab: Vocab) -> dict[str, int]:
    """Reference token name -> id in ``vocab``, for every special and grid token the reference
    looks up by name (:data:`CHAMELEON_TOKEN_NAMES`; grid tokens ``<reserved0{8800 + n}>`` for
    ``n`` units, ``FlexARItemProcessor.get_n_grids_token``).

    A converted checkpoint checks these against the real tokenizer file, so that its ids are
    the ones the reference's ``token2id`` returns rather than a transcription of them.
    """
    names = {name: getattr(vocab, field) for field, name in CHAMELEON_TOKEN_NAMES.items()}
    for n in range(1, vocab.max_grid + 1):
        names[f"<reserved{8800 + n:05d}>"] = vocab.grid_start + n
    return names


def chameleon_image_code(name: str) -> int | None:
    """The image code a Chameleon tokenizer entry stands for (None for other entries).

    The tokenizer names code ``c`` ``IMGIMG<digits of c as letters A-J>Z``; the reference's
    ``VocabTranslation.bpe2img`` reads the names this way to map codes to token ids.
    """
    if not (name.startswith("IMGIMG") and name.endswith("Z")):
        return None
    letters = name[len("IMGIMG") : -1]
    if not letters or not all("A" <= c <= "J" for c in letters):
        return None
    return int("".join(str(ord(c) - ord("A")) for c in letters))
