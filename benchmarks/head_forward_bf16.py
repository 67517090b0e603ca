"""Run an entry point with the float8 output head's forward (logits, loss) in bf16 and only its two gradient
products in fp8: the A/B of device call 15 (quality and speed of the head's fp8 forward).

    python benchmarks/head_forward_bf16.py train_h100.py --use_fp8 ...
    python benchmarks/head_forward_bf16.py -m cs336_basics.perf.bench_run '<json spec>'
"""

import runpy
import sys

from cs336_basics.precision.fp8_head import Float8OutputHead

Float8OutputHead.fp8_forward = False
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
