"""Where training metrics go: TensorBoard, a JSON-lines file and a tqdm progress bar.

``metrics.jsonl`` holds one object per logged step (``{"step", "split", ...metrics}``); it is
the machine-readable curve that reports and tests read. On resume, entries written after
the checkpoint being resumed are dropped (they belong to the part of the run that a kill
discarded), and TensorBoard is opened with ``purge_step`` for the same reason, so the
curve continues without a fork.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from worldvla.utils.io import atomic_write_text


class RunLogger:
    """Rank-0 sink for scalar metrics."""

    def __init__(
        self, run_dir: Path, start_step: int, total_steps: int, progress: bool, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step > 0 else None)
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            self._tb = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc="train"
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def advance(self, n: int, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(run_dir: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Entries of ``metrics.jsonl`` for one split, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == split]
