"""Check FP8 training on this machine (cs336-verify): TorchAO, conversion, compile after conversion, FP8-vs-BF16
numerics, our float8 kernels against their references, short compiled FP8 training runs and (on an FP8-capable
GPU) FP8+compile speed. Exit 1 on any FAIL.

    python verify_fp8_compilation.py [--device cuda]
"""

import sys

from cs336_basics.cli.verify import cli

if __name__ == "__main__":
    sys.exit(cli())
