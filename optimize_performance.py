"""Which configuration is fastest for your model on this GPU, and why: the full performance matrix.

    python optimize_performance.py --preset seed --compare-reference
    python optimize_performance.py --preset 1b --modes all --out benchmarks/results/1b

Each configuration runs in a fresh process; results go to --out as matrix.json, matrix.md and PNG charts.
"""

import sys

from cs336_basics.cli import run_main
from cs336_basics.perf.matrix import main

if __name__ == "__main__":
    sys.exit(run_main(main))
