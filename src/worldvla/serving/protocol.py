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

   with ``OBS = {"image": uint8 (H, W, 3), "instruction": str}`` (or ``"images": {camera: array}``);
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
    return obs


def ok_reply(**fields: Any) -> bytes:
    return packb({"ok": True, **fields})


def error_reply(message: str) -> bytes:
    return packb({"ok": False, "error": message})
