"""Where a result came from: command, code version, machine. Every results file records it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it: ``worldvla ...`` for the CLI however it was
    started (entry point or ``python -m worldvla.cli``, whose argv[0] is a local path);
    other scripts as given, or by file name when given by absolute path."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0].replace("\\", "/")
    if head.endswith("worldvla") or head.endswith("worldvla/cli.py"):
        return " ".join(["worldvla", *argv[1:]])
    return " ".join([head.rsplit("/", 1)[-1] if head.startswith("/") else head, *argv[1:]])


def provenance(**extra: Any) -> dict[str, Any]:
    return {
        "command": command_line(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **extra,
    }
