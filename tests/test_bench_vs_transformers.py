"""Smoke test of benchmarks/bench_vs_transformers.py: a tiny shape, one repetition, the table's rows.

No timing is asserted: the benchmark's own checks (equal logits before timing, equal decoded
tokens) are what this exercises.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")  # the dev extra pins it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vs_transformers.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports bench_model beside it, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_vs_transformers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_row(capsys):
    _load().main(["--quick", "--variants", "eager,math", "--packing"])
    out = capsys.readouterr().out
    assert "## training step" in out and "## decoding" in out and "## padding vs packing" in out
    for row in ("| transformers |", "| ours (eager) |", "| ours (math) |"):
        assert row in out, row
    for row in ("| eager | padded |", "| eager | packed |", "| math | packed |"):
        assert row in out, row
    for row in ("| 8x8 world-model frame |", "| K=10 action chunk, D=4 (side by side) |"):
        assert row in out, row
