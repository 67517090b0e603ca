"""Every float8 product of a block's linear layers, as the delayed recipe runs them, at the seed and 1B shapes:
which products fall short of the fp8 peak, and what computing w1 and w3 as one product would save.

    python benchmarks/gemm_products.py --out gemm_products.json

For each layer (qkv, out, w1 = w3, w2) at M = 16,384 tokens, the three products of a training step in the
layouts fp8_delayed.py / swiglu_fp8.py use: forward x8 (M, K) @ w8.T (fast accumulation, bf16 out), input
gradient g8 (M, N) e5m2 @ w8 column-major (bf16 out), weight gradient g8.T (N, M) @ x8 column-major (float32
out, the master weights' dtype); the weight gradient also as its transposed problem x8.T (K, M) @ g8 (another
cuBLAS kernel, a transposed output); bf16's products of the same shapes for reference (its weight gradient also
written in float32 by cuBLAS itself, where autocast converts a bf16 one). Then w1 and w3 as one
product each way (N = 2F forward, a 2F-long sum for the input gradient, 2F rows of weight gradient), which
needs one scale for both weights and both output gradients. Median microseconds from CUDA-graph replays
(kernel_swiglu_fp8.time_us), TFLOP/s, and per-step sums (the blocks' products of one micro-batch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the models, a block's layers by shape, and the float8 casts
from gemm_fast_accum import E5M2, E5M2_MAX, MODELS, block_products, cast_to, to_fp8  # noqa: E402
from kernel_swiglu_fp8 import time_us  # noqa: E402


def column_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column-major, as cuBLAS's float8 products take their second operand."""
    return t.t().contiguous().t()


def products(m: int, k: int, n: int, iters: int) -> dict[str, float]:
    """Median microseconds of the three products of one layer (K -> N) at M tokens, fp8 and bf16."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 1e-3
    (x8, inv_x), (w8, inv_w) = to_fp8(x), to_fp8(w)
    scale_g = E5M2_MAX / g.abs().amax().float()
    g8 = cast_to(g, scale_g, E5M2, E5M2_MAX)
    inv_g = scale_g.reciprocal()
    g8_t, x8_t, w_cols = g8.t().contiguous(), x8.t().contiguous(), column_major(w8)

    def mm(a, b, inv_a, inv_b, out_dtype, fast=False):
        return torch._scaled_mm(a, b, scale_a=inv_a, scale_b=inv_b, out_dtype=out_dtype, use_fast_accum=fast)

    wf = w.float()
    timed = {
        "fp8 forward": time_us(lambda: mm(x8, w8.t(), inv_x, inv_w, torch.bfloat16, fast=True), iters),
        "fp8 input gradient": time_us(lambda: mm(g8, w_cols, inv_g, inv_w, torch.bfloat16), iters),
        "fp8 weight gradient": time_us(lambda: mm(g8_t, x8_t.t(), inv_g, inv_x, torch.float32), iters),
        "fp8 weight gradient, transposed problem": time_us(lambda: mm(x8_t, g8_t.t(), inv_x, inv_g, torch.float32), iters),
        "bf16 forward": time_us(lambda: x @ w.t(), iters),
        "bf16 input gradient": time_us(lambda: g @ w, iters),
        "bf16 weight gradient": time_us(lambda: (g.t() @ x).to(wf.dtype), iters),
    }
    try:  # float32 straight out of cuBLAS, as fp8's weight gradients are; aten::mm.dtype, CUDA only
        timed["bf16 weight gradient, float32 out"] = time_us(lambda: torch.mm(g.t(), x, out_dtype=torch.float32), iters)
    except (RuntimeError, TypeError) as e:
        print(f"  torch.mm(out_dtype=float32) unavailable: {str(e).splitlines()[0][:160]}")
    return timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("gemm_products.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark times cuBLAS's float8 products: it needs a CUDA GPU with fp8 tensor cores")
    torch.manual_seed(0)
    m, rows, steps = args.tokens, [], {}
    for model, dim, ffn, blocks in MODELS:
        step: dict[str, float] = {}
        for name, k, n, count in block_products(dim, ffn):
            us = products(m, k, n, args.iters)
            tflops = {key: 2 * m * k * n / (t * 1e-6) / 1e12 for key, t in us.items()}
            rows.append(dict(model=model, layer=name, M=m, K=k, N=n, count_per_block=count, us=us, tflops=tflops))
            for key, t in us.items():
                step[key] = step.get(key, 0.0) + t * count * blocks / 1e3
            print(f"{model:5} {name:7} {m} x {k} x {n}: " + ", ".join(f"{key} {t:.1f} us ({tflops[key]:.0f})"
                                                                   for key, t in us.items()))
        # w1 and w3 as one product each way: forward N = 2F, input gradient K = 2F (the sum of both), weight
        # gradient 2F rows. Against two products of each and, for the input gradient, the add of their outputs.
        merged = products(m, dim, 2 * ffn, args.iters)
        add_us = time_us(lambda a=torch.randn(m, dim, device="cuda", dtype=torch.bfloat16): a + a, args.iters)
        two = next(r["us"] for r in rows if r["model"] == model and r["layer"] == "w1, w3")
        saved = {key: (2 * two[key] - merged[key] + (add_us if "input gradient" in key else 0.0)) * blocks / 1e3
                 for key in ("fp8 forward", "fp8 input gradient", "fp8 weight gradient")}
        rows.append(dict(model=model, layer="w1 | w3 as one", M=m, K=dim, N=2 * ffn, us=merged, add_us=add_us,
                         ms_saved_per_step=saved))
        print(f"{model:5} w1|w3 as one: " + ", ".join(f"{key} {merged[key]:.1f} us" for key in saved)
              + f"; saves {sum(saved.values()):.2f} ms a micro-batch ({', '.join(f'{v:.2f}' for v in saved.values())})")
        steps[model] = {key: round(v, 3) for key, v in step.items()}
        fp8_total = sum(v for key, v in step.items() if key.startswith("fp8") and "transposed" not in key)
        bf16_total = sum(v for key, v in step.items() if key.startswith("bf16") and "float32 out" not in key)
        print(f"{model}: the blocks' products a micro-batch: fp8 {fp8_total:.2f} ms, bf16 {bf16_total:.2f} ms; "
              + ", ".join(f"{key} {v:.2f}" for key, v in step.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(rows=rows, ms_per_micro_batch=steps, gpu=torch.cuda.get_device_name(),
                                        torch=torch.__version__), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
