"""Per-run metrics: one JSON line per record in ``metrics.jsonl``, mirrored to TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from simsiam_eval.atomic import atomic_write_text


class MetricsLog:
    """Append-only ``metrics.jsonl`` plus optional TensorBoard scalars (call on rank 0 only)."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """TensorBoard only (e.g. per-iteration loss)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def record(self, values: Mapping, step: int, prefix: str = "") -> None:
        """A line in metrics.jsonl (flushed at once) and the numeric values in TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(values)) + "\n")
        self.scalars({k: v for k, v in values.items() if isinstance(v, (int, float))}, step, prefix)
        if self.writer is not None:
            self.writer.flush()

    def truncate_after(self, key: str, last: int) -> None:
        """Drop lines whose ``key`` is beyond ``last`` (lines written after the checkpoint we resume from)
        and a last line cut short by a killed writer; the file is rewritten atomically."""
        if not self.path.exists():
            return
        lines = self.path.read_text().split("\n")  # the last item: "" or a line the writer did not finish
        kept = [line for line in lines[:-1] if line.strip() and json.loads(line).get(key, 0) <= last]
        atomic_write_text("".join(line + "\n" for line in kept), self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
