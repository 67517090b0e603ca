"""SwiGLU's fp8 backward: our Triton kernel against inductor's code for the same computation, on one GPU.

    python benchmarks/kernel_swiglu_fp8.py --out $OUT/swiglu_fp8.json        # seed shapes: 16 x 1024 tokens, 3584 wide

Checks the kernel against the PyTorch reference on fresh random inputs (fp8 outputs in both layouts within one
e5m2 step, at most 0.1% of them differing, amax within bf16 rounding, saturation, no NaN or inf), then
times, with CUDA events over --iters calls each: each Triton tile shape, torch.compile of the reference (what the training step runs today), and torch.compile
of the bf16 SwiGLU backward alone (what a bf16 step runs: the floor the fp8 outputs add to). GB/s counts the
bytes each must move: 3 bf16 inputs, and 4 fp8 outputs or 2 bf16 ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.cli import run_main  # noqa: E402
from cs336_basics.errors import UserError  # noqa: E402
from cs336_basics.precision.fp8_head import E5M2_MAX  # noqa: E402
from cs336_basics.precision.swiglu_fp8 import (swiglu_backward, swiglu_backward_fp8,  # noqa: E402
                                               swiglu_backward_fp8_reference)

TILES = ((64, 64, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8), (32, 128, 4), (128, 32, 4))


def inputs(M: int, N: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda scale: (torch.randn(M, N, device="cuda", generator=g) * scale).to(torch.bfloat16)  # noqa: E731
    return randn(1e-3), randn(2.0), randn(2.0)  # dg, h1, h3: a gradient's and activations' magnitudes


def compare(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """The fp8 outputs' largest gap in e5m2 steps (a step: a quarter of the value, or the smallest subnormal,
    2^-16, near zero), the share of outputs that differ at all, and the amaxes' relative gap."""
    worst, differ, total = 0.0, 0, 0
    for a, b in zip(got[:4], want[:4]):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"output {tuple(a.shape)} {a.dtype}, expected {tuple(b.shape)} {b.dtype}")
        a, b = a.float(), b.float()
        gap = (a - b).abs().nan_to_num(nan=float("inf"))  # a NaN or inf where the reference is finite fails
        differ += int((gap > 0).sum())
        total += a.numel()
        worst = max(worst, float((gap / torch.clamp(0.25 * b.abs(), min=2.0**-16)).max()))
    amax_gap = float(((got[4] - want[4]).abs() / want[4]).max())
    return dict(worst_gap_in_steps=worst, share_differing=differ / total, amax_relative_gap=amax_gap)


def time_us(fn: Callable[[], object], iters: int) -> float:
    for _ in range(3):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--M", type=int, default=16 * 1024, help="tokens (rows)")
    p.add_argument("--N", type=int, default=3584, help="SwiGLU width")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU")
    M, N = args.M, args.N
    checks = {}
    for name, seed, headroom in (("in range", 0, 1.0), ("saturating", 1, 4.0)):
        dg, h1, h3 = inputs(M, N, seed)
        a = swiglu_backward_fp8_reference(dg, h1, h3, torch.tensor(1.0, device="cuda"), torch.tensor(1.0, device="cuda"))[4]
        s1, s3 = (E5M2_MAX / a * headroom).unbind()  # a delayed scale; x4: a quarter of the range saturates
        want = swiglu_backward_fp8_reference(dg, h1, h3, s1, s3)
        for bm, bn, warps in TILES:
            result = compare(swiglu_backward_fp8(dg, h1, h3, s1, s3, bm, bn, warps), want)
            ok = result["worst_gap_in_steps"] <= 1 and result["share_differing"] <= 1e-3 and result["amax_relative_gap"] <= 1e-2
            checks[f"{name} {bm}x{bn}"] = dict(result, passed=ok)
            print(f"check {name:<10} tile {bm}x{bn}: {'PASS' if ok else 'FAIL'} {result}")
    dg, h1, h3 = inputs(M, N, 2)
    s1 = s3 = torch.tensor(E5M2_MAX / 4e-3, device="cuda")
    timings = {f"triton {bm}x{bn} w{warps}": time_us(lambda: swiglu_backward_fp8(dg, h1, h3, s1, s3, bm, bn, warps), args.iters)
               for bm, bn, warps in TILES}
    compiled_fp8 = torch.compile(swiglu_backward_fp8_reference)
    timings["inductor: compiled reference"] = time_us(lambda: compiled_fp8(dg, h1, h3, s1, s3), args.iters)
    compiled_bf16 = torch.compile(swiglu_backward)
    timings["inductor: bf16 SwiGLU backward alone"] = time_us(lambda: compiled_bf16(dg, h1, h3), args.iters)
    fp8_bytes, bf16_bytes = M * N * (3 * 2 + 4), M * N * (3 * 2 + 2 * 2)
    rows = []
    for name, us in timings.items():
        gb = (bf16_bytes if "bf16" in name else fp8_bytes) / us / 1e3
        rows.append(dict(name=name, us=round(us, 1), gb_per_s=round(gb)))
        print(f"{name:<40} {us:8.1f} us  {gb:6.0f} GB/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(M=M, N=N, iters=args.iters, gpu=torch.cuda.get_device_name(),
                                            torch=torch.__version__, checks=checks, timings=rows), indent=1))
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
