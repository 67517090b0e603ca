"""FLOPs of one training token and the roofline bound on tokens/s that follows from a device's peaks.

Conventions (the same as perf/stock_torchao.py's, so our figures and the yardstick's compare):
- model FLOPs/token = 6 * (matmul parameters, head included, embedding excluded) + 12 * L * d * T,
  i.e. PaLM's formula, whose attention term counts the full (non-causal) T x T work;
- the roofline instead counts the causal attention a fused kernel really does (half of that term), the
  blocks' Linear layers at the fp8 peak when they run in fp8, the head at the fp8 peak when it runs in fp8
  too (precision/fp8_head.py), and attention at the bf16 peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from cs336_basics.model.transformer import ModelConfig
from cs336_basics.perf.hardware import DevicePeaks


@dataclass(frozen=True)
class TokenFlops:
    """Training (forward + backward) FLOPs per token, by where they are spent."""

    blocks_linear: float  # the transformer blocks' nn.Linear layers (what float8 converts)
    head: float  # the output projection
    attention_full: float  # QK^T and AV, counted without the causal mask (PaLM convention)

    @property
    def model(self) -> float:
        return self.blocks_linear + self.head + self.attention_full


def token_flops(cfg: ModelConfig, seq_len: int | None = None) -> TokenFlops:
    T = seq_len or cfg.context_length
    d, f, L = cfg.dim, cfg.intermediate_size, cfg.n_layers
    block_params = 4 * d * d + 3 * d * f  # qkv (3d^2) + out (d^2) + w1, w3, w2 (3df)
    return TokenFlops(
        blocks_linear=6.0 * L * block_params,
        head=6.0 * d * cfg.vocab_size,
        attention_full=12.0 * L * d * T,
    )


def compute_seconds_per_token(cfg: ModelConfig, peaks: DevicePeaks, fp8: bool, seq_len: int | None = None,
                              fp8_head: bool = False) -> float:
    """Time of one token's training FLOPs at datasheet peak (blocks' Linears, and the head with fp8_head, at
    the fp8 peak under fp8)."""
    flops = token_flops(cfg, seq_len)
    linear_peak = peaks.fp8_tflops if (fp8 and peaks.fp8_tflops) else peaks.bf16_tflops
    head_peak = linear_peak if fp8_head else peaks.bf16_tflops
    return (flops.blocks_linear / (linear_peak * 1e12) + flops.head / (head_peak * 1e12)
            + flops.attention_full / 2 / (peaks.bf16_tflops * 1e12))


def optimizer_step_seconds(n_params: int, peaks: DevicePeaks) -> float:
    """Lower bound of one AdamW step over fp32 weights: read p, g, m, v and write p, m, v (28 bytes/param)."""
    return 28.0 * n_params / (peaks.memory_tbps * 1e12)


def roofline_tokens_per_second(
    cfg: ModelConfig, peaks: DevicePeaks, fp8: bool, tokens_per_step: int, n_params: int, seq_len: int | None = None,
    fp8_head: bool = False,
) -> float:
    """Upper bound on training tokens/s: a step's compute at peak plus its optimizer's memory traffic."""
    compute = tokens_per_step * compute_seconds_per_token(cfg, peaks, fp8, seq_len, fp8_head)
    return tokens_per_step / (compute + optimizer_step_seconds(n_params, peaks))


def mfu(tokens_per_second: float, cfg: ModelConfig, peaks: DevicePeaks, seq_len: int | None = None) -> float:
    """Model FLOPs utilisation against the dense bf16 peak (labelled bf16-peak MFU under FP8)."""
    return tokens_per_second * token_flops(cfg, seq_len).model / (peaks.bf16_tflops * 1e12)
