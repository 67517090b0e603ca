"""Stock TorchAO float8 yardstick: a plain Llama-style model on random tokens, bf16 against TorchAO's float8
training recipes, eager and compiled, one GPU. What a user would write after reading TorchAO's README, to measure
this project's own training path against (run both in one job on one GPU: only ratios from one run compare).

    python -m cs336_basics.perf.stock_torchao --dim 896 --heads 14 --layers 24 --ffn 3584 --vocab 50304 --seq 1024 \\
        --batch 16 --steps 15 --modes bf16-eager,bf16-compile,fp8-compile,fp8rw-compile,fp8-eager --out stock.jsonl
    python -m cs336_basics.perf.stock_torchao --dim 2048 --heads 16 --layers 16 --ffn 5632 --seq 2048 --batch 8 \\
        --modes bf16-compile,fp8-compile --out stock.jsonl                                      # the 1B shape
    python -m cs336_basics.perf.stock_torchao --device cpu --dim 64 --heads 4 --layers 2 --ffn 128 --vocab 256 --seq 32 \\
        --batch 2 --steps 2 --modes bf16-eager                                                  # CPU self-check

The model: token embedding, blocks of RMSNorm -> fused qkv projection -> RoPE -> causal SDPA -> output projection
and RMSNorm -> SwiGLU (w1, w3, w2), a final RMSNorm and an untied output head; every linear layer without bias.
Float32 master weights, bf16 autocast, fused AdamW, one fixed random batch. Modes, comma-separated:

    bf16-eager, bf16-compile        no float8
    fp8-eager, fp8-compile          TorchAO's tensorwise recipe (dynamic scales), convert_to_float8_training
    fp8rw-eager, fp8rw-compile      TorchAO's rowwise recipe

Float8 converts every block's linear layer; the output head stays in bf16 (as TorchAO's examples leave it).
Compiled modes compile each block with fullgraph=True, and the final norm + head + loss as one function.

Each mode builds the model afresh (seed 0), runs --warmup steps (compilation happens there), then times --steps
steps as one span between two device synchronisations. It prints one JSON line and appends it to --out:
mode, tok_s (tokens per second over the timed steps), step_ms (the mean step), peak_mem_gib (the allocator's peak
over warm-up and timed steps), tflops (model FLOPs: 6 x non-embedding parameters + 12 x layers x dim x seq per
token, attention counted as if not causal), and the shape, the number of float8 layers, the last loss, the
warm-up seconds and the versions. A mode that fails prints a line with mode and error, and the next mode runs;
the exit status is then 1. Imports nothing else of this project's package (so the package cannot move the bar):
it lives in the package so that `cs336-bench --compare-reference` finds it in any install.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PRECISIONS = ("bf16", "fp8", "fp8rw")
EXECUTIONS = ("eager", "compile")
FP8_RECIPES = {"fp8": "tensorwise", "fp8rw": "rowwise"}


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half pairs x[i], x[i + D/2]), computed in float32, returned in x's dtype."""

    def __init__(self, head_dim: int, seq: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)  # (T, D/2)
        self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)  # (T, 1, D/2)
        self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, H, D)
        x1, x2 = x.float().chunk(2, dim=-1)
        cos, sin = self.cos[: x.shape[1]], self.sin[: x.shape[1]]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, seq: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm, self.ffn_norm = nn.RMSNorm(dim, eps=1e-5), nn.RMSNorm(dim, eps=1e-5)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.w1 = nn.Linear(dim, ffn, bias=False)
        self.w3 = nn.Linear(dim, ffn, bias=False)
        self.w2 = nn.Linear(ffn, dim, bias=False)
        self.rotary = Rotary(dim // heads, seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, D // self.heads).unbind(2)  # (B, T, H, Dh)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, H, T, Dh) -> (B, T, D)
        z = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(z)) * self.w3(z))


class LM(nn.Module):
    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.dim)
        self.blocks = nn.ModuleList(Block(a.dim, a.heads, a.ffn, a.seq) for _ in range(a.layers))
        self.norm = nn.RMSNorm(a.dim, eps=1e-5)
        self.head = nn.Linear(a.dim, a.vocab, bias=False)
        self.head_loss = self._head_loss  # an attribute, so compiled modes can swap in a compiled version

    def _head_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.norm(x))  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head_loss(x, targets)


def flops_per_token(model: LM, a: argparse.Namespace) -> int:
    """6 x non-embedding parameters (the head included) + 12 x layers x dim x seq (attention's two products)."""
    params = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    return 6 * params + 12 * a.layers * a.dim * a.seq


def convert_to_float8(model: LM, recipe: str) -> int:
    """TorchAO's float8 training conversion of every block's linear layer; returns how many were converted."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    def keep(module: nn.Module, fqn: str) -> bool:  # the head stays bf16; float8 products need multiples of 16
        return (isinstance(module, nn.Linear) and fqn != "head"
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe), module_filter_fn=keep)
    return sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear")


def versions() -> dict:
    found = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import torchao

        found["torchao"] = torchao.__version__
    except ImportError:
        found["torchao"] = None
    return found


def run_mode(mode: str, a: argparse.Namespace, device: torch.device) -> dict:
    precision, _, execution = mode.rpartition("-")
    if precision not in PRECISIONS or execution not in EXECUTIONS:
        raise ValueError(f"unknown mode {mode!r}: expected one of "
                         + ", ".join(f"{p}-{e}" for p in PRECISIONS for e in EXECUTIONS))
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = LM(a).to(device)
    fp8_layers = convert_to_float8(model, FP8_RECIPES[precision]) if precision in FP8_RECIPES else 0
    if execution == "compile":
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, fullgraph=True, mode=a.compile_mode)
        model.head_loss = torch.compile(model._head_loss, fullgraph=True, mode=a.compile_mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    tokens, targets = (torch.randint(0, a.vocab, (a.batch, a.seq), device=device) for _ in range(2))

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(tokens, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / a.steps
    loss = float(loss.detach())
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}: the timings would measure nothing")
    tok_s = a.batch * a.seq / seconds
    return dict(
        mode=mode, tok_s=round(tok_s), step_ms=round(seconds * 1e3, 2),
        peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        tflops=round(tok_s * flops_per_token(model, a) / 1e12, 2),
        warmup_s=round(warmup_s, 1), steps=a.steps, warmup_steps=a.warmup, loss=round(loss, 4),
        fp8_layers=fp8_layers, compile_mode=a.compile_mode if execution == "compile" else None,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        shape=dict(dim=a.dim, heads=a.heads, layers=a.layers, ffn=a.ffn, vocab=a.vocab, seq=a.seq, batch=a.batch),
        device=torch.cuda.get_device_name(device) if cuda else "cpu", **versions(),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=896)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--ffn", type=int, default=3584, help="SwiGLU width")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=15, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens there)")
    p.add_argument("--modes", default="bf16-eager,bf16-compile,fp8-compile,fp8rw-compile,fp8-eager")
    p.add_argument("--compile_mode", default="default", help="torch.compile's mode for the compiled modes")
    p.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a slow self-check)")
    p.add_argument("--out", type=Path, help="JSON lines file to append each mode's line to")
    a = p.parse_args(argv)
    if a.dim % a.heads or (a.dim // a.heads) % 2:
        p.error("--dim must be a multiple of --heads with an even head size")
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: stock_torchao.py times training steps on a CUDA GPU and found none (--device cpu runs a slow "
              "self-check)", file=sys.stderr)
        return 2
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
    failed = False
    for mode in filter(None, (m.strip() for m in a.modes.split(","))):
        try:
            line = run_mode(mode, a, device)
        except Exception as e:  # a mode that fails (out of memory, a compile error, torchao missing) is reported
            failed = True
            message = str(e).strip().splitlines()
            line = dict(mode=mode, error=f"{type(e).__name__}: {message[0][:300] if message else ''}",
                        where=traceback.format_exc(limit=-2).strip().splitlines()[-3:])
        print(json.dumps(line), flush=True)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
