"""Which configuration trains fastest for your model on this GPU, and why: the benchmark matrix (cs336-bench).

    python optimize_performance.py --config seed --compare-reference
    python optimize_performance.py --config 1b --modes all --out bench_results/1b

Each configuration runs in a fresh process; results go to --out as matrix.json, matrix.md and PNG charts.
"""

import sys

from cs336_basics.cli.bench import cli

if __name__ == "__main__":
    sys.exit(cli())
