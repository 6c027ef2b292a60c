"""``worldvla serve CHECKPOINT``: serve a trained policy over websockets (msgpack, numpy arrays).

Simulators that cannot share the model's Python environment (LIBERO) connect with
:class:`worldvla.serving.client.PolicyClient`; see docs/libero.md. ``--stand-in`` serves a
model-free policy with the same interface; ``--random-init DIR`` first writes a tiny,
randomly initialized checkpoint into ``DIR`` (:mod:`worldvla.serving.random_checkpoint`) and
serves it like a trained one (plumbing checks of the real inference path, ``make test-libero``).

Each connection gets its own policy state; requests are bounded (message size, instruction
length, image size) and answered with an error reply when they break a limit; with
``--api-key`` (or ``WORLDVLA_API_KEY``) clients must send ``Authorization: Api-Key <key>``.
See :mod:`worldvla.serving.server` and docs/libero.md.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from worldvla.errors import ConfigError
from worldvla.serving.server import API_KEY_ENV, PolicyServer, ServerLimits, StandInPolicy
from worldvla.tokenizers.action import READOUTS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla serve", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory (from `worldvla train`)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one and print it)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="weights dtype; bf16 loads a 7B checkpoint in ~14 GB (default fp32)",
    )
    p.add_argument(
        "--replan-every", type=int, default=None, help="re-plan every N steps (default: whole chunk)"
    )
    p.add_argument(
        "--readout",
        choices=READOUTS,
        default=None,
        help="action readout: argmax (greedy) or mean (expected bin); default: the checkpoint's",
    )
    p.add_argument("--stand-in", action="store_true", help="serve a model-free stand-in policy instead")
    p.add_argument(
        "--random-init",
        metavar="DIR",
        help="write a tiny randomly initialized checkpoint into DIR, then serve it",
    )
    p.add_argument("--image-size", type=int, default=256, help="stand-in / random-init: image size")
    p.add_argument("--chunk-len", type=int, default=5, help="stand-in / random-init: actions per chunk")
    p.add_argument("--action-dim", type=int, default=7, help="stand-in / random-init: action dimension")
    p.add_argument("--history", type=int, default=2, help="random-init: history frames (M)")
    p.add_argument("--seed", type=int, default=0, help="random-init: weight seed")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Api-Key KEY' from clients (default: ${API_KEY_ENV} if set; "
        "prefer the variable, a command line is visible to other users)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        help="largest request accepted (default: 4 frames at the image size + 1 MiB)",
    )
    p.add_argument("--max-instruction-chars", type=int, default=1000, help="longest instruction accepted")
    p.add_argument("--max-clients", type=int, default=8, help="most clients connected at once")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # Built first, so that bad limits fail before a checkpoint is loaded.
    limits = ServerLimits(
        max_message_bytes=a.max_message_bytes,
        max_instruction_chars=a.max_instruction_chars,
        max_clients=a.max_clients,
    )
    api_key = a.api_key if a.api_key is not None else os.environ.get(API_KEY_ENV) or None
    logging.basicConfig(level=logging.INFO, format="[serve] %(message)s")
    if sum(map(bool, (a.checkpoint, a.stand_in, a.random_init))) > 1:
        raise ConfigError("give one of a checkpoint, --stand-in or --random-init DIR")
    if a.random_init:
        from worldvla.serving.random_checkpoint import write_random_checkpoint

        a.checkpoint = write_random_checkpoint(
            a.random_init,
            action_dim=a.action_dim,
            image_size=a.image_size,
            chunk_len=a.chunk_len,
            history=a.history,
            seed=a.seed,
        )
        print(f"[serve] wrote a randomly initialized checkpoint to {a.checkpoint}", flush=True)
    if a.stand_in:
        policy = StandInPolicy(chunk_len=a.chunk_len, action_dim=a.action_dim, image_size=a.image_size)
        meta = {"checkpoint": None}
    else:
        if not a.checkpoint:
            raise ConfigError("serve needs a checkpoint directory (or --stand-in, or --random-init DIR)")
        ckpt = Path(a.checkpoint)
        if not ckpt.exists():
            raise ConfigError(f"checkpoint {ckpt} does not exist")
        import torch

        from worldvla.policy import PolicyConfig, WorldVLAPolicy

        dtype = None if a.dtype == "fp32" else {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
        policy = WorldVLAPolicy.from_pretrained(
            ckpt,
            PolicyConfig(replan_every=a.replan_every, action_readout=a.readout),
            device=a.device,
            dtype=dtype,
        )
        meta = {"checkpoint": str(ckpt.resolve())}
    server = PolicyServer(policy, host=a.host, port=a.port, metadata=meta, limits=limits, api_key=api_key)
    server.on_ready = lambda: print(f"[serve] serving on ws://{server.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[serve] stopped", flush=True)
    return 0
