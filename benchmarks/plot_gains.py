"""Issue 5's history in one PNG: every fp8 / bf16 ratio in benchmarks/results/fp8_gains.json at the seed width
(896) and at 1B (2048), in the order the device calls ran, training runs and bench rows apart, with the targets.

    python benchmarks/plot_gains.py benchmarks/results/fp8_gains.png
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GAINS = Path(__file__).resolve().parent / "results" / "fp8_gains.json"
PANELS = ((896, "seed: dim 896, 24 layers", 1.30), (2048, "1B: dim 2048, 16 layers", 1.50))  # width, title, target


def call_of(entry: dict) -> str:
    """The device call's folder an entry came from, e.g. 'eighteenth_session_h200/call80'."""
    parts = entry["source"].split(" ")[0].split("/")
    return "/".join(parts[2:4]) if len(parts) > 3 and parts[3].startswith("call") else parts[2]


def main(out: str) -> None:
    gains = json.loads(GAINS.read_text())
    calls = list(dict.fromkeys(call_of(g) for g in gains))  # in the file's order: the order the calls ran
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 4.5), sharex=True)
    for ax, (dim, title, target) in zip(axes, PANELS):
        for kind, marker in (("training", "o"), ("bench", "s")):
            points = [(calls.index(call_of(g)), g["ratio"]) for g in gains if g["dim"] == dim and g["kind"] == kind]
            if points:
                ax.scatter(*zip(*points), marker=marker, s=22, alpha=0.7, label=f"{kind} ({len(points)})")
        ax.axhline(target, color="crimson", ls="--", lw=1, label=f"target {target:.2f}x")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(title)
        ax.set_ylabel("fp8 / bf16 tokens/s (same call)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ticks = range(0, len(calls), max(1, len(calls) // 8))
    for ax in axes:
        ax.set_xticks(list(ticks), [calls[i].split("/")[-1] for i in ticks], rotation=30, fontsize=7)
        ax.set_xlabel("device call (fp8_gains.json's order)")
    fig.suptitle(f"fp8 / bf16 measured on the GPU, every path variant pooled ({GAINS.name}, {len(gains)} entries)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/plot_gains.py OUT.png")
    main(sys.argv[1])
