"""How much memory a training run will take, estimated from its config before anything is allocated, and the
check that refuses a run that cannot fit (rather than letting the kernel kill it a minute later).

The estimate is a generous upper bound, per process:
- state: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes a parameter), plus on a GPU the
  bf16 / float8 copies of the weights (2 bytes); under FSDP all of it is sharded over the processes, and
  run.fsdp_gather_once adds the whole gathered weights and float32 gradients it keeps through a step;
- activations kept for backward, per token and block: about 12 x dim + 4 x intermediate_size values (the
  norms, q, k, v, the attention output, the SwiGLU's three products), in bf16 on a GPU and float32 on a CPU;
  with gradient checkpointing only each block's input is kept, plus one block's worth while it is recomputed;
  plain math attention adds the T x T scores of every head;
- the logits of a micro-batch (B x T x vocab) with their float32 copy for the cross-entropy and its gradient.

Measured peaks of the seed and 1B recipes on an H100 lie 10-30% below this estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cs336_basics.config import Config
from cs336_basics.errors import UserError
from cs336_basics.training.distributed import SHARDED

GiB = 2**30


def parameter_count(config: Config) -> int:
    m = config.model
    d, f, L, V = m.dim, m.intermediate_size, m.n_layers, m.vocab_size
    blocks = L * (4 * d * d + 3 * d * f + 2 * d)  # q, k, v, out; w1, w3, w2; two RMSNorm gains
    return blocks + V * d * (1 if m.tie_embeddings else 2) + d  # embedding, head, final norm


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    state_bytes: int  # weights, gradients, optimizer moments and weight copies (this process's share)
    activation_bytes: int  # what the blocks keep for backward in one micro-batch
    logits_bytes: int  # the head's logits, their float32 copy and gradient in one micro-batch

    @property
    def total(self) -> int:
        return self.state_bytes + self.activation_bytes + self.logits_bytes

    def breakdown(self) -> str:
        return (f"{_count(self.params)} parameters: {_size(self.state_bytes)} of weights, gradients and AdamW state, "
                f"{_size(self.activation_bytes)} of activations, {_size(self.logits_bytes)} of logits")


def _count(n: int) -> str:
    return f"{n / 1e9:,.1f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n / 1e3:,.0f}K"


def _size(n: int) -> str:
    return f"{n / GiB:,.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:,.1f} MiB"


def estimate_training_memory(config: Config, device_type: str, shards: int = 1) -> MemoryEstimate:
    """The memory one process of a training run of `config` on a `device_type` device takes (an upper bound);
    `shards`: the processes FSDP spreads the weights, gradients and optimizer state over (1: whole on each)."""
    m, t = config.model, config.train
    d, f, L, V, T, B, h = m.dim, m.intermediate_size, m.n_layers, m.vocab_size, m.context_length, t.batch_size, m.n_heads
    gpu = device_type == "cuda"
    act = 2 if gpu else 4  # bytes of an activation: bf16 under autocast on a GPU, float32 on a CPU
    params = parameter_count(config)
    state = params * (16 + (2 if gpu else 0)) // max(shards, 1)
    if config.run.fsdp_gather_once and config.run.parallelism in SHARDED:
        state += params * ((2 if gpu else 4) + 4)
    tokens = B * T
    block = tokens * (12 * d + 4 * f) * act  # one block's saved activations
    if not t.use_flash_attn:  # the math path materialises every head's T x T scores and probabilities
        block += B * h * T * T * 3 * act
    kept = L * tokens * d * act + block if t.gradient_checkpointing else L * block
    rope = 4 * T * (d // max(h, 1)) * 4
    logits = tokens * V * (act + 4 + 4)
    return MemoryEstimate(params, state, kept + rope + tokens * d * 4 * 2, logits)


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes free for a run on `device`, where they were read); (None, ...) when it cannot be told."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None, "GPU memory"
        return free, f"free on {torch.cuda.get_device_name(device)} ({device})"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available host memory (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.virtual_memory().available, "available host memory"
    except ImportError:
        return None, "host memory"


def memory_fix(config: Config, estimate: MemoryEstimate, device_type: str) -> str:
    t = config.train
    if estimate.state_bytes >= max(estimate.activation_bytes, estimate.logits_bytes):
        fix = "use a smaller model (lower --vocab_size, --dim, --n_layers or --intermediate_size)"
        if device_type == "cuda":
            fix += ", or shard it over several GPUs with torchrun"
        return fix
    fix = ("lower --batch_size (raise --gradient_accumulation_steps to keep the tokens per step) or "
           "--context_length")
    if estimate.logits_bytes > estimate.activation_bytes:
        return fix + ", or a smaller --vocab_size"
    if not t.gradient_checkpointing:
        fix += ", or turn on --gradient_checkpointing"
    if not t.use_flash_attn:
        fix += ", or add --use_flash_attn (no T x T scores)"
    return fix


def check_training_memory(config: Config, device: torch.device, shards: int = 1,
                          processes_here: int = 1) -> MemoryEstimate:
    """Refuse a run whose estimate exceeds the memory this device has free (on a CPU: the host's available
    memory shared by `processes_here` processes). run.check_memory = false starts it anyway."""
    estimate = estimate_training_memory(config, device.type, shards)
    if not config.run.check_memory:
        return estimate
    available, where = available_memory(device)
    if available is None:
        return estimate
    needed = estimate.total * (processes_here if device.type == "cpu" else 1)
    if needed > available:
        per = f" ({processes_here} processes)" if device.type == "cpu" and processes_here > 1 else ""
        raise UserError(
            f"this run needs about {_size(needed)}{per} ({estimate.breakdown()} at micro-batch "
            f"{config.train.batch_size} x {config.model.context_length}) but {_size(available)} is {where}; "
            f"{memory_fix(config, estimate, device.type)} (or --set run.check_memory=false to start anyway)")
    return estimate
