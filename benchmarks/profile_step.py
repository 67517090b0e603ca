"""Where one training step's time goes: torch.profiler over a few steps of our Trainer, kernels grouped by
name, the top rows printed and a Chrome trace written. For issue 5's time breakdown.

    python benchmarks/profile_step.py --preset seed --precision fp8-tensorwise --out $OUT/profile
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.model.transformer import PRESETS  # noqa: E402
from cs336_basics.perf.bench_run import BenchSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="seed" if torch.cuda.is_available() else "test", choices=sorted(PRESETS))
    p.add_argument("--batch_size", type=int, default=16 if torch.cuda.is_available() else 4)
    p.add_argument("--precision", default="bf16", help="bf16 or fp8-<recipe>")
    p.add_argument("--eager", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("profile"))
    args = p.parse_args()
    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.training.attention import attention_context
    from cs336_basics.training.setup import build_model
    from cs336_basics.training.trainer import TrainConfig, Trainer
    import numpy as np

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    spec = BenchSpec(name="profile", model=asdict(PRESETS[args.preset]), batch_size=args.batch_size,
                     precision=args.precision, compiled=not args.eager, device=device.type)
    cfg = PRESETS[args.preset]
    model, _ = build_model(cfg, device, spec.fp8)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=1 << 22).astype(np.uint32)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, TrainConfig(batch_size=args.batch_size, compile_model=spec.compiled, gradient_checkpointing=False,
                                         use_flash_attn=True), RandomWindows(tokens, args.batch_size, cfg.context_length, 0),
                      tokens[: 4 * cfg.context_length], device, args.out, log=lambda s: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with attention_context(trainer.attention_backends):
        for _ in range(3):  # compile and warm up outside the trace
            trainer.train_step(3e-4)
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                trainer.train_step(3e-4)
            if cuda:
                torch.cuda.synchronize()
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    print(table)
    (args.out / "top_ops.txt").write_text(table)
    prof.export_chrome_trace(str(args.out / "trace.json"))
    (args.out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))


if __name__ == "__main__":
    main()
