"""Check FP8 training on this machine: TorchAO, conversion, compile after conversion, FP8-vs-BF16
numerics, a short FP8 training run and (on an FP8-capable GPU) FP8+compile speed. Exit 1 on any FAIL.

    python verify_fp8_compilation.py [--device cuda]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from cs336_basics.cli import run_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from cs336_basics.precision.verify import run_checks

    with tempfile.TemporaryDirectory() as tmp:
        checks = run_checks(torch.device(args.device), Path(tmp))
    failed = [c for c in checks if c.passed is False]
    passed = sum(c.passed is True for c in checks)
    skipped = sum(c.passed is None for c in checks)
    print(f"{passed} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
