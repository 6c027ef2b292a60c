"""Synchronous websocket client for :class:`worldvla.serving.server.PolicyServer`.

Imports only numpy, msgpack and websockets (plus the torch-free protocol module), so it
runs inside a simulator's own environment, e.g. the LIBERO evaluation client.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from websockets.sync.client import connect

from worldvla.serving.protocol import ProtocolError, ServerError, packb, unpackb


class PolicyClient:
    """``with PolicyClient(host, port) as c: c.reset(); a = c.select_action(obs)``.

    Connecting retries until ``connect_timeout`` so a client can be started together with a
    server that is still loading its checkpoint.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        connect_timeout: float = 300.0,
        request_timeout: float | None = None,
    ) -> None:
        self.uri = f"ws://{host}:{port}"
        self.request_timeout = request_timeout
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._ws = connect(self.uri, compression=None, max_size=None, open_timeout=10)
                break
            except (ConnectionRefusedError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"no policy server answered at {self.uri} within {connect_timeout:.0f}s"
                    ) from None
                time.sleep(0.5)
        meta = unpackb(self._ws.recv(timeout=request_timeout))
        if not isinstance(meta, dict):
            raise ProtocolError(
                f"server at {self.uri} sent {type(meta).__name__} instead of its metadata map"
            )
        self.metadata: dict[str, Any] = meta

    def request(self, op: str, obs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the reply map; an error reply raises :class:`ServerError`."""
        msg: dict[str, Any] = {"op": op}
        if obs is not None:
            msg["obs"] = obs
        return self.send_raw(packb(msg))

    def send_raw(self, frame: bytes | str) -> dict[str, Any]:
        """Send an already-encoded frame (tests use it for malformed messages)."""
        self._ws.send(frame)
        reply = unpackb(self._ws.recv(timeout=self.request_timeout))
        if not isinstance(reply, dict) or "ok" not in reply:
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
