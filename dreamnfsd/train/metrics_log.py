"""Training logs: ``metrics.jsonl`` in the run folder (always) and TensorBoard event files (``logger=tensorboard``).

One JSON object per logged step: ``{"step": 10, "loss": ..., "guidance": ..., "t": ..., "grad_norm": ..., ...}``.
Lines are appended and flushed as they are logged, so a killed run leaves at most a torn last line. A resumed run
(or a NaN rollback) restarts from a checkpoint at or before the last logged step; :meth:`MetricsLog.rewind` first
drops every line after that step (and any torn line) in one atomic rewrite, so the file never holds a step twice
nor misses one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dreamnfsd.utils.files import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
LOGGERS = ("jsonl", "tensorboard")


def read_metrics(path: Path) -> list[dict]:
    """The well-formed records of a metrics file, in order (a torn or foreign line is skipped)."""
    records: list[dict] = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def _clean(value: float) -> float | None:
    """JSON has no NaN or inf: a non-finite value is logged as null."""
    return float(value) if math.isfinite(value) else None


class MetricsLog:
    """Appends scalar records to ``<run_dir>/metrics.jsonl`` and, optionally, to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS_FILE
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def rewind(self, step: int) -> None:
        """Keep only the records of steps <= ``step`` (the step training continues from)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        atomic_write_bytes("".join(json.dumps(r) + "\n" for r in kept).encode(), self.path)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": int(step), **{k: _clean(float(v)) for k, v in scalars.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"train/{key}", float(value), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 image for TensorBoard (the jsonl log keeps scalars only)."""
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
