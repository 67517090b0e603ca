"""Metrics to a JSONL file (appended, flushed per line: a crash loses nothing) and a loss-curve PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from cs336_basics.files import write_text_atomic


class MetricsLog:
    """One JSON object a line. A crash can leave the last line part-written: reading skips a line that is not
    a whole record, and a resumed run's truncate_after removes it. Non-finite numbers are written as null
    (strict JSON, which every reader parses). Each record written also goes to `sink` (the dashboards)."""

    def __init__(self, path: Path, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path, self.sink = path, sink
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        if self.sink is not None:
            self.sink(record)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the checkpoint's step (written before a crash), which the resumed
        run logs again, and a part-written last line. Rewritten atomically."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a part-written line (a crash or a full disk mid-write)
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) as None and tuples as lists: what strict JSON can hold,
    for json.dumps(..., allow_nan=False)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """json.dumps of `value` as strict JSON (NaN and infinities as null)."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def plot_losses(records: list[dict[str, Any]], png_path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
