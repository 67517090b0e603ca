"""Two charts of one benchmark folder: every timed step of its benches, and the GPU's power, utilisation and SM
clock over time, each phase (bench or training run) shaded. Shows whether a run held the GPU's power cap (and at
what clock) or left it waiting for the host.

    nvidia-smi --query-gpu=timestamp,clocks.current.sm,power.draw,temperature.gpu,utilization.gpu,\
        clocks_event_reasons.active --format=csv -lms 100 > RUN_DIR/smi.csv &
    echo "$(date +%T.%N) start bench-seed" >> RUN_DIR/phases.txt; ...; echo "$(date +%T.%N) end bench-seed" >> ...
    python benchmarks/plot_gpu_log.py RUN_DIR

RUN_DIR holds smi.csv, phases.txt ("HH:MM:SS.ns start|end NAME" lines), and optionally bench results: `*.log` files
with a 'RESULT {...}' line or `*/matrix.json` files, whose rows carry step_ms_each. Writes RUN_DIR/steps.png (if
there are bench results) and RUN_DIR/gpu.png.
"""

import csv
import json
import sys
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bench_rows(run: Path) -> dict[str, list[float]]:
    """name -> milliseconds of each timed step, from RESULT lines and matrix.json rows."""
    rows: dict[str, list[float]] = {}
    for log in sorted(run.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                if "step_ms_each" in result:
                    rows[log.stem] = result["step_ms_each"]
    for matrix in sorted(run.glob("*/matrix.json")):
        for result in json.loads(matrix.read_text())["rows"]:
            if "step_ms_each" in result:
                rows[f"{matrix.parent.name}: {result['name']}"] = result["step_ms_each"]
    return rows


def seconds(clock: str) -> float:
    t = datetime.strptime(clock[:15], "%H:%M:%S.%f")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def main(run_dir: str) -> None:
    run = Path(run_dir)
    rows = bench_rows(run)
    if rows:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, ms in rows.items():
            ax.plot(range(1, len(ms) + 1), ms, lw=1, label=f"{name} (mean {sum(ms) / len(ms):.1f} ms)")
        low, high = min(min(ms) for ms in rows.values()), sorted(v for ms in rows.values() for v in ms)[-3]
        ax.set_ylim(low * 0.97, high * 1.03)  # the few compile-time outliers would flatten the rest
        ax.set_xlabel("timed step")
        ax.set_ylabel("step time (ms, CUDA events)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run / "steps.png", dpi=110)
    records = list(csv.reader((run / "smi.csv").read_text().splitlines()))[1:]
    t = [seconds(r[0].strip()[11:]) for r in records]
    t0 = t[0]
    column = {name: i for i, name in enumerate(h.strip().split(" [")[0] for h in (run / "smi.csv").read_text().splitlines()[0].split(","))}
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    for ax, (name, label) in zip(axes, [("power.draw", "power (W)"), ("utilization.gpu", "utilisation (%)"),
                                        ("clocks.current.sm", "SM clock (MHz)")]):
        ax.plot([x - t0 for x in t], [float(r[column[name]].split()[0]) for r in records], lw=0.7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    phases = [line.split() for line in (run / "phases.txt").read_text().splitlines()]
    starts = {p[2]: seconds(p[0]) - t0 for p in phases if p[1] == "start"}
    for i, p in enumerate(p for p in phases if p[1] == "end"):
        for ax in axes:
            ax.axvspan(starts[p[2]], seconds(p[0]) - t0, color=f"C{i % 10}", alpha=0.12)
        axes[0].text(starts[p[2]], axes[0].get_ylim()[1], p[2], fontsize=7, rotation=30, va="bottom")
    axes[-1].set_xlabel("seconds into the log")
    fig.tight_layout()
    fig.savefig(run / "gpu.png", dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/plot_gpu_log.py RUN_DIR")
    main(sys.argv[1])
