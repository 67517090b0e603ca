"""The blocks' forward float8 products with and without cuBLAS's fast accumulation (--fp8_fast_accum), next to
bf16's, at the seed and 1B shapes, on one GPU.

    python benchmarks/gemm_fast_accum.py --out gemm_fast_accum.json

For each forward product of a block (qkv, out, w1 and w3, w2) at M = 16,384 tokens: the median time of
torch.mm in bf16 and of torch._scaled_mm in e4m3 without and with use_fast_accum (each replayed from a CUDA
graph, as training runs them), and the relative error of each float8 product (float32 output) against float32
products of the same float8 values. Then per step: what fast accumulation would save over all the blocks' forward products.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_swiglu_fp8 import time_us  # noqa: E402

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E4M3_MAX, E5M2_MAX = torch.finfo(E4M3).max, torch.finfo(E5M2).max


def cast_to(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, max_value: float) -> torch.Tensor:
    """x * scale in float8, saturating."""
    return (x.float() * scale).clamp(-max_value, max_value).to(dtype)


def to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic tensorwise e4m3 cast: (x * scale in float8, 1 / scale), scale = 448 / amax(x)."""
    scale = E4M3_MAX / x.detach().abs().amax().float().clamp(min=1e-12)
    return cast_to(x, scale, E4M3, E4M3_MAX), scale.reciprocal()

# (name, dim, SwiGLU width, layers): the forward products of one block, with how many of each a block runs.
MODELS = (("seed", 896, 3584, 24), ("1b", 2048, 5632, 16))


def block_products(dim: int, ffn: int) -> list[tuple[str, int, int, int]]:
    """(name, K, N, count a block) of a block's forward products."""
    return [("qkv", dim, 3 * dim, 1), ("out", dim, dim, 1), ("w1, w3", dim, ffn, 2), ("w2", ffn, dim, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("gemm_fast_accum.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark times cuBLAS's float8 products: it needs a CUDA GPU with fp8 tensor cores")
    torch.manual_seed(0)
    rows, totals = [], {}
    for model, dim, ffn, layers in MODELS:
        saved = 0.0
        for name, k, n, count in block_products(dim, ffn):
            x = torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            (x8, inv_x), (w8, inv_w) = to_fp8(x), to_fp8(w)
            w8t = w8.t()  # (K, N) column-major, as the layers pass it

            def fp8(fast: bool, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
                return torch._scaled_mm(x8, w8t, scale_a=inv_x, scale_b=inv_w, out_dtype=out_dtype, use_fast_accum=fast)

            # The error of the accumulation alone: float32 outputs (a bf16 output's rounding, ~2e-3, would hide it)
            reference = (x8.float() @ w8t.float()) * (inv_x * inv_w)
            error = {fast: float((fp8(fast, torch.float32) - reference).norm() / reference.norm()) for fast in (False, True)}
            us = {"bf16": time_us(lambda: x @ w.t(), args.iters), "fp8": time_us(lambda: fp8(False), args.iters),
                  "fp8 fast": time_us(lambda: fp8(True), args.iters)}
            tflops = {key: 2 * args.tokens * k * n / (t * 1e-6) / 1e12 for key, t in us.items()}
            saved += (us["fp8"] - us["fp8 fast"]) * count * layers
            rows.append(dict(model=model, product=name, M=args.tokens, K=k, N=n, us=us, tflops=tflops,
                             relative_error=dict(promoted=error[False], fast=error[True])))
            print(f"{model:5} {name:7} {args.tokens} x {k} x {n}: bf16 {us['bf16']:7.1f} us, fp8 {us['fp8']:7.1f} us "
                  f"({tflops['fp8']:.0f} TFLOP/s), fast {us['fp8 fast']:7.1f} us ({tflops['fp8 fast']:.0f} TFLOP/s, "
                  f"{us['fp8'] / us['fp8 fast']:.3f}x); relative error {error[False]:.1e} / {error[True]:.1e}")
        totals[model] = round(saved / 1e3, 3)
        print(f"{model}: fast accumulation would save {saved / 1e3:.2f} ms a step over the blocks' forward products")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(rows=rows, ms_saved_per_step=totals, gpu=torch.cuda.get_device_name(),
                                        torch=torch.__version__), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
