"""The configuration summary printed before training: what will run, a verdict on it, and the roofline upper
bound on tokens/s computed from the detected device's datasheet and the model (never a typed-in figure).
The run's own measurements follow warm-up (Trainer); nothing here quotes earlier runs."""

from __future__ import annotations

import torch

from cs336_basics.config import Config
from cs336_basics.perf.flops import roofline_tokens_per_second, token_flops
from cs336_basics.perf.hardware import DevicePeaks, supports_fp8
from cs336_basics.training.prepare import PreparedModel
from cs336_basics.training.transforms import CUDA_GRAPH_MODES


def tokens_per_step(config: Config, world_size: int) -> int:
    t = config.train
    return t.batch_size * t.gradient_accumulation_steps * config.model.context_length * world_size


def verdict(config: Config, device: torch.device, attention_backend: str) -> tuple[str, list[str]]:
    """('OPTIMAL CONFIGURATION: ...' or 'SUBOPTIMAL CONFIGURATION', reasons)."""
    if device.type != "cuda":
        return "CPU RUN", ["no CUDA device: fine for small models and tests; timings are CPU timings"]
    train, fp8 = config.train, config.fp8.enabled
    issues = []
    if fp8 and not train.compile_model:
        issues.append("FP8 without --compile_model runs SLOWER than BF16: its casts and scale reductions are not fused")
    if not fp8 and supports_fp8(device):
        issues.append("this GPU has fp8 tensor cores: add --use_fp8 (with --compile_model)")
    if not train.compile_model:
        issues.append("no --compile_model: every elementwise op is a separate kernel")
    if attention_backend == "MATH":
        issues.append("plain math attention materialises the T x T scores: add --use_flash_attn")
    if train.gradient_checkpointing:
        issues.append("gradient checkpointing recomputes every block's forward pass (use --no_gradient_checkpointing "
                      "when memory allows)")
    if not issues:
        return f"OPTIMAL CONFIGURATION: {'FP8' if fp8 else 'BF16'} + Compilation", []
    return "SUBOPTIMAL CONFIGURATION", issues


def warnings_for(config: Config, device: torch.device) -> list[str]:
    """The configurations that silently cost a lot: said on stderr as well as in the summary."""
    fp8, train = config.fp8, config.train
    out = []
    if fp8.enabled and not train.compile_model and not fp8.emulate:
        out.append("WARNING: FP8 without --compile_model runs SLOWER than BF16 (the float8 casts are not fused). "
                   "Add --compile_model.")
    if fp8.enabled and train.gradient_checkpointing and device.type == "cuda":
        out.append("WARNING: gradient checkpointing is on with FP8: every block's forward (and its float8 casts) runs "
                   "twice. Add --no_gradient_checkpointing if memory allows.")
    return out


def compile_line(config: Config, compile_mode: str | None) -> str:
    if compile_mode is None:
        return "off (eager)"
    graphs = ", replayed as CUDA graphs" if compile_mode in CUDA_GRAPH_MODES else ""
    tuned = ", kernels tuned (slower compilation)" if config.train.tune_kernels else ""
    return f"{compile_mode} (per block + loss{graphs}{tuned})"


def format_summary(config: Config, prepared: PreparedModel, device: torch.device, world_size: int,
                   attention_backend: str, peaks: DevicePeaks | None) -> str:
    cfg, fp8 = config.model, config.fp8
    model = prepared.eval_model  # the plain view: parameter counts unaffected by wrappers or sharding
    n_params, n_params_no_emb = model.num_params(), model.num_params(include_embedding=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    precision = ("FP8 (" + fp8.recipe + (", emulated" if fp8.emulate else "") + ") + bf16 autocast"
                 if fp8.enabled else ("bf16 autocast over fp32 weights" if device.type == "cuda" else "fp32"))
    train = config.train
    step_tokens = tokens_per_step(config, world_size)
    lines = [
        "=" * 78,
        "Configuration",
        f"  device            {name}",
        f"  model             {n_params / 1e6:.1f}M parameters ({n_params_no_emb / 1e6:.1f}M without embedding): "
        f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, SwiGLU {cfg.intermediate_size}, vocab {cfg.vocab_size}",
        f"  precision         {precision}",
        f"  compile           {compile_line(config, prepared.compile_mode)}",
        f"  attention         {attention_backend}"
        + (" (a probe's; the kernels that ran are named after warm-up)" if device.type == "cuda" else ""),
        f"  grad checkpoint   {'on (per block)' if train.gradient_checkpointing else 'off'}",
        f"  residual stream   {prepared.residual_dtype}"
        + (" while training (evaluation float32)" if prepared.residual_dtype == "bf16" and world_size == 1 else ""),
        f"  tokens per step   {train.batch_size} micro-batch x {train.gradient_accumulation_steps} accumulation"
        + (f" x {world_size} ranks" if world_size > 1 else "")
        + f" x {cfg.context_length} context = {step_tokens:,}",
        f"  FLOPs per token   {token_flops(cfg).model / 1e9:.2f} GFLOP (6N + 12LdT, training)",
    ]
    head, reasons = verdict(config, device, attention_backend)
    lines.append(head)
    lines += [f"  - {r}" for r in reasons]
    if peaks:
        real_fp8 = fp8.enabled and not fp8.emulate
        bound = roofline_tokens_per_second(cfg, peaks, real_fp8, step_tokens // world_size, n_params,
                                           fp8_head=real_fp8 and prepared.fp8_head)
        peak_note = f"{peaks.fp8_tflops:.0f} fp8 / " if (fp8.enabled and peaks.fp8_tflops) else ""
        lines.append(f"Expected: at most {bound * world_size:,.0f} tokens/sec (upper bound: roofline of {peaks.name} "
                     f"datasheet peaks, {peak_note}{peaks.bf16_tflops:.0f} bf16 TFLOP/s); measured figures follow warm-up")
    elif device.type == "cuda":
        lines.append("Expected: no datasheet peaks known for this GPU, so no roofline bound or MFU")
    lines.append("=" * 78)
    return "\n".join(lines)
