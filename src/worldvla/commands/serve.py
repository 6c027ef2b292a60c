"""``worldvla serve CHECKPOINT``: serve a trained policy over websockets (msgpack, numpy arrays).

Simulators that cannot share the model's Python environment (LIBERO) connect with
:class:`worldvla.serving.client.PolicyClient`; see docs/libero.md. ``--stand-in`` serves a
model-free policy with the same interface (plumbing checks, ``make test-libero``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from worldvla.errors import ConfigError
from worldvla.serving.server import PolicyServer, StandInPolicy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla serve", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (from `worldvla train`)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one and print it)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--replan-every", type=int, default=None, help="re-plan every N steps (default: whole chunk)"
    )
    p.add_argument("--stand-in", action="store_true", help="serve a model-free stand-in policy instead")
    p.add_argument("--image-size", type=int, default=256, help="stand-in: expected image size")
    p.add_argument("--chunk-len", type=int, default=5, help="stand-in: actions per chunk")
    p.add_argument("--action-dim", type=int, default=7, help="stand-in: action dimension")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    if a.stand_in:
        if a.checkpoint:
            raise ConfigError("give either a checkpoint or --stand-in, not both")
        policy = StandInPolicy(chunk_len=a.chunk_len, action_dim=a.action_dim, image_size=a.image_size)
        meta = {"checkpoint": None}
    else:
        if not a.checkpoint:
            raise ConfigError("serve needs a checkpoint directory (or --stand-in)")
        ckpt = Path(a.checkpoint)
        if not ckpt.exists():
            raise ConfigError(f"checkpoint {ckpt} does not exist")
        from worldvla.policy import PolicyConfig, WorldVLAPolicy

        policy = WorldVLAPolicy.from_pretrained(
            ckpt, PolicyConfig(replan_every=a.replan_every), device=a.device
        )
        meta = {"checkpoint": str(ckpt.resolve())}
    server = PolicyServer(policy, host=a.host, port=a.port, metadata=meta)
    server.on_ready = lambda: print(f"[serve] serving on ws://{server.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[serve] stopped", flush=True)
    return 0
