"""Websocket policy server: metadata on connect, then msgpack request/response (openpi style).

Any object with ``reset()``, ``predict_action_chunk(obs) -> (K, D)`` and
``select_action(obs) -> (D,)`` can be served (:class:`ServablePolicy`); the checkpoint-backed
:class:`worldvla.policy.WorldVLAPolicy` is one, :class:`StandInPolicy` is another (protocol
tests and simulator plumbing without a model).

**One state per connection.** The policy is stateful (history frames, action queue). A
policy with ``new_session()`` gives every connection its own copy of that state around the
shared model, so two clients never see each other's frames or queued actions; evaluation
clients send ``reset`` at each episode start. A policy without ``new_session()`` serves one
client at a time: a second one gets an error reply naming the reason and is closed.

**Bounded requests** (:class:`ServerLimits`). A message over ``max_message_bytes`` is never
read: websockets closes the connection with code 1009 ("message too big") as soon as the
frame header announces the size, and the client raises an error naming it. Every other bad
request (not msgpack, unknown op, an image of the wrong size or dtype, a missing or
non-string instruction, an instruction over ``max_instruction_chars`` or too long for the
model's ``max_seq_len``, a state that is not a finite numeric vector of at most
``MAX_STATE_DIM`` values, or missing or of the wrong size for a policy that reads it) is
checked on the event loop, before any inference, and gets an error reply; the connection
stays open. The limits are announced in the metadata.

**No client stalls another.** Validation, resets and bad requests are answered on the
event loop; model calls run in a worker thread, one at a time (a FIFO lock, so clients are
served in arrival order and the model is not oversubscribed), and the event loop keeps
serving every connection meanwhile. ``server_timing`` in each reply reports the time spent
waiting for the model (``queue_ms``) and in it (``infer_ms``).

**Access.** With an API key (``api_key``, ``worldvla serve --api-key`` or the
``WORLDVLA_API_KEY`` environment variable) the opening handshake must carry
``Authorization: Api-Key <key>`` (openpi's client header); anything else is refused with
HTTP 401 before a connection is made. The key is compared in constant time. Binding a
non-loopback address without a key logs a warning: anyone who can reach the port can then
drive the policy. The transport is plain ``ws://``; on an untrusted network put the server
behind a TLS proxy or an SSH tunnel, since the key travels in clear text.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, runtime_checkable

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from worldvla.errors import ConfigError, WorldVLAError
from worldvla.serving.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    error_reply,
    ok_reply,
    packb,
    parse_request,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "WORLDVLA_API_KEY"
BUSY_CLOSE_CODE = 1013  # websocket "try again later"


@runtime_checkable
class ServablePolicy(Protocol):
    """The policy interface the server needs (a subset of :class:`worldvla.policy.WorldVLAPolicy`).

    Optional: ``new_session()`` (a copy with its own state, one per connection) and
    ``check_observation(obs)`` (validation without side effects, run before inference).
    """

    def reset(self) -> None: ...

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray: ...

    def select_action(self, obs: dict[str, Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class ServerLimits:
    """What a request and the server may hold; checked before any inference.

    ``max_message_bytes=None`` derives the limit from the served image size: room for four
    uint8 frames plus 1 MiB for everything else (1.75 MiB at 256², 4 MiB at 512²), or
    8 MiB when the policy does not say its image size. ``max_instruction_chars`` is a cheap
    first bound; the policy then checks the instruction's tokens against its ``max_seq_len``.
    """

    max_message_bytes: int | None = None
    max_instruction_chars: int = 1000
    max_clients: int = 8

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_instruction_chars", "max_clients"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"ServerLimits.{name} must be a positive integer, got {value!r}")

    def message_bytes(self, image_size: int | None) -> int:
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        if image_size is None:
            return 8 << 20
        return 4 * 3 * image_size * image_size + (1 << 20)


class StandInPolicy:
    """A model-free policy with the served interface: seeded random chunks of the right shape.

    It checks observations like the real policy does (uint8 ``(R, R, 3)`` image at its
    resolution and a string instruction), keeps an action queue like the real one, and keeps
    the gripper open (-1) so that a simulator stays in a sane state. Used by the protocol
    tests and by ``worldvla serve --stand-in`` to exercise a simulator client without a
    checkpoint.
    """

    def __init__(
        self,
        chunk_len: int = 5,
        action_dim: int = 7,
        image_size: int = 256,
        seed: int = 0,
        scale: float = 0.1,
    ) -> None:
        self.chunk_len, self.action_dim, self.image_size = chunk_len, action_dim, image_size
        self.scale = scale
        self._seed = seed
        self.reset()

    @property
    def metadata(self) -> dict[str, Any]:
        return {
            "policy": "stand-in",
            "chunk_len": self.chunk_len,
            "action_dim": self.action_dim,
            "image_size": self.image_size,
            "camera": "agentview",
            "history": 1,
        }

    def new_session(self) -> StandInPolicy:
        return type(self)(self.chunk_len, self.action_dim, self.image_size, self._seed, self.scale)

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self._queue: list[np.ndarray] = []

    def check_observation(self, obs: dict[str, Any]) -> None:
        img = obs.get("image") if "image" in obs else next(iter((obs.get("images") or {}).values()), None)
        want = (self.image_size, self.image_size, 3)
        if not isinstance(img, np.ndarray) or img.shape != want or img.dtype != np.uint8:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"observation image must be uint8 {want}, got {got}")
        if not isinstance(obs.get("instruction"), str):
            raise ValueError("observation needs an 'instruction' string")

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        self.check_observation(obs)
        chunk = self.scale * self._rng.uniform(-1, 1, (self.chunk_len, self.action_dim))  # (K, D)
        chunk[:, -1] = -1.0  # gripper open
        return chunk.astype(np.float32)

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        if not self._queue:
            self._queue = list(self.predict_action_chunk(obs))
        else:
            self.check_observation(obs)
        return self._queue.pop(0)


def policy_metadata(policy: Any) -> dict[str, Any]:
    """What a client needs to know: chunk length, action dim, image size, camera, history."""
    if isinstance(getattr(policy, "metadata", None), dict):
        return dict(policy.metadata)
    meta: dict[str, Any] = {"policy": type(policy).__name__}
    for key, get in {
        "chunk_len": lambda p: p.chunk_len,
        "action_dim": lambda p: p.action_dim,
        "image_size": lambda p: p.image_tokenizer.image_size,
        "camera": lambda p: p.layout.camera,
        "history": lambda p: p.layout.history,
        "max_seq_len": lambda p: p.max_seq_len,
        "max_instruction_tokens": lambda p: p.max_instruction_tokens,
        "state_dim": lambda p: p.state_dim,  # > 0: requests must carry the state
    }.items():
        try:
            value = get(policy)
        except AttributeError:
            continue
        if value is None:  # e.g. a checkpoint trained on data that recorded no camera name
            continue
        meta[key] = value if isinstance(value, (str, bool)) else int(value)
    return meta


def is_loopback(host: str | None) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False  # "", a hostname or "0.0.0.0"-style wildcards reach the network


class PolicyServer:
    """Serve ``policy`` on ``ws://host:port``. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        policy: ServablePolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        metadata: dict[str, Any] | None = None,
        limits: ServerLimits | None = None,
        api_key: str | None = None,
    ) -> None:
        if not isinstance(policy, ServablePolicy):
            raise TypeError(f"{type(policy).__name__} lacks reset/predict_action_chunk/select_action")
        if api_key is not None and not api_key.strip():
            raise ConfigError("the API key must not be empty")
        self.policy = policy
        self.host, self.port = host, port
        self.limits = limits or ServerLimits()
        self.api_key = api_key
        self.shares_state = not callable(getattr(policy, "new_session", None))
        meta = policy_metadata(policy)
        self.max_message_bytes = self.limits.message_bytes(meta.get("image_size"))
        self.metadata = {
            "protocol": PROTOCOL_VERSION,
            **meta,
            "max_message_bytes": self.max_message_bytes,
            "max_instruction_chars": self.limits.max_instruction_chars,
            "max_clients": 1 if self.shares_state else self.limits.max_clients,
            "auth": api_key is not None,
            **(metadata or {}),
        }
        self._infer_lock: asyncio.Lock | None = None
        self._clients = 0
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_ready: Callable[[], None] | None = None  # called once the socket is bound

    # ------------------------------------------------------------------ request handling
    def check(self, message: bytes | str, policy: Any = None) -> dict[str, Any]:
        """Decode and validate one request without running the model; raise on anything bad."""
        req = parse_request(message)
        if req["op"] == "reset":
            return req
        obs = req["obs"]
        limit = self.limits.max_instruction_chars
        if len(obs["instruction"]) > limit:
            raise ProtocolError(
                f"'instruction' has {len(obs['instruction']):,} characters, over this server's "
                f"limit of {limit:,}"
            )
        check = getattr(policy or self.policy, "check_observation", None)
        if check is not None:
            check(obs)
        return req

    def run(self, req: dict[str, Any], policy: Any = None, queue_ms: float = 0.0) -> dict[str, Any]:
        """Run one validated request on ``policy`` (default: the served one); return the reply's fields."""
        policy = policy or self.policy
        if req["op"] == "reset":
            policy.reset()
            return {}
        t0 = time.perf_counter()
        fn = policy.select_action if req["op"] == "act" else policy.predict_action_chunk
        actions = np.asarray(fn(req["obs"]), dtype=np.float32)
        timing = {"infer_ms": 1e3 * (time.perf_counter() - t0), "queue_ms": queue_ms}
        return {"actions": actions, "server_timing": timing}

    def handle(self, message: bytes | str, policy: Any = None) -> bytes:
        """Answer one request synchronously. Never raises for a bad request: returns an error reply."""
        return self._guard(lambda: self.run(self.check(message, policy), policy))

    @staticmethod
    def _error(e: Exception) -> bytes:
        if isinstance(e, (ProtocolError, WorldVLAError, ValueError, KeyError, TypeError)):
            return error_reply(f"{type(e).__name__}: {e}")
        # Keep serving whatever the policy does; the traceback goes to the server's log.
        log.error("policy raised while serving a request", exc_info=e)
        return error_reply(f"internal error: {type(e).__name__}: {e}")

    def _guard(self, fn: Callable[[], dict[str, Any]]) -> bytes:
        """``fn``'s fields as an ok reply, or what it raised as an error reply."""
        try:
            return ok_reply(**fn())
        except Exception as e:
            return self._error(e)

    async def _answer(self, message: bytes | str, session: Any) -> bytes:
        """Validate on the event loop (cheap, bounded); run the model in the worker thread."""
        try:
            req = self.check(message, session)
        except Exception as e:
            return self._error(e)
        if req["op"] == "reset":
            return self._guard(lambda: self.run(req, session))
        t0 = time.perf_counter()
        async with self._infer_lock:
            queue_ms = 1e3 * (time.perf_counter() - t0)
            return await asyncio.to_thread(self._guard, lambda: self.run(req, session, queue_ms))

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "api-key" and hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            return None
        log.warning("refused a client from %s: missing or wrong API key", connection.remote_address)
        return connection.respond(
            HTTPStatus.UNAUTHORIZED,
            "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
        )

    async def _connection(self, ws: ServerConnection) -> None:
        limit = self.metadata["max_clients"]
        if self._clients >= limit:
            why = (
                "this policy keeps one state and serves one client at a time"
                if self.shares_state
                else f"it serves at most {limit} clients at once"
            )
            log.warning("refused a client from %s: %d connected, %s", ws.remote_address, self._clients, why)
            try:
                await ws.send(error_reply(f"server busy: {why}; retry when a client disconnects"))
                await ws.close(BUSY_CLOSE_CODE, "server busy")
            except ConnectionClosed:
                pass
            return
        self._clients += 1
        session = self.policy if self.shares_state else self.policy.new_session()
        log.info("client connected: %s (%d connected)", ws.remote_address, self._clients)
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                await ws.send(await self._answer(message, session))
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                log.warning("closed %s: %s", ws.remote_address, e.sent.reason or "message too big")
        finally:
            self._clients -= 1
            if self.shares_state:
                self.policy.reset()  # the next client starts from a clean episode
        log.info("client disconnected: %s", ws.remote_address)

    # ------------------------------------------------------------------ running
    def warn_if_exposed(self) -> None:
        """Log a warning when the server would be reachable from the network without a key."""
        if self.api_key is None and not is_loopback(self.host):
            log.warning(
                "serving on %r without an API key: anyone who can reach this port can drive the policy; "
                "set --api-key or %s, or bind 127.0.0.1",
                self.host,
                API_KEY_ENV,
            )

    async def serve_async(self) -> None:
        self.warn_if_exposed()
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        self._infer_lock = asyncio.Lock()  # FIFO: one model call at a time, in arrival order
        self._clients = 0
        async with serve(
            self._connection,
            self.host,
            self.port,
            compression=None,
            max_size=self.max_message_bytes,
            ping_interval=None,
            process_request=self._authorize,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            if self.on_ready is not None:
                self.on_ready()
            await self._stop

    def serve_forever(self) -> None:
        """Block serving requests until :meth:`stop` (or Ctrl-C)."""
        asyncio.run(self.serve_async())

    def start_in_thread(self, timeout: float = 10.0) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); returns once the socket is bound."""
        thread = threading.Thread(target=self.serve_forever, name="worldvla-policy-server", daemon=True)
        thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start on {self.host}:{self.port} within {timeout}s")
        return thread

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
