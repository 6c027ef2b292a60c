"""Wire format between a policy server and its clients: msgpack with numpy arrays.

Why msgpack: binary frames carry images without base64 overhead and the format is
language-neutral (openpi uses the same scheme). Arrays travel as a tagged map::

    {"__ndarray__": True, "dtype": "<u1", "shape": [256, 256, 3], "data": <raw bytes, C order>}

Only numeric and boolean dtypes are allowed (object arrays could smuggle pickles).

Conversation (one websocket connection):

1. on connect the server sends its metadata (a map; ``protocol`` = :data:`PROTOCOL_VERSION`);
2. then each client message is a request map with an ``op``:

   - ``{"op": "reset"}`` -> forget the episode (history frames, queued actions);
   - ``{"op": "act", "obs": OBS}`` -> one action ``(D,)``; the policy keeps its own queue
     and observes every frame, so its history frames are consecutive control steps (SPEC §2);
   - ``{"op": "infer", "obs": OBS}`` -> a fresh chunk ``(K, D)`` (``predict_action_chunk``);

   with ``OBS = {"image": uint8 (H, W, 3), "instruction": str}`` (or ``"images": {camera: array}``)
   and optionally ``"state"``: the proprioceptive state, a 1-D numeric array (or list of
   numbers) of at most :data:`MAX_STATE_DIM` finite values, which a policy trained with the
   state requires (its metadata's ``state_dim`` > 0) and every other policy ignores;
3. every reply is ``{"ok": True, ...}`` (``actions`` for act/infer, plus ``server_timing``)
   or ``{"ok": False, "error": message}``. A malformed request gets an error reply and the
   connection stays open.

This module imports only numpy and msgpack.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from worldvla.errors import WorldVLAError

PROTOCOL_VERSION = 1
OPS = ("reset", "act", "infer")
_ARRAY_TAG = "__ndarray__"
_ALLOWED_KINDS = frozenset("biuf")  # bool, signed, unsigned, float
# Proprioception is a handful of numbers (Meta-World: 4, LIBERO's robot state: 9); the bound
# keeps a request from making the policy tokenize an arbitrarily long vector.
MAX_STATE_DIM = 256


class ProtocolError(WorldVLAError, ValueError):
    """A message that does not follow the protocol (bad bytes, unknown op, wrong types)."""


class ServerError(WorldVLAError, RuntimeError):
    """The server answered a request with an error reply."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"cannot send a numpy array of dtype {obj.dtype} (numeric/bool only)")
        arr = np.ascontiguousarray(obj)
        return {_ARRAY_TAG: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj: dict) -> Any:
    if obj.get(_ARRAY_TAG) is not True:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
        data = obj["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed array in message: {e}") from None
    if dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {dtype} is not allowed (numeric/bool only)")
    if not isinstance(data, bytes) or any(s < 0 for s in shape):
        raise ProtocolError("malformed array in message: data must be bytes and the shape non-negative")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            f"array of shape {shape} and dtype {dtype} needs {expected} bytes, got {len(data)}"
        )
    # Copy: frombuffer over msgpack's bytes is read-only, and callers may want to write.
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def packb(obj: Any) -> bytes:
    """Serialize maps/lists/scalars/strings/bytes and numpy arrays to msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview | str) -> Any:
    """Inverse of :func:`packb`; raises :class:`ProtocolError` on anything that is not our msgpack."""
    if isinstance(data, str):
        raise ProtocolError("expected a binary msgpack frame, got a text frame")
    try:
        return msgpack.unpackb(bytes(data), object_hook=_decode, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"message is not valid msgpack: {type(e).__name__}: {e}") from None


def parse_request(message: bytes | str) -> dict[str, Any]:
    """Decode and validate one client request; raises :class:`ProtocolError` with a readable reason."""
    req = unpackb(message)
    if not isinstance(req, dict):
        raise ProtocolError(f"request must be a map, got {type(req).__name__}")
    op = req.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if op != "reset":
        req["obs"] = validate_observation(req.get("obs"))
    return req


def validate_observation(obs: Any) -> dict[str, Any]:
    """Check the observation map's structure (the policy checks sizes against its checkpoint)."""
    if not isinstance(obs, dict):
        raise ProtocolError(f"'obs' must be a map, got {type(obs).__name__}")
    if not isinstance(obs.get("instruction"), str):
        raise ProtocolError("'obs' needs an 'instruction' string")
    images = [obs["image"]] if "image" in obs else list((obs.get("images") or {}).values())
    if not images:
        raise ProtocolError("'obs' needs an 'image' (H, W, 3) uint8 array or an 'images' map")
    for img in images:
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            what = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ProtocolError(f"images must be uint8 (H, W, 3) arrays, got {what}")
    if "state" in obs:
        obs["state"] = validate_state(obs["state"])
    return obs


def validate_state(state: Any) -> np.ndarray:
    """The optional ``state`` as float64 ``(S,)``: numeric, 1-D, at most MAX_STATE_DIM finite values."""
    if isinstance(state, list):
        if len(state) > MAX_STATE_DIM:
            raise ProtocolError(f"'state' has {len(state)} values, over the limit of {MAX_STATE_DIM}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in state):
            raise ProtocolError("'state' must be a list of numbers or a numeric array")
        state = np.asarray(state, dtype=np.float64)
    if not isinstance(state, np.ndarray) or state.dtype.kind not in "iuf":
        what = state.dtype if isinstance(state, np.ndarray) else type(state).__name__
        raise ProtocolError(f"'state' must be a numeric 1-D array or a list of numbers, got {what}")
    if state.ndim != 1 or not 1 <= state.size <= MAX_STATE_DIM:
        raise ProtocolError(f"'state' must be 1-D with 1 to {MAX_STATE_DIM} values, got shape {state.shape}")
    state = state.astype(np.float64)
    if not np.isfinite(state).all():
        raise ProtocolError("'state' contains NaN or inf")
    return state


def ok_reply(**fields: Any) -> bytes:
    return packb({"ok": True, **fields})


def error_reply(message: str) -> bytes:
    return packb({"ok": False, "error": message})
