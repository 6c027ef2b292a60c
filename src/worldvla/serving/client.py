"""Synchronous websocket client for :class:`worldvla.serving.server.PolicyServer`.

Imports only numpy, msgpack and websockets (plus the torch-free protocol module), so it
runs inside a simulator's own environment, e.g. the LIBERO evaluation client.

A server that requires a key is given it with ``api_key=`` or the ``WORLDVLA_API_KEY``
environment variable; it travels as ``Authorization: Api-Key <key>``, the header openpi's
websocket client sends. Every failure is a :class:`~worldvla.serving.protocol.ServerError`
with the server's reason: a refused key (HTTP 401), a busy server, a message over the
server's size limit (the server closes the connection, code 1009), an error reply.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from worldvla.serving.protocol import ProtocolError, ServerError, packb, unpackb

API_KEY_ENV = "WORLDVLA_API_KEY"  # the same name as worldvla.serving.server.API_KEY_ENV
MAX_REPLY_BYTES = 64 << 20  # replies are metadata and action arrays: small


class PolicyClient:
    """``with PolicyClient(host, port) as c: c.reset(); a = c.select_action(obs)``.

    Connecting retries until ``connect_timeout`` so a client can be started together with a
    server that is still loading its checkpoint. ``api_key`` (default: the
    ``WORLDVLA_API_KEY`` environment variable) is sent when set.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        connect_timeout: float = 300.0,
        request_timeout: float | None = None,
        api_key: str | None = None,
    ) -> None:
        self.uri = f"ws://{host}:{port}"
        self.request_timeout = request_timeout
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._ws = connect(
                    self.uri,
                    compression=None,
                    max_size=MAX_REPLY_BYTES,
                    open_timeout=10,
                    additional_headers=headers,
                )
                break
            except InvalidStatus as e:  # the server answered, and said no: retrying will not help
                body = e.response.body.decode("utf-8", "replace").strip() if e.response.body else ""
                raise ServerError(
                    f"server at {self.uri} refused the connection: HTTP {e.response.status_code} {body}"
                ) from None
            except (ConnectionRefusedError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"no policy server answered at {self.uri} within {connect_timeout:.0f}s"
                    ) from None
                time.sleep(0.5)
        meta = self._receive()
        if meta.get("ok") is False:  # refused after the handshake (busy)
            self._ws.close()
            raise ServerError(f"server at {self.uri}: {meta.get('error', 'refused the connection')}")
        self.metadata: dict[str, Any] = meta

    def _receive(self) -> dict[str, Any]:
        try:
            msg = unpackb(self._ws.recv(timeout=self.request_timeout))
        except ConnectionClosed as e:
            close = e.rcvd or e.sent
            why = f"code {close.code} ({close.reason or 'no reason given'})" if close else "no close frame"
            raise ServerError(f"server at {self.uri} closed the connection: {why}") from None
        if not isinstance(msg, dict):
            raise ProtocolError(f"server at {self.uri} sent {type(msg).__name__} instead of a map")
        return msg

    def request(self, op: str, obs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the reply map; an error reply raises :class:`ServerError`."""
        msg: dict[str, Any] = {"op": op}
        if obs is not None:
            msg["obs"] = obs
        return self.send_raw(packb(msg))

    def send_raw(self, frame: bytes | str) -> dict[str, Any]:
        """Send an already-encoded frame (tests use it for malformed messages)."""
        # The server may close mid-send (a message over its size limit); _receive then says why.
        with contextlib.suppress(ConnectionClosed, OSError):
            self._ws.send(frame)
        reply = self._receive()
        if "ok" not in reply:
            raise ProtocolError(f"server at {self.uri} sent a reply without 'ok': {reply!r}")
        if not reply["ok"]:
            raise ServerError(f"server at {self.uri}: {reply.get('error', 'unknown error')}")
        return reply

    def reset(self) -> None:
        self.request("reset")

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """One action ``(D,)``; the server's policy queues the rest of its chunk."""
        return self.request("act", obs)["actions"]

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """A fresh chunk ``(K, D)``."""
        return self.request("infer", obs)["actions"]

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
