"""Where our step differs from the stock-TorchAO yardstick (issue 3): the same model and precision timed
in the yardstick's bare loop and in the Trainer's step, with the Trainer's extras removed one at a time.
Run each variant in its own process, in the same device call as ../shared/reference/anchor_bench.py.

    python benchmarks/step_overhead.py --preset seed --precision fp8-tensorwise --variant bare

Variants:
  bare            our model, compiled per block, in the yardstick's loop: one fused AdamW param group,
                  one fixed batch already on the GPU, no clipping, no LR schedule
  trainer         Trainer.train_step as training runs it (clipping at 1.0, two param groups, a fresh
                  batch copied from pinned host memory each step)
  trainer-noclip  the same with --grad_clip 0 (the gradient norm is still computed, for logging)
  trainer-nodata  the Trainer's step fed the bare loop's fixed on-GPU batch
--rope swaps the model's rotary embedding for an A/B of the step's cost (issue 3, 1B fp8; call 13 ran it when
the model's own form was half-bf16, so its "half" rows are half-bf16):
  half             the model's own: rotate-half pairs (x[i], x[i + D/2]) in float32, returned in x's dtype
  half-bf16        the same pairs with the cos/sin tables cast to bf16 (the model's form before call 13)
  half-fp32        the same pairs in float32, q and k left in float32 for SDPA's autocast to cast
  interleaved-fp32 the yardstick's form: pairs (x[2i], x[2i+1]), float32 cos/sin, stack + flatten
Prints one JSON line (median and mean step time; the yardstick reports the mean).
"""

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.data.batches import RandomWindows  # noqa: E402
from cs336_basics.model import transformer  # noqa: E402
from cs336_basics.model.transformer import PRESETS  # noqa: E402
from cs336_basics.perf.bench_run import BenchSpec, time_steps  # noqa: E402
from cs336_basics.training.attention import FUSED_ORDERS, AttentionKernels, attention_context  # noqa: E402
from cs336_basics.training.setup import build_model  # noqa: E402
from cs336_basics.training.trainer import TrainConfig, Trainer  # noqa: E402
from cs336_basics.training.transforms import compile_model  # noqa: E402

VARIANTS = ("bare", "trainer", "trainer-noclip", "trainer-nodata")


def rope_half_bf16(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_half_fp32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_interleaved_fp32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


ROPES = {"half": transformer.apply_rope, "half-bf16": rope_half_bf16, "half-fp32": rope_half_fp32,
         "interleaved-fp32": rope_interleaved_fp32}


class FixedBatch:
    """One batch on the device, returned every step (what the yardstick trains on)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def next_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="seed" if torch.cuda.is_available() else "test", choices=sorted(PRESETS))
    p.add_argument("--batch_size", type=int)
    p.add_argument("--precision", default="bf16", help="bf16 or fp8-<recipe>")
    p.add_argument("--variant", default="trainer", choices=VARIANTS)
    p.add_argument("--fused_attention", default="auto", choices=sorted(FUSED_ORDERS))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rope", default="half", choices=sorted(ROPES))
    args = p.parse_args()
    transformer.apply_rope = ROPES[args.rope]  # Attention.forward looks the function up at call time
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = PRESETS[args.preset]
    batch = args.batch_size or (8 if args.preset == "1b" else 16 if cuda else 2)
    spec = BenchSpec(name=args.variant, model=asdict(cfg), batch_size=batch, precision=args.precision, device=device.type)
    torch.manual_seed(0)
    model, _ = build_model(cfg, device, spec.fp8, log=lambda s: None)
    x, y = (torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), device=device) for _ in range(2))
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    if args.variant == "bare":
        compile_model(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)

        def step() -> torch.Tensor:
            with autocast:
                loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
    else:
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=1 << 22).astype(np.uint32)
        data = FixedBatch(x, y) if args.variant == "trainer-nodata" else RandomWindows(tokens, batch, cfg.context_length, 0)
        train_cfg = TrainConfig(batch_size=batch, compile_model=True, gradient_checkpointing=False, use_flash_attn=True,
                                fused_attention=args.fused_attention, grad_clip=0.0 if args.variant == "trainer-noclip" else 1.0)
        trainer = Trainer(model, train_cfg, data, tokens[: 4 * cfg.context_length], device, Path("/tmp/step_overhead"),
                          log=lambda s: None)

        def step() -> torch.Tensor:
            return trainer.train_step(3e-4)[0]

    with attention_context(True, args.fused_attention):
        seconds, warmup = time_steps(step, device, args.steps, warmup_steps=3)
        with AttentionKernels(device) as kernels:
            step()
    median = statistics.median(seconds)
    print(json.dumps(dict(preset=args.preset, precision=args.precision, variant=args.variant,
                          rope=args.rope, fused_attention=args.fused_attention, attention_ran=kernels.ran, batch_size=batch,
                          step_ms=round(median * 1e3, 2), mean_step_ms=round(statistics.mean(seconds) * 1e3, 2),
                          tokens_per_second=round(batch * cfg.context_length / median), warmup_s=round(warmup, 1),
                          peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)), flush=True)


if __name__ == "__main__":
    main()
