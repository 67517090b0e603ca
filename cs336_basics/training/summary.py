"""The configuration summary printed before training: what will run, a verdict on it, and the roofline
upper bound on tokens/s computed for the detected device (never a typed-in figure)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cs336_basics.model.transformer import ModelConfig
from cs336_basics.perf.flops import roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import DevicePeaks, supports_fp8
from cs336_basics.perf.measured import QUALITY_TOLERANCE, fp8_gain_note, fp8_quality_note, measured_factor
from cs336_basics.training.transforms import CUDA_GRAPH_MODES


@dataclass(frozen=True)
class RunShape:
    device: torch.device
    fp8: bool
    fp8_recipe: str  # the recipe fp8 uses, or in a bf16 run would use with --use_fp8
    fp8_emulate: bool
    compiled: bool
    compile_mode: str
    attention_backend: str
    gradient_checkpointing: bool
    batch_size: int
    accumulation: int
    context_length: int
    world_size: int = 1
    fp8_head: bool = False  # the output head + loss in float8 too
    fp8_compile_mode: str = "default"  # the compile mode fp8 uses, or in a bf16 run would use with --use_fp8
    tune_kernels: bool = False
    fp8_fused_swiglu: bool = False  # SwiGLU blocks as one function (swiglu_fp8.py); in a bf16 run: would be with --use_fp8
    residual_dtype: str = "fp32"  # the residual stream's dtype while training (--residual_dtype)
    warmup_steps: int | None = None  # the learning rate's warm-up (--warmup_steps)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.accumulation * self.context_length * self.world_size


def fp8_eager_factor(run: RunShape) -> str:
    """The committed fp8-eager measurement (made with TorchAO tensorwise), saying so for another recipe."""
    factor = measured_factor("fp8_eager_vs_bf16_compile")
    if factor is None:
        return "no committed measurement yet"
    return factor if run.fp8_recipe == "tensorwise" else f"{factor} with TorchAO tensorwise; {run.fp8_recipe} not measured eager"


def measured_near(run: RunShape, dim: int | None) -> tuple | None:
    """The arguments (width, recipe, compile mode, micro-batch, tuned kernels, fused SwiGLU, residual stream) under
    which committed fp8 measurements are looked up for the run (in a bf16 run: for the fp8 --use_fp8 would pick);
    None on CPU, emulated, eager or without a width: nothing measured applies."""
    if dim is None or run.device.type != "cuda" or run.fp8_emulate or not run.compiled:
        return None
    return (dim, run.fp8_recipe, run.fp8_compile_mode, run.batch_size, run.tune_kernels, run.fp8_fused_swiglu,
            run.residual_dtype)


def fp8_gain(run: RunShape, dim: int | None) -> tuple[str, bool] | None:
    """What fp8 measured against bf16 at the nearest measured width, and whether it was slower in training there."""
    return fp8_gain_note(*key) if (key := measured_near(run, dim)) else None


def fp8_quality(run: RunShape, dim: int | None) -> tuple[str, bool] | None:
    """fp8's final validation loss against bf16's in the measured training pairs nearest the run (by warm-up), and
    whether one with a warm-up at least as long as the run's ended more than QUALITY_TOLERANCE above bf16's."""
    return fp8_quality_note(*key, run.warmup_steps) if (key := measured_near(run, dim)) else None


def slower_in_training(gain: tuple[str, bool] | None, quote: bool, run: RunShape) -> str | None:
    if gain is None or not gain[1]:
        return None
    where = f"({gain[0]})" if quote else "(the 'fp8 vs bf16' line above)"
    remedy = "" if run.compile_mode in CUDA_GRAPH_MODES else ", or use CUDA graphs (--compile_mode auto or reduce-overhead)"
    return (f"FP8 measured SLOWER than BF16 in training at about this size {where}: the float8 casts and the "
            f"host's launch work outweigh the faster matmuls at this width (benchmarks/NOTES.md 25); time a bf16 run "
            f"against yours{remedy}")


def verdict(run: RunShape, dim: int | None = None) -> tuple[str, list[str]]:
    """('OPTIMAL CONFIGURATION: ...' or 'SUBOPTIMAL CONFIGURATION', reasons). `dim`, the model width, brings in
    the fp8 / bf16 gains measured nearest to it."""
    if run.device.type != "cuda":
        return "CPU RUN", ["no CUDA device: fine for small models and tests; timings are CPU timings"]
    issues = []
    gain = fp8_gain(run, dim)
    if run.fp8 and not run.compiled:
        issues.append("FP8 without --compile_model runs SLOWER than BF16 (unfused casts and scale reductions); "
                      f"measured: {fp8_eager_factor(run)}")
    if run.fp8 and (slower := slower_in_training(gain, quote=False, run=run)):
        issues.append(slower)
    if not run.fp8 and supports_fp8(run.device) and not (gain and gain[1]):
        issues.append("this GPU has fp8 tensor cores: add --use_fp8 (with --compile_model)")
    if not run.compiled:
        issues.append("no --compile_model: every elementwise op is a separate kernel")
    if run.attention_backend == "MATH":
        issues.append("plain math attention materialises the T x T scores: add --use_flash_attn")
    if run.gradient_checkpointing:
        factor = measured_factor("activation_checkpointing_cost_fp8" if run.fp8 else "activation_checkpointing_cost")
        issues.append("gradient checkpointing recomputes every block's forward pass (use --no_gradient_checkpointing "
                      f"when memory allows); measured: {factor or 'no committed measurement yet'}")
    if not issues:
        mode = "FP8" if run.fp8 else "BF16"
        return f"OPTIMAL CONFIGURATION: {mode} + Compilation", []
    return "SUBOPTIMAL CONFIGURATION", issues


def warnings_for(run: RunShape, dim: int | None = None) -> list[str]:
    """The configurations that silently cost a lot: said on stderr as well as in the summary."""
    out = []
    if run.fp8 and (slower := slower_in_training(fp8_gain(run, dim), quote=True, run=run)):
        out.append(f"WARNING: {slower}.")
    if run.fp8 and (quality := fp8_quality(run, dim)) and quality[1]:
        out.append(f"WARNING: FP8 with a {run.warmup_steps}-step warm-up: measured runs at about this size with a "
                   f"warm-up at least as long ended more than {QUALITY_TOLERANCE:.0%} above bf16's validation loss "
                   f"({quality[0]}); the early steps decide it (benchmarks/NOTES.md 82-83, 101, 104). A longer "
                   "--warmup_steps is the remedy measured; --fp8_start_step (the first steps in bf16) was not.")
    if run.fp8 and not run.compiled and not run.fp8_emulate:
        out.append("WARNING: FP8 without --compile_model runs SLOWER than BF16 (the float8 casts are not fused); "
                   f"measured: {fp8_eager_factor(run)}. Add --compile_model.")
    if run.fp8 and run.gradient_checkpointing and run.device.type == "cuda":
        factor = measured_factor("activation_checkpointing_cost_fp8")
        out.append("WARNING: gradient checkpointing is on with FP8: every block's forward (and its float8 casts) "
                   f"runs twice; measured: {factor or 'no committed measurement yet'}. "
                   "Add --no_gradient_checkpointing if memory allows.")
    return out


def compile_line(run: RunShape) -> str:
    if not run.compiled:
        return "off (eager)"
    graphs = ", replayed as CUDA graphs" if run.compile_mode in CUDA_GRAPH_MODES else ""
    tuned = ", kernels tuned (--tune_kernels: slower compilation)" if run.tune_kernels else ""
    return f"{run.compile_mode} (per block + loss{graphs}{tuned})"


def format_summary(cfg: ModelConfig, n_params: int, n_params_no_emb: int, run: RunShape,
                   peaks: DevicePeaks | None, fp8_converted: str | None = None) -> str:
    name = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else run.device.type.upper()
    precision = ("FP8 (" + run.fp8_recipe + (", emulated" if run.fp8_emulate else "") + ") + bf16 autocast"
                 if run.fp8 else ("bf16 autocast over fp32 weights" if run.device.type == "cuda" else "fp32"))
    lines = [
        "=" * 78,
        "Configuration",
        f"  device            {name}",
        f"  model             {n_params / 1e6:.1f}M parameters ({n_params_no_emb / 1e6:.1f}M without embedding): "
        f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, SwiGLU {cfg.intermediate_size}, vocab {cfg.vocab_size}",
        f"  precision         {precision}",
        f"  compile           {compile_line(run)}",
        f"  attention         {run.attention_backend}"
        + (" (a probe's; the kernels that ran are named after warm-up)" if run.device.type == "cuda" else ""),
        f"  grad checkpoint   {'on (per block)' if run.gradient_checkpointing else 'off'}",
        f"  residual stream   {run.residual_dtype}" + (" while training (evaluation float32)" if run.residual_dtype == "bf16"
                                                      and run.world_size == 1 else ""),
        f"  tokens per step   {run.batch_size} micro-batch x {run.accumulation} accumulation"
        + (f" x {run.world_size} ranks" if run.world_size > 1 else "")
        + f" x {run.context_length} context = {run.tokens_per_step:,}",
        f"  FLOPs per token   {token_flops(cfg).model / 1e9:.2f} GFLOP (6N + 12LdT, training)",
    ]
    if fp8_converted:
        lines.append("  " + fp8_converted.replace("\n", "\n  "))
    if gain := fp8_gain(run, cfg.dim):
        lines.append(f"  fp8 vs bf16       {gain[0]}")
    if quality := fp8_quality(run, cfg.dim):
        lines.append(f"  fp8 quality       {quality[0]}")
    head, reasons = verdict(run, cfg.dim)
    lines.append(head)
    lines += [f"  - {r}" for r in reasons]
    if peaks:
        real_fp8 = run.fp8 and not run.fp8_emulate
        bound = roofline_tokens_per_second(cfg, peaks, real_fp8, run.tokens_per_step, n_params,
                                           fp8_head=real_fp8 and run.fp8_head)
        peak_note = f"{peaks.fp8_tflops:.0f} fp8 / " if (run.fp8 and peaks.fp8_tflops) else ""
        lines.append(f"Expected: at most {bound * run.world_size:,.0f} tokens/sec (upper bound: roofline of {peaks.name} "
                     f"datasheet peaks, {peak_note}{peaks.bf16_tflops:.0f} bf16 TFLOP/s); measured figures follow warm-up")
    elif run.device.type == "cuda":
        lines.append("Expected: no datasheet peaks known for this GPU, so no roofline bound or MFU")
    lines.append("=" * 78)
    return "\n".join(lines)
