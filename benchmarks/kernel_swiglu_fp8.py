"""Our fp8 Triton kernels (SwiGLU's forward and backward with their casts; a cast alone) against inductor's
code for the same computations, on one GPU: each checked against its PyTorch reference, then timed.

    python benchmarks/kernel_swiglu_fp8.py --out swiglu_fp8.json             # seed shapes: 16 x 1024 tokens, 3584 wide
    python benchmarks/kernel_swiglu_fp8.py --M 16384 --N 5632 --D 2048 --extra_configs 128x256w8,256x128w8

--extra_configs adds tiles (BLOCK_M x BLOCK_N, warps) to the SwiGLU kernels' checked and timed ones, to try before
CONFIGS takes them (the autotuner picks among CONFIGS only). A persistent, pipelined SwiGLU backward and
TMA-store forms of both SwiGLU kernels were checked and timed here too and were slower or wrong (docs/log.md,
2026-11-29; their code and `--variants` are in git at db7c10c). The SwiGLU kernels are also checked and timed in
the layout of w1 | w3 as one product (h1, h3 the halves of one (M, 2N) product; the gradients into the halves of
(M, 2N) arrays), training's default.

Checks each kernel against its PyTorch reference on fresh random inputs, in range and saturating, for every
tile shape and for the autotuner's choice (fp8 outputs in both layouts within one step of their format, at
most 0.1% of them differing, amax within bf16 rounding, no NaN or inf), then times each of those (median of
--iters CUDA graph replays), torch.compile of the reference (what the training step runs without the
kernels), and for SwiGLU torch.compile of the bf16 computation alone (what a bf16 step runs: the floor the fp8
outputs add to). GB/s counts the bytes each must move.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.cli import run_main  # noqa: E402
from cs336_basics.errors import UserError  # noqa: E402
from cs336_basics.precision.fp8_cast import CONFIGS, cast_both, cast_both_reference, kernels, steps_apart  # noqa: E402
from cs336_basics.precision.swiglu_fp8 import (random_inputs, split_halves, swiglu_backward,  # noqa: E402
                                               swiglu_backward_fp8, swiglu_backward_fp8_merged,
                                               swiglu_backward_fp8_merged_reference, swiglu_backward_fp8_reference,
                                               swiglu_forward_fp8, swiglu_forward_fp8_reference)


E4M3_MAX, E5M2_MAX = torch.finfo(torch.float8_e4m3fn).max, torch.finfo(torch.float8_e5m2).max


def tiles(text: str) -> tuple[tuple[int, int, int], ...]:
    """'128x256w8,256x128w8' -> ((128, 256, 8), (256, 128, 8)): --extra_configs."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            block, warps = item.split("w")
            bm, bn = block.split("x")
            found.append((int(bm), int(bn), int(warps)))
        except ValueError:
            raise UserError(f"--extra_configs {item!r}: expected BLOCK_MxBLOCK_NwWARPS, e.g. 128x256w8") from None
    return tuple(found)


def label(config: tuple[int, int, int] | None) -> str:
    return "autotuned" if config is None else f"{config[0]}x{config[1]} w{config[2]}"


def compare(got: list[torch.Tensor], want: list[torch.Tensor], got_amax: torch.Tensor, want_amax: torch.Tensor
            ) -> dict[str, float]:
    """The fp8 outputs' largest gap in steps of their format (a step: the value times 2^-mantissa bits, or the
    smallest subnormal near zero), the share of outputs that differ at all, and the amaxes' relative gap."""
    worst, differ, total = 0.0, 0, 0
    for a, b in zip(got, want, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"output {tuple(a.shape)} {a.dtype}, expected {tuple(b.shape)} {b.dtype}")
        steps = steps_apart(a, b)  # a NaN or inf where the reference is finite: inf
        differ += int((steps > 0).sum())
        total += a.numel()
        worst = max(worst, float(steps.max()))
    amax_gap = float(((got_amax - want_amax).abs() / want_amax).max())
    return dict(worst_gap_in_steps=worst, share_differing=differ / total, amax_relative_gap=amax_gap)


def time_us(fn: Callable[[], object], iters: int) -> float:
    """Median GPU microseconds of one run of fn, replayed from a CUDA graph as the training step runs it, so
    no host time counts (events around each run would also count the autotuner's host work: 134 us for a
    forward that takes ~100 us in the training step)."""
    for _ in range(3):  # compiles, autotunes
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def check(name: str, run: Callable[[], tuple[torch.Tensor, ...]], want: tuple[torch.Tensor, ...], checks: dict) -> None:
    """run() and want: (fp8 outputs ..., amax): the last entry is the amax. A tile that does not compile (e.g.
    out of shared memory, an --extra_configs one) fails its check instead of ending the run."""
    try:
        got = run()
    except Exception as e:  # Triton's compile errors have no common base class worth naming
        checks[name] = dict(passed=False, error=str(e).splitlines()[0][:200])
        print(f"check {name:<40}: FAIL {checks[name]['error']}")
        return
    result = compare(list(got[:-1]), list(want[:-1]), got[-1], want[-1])
    ok = result["worst_gap_in_steps"] <= 1 and result["share_differing"] <= 1e-3 and result["amax_relative_gap"] <= 1e-2
    checks[name] = dict(result, passed=ok)
    print(f"check {name:<40}: {'PASS' if ok else 'FAIL'} {result}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--M", type=int, default=16 * 1024, help="tokens (rows)")
    p.add_argument("--N", type=int, default=3584, help="SwiGLU width")
    p.add_argument("--D", type=int, default=896, help="model width (the casts of a layer's input or output gradient)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--extra_configs", type=tiles, default=(), help="more tiles to check and time, e.g. 128x256w8")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU")
    choices = (*CONFIGS, *args.extra_configs, None)  # every config, then the autotuner's choice (what the model runs)
    M, N = args.M, args.N
    one = torch.tensor(1.0, device="cuda")
    checks: dict[str, dict] = {}
    for name, seed, headroom in (("in range", 0, 1.0), ("saturating", 1, 4.0)):  # x4: a quarter of the range saturates
        dg, h1, h3 = random_inputs(M, N, "cuda", seed)
        s = E4M3_MAX / swiglu_forward_fp8_reference(h1, h3, one)[2] * headroom  # a delayed scale
        want = swiglu_forward_fp8_reference(h1, h3, s)
        for config in choices:
            check(f"forward {name} {label(config)}", lambda: swiglu_forward_fp8(h1, h3, s, config), want, checks)
        s1, s3 = (E5M2_MAX / swiglu_backward_fp8_reference(dg, h1, h3, one, one)[4] * headroom).unbind()
        want = swiglu_backward_fp8_reference(dg, h1, h3, s1, s3)
        for config in choices:
            check(f"backward {name} {label(config)}", lambda: swiglu_backward_fp8(dg, h1, h3, s1, s3, config), want, checks)
        h13 = torch.cat([h1, h3], dim=1)  # --fp8_merge_w13's layout, one gradient scale for both
        check(f"forward w1|w3 layout {name} autotuned", lambda: swiglu_forward_fp8(*split_halves(h13), s),
              swiglu_forward_fp8_reference(h1, h3, s), checks)
        check(f"backward w1|w3 layout {name} autotuned", lambda: swiglu_backward_fp8_merged(dg, h13, s1),
              swiglu_backward_fp8_merged_reference(dg, h13, s1), checks)
    D = args.D
    for name, seed, headroom in (("in range", 3, 1.0), ("saturating", 4, 4.0)):  # the cast alone (fp8_cast.py)
        for e5m2, dtype in ((False, torch.bfloat16), (False, torch.float32), (True, torch.bfloat16)):
            # a gradient's (bf16) or an activation's magnitudes; activations come in float32 too (RMSNorm's output
            # of the float32 residual stream), where Triton once miscompiled the transposed copy (docs/log.md)
            x = (random_inputs(M, D, "cuda", seed)[0 if e5m2 else 1] if dtype == torch.bfloat16 else
                 torch.randn(M, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)) * 2.0)
            s = (E5M2_MAX if e5m2 else E4M3_MAX) / x.float().abs().max() * headroom
            want = cast_both_reference(x, s, e5m2)
            for config in (*CONFIGS, None):  # --extra_configs are for the SwiGLU kernels
                check(f"cast {'e5m2' if e5m2 else 'e4m3'} {str(dtype)[6:]} {name} {label(config)}",
                      lambda: cast_both(x, s, e5m2, config), want, checks)
    dg, h1, h3 = random_inputs(M, N, "cuda", 2)
    s = torch.tensor(E4M3_MAX / 8.0, device="cuda")
    s1 = s3 = torch.tensor(E5M2_MAX / 4e-3, device="cuda")
    timings: dict[str, tuple[float, int]] = {}  # name -> (us, bytes it must move)

    def timed(name: str, fn: Callable[[], object], nbytes: int) -> None:  # printed at once: a cut run keeps them
        us = time_us(fn, args.iters)
        timings[name] = (us, nbytes)
        print(f"{name:<48} {us:8.1f} us  {nbytes / us / 1e3:6.0f} GB/s", flush=True)

    fwd_fp8, fwd_bf16 = M * N * (2 * 2 + 2), M * N * (2 * 2 + 2)  # h1, h3 in; g8 and its transpose, or g, out
    bwd_fp8, bwd_bf16 = M * N * (3 * 2 + 4), M * N * (3 * 2 + 2 * 2)  # dg, h1, h3 in; 4 fp8 or 2 bf16 out
    for config in choices:
        if not all(checks[f"{kind} in range {label(config)}"]["passed"] for kind in ("forward", "backward")):
            print(f"not timed: {label(config)} (its check failed)")
            continue
        timed(f"forward triton {label(config)}", lambda: swiglu_forward_fp8(h1, h3, s, config), fwd_fp8)
        timed(f"backward triton {label(config)}", lambda: swiglu_backward_fp8(dg, h1, h3, s1, s3, config), bwd_fp8)
    h13 = torch.cat([h1, h3], dim=1)
    timed("forward triton w1|w3 layout autotuned", lambda: swiglu_forward_fp8(*split_halves(h13), s), fwd_fp8)
    timed("backward triton w1|w3 layout autotuned", lambda: swiglu_backward_fp8_merged(dg, h13, s1), bwd_fp8)
    compiled = {name: torch.compile(fn) for name, fn in (("fwd fp8", swiglu_forward_fp8_reference),
                                                          ("fwd bf16", lambda a, b: F.silu(a) * b),
                                                          ("bwd fp8", swiglu_backward_fp8_reference),
                                                          ("bwd bf16", swiglu_backward))}
    timed("forward inductor: compiled reference", lambda: compiled["fwd fp8"](h1, h3, s), fwd_fp8)
    timed("forward inductor: bf16 silu(h1) * h3 alone", lambda: compiled["fwd bf16"](h1, h3), fwd_bf16)
    timed("backward inductor: compiled reference", lambda: compiled["bwd fp8"](dg, h1, h3, s1, s3), bwd_fp8)
    timed("backward inductor: bf16 SwiGLU backward alone", lambda: compiled["bwd bf16"](dg, h1, h3), bwd_bf16)
    x = random_inputs(M, D, "cuda", 5)[1]
    cast_bytes = M * D * (2 + 2)  # x in; fp8 and its transpose out
    compiled["cast"] = torch.compile(cast_both_reference)
    x32 = x.float()  # an activation from the float32 residual stream: 4 bytes in
    for kind, e5m2, xx, nbytes in (("e4m3", False, x, cast_bytes), ("e4m3 float32 in", False, x32, cast_bytes + 2 * M * D),
                                   ("e5m2", True, x, cast_bytes)):
        timed(f"cast {kind} triton autotuned", lambda: cast_both(xx, s, e5m2), nbytes)
        timed(f"cast {kind} inductor: compiled reference", lambda: compiled["cast"](xx, s, e5m2), nbytes)
    rows = [dict(name=name, us=round(us, 1), gb_per_s=round(nbytes / us / 1e3)) for name, (us, nbytes) in timings.items()]
    chosen = {k: str(kernels()[f"{k} tuned"].best_config) for k in ("swiglu_forward", "swiglu_backward", "cast")}
    print(f"the autotuner chose: {chosen}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(M=M, N=N, iters=args.iters, gpu=torch.cuda.get_device_name(),
                                            torch=torch.__version__, checks=checks, timings=rows,
                                            autotuned=chosen), indent=1))
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
