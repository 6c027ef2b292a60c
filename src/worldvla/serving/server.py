"""Websocket policy server: metadata on connect, then msgpack request/response (openpi style).

Any object with ``reset()``, ``predict_action_chunk(obs) -> (K, D)`` and
``select_action(obs) -> (D,)`` can be served (:class:`ServablePolicy`); the checkpoint-backed
:class:`worldvla.policy.WorldVLAPolicy` is one, :class:`StandInPolicy` is another (protocol
tests and simulator plumbing without a model).

The policy is stateful (history frames, action queue), so the server holds one policy and
serves one episode at a time: evaluation clients send ``reset`` at each episode start.
Requests are handled one at a time (a lock); inference runs in a worker thread so the
event loop keeps answering websocket pings during a long model call. A request that fails
(malformed bytes, unknown op, wrong shapes, or an exception inside the policy) gets an
error reply and the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from worldvla.errors import WorldVLAError
from worldvla.serving.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    error_reply,
    ok_reply,
    packb,
    parse_request,
)

log = logging.getLogger(__name__)


@runtime_checkable
class ServablePolicy(Protocol):
    """The policy interface the server needs (a subset of :class:`worldvla.policy.WorldVLAPolicy`)."""

    def reset(self) -> None: ...

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray: ...

    def select_action(self, obs: dict[str, Any]) -> np.ndarray: ...


class StandInPolicy:
    """A model-free policy with the served interface: seeded random chunks of the right shape.

    It checks observations like the real policy does (uint8 ``(R, R, 3)`` image at its
    resolution and an instruction), keeps an action queue like the real one, and keeps the
    gripper open (-1) so that a simulator stays in a sane state. Used by the protocol tests
    and by ``worldvla serve --stand-in`` to exercise a simulator client without a checkpoint.
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

    def reset(self) -> None:
        self._rng = np.random.default_rng(self._seed)
        self._queue: list[np.ndarray] = []

    def _check(self, obs: dict[str, Any]) -> None:
        img = obs["image"] if "image" in obs else next(iter(obs["images"].values()))
        want = (self.image_size, self.image_size, 3)
        if img.shape != want or img.dtype != np.uint8:
            raise ValueError(f"observation image must be uint8 {want}, got {img.dtype} {img.shape}")

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        self._check(obs)
        chunk = self.scale * self._rng.uniform(-1, 1, (self.chunk_len, self.action_dim))  # (K, D)
        chunk[:, -1] = -1.0  # gripper open
        return chunk.astype(np.float32)

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        if not self._queue:
            self._queue = list(self.predict_action_chunk(obs))
        else:
            self._check(obs)
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
    }.items():
        try:
            value = get(policy)
        except AttributeError:
            continue
        meta[key] = value if isinstance(value, (str, bool)) else int(value)
    return meta


class PolicyServer:
    """Serve ``policy`` on ``ws://host:port``. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        policy: ServablePolicy,
        host: str = "127.0.0.1",
        port: int = 8000,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(policy, ServablePolicy):
            raise TypeError(f"{type(policy).__name__} lacks reset/predict_action_chunk/select_action")
        self.policy = policy
        self.host, self.port = host, port
        self.metadata = {"protocol": PROTOCOL_VERSION, **policy_metadata(policy), **(metadata or {})}
        self._lock = asyncio.Lock()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_ready: Callable[[], None] | None = None  # called once the socket is bound

    # ------------------------------------------------------------------ request handling
    def handle(self, message: bytes | str) -> bytes:
        """Answer one request (synchronously). Never raises for a bad request: returns an error reply."""
        try:
            req = parse_request(message)
            t0 = time.perf_counter()
            if req["op"] == "reset":
                self.policy.reset()
                return ok_reply()
            fn = self.policy.select_action if req["op"] == "act" else self.policy.predict_action_chunk
            actions = np.asarray(fn(req["obs"]), dtype=np.float32)
            return ok_reply(actions=actions, server_timing={"infer_ms": 1e3 * (time.perf_counter() - t0)})
        except (ProtocolError, WorldVLAError, ValueError, KeyError, TypeError) as e:
            return error_reply(f"{type(e).__name__}: {e}")
        except Exception as e:  # keep serving whatever the policy does; log the traceback here
            log.exception("policy raised while serving a request")
            return error_reply(f"internal error: {type(e).__name__}: {e}")

    async def _connection(self, ws: ServerConnection) -> None:
        log.info("client connected: %s", ws.remote_address)
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                async with self._lock:
                    reply = await asyncio.to_thread(self.handle, message)
                await ws.send(reply)
        except ConnectionClosed:
            pass
        log.info("client disconnected: %s", ws.remote_address)

    # ------------------------------------------------------------------ running
    async def serve_async(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(
            self._connection, self.host, self.port, compression=None, max_size=None, ping_interval=None
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
