"""A plain single-device decoder-only language model (Llama-style).

Pre-norm RMSNorm, rotary position embeddings, causal attention through
`F.scaled_dot_product_attention`, SwiGLU feed-forward, final norm and an output head. Every projection is
a standard `nn.Linear` with no bias: precision (TorchAO float8), activation checkpointing, compilation
and distribution are transformations applied to a built model elsewhere, never inside this file.

Init scheme (GPT-2 / nanoGPT): every Linear and the embedding ~ N(0, 0.02); the two projections that write
into the residual stream (attention `out`, feed-forward `w2`) ~ N(0, 0.02 / sqrt(2 * n_layers)) so the
residual's variance does not grow with depth; RMSNorm gains start at 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cs336_basics.errors import UserError


class ConfigError(UserError, ValueError):
    """A model configuration that cannot be built; the message says how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 50304
    context_length: int = 1024
    dim: int = 896
    n_layers: int = 24
    n_heads: int = 14
    intermediate_size: int = 3584
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "context_length", "dim", "n_layers", "n_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ConfigError(
                f"--dim {self.dim} is not divisible by --n_heads {self.n_heads}; "
                f"pick n_heads from the divisors of dim (e.g. {_divisors_near(self.dim, self.n_heads)})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head dimension dim/n_heads = {self.head_dim} is odd; rotary embeddings rotate pairs, "
                f"so choose dim and n_heads with an even quotient"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _divisors_near(dim: int, n_heads: int) -> str:
    divisors = [d for d in range(1, dim + 1) if dim % d == 0 and (dim // d) % 2 == 0]
    divisors.sort(key=lambda d: abs(d - n_heads))
    return ", ".join(str(d) for d in sorted(divisors[:3]))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, context_length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (T, head_dim / 2) for rotate-half rotary embeddings."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(context_length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) by position-dependent angles. x: (B, T, H, D); cos, sin: (T, D/2) float32.
    The rotation is computed in float32 (bf16 q/k are promoted by the float32 tables) and returned in x's dtype:
    more accurate, and measured faster at 1B than casting the tables to bf16 (docs/log.md)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # Heads stay in (B, T, H, D) memory order, the fused attention kernels' own layout, so the
        # transposes below are views and no copies are made in forward or backward.
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)  # 3 x (B, T, H, D)
        q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, H, T, D) -> (B, T, C)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of (B, T, V) logits against (B, T) targets, in float32."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class OutputHead(nn.Module):
    """Final norm + vocabulary projection; with targets it returns the mean cross-entropy in float32."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.proj(self.norm(h))  # (B, T, V)
        if targets is None:
            return logits
        return cross_entropy(logits, targets)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.output = OutputHead(cfg)
        if cfg.tie_embeddings:
            self.output.proj.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("attn.out", "ffn.w2")) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids. Returns logits (B, T, V), or the mean loss when targets (B, T) are given."""
        if idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds context_length {self.cfg.context_length}")
        h = self.embed(idx)  # (B, T, C)
        for block in self.layers:
            h = block(h, self.rope_cos, self.rope_sin)
        return self.output(h, targets)

    def num_params(self, include_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() deduplicates a tied weight
        if not include_embedding:
            n -= self.embed.weight.numel()
        return n
