"""``worldvla presets [KIND ...]``: every kind of named preset, with its names and what each is.

    worldvla presets                 # every kind
    worldvla presets model train     # only these kinds

Each kind lives next to the code it configures, in a
:class:`~worldvla.utils.registry.Registry` of its own, so that no low layer imports a high
one; this command is the one place that gathers them all, which is why it sits with the
entry points. A kind's module is imported only when that kind is listed.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from worldvla.utils.registry import Registry, lookup

# Every kind of preset by the name this command takes, in the order a run meets them:
# (module, registry in it). The heading of a kind's listing names both, so a listing also
# says which file to edit.
KINDS: dict[str, tuple[str, str]] = {
    "experiment": ("worldvla.experiments", "EXPERIMENTS"),
    "suite": ("worldvla.envs.suites", "SUITES"),
    "tokenizer": ("worldvla.tokenizers.vq_config", "PRESETS"),
    "model": ("worldvla.model.config", "MODEL_PRESETS"),
    "train": ("worldvla.train.config", "TRAIN_PRESETS"),
    "libero": ("worldvla.libero_presets", "LIBERO_PRESETS"),
    "ablation": ("worldvla.ablation.config", "ABLATIONS"),
    "ablation-variant": ("worldvla.ablation.config", "VARIANTS"),
}


def registry(kind: str) -> Registry[Any]:
    """The registry of ``kind`` (a key of :data:`KINDS`); a typo gets a "did you mean"."""
    module, attribute = lookup(KINDS, kind, "preset kind")
    return getattr(importlib.import_module(module), attribute)


def listing(kinds: list[str] | None = None) -> str:
    """``kinds`` (default: all), each as a heading and one line per preset: name, description."""
    blocks = []
    for kind in kinds or list(KINDS):
        reg = registry(kind)
        module, attribute = KINDS[kind]
        width = max(map(len, reg.names()))
        lines = [f"{kind} ({module}.{attribute}):"]
        lines += [f"  {name:<{width}}  {reg.description(name)}" for name in reg.names()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla presets", description=__doc__.split("\n")[0])
    p.add_argument(
        "kinds", nargs="*", metavar="KIND", help=f"kinds to list (default: all): {', '.join(KINDS)}"
    )
    args = p.parse_args(argv)
    print(listing(args.kinds))
    return 0
