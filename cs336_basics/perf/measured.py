"""Factors measured on the GPU by optimize_performance.py and committed under benchmarks/results/,
quoted by the trainer's warnings. Nothing here is typed in: absent measurements are reported as absent."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FACTORS_FILE = RESULTS_DIR / "measured_factors.json"


def measured_factor(name: str) -> str | None:
    """e.g. '0.24x (fp8 eager vs bf16 + compile, NVIDIA H200, 2026-11-28, benchmarks/results/...)'."""
    try:
        factors = json.loads(FACTORS_FILE.read_text())
    except (OSError, ValueError):
        return None
    entry = factors.get(name)
    if not entry:
        return None
    return f"{entry['ratio']:.2f}x ({entry['what']}; {entry['gpu']}, {entry['date']}, {entry['source']})"
