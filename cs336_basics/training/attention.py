"""Which scaled_dot_product_attention kernels may run: the fused fast ones, or the plain math path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# The fused kernels in priority order; the first entry is chosen by --fused_attention (flash: PyTorch's own
# default order; cudnn: cuDNN's fused attention first). optimize_performance.py measures both.
FUSED_ORDERS = {
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
}


def attention_backends(use_flash_attn: bool, prefer: str = "flash") -> list[SDPBackend]:
    return FUSED_ORDERS[prefer] if use_flash_attn else [SDPBackend.MATH]


def probe_backend(backends: list[SDPBackend], head_dim: int, device: torch.device) -> SDPBackend:
    """The first backend of `backends` that runs a causal attention of this head size on this device, in
    the dtype training computes in (bf16 on CUDA, fp32 elsewhere), forward and backward: the one SDPA will
    pick when given these backends in this priority."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for backend in backends:
        q = torch.randn(1, 2, 64, head_dim, device=device, dtype=dtype, requires_grad=True)
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
            return backend
        except RuntimeError:
            continue
    raise RuntimeError(f"none of {[b.name for b in backends]} can run attention with head_dim {head_dim} on {device}")


def attention_context(backends: list[SDPBackend]):
    return sdpa_kernel(backends, set_priority=True)
