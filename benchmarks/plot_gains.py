"""Every measured fp8 / bf16 throughput ratio in one PNG: the seed width (896) and 1B (2048) side by side, in the
order measured, training runs and bench rows apart, with the 1.30x and 1.50x targets.

    python benchmarks/plot_gains.py benchmarks/reports/2026-11-29-h200-fp8-gains.json gains.png

GAINS is a JSON file {"entries": [...]} (or a bare list) whose entries carry dim, kind ("training" or "bench"),
ratio and set (the benchmark job the ratio was measured in; ratios compare only within one set).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = ((896, "seed: dim 896, 24 layers", 1.30), (2048, "1B: dim 2048, 16 layers", 1.50))  # width, title, target


def load(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["entries"] if isinstance(data, dict) else data


def main(gains_path: str, out: str) -> None:
    gains = load(Path(gains_path))
    sets = sorted({g["set"] for g in gains})
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 4.5), sharex=True)
    for ax, (dim, title, target) in zip(axes, PANELS):
        for kind, marker in (("training", "o"), ("bench", "s")):
            points = [(g["set"], g["ratio"]) for g in gains if g["dim"] == dim and g["kind"] == kind]
            if points:
                ax.scatter(*zip(*points), marker=marker, s=22, alpha=0.7, label=f"{kind} ({len(points)})")
        ax.axhline(target, color="crimson", ls="--", lw=1, label=f"target {target:.2f}x")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel("fp8 / bf16 tokens/s (same job)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("benchmark job, in the order measured")
    dates = sorted({g.get("date", "") for g in gains} - {""})
    span = f", {dates[0]} to {dates[-1]}" if dates else ""
    fig.suptitle(f"fp8 / bf16 measured on the GPU, every path variant pooled ({len(gains)} ratios from "
                 f"{len(sets)} jobs{span})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/plot_gains.py GAINS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
