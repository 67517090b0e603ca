"""What bf16 training pays each micro-batch to cast its float32 weights to bf16 (autocast), at the seed and 1B
shapes, on one GPU: the size of the advantage the fp8 path's weight cache (cast once per optimizer step) has
and a plain bf16 path lacks.

    python benchmarks/weight_cast_cost.py --out weight_cast_cost.json

For each model: one block's linear weights (qkv, out, w1, w3, w2) cast by a compiled function, as each compiled block
casts them, times the layers, plus the output head's weight; each replayed from a CUDA graph. Then what casting
once per step would save a step of A micro-batches: (A - 1) x that time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cs336_basics.model.transformer import PRESETS, Block, OutputHead  # noqa: E402
from kernel_swiglu_fp8 import time_us  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="seed,1b")
    p.add_argument("--accumulation", type=int, default=8, help="micro-batches a step, for the saving per step")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("weight_cast_cost.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark times GPU kernels: it needs a CUDA GPU")
    rows = []
    for preset in args.presets.split(","):
        cfg = PRESETS[preset]
        with torch.device("cuda"):  # the model's own layers: one block's linear weights, and the head's
            block = [m.weight.detach() for m in Block(cfg).modules() if isinstance(m, torch.nn.Linear)]
            head = OutputHead(cfg).proj.weight.detach()
        cast = torch.compile(lambda ws: [w.to(torch.bfloat16) for w in ws], fullgraph=True)
        block_us = time_us(lambda: cast(block), args.iters)
        head_us = time_us(lambda: cast([head]), args.iters)
        per_micro_batch_ms = (block_us * cfg.n_layers + head_us) / 1e3
        params = sum(w.numel() for w in block) * cfg.n_layers + head.numel()
        row = dict(preset=preset, layers=cfg.n_layers, weights=params, block_us=round(block_us, 1),
                   head_us=round(head_us, 1), per_micro_batch_ms=round(per_micro_batch_ms, 3),
                   bandwidth_tb_s=round(params * 6 / (per_micro_batch_ms * 1e-3) / 1e12, 2),
                   saved_per_step_ms=round((args.accumulation - 1) * per_micro_batch_ms, 3), accumulation=args.accumulation)
        rows.append(row)
        print(f"{preset}: {params / 1e6:.0f}M weights, one block {block_us:.1f} us x {cfg.n_layers} + head {head_us:.1f} us "
              f"= {per_micro_batch_ms:.3f} ms a micro-batch ({row['bandwidth_tb_s']} TB/s); once per step of "
              f"{args.accumulation} micro-batches would save {row['saved_per_step_ms']:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(rows=rows, gpu=torch.cuda.get_device_name(), torch=torch.__version__), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
