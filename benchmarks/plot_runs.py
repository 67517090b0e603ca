"""Overlay the loss curves of several runs (their metrics.jsonl) in one PNG.

    python benchmarks/plot_runs.py OUT.png RUN_DIR [RUN_DIR ...]
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, *runs: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [Path(run).name for run in runs]
    if len(set(names)) < len(names):  # runs from several jobs: name each by its parent folder too
        names = [f"{Path(run).parent.name}/{Path(run).name}" for run in runs]
    for run, name, color in zip(runs, names, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        ax.plot(*zip(*train), color=color, lw=1, alpha=0.6, label=f"{name} train")
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        last = "final" if val[-1][0] >= train[-1][0] else f"last: step {val[-1][0]}; trained to {train[-1][0]}"
        ax.plot(*zip(*val), "o-", color=color, lw=2, label=f"{name} validation ({last} {val[-1][1]:.4f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
