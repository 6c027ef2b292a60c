"""Token cache: an episode store pre-tokenized once by an image tokenizer (SPEC §2).

Training reads every frame many times; encoding it each time would cost more than the
transformer step for small models. So frames are encoded once into a directory::

    codes.u16          uint16 memmap (N_frames, h, w)  image codes, episodes back to back
    actions.npy        float32 (N_frames, D)           actions[t] is executed after frame t
    world_actions.npy  float32 (N_frames, D), optional the actions really executed, where the
                                                       episode file stores them apart from clean
                                                       expert labels (world-model samples read these)
    states.npy         float32 (N_frames, S), optional  proprioceptive state observed with frame t,
                                                       when the episode file records it in every
                                                       episode (caches built before, or from files
                                                       without states, have none)
    state_stats.json   per-dimension bounds of the demonstrations' states (with states.npy)
    index.json         per episode: key, start, length, task, instruction, variation, kind
                       ("demo" or "explore": exploratory segments feed only world-model samples)
    action_stats.json  per-dimension bounds for the action tokenizer (SPEC §2)
    progress.json      how many episodes are encoded (only while building)
    meta.json          format version, tokenizer {path, fingerprint}, episode file identity,
                       grid, codebook_size, camera, image_size, action_dim, state_dim (0 = no
                       states), complete flag

**Identity.** A cache is only valid for the tokenizer that made it and the episode file
it was made from. ``meta.json`` records the tokenizer's fingerprint (config + weights) and
the episode file's size and sha256. The hash is over the whole file — a changed frame in
the middle must be caught — but it is computed only when needed: the file's
``(size, mtime_ns)`` is recorded too, and when both still match, the file is taken as
unchanged without rereading it (a rewrite changes the mtime; a copy with a new mtime is
rehashed and accepted if the content is the same). Any mismatch is a
:class:`~worldvla.errors.DataError`; a cache is never silently reused.

**Resumable.** ``meta.json`` (``complete: false``), ``index.json``, ``actions.npy`` and
``action_stats.json`` (and ``states.npy``, ``state_stats.json``) are written first, then
the memmap is filled a chunk of episodes at a time; after each chunk the memmap is flushed
and ``progress.json`` is replaced atomically. A kill leaves a partial cache that
:func:`build_token_cache` resumes from the last recorded chunk (after checking the identity
again); the final ``meta.json`` with ``complete: true`` is written atomically last, and
:meth:`TokenCache.open` refuses a cache without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldvla.data.datasets import CacheLike, EpisodeRecord
from worldvla.data.exploration import DEMO, KINDS
from worldvla.envs.view import suite_view
from worldvla.errors import DataError
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.state import state_stats_from_episodes
from worldvla.utils.io import atomic_path, atomic_write_text, file_sha256

FORMAT_VERSION = 1
CODES_FILE = "codes.u16"
ACTIONS_FILE = "actions.npy"
WORLD_ACTIONS_FILE = "world_actions.npy"
INDEX_FILE = "index.json"
META_FILE = "meta.json"
STATS_FILE = "action_stats.json"
STATES_FILE = "states.npy"
STATE_STATS_FILE = "state_stats.json"
PROGRESS_FILE = "progress.json"


# ---------------------------------------------------------------------------- identity
def file_identity(path: str | Path) -> dict[str, Any]:
    """``{"name", "size", "mtime_ns", "sha256"}`` of an episode file."""
    p = Path(path)
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(p)}


def check_file_identity(recorded: dict[str, Any], path: str | Path, where: Path) -> None:
    """Raise DataError unless ``path`` has the recorded content (fast path: same size and mtime)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{where}: episode file {p} not found")
    st = p.stat()
    if st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return
    now = file_sha256(p) if st.st_size == recorded.get("size") else None
    if now is None or now != recorded.get("sha256"):
        now_desc = f"sha256 {now[:12]}…" if now else "not hashed"
        raise DataError(
            f"{where}: the token cache was built from a different episode file than {p} "
            f"(recorded size {recorded.get('size')}, sha256 {str(recorded.get('sha256'))[:12]}…; "
            f"now size {st.st_size}, {now_desc}): it changed since tokenizing, or is another file. "
            "Rebuild the cache with 'worldvla tokenize --overwrite'."
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing (not a token cache, or an interrupted build)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable: {e}") from e


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------- reading
@dataclass
class TokenCache:
    """A complete token cache opened read-only (the view :mod:`worldvla.data.datasets` reads)."""

    path: Path
    meta: dict[str, Any]
    codes: np.ndarray  # uint16 memmap (N_frames, h, w)
    actions: np.ndarray  # float32 (N_frames, D)
    episodes: list[EpisodeRecord]
    world_actions: np.ndarray | None = None  # float32 (N_frames, D): executed actions, if recorded
    states: np.ndarray | None = None  # float32 (N_frames, S): proprioceptive states, if recorded

    @property
    def stats_path(self) -> Path:
        return self.path / STATS_FILE

    @property
    def action_stats(self) -> ActionStats:
        return ActionStats.load(self.stats_path)

    @property
    def state_stats(self) -> ActionStats | None:
        """Bounds of the demonstrations' states (``state_stats.json``); None without states."""
        if self.states is None:
            return None
        return ActionStats.load(self.path / STATE_STATS_FILE)

    @property
    def state_dim(self) -> int:
        return 0 if self.states is None else int(self.states.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.codes.shape[1]), int(self.codes.shape[2]))

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def codebook_size(self) -> int:
        return int(self.meta["codebook_size"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def camera(self) -> str:
        return str(self.meta["camera"])

    def __len__(self) -> int:
        return len(self.episodes)

    @classmethod
    def open(
        cls,
        path: str | Path,
        tokenizer_fingerprint: str | None = None,
        episodes_path: str | Path | None = None,
        verify_source: bool = False,
    ) -> TokenCache:
        """Open a complete cache; verify the tokenizer fingerprint and the episode file when given.

        With ``verify_source`` and no ``episodes_path``, the episode file at the path the cache
        recorded is verified if it is still there (a cache copied without its episode file is
        self-contained and opens unverified; a file changed in place since tokenizing is refused).
        """
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: token cache directory not found")
        meta = _read_json(path / META_FILE)
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: token cache format version {meta.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; rebuild it with 'worldvla tokenize --overwrite'"
            )
        if not meta.get("complete"):
            raise DataError(
                f"{path}: the token cache is incomplete (an interrupted build); rerun 'worldvla tokenize' "
                "with the same arguments to resume it"
            )
        _check_tokenizer(meta, tokenizer_fingerprint, path)
        recorded = meta.get("episodes") or {}
        source = recorded.get("path")
        if episodes_path is None and verify_source and source and Path(source).is_file():
            episodes_path = source
        if episodes_path is not None:
            check_file_identity(recorded, episodes_path, path)
        n, (h, w), d = int(meta["n_frames"]), meta["grid"], int(meta["action_dim"])
        codes_file = path / CODES_FILE
        if not codes_file.exists() or codes_file.stat().st_size != n * h * w * 2:
            raise DataError(f"{codes_file}: missing or of the wrong size for {n} frames of {h}×{w} codes")
        codes = np.memmap(codes_file, dtype=np.uint16, mode="r", shape=(n, h, w))
        actions = _load_rows(path / ACTIONS_FILE, (n, d))
        world_actions = None
        if (path / WORLD_ACTIONS_FILE).exists():
            world_actions = _load_rows(path / WORLD_ACTIONS_FILE, (n, d))
        states = None
        if (path / STATES_FILE).exists():
            s = int(meta.get("state_dim") or 0)
            if s < 1:
                raise DataError(f"{path / STATES_FILE}: present, but meta.json records no state_dim")
            states = _load_rows(path / STATES_FILE, (n, s))
            if not (path / STATE_STATS_FILE).exists():
                raise DataError(f"{path / STATE_STATS_FILE}: missing (the cache has {STATES_FILE})")
        episodes = [EpisodeRecord(**e) for e in _read_json(path / INDEX_FILE)]
        return cls(
            path=path,
            meta=meta,
            codes=codes,
            actions=actions,
            episodes=episodes,
            world_actions=world_actions,
            states=states,
        )


def open_cache(cache: str | Path | CacheLike) -> CacheLike:
    """An opened token cache: ``cache`` itself, or the one at that path (source verified)."""
    if not isinstance(cache, (str, Path)):
        return cache
    # The episode file the cache was built from, if it is still where it was: a file changed
    # since tokenizing means a stale cache.
    return TokenCache.open(cache, verify_source=True)


def _load_rows(file: Path, shape: tuple[int, int]) -> np.ndarray:
    """A float32 array of ``shape`` stored with ``np.save``, memory-mapped; DataError otherwise."""
    try:
        a = np.load(file, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{file}: unreadable: {e}") from e
    if a.shape != shape or a.dtype != np.float32:
        raise DataError(f"{file}: expected float32 {shape}, got {a.dtype} {a.shape}")
    return a


def _check_tokenizer(meta: dict[str, Any], fingerprint: str | None, path: Path) -> None:
    recorded = (meta.get("image_tokenizer") or {}).get("fingerprint")
    if fingerprint is not None and recorded != fingerprint:
        raise DataError(
            f"{path}: the token cache was built with image tokenizer {recorded} "
            f"({(meta.get('image_tokenizer') or {}).get('path')}), not with the given one ({fingerprint}); "
            "rebuild it with 'worldvla tokenize --overwrite'"
        )


# ---------------------------------------------------------------------------- building
def build_token_cache(
    episodes_path: str | Path,
    tokenizer: Any,
    out: str | Path,
    tokenizer_path: str | Path | None = None,
    camera: str | None = None,
    stats_mode: str = "minmax",
    batch_size: int = 64,
    chunk_frames: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
) -> TokenCache:
    """Encode every frame of ``camera`` in ``episodes_path`` into a cache at ``out``.

    An existing complete cache with the same identity is returned as is; a partial one is
    resumed; one with another identity is refused unless ``overwrite``. ``tokenizer_path``
    is recorded so that a checkpoint can find the tokenizer again (default: unrecorded).
    """
    from worldvla.data.episodes import EpisodeReader

    out = Path(out)
    episodes_path = Path(episodes_path)
    with EpisodeReader(episodes_path, cameras=[camera] if camera else None) as reader:
        camera = camera or reader.cameras[0]
        img_shape = tuple(reader.image_shape)  # (H, W, 3)
        size = tokenizer.image_size
        if img_shape != (size, size, 3):
            raise DataError(
                f"{episodes_path}: frames are {img_shape}, the image tokenizer expects ({size}, {size}, 3); "
                "re-ingest the episodes at the tokenizer's resolution or use another tokenizer"
            )
        identity = {
            "format_version": FORMAT_VERSION,
            "image_tokenizer": {
                "path": str(Path(tokenizer_path).resolve()) if tokenizer_path is not None else None,
                "fingerprint": tokenizer.fingerprint(),
            },
            "camera": camera,
            "image_size": int(size),
            "grid": [int(g) for g in tokenizer.grid],
            "codebook_size": int(tokenizer.codebook_size),
            "stats_mode": stats_mode,
        }
        if identity["codebook_size"] > 65536:
            raise DataError(f"codebook of {identity['codebook_size']} codes does not fit uint16 codes")

        state = _existing_state(out, identity, episodes_path, overwrite)
        if state == "complete":
            return TokenCache.open(out)
        if state is None:
            _start(out, reader, episodes_path, identity, stats_mode)
        meta = _read_json(out / META_FILE)
        index = _read_json(out / INDEX_FILE)
        done = int(_read_json(out / PROGRESS_FILE)["episodes_done"])
        n, (h, w) = int(meta["n_frames"]), meta["grid"]
        codes = np.memmap(out / CODES_FILE, dtype=np.uint16, mode="r+", shape=(n, h, w))
        remaining = sum(e["length"] for e in index[done:])
        bar = tqdm(total=remaining, desc="tokenize", unit="frame", disable=not progress)
        pending = 0
        for i in range(done, len(index)):
            ep = index[i]
            frames = reader.frames(ep["key"], camera)  # uint8 (T, H, W, 3)
            if len(frames) != ep["length"]:
                raise DataError(f"{episodes_path}: episode {ep['key']} changed length while tokenizing")
            for s in range(0, len(frames), batch_size):
                with torch.inference_mode():
                    c = tokenizer.encode(frames[s : s + batch_size])  # (B, h, w)
                codes[ep["start"] + s : ep["start"] + s + len(c)] = np.asarray(c.cpu(), dtype=np.uint16)
                bar.update(len(c))
            pending += ep["length"]
            if pending >= chunk_frames or i == len(index) - 1:
                codes.flush()
                _write_json(out / PROGRESS_FILE, {"episodes_done": i + 1})
                pending = 0
        bar.close()
        del codes
    meta["complete"] = True
    _write_json(out / META_FILE, meta)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return TokenCache.open(out)


def _existing_state(out: Path, identity: dict[str, Any], episodes_path: Path, overwrite: bool) -> str | None:
    """``None`` (start fresh), ``"partial"`` (resume) or ``"complete"``; refuse a foreign cache."""
    meta_file = out / META_FILE
    if not out.exists():
        return None
    if not meta_file.exists():
        if any(out.iterdir()) and not overwrite:
            raise DataError(
                f"{out}: exists and is not a token cache; choose another --out or pass --overwrite"
            )
        return None
    meta = _read_json(meta_file)
    problems = [
        f"{k}: cache {meta.get(k)!r} != requested {v!r}"
        for k, v in identity.items()
        if k != "image_tokenizer" and meta.get(k) != v
    ]
    recorded_fp = (meta.get("image_tokenizer") or {}).get("fingerprint")
    if recorded_fp != identity["image_tokenizer"]["fingerprint"]:
        problems.append(
            f"image tokenizer: cache {recorded_fp} != requested {identity['image_tokenizer']['fingerprint']}"
        )
    if not problems:
        try:
            check_file_identity(meta.get("episodes") or {}, episodes_path, out)
        except DataError:
            problems.append(f"episode file: {episodes_path} differs from the one the cache was built from")
    if problems:
        if overwrite:
            return None
        raise DataError(
            f"{out}: an existing token cache does not match this request ({'; '.join(problems)}); "
            "pass --overwrite to rebuild it or choose another --out"
        )
    if meta.get("complete"):
        return "complete"
    if not (out / PROGRESS_FILE).exists():
        return None  # killed before the first progress record: start over
    return "partial"


def _recorded_view(reader: Any) -> dict[str, Any] | None:
    """How the file's frames were rendered (``worldvla.envs.view``), if it records its suite."""
    suite = reader.file_attrs.get("suite")
    if isinstance(suite, str):
        try:
            suite = json.loads(suite)
        except ValueError:
            return None
    return suite_view(suite) if isinstance(suite, dict) else None


def _start(out: Path, reader: Any, episodes_path: Path, identity: dict[str, Any], stats_mode: str) -> None:
    """Write everything but the codes: index, actions, statistics, empty memmap, meta (incomplete)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, PROGRESS_FILE, CODES_FILE, WORLD_ACTIONS_FILE, STATES_FILE, STATE_STATS_FILE):
        (out / name).unlink(missing_ok=True)  # an overwritten or never-started cache
    index, actions, executed, states, start = [], [], [], [], 0
    for i, key in enumerate(reader.keys):
        a = np.asarray(reader.actions(i), dtype=np.float32)  # (T, D)
        ex = reader.executed_actions(i)
        executed.append(a if ex is None else ex)
        # The reader returns a state for every episode or for none (EpisodeReader.state_dim).
        st = reader.state(i) if getattr(reader, "state_dim", None) else None
        if st is not None:
            states.append(np.asarray(st, dtype=np.float32))
        attrs = reader.attrs(i)
        kind = str(attrs.get("kind") or DEMO)
        if kind not in KINDS:
            raise DataError(f"{episodes_path}: {key}: unknown episode kind {kind!r} (known: {KINDS})")
        instruction, task = attrs.get("instruction"), attrs.get("task")
        if not instruction or not task:
            ep = reader[i]  # the reader's fallbacks (LIBERO keeps the instruction in problem_info)
            instruction, task = ep.instruction, ep.task
        index.append(
            {
                "key": str(key),
                "start": start,
                "length": len(a),
                "task": str(task or ""),
                "instruction": str(instruction or ""),
                "variation": int(attrs.get("variation") or 0),
                "kind": kind,
            }
        )
        actions.append(a)
        start += len(a)
    if not index:
        raise DataError(f"{episodes_path}: the episode file holds no episodes")
    if not any(e["kind"] == DEMO for e in index):
        raise DataError(f"{episodes_path}: the episode file holds no demonstrations (only exploration)")
    # The action tokenizer's bounds describe what the policy must output: demonstrations only
    # (exploratory actions span the whole box; they are clipped into these bounds). Checked
    # per episode first, so a non-finite action or another action size names its episode.
    try:
        stats = ActionStats.from_episodes(
            [(e["key"], a) for e, a in zip(index, actions) if e["kind"] == DEMO], mode=stats_mode
        )
    except DataError as e:
        raise DataError(f"{episodes_path}: {e}") from None
    stats.save(out / STATS_FILE)
    all_actions = np.concatenate(actions)  # (N_frames, D)
    with atomic_path(out / ACTIONS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, all_actions)
    all_executed = np.concatenate(executed)
    if not np.array_equal(all_executed, all_actions):
        with atomic_path(out / WORLD_ACTIONS_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, all_executed)
    state_dim = 0
    if states:
        # Like the action bounds: the demonstrations' states, which action-model samples read.
        try:
            state_stats = state_stats_from_episodes(
                [(e["key"], st) for e, st in zip(index, states) if e["kind"] == DEMO]
            )
        except DataError as e:
            raise DataError(f"{episodes_path}: {e}") from None
        state_stats.save(out / STATE_STATS_FILE)
        all_states = np.concatenate(states)  # (N_frames, S)
        with atomic_path(out / STATES_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, all_states)
        state_dim = int(all_states.shape[1])
    _write_json(out / INDEX_FILE, index)
    h, w = identity["grid"]
    with atomic_path(out / CODES_FILE) as tmp, open(tmp, "wb") as f:
        f.truncate(start * h * w * 2)  # sparse zeros; filled chunk by chunk
    meta = dict(identity)
    meta.update(
        {
            "episodes": {**file_identity(episodes_path), "path": str(episodes_path.resolve())},
            "n_frames": start,
            "n_episodes": len(index),
            "action_dim": int(all_actions.shape[1]),
            "state_dim": state_dim,
            "view": _recorded_view(reader),
            "complete": False,
        }
    )
    _write_json(out / META_FILE, meta)
    _write_json(out / PROGRESS_FILE, {"episodes_done": 0})
