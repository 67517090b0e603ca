"""One benchmark configuration, run in its own process by the benchmark matrix (cli/bench.py): the model built
and transformed as training builds it (resolve_config + prepare_model) and stepped by the Trainer on random
tokens; the warm-up (compilation) timed apart, then N optimizer steps timed with CUDA events (the host clock
on a CPU), reported as their median and mean.

    python -m cs336_basics.cli.bench_run '<json spec>'   ->  prints 'RESULT {json}'

The spec: {"name": row name, "config": Config.to_dict(), "steps": timed steps, "inductor": {KEY: VALUE}}.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cs336_basics.config import Config
from cs336_basics.data.batches import RandomWindows
from cs336_basics.perf.flops import mfu, roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.precision.converters import Bf16WeightCacheConverter
from cs336_basics.training.attention import AttentionKernels, attention_context, probe_backend
from cs336_basics.training.garbage import ScheduledGC
from cs336_basics.training.prepare import prepare_model, resolve_config
from cs336_basics.training.trainer import Trainer

LR = 3e-4  # a constant learning rate: the bench times steps, it does not train to a schedule


@dataclass
class BenchSpec:
    name: str
    config: dict[str, Any]  # Config.to_dict(): model, training, float8 and the device (run.device)
    steps: int = 10
    # torch._inductor.config overrides, e.g. {"coordinate_descent_tuning": True}
    inductor: dict[str, Any] = field(default_factory=dict)


def device_of(config: Config) -> torch.device:
    name = config.run.device
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def run(spec: BenchSpec) -> dict[str, Any]:
    config = Config.from_dict(spec.config)
    device = device_of(config)
    config = resolve_config(config, device)
    train, cfg = config.train, config.model
    torch.manual_seed(train.seed)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731 (stdout carries the RESULT line)
    prepared = prepare_model(config, device, log=log)
    report = prepared.fp8_report
    T = cfg.context_length
    tokens_per_step = train.batch_size * train.gradient_accumulation_steps * T
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=max(1 << 22, 4 * tokens_per_step),
                                               dtype=np.int64).astype(np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(prepared, config, RandomWindows(tokens, train.batch_size, T, train.seed), tokens[: 2 * T],
                          device, Path(tmp), log=log)
        with (attention_context(train.use_flash_attn, train.fused_attention), torch._inductor.config.patch(spec.inductor),
              ScheduledGC(train.gc_interval) as collector):
            steps_done = itertools.count(1)

            def step() -> None:  # what one step of Trainer.train() does, without logging
                trainer.train_step(LR)
                collector.step_done(next(steps_done))

            step_seconds, warmup = time_steps(step, device, spec.steps, warmup_steps=3 if train.compile_model else 2)
            with AttentionKernels(device) as kernels:  # one more step, untimed: the attention kernels that ran
                last_loss = float(trainer.train_step(LR)[0])
        # A broken computation (NaNs) can run faster than the real one: its times must not become a row.
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"the loss is {last_loss} after the timed steps: this configuration's times "
                                     "measure a broken computation, not a step")
        backend = kernels.ran or probe_backend(train.use_flash_attn, train.fused_attention, cfg.head_dim, device)
    step = statistics.median(step_seconds)
    step_mean = sum(step_seconds) / len(step_seconds)
    tokens_per_second = tokens_per_step / step
    fp8 = config.fp8
    params = trainer.n_params
    result: dict[str, Any] = dict(
        name=spec.name, precision=f"fp8-{fp8.recipe}" if fp8.enabled else "bf16", compiled=train.compile_model,
        compile_mode=prepared.compile_mode, tune_kernels=train.tune_kernels,
        fp8_head=prepared.fp8_head, fp8_fused_swiglu=bool(report and report.fused_swiglu),
        fused_swiglu_kernels_checked=report.kernels_checked if report else "",
        fp8_kernel_casts=report.kernel_casts if report else "none",
        fp8_fast_accum=bool(report and report.fast_accum), fp8_merge_w13=bool(report and report.merge_w13),
        residual_dtype=prepared.residual_dtype, fp8_weight_cache=fp8.enabled and fp8.weight_cache,
        bf16_weight_cache=any(isinstance(c, Bf16WeightCacheConverter) for c in prepared.converters),
        flash=train.use_flash_attn, fused_attention=train.fused_attention, checkpointing=train.gradient_checkpointing,
        attention_backend=backend, batch_size=train.batch_size, gradient_accumulation_steps=train.gradient_accumulation_steps,
        seq=T, params=params, fp8_layers=len(report.converted) if report else 0,
        step_ms=round(step * 1e3, 2), step_ms_spread=[round(min(step_seconds) * 1e3, 2), round(max(step_seconds) * 1e3, 2)],
        step_ms_mean=round(step_mean * 1e3, 2), step_ms_each=[round(t * 1e3, 2) for t in step_seconds],
        tokens_per_second=round(tokens_per_second), warmup_seconds=round(warmup, 1),
        model_tflops=round(tokens_per_second * token_flops(cfg).model / 1e12, 1), loss=round(last_loss, 3),
    )
    peaks = current_device_peaks(device)
    if peaks:
        result["mfu_bf16_peak"] = round(mfu(tokens_per_second, cfg, peaks), 4)
        result["roofline_tokens_per_second"] = round(roofline_tokens_per_second(
            cfg, peaks, prepared.fp8, tokens_per_step, params, fp8_head=prepared.fp8_head))
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def time_steps(step: Callable[[], Any], device: torch.device, steps: int, warmup_steps: int) -> tuple[list[float], float]:
    """Seconds of each of `steps` calls of `step` after `warmup_steps` untimed ones, and the warm-up's seconds.
    On CUDA an event is recorded between consecutive steps and the host synchronizes only at the end, so
    the CPU runs ahead as it does in training and the reference."""
    cuda = device.type == "cuda"
    if cuda:  # the peak spans the warm-up too: CUDA graphs take their memory pool while they are recorded there
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(warmup_steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    warmup = time.perf_counter() - start
    if not cuda:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return times, warmup
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for i in range(steps):
        step()
        events[i + 1].record()
    torch.cuda.synchronize(device)
    return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)], warmup


def main() -> int:
    spec = BenchSpec(**json.loads(sys.argv[1]))
    result = run(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
