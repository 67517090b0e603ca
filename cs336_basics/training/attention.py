"""Which scaled_dot_product_attention kernels may run (the fused fast ones, or the plain math path), and
which ones did run, read from the kernels of a profiled step."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from cs336_basics.errors import UserError

_FUSED = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]

# train.fused_attention: "auto" allows the fused kernels in PyTorch's own priority order (on Hopper with the
# cuDNN that torch >= 2.11 bundles, cuDNN attention first, measured faster than FlashAttention-2 at the seed
# size); "cudnn" puts cuDNN first; "flash" leaves cuDNN out, because a
# priority alone was not honoured by freshly compiled graphs on the H200 (they ran cuDNN kernels anyway).
FUSED_ORDERS = {
    "auto": None,
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": _FUSED,
}


def attention_backends(use_flash_attn: bool, prefer: str = "auto") -> list[SDPBackend]:
    """The allowed backends, in priority order when `prefer` names one."""
    if not use_flash_attn:
        return [SDPBackend.MATH]
    return FUSED_ORDERS[prefer] or _FUSED


def attention_context(use_flash_attn: bool, prefer: str = "auto") -> AbstractContextManager:
    order = FUSED_ORDERS[prefer] if use_flash_attn else [SDPBackend.MATH]
    if order is None:  # an allow-set: PyTorch orders the fused kernels itself
        return sdpa_kernel(_FUSED)
    return sdpa_kernel(order, set_priority=True)


def probe_backend(use_flash_attn: bool, prefer: str, head_dim: int, device: torch.device) -> str:
    """The name of the backend SDPA picks under attention_context(use_flash_attn, prefer) for a causal
    attention of this head size in the dtype training computes in (bf16 on CUDA, fp32 elsewhere), forward
    and backward; on CUDA read from the kernels that ran. Compiled training can still run another (a graph
    from the compile cache): the Trainer reports the kernels of a real step, see AttentionKernels."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 2, 128, head_dim, device=device, dtype=dtype, requires_grad=True)
    try:
        with AttentionKernels(device) as kernels, attention_context(use_flash_attn, prefer):
            F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    except RuntimeError as e:
        raise UserError(
            f"no allowed attention kernel runs head dimension {head_dim} on {device} "
            f"({str(e).strip().splitlines()[0][:120]}); fused kernels take head dimensions up to 256: raise --n_heads, "
            f"or drop --use_flash_attn for the plain path") from None
    if kernels.ran is not None:
        return kernels.ran
    for backend in attention_backends(use_flash_attn, prefer):  # CPU: the first that accepts the inputs
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
            return backend.name
        except RuntimeError:
            continue
    raise RuntimeError(f"no allowed attention backend can run head_dim {head_dim} on {device}")


# Fused attention kernel name fragments -> backend; a name is matched in this order (cuDNN's own kernels
# are called "...cudnn..._sdpa_..._flash_fprop...", so cuDNN comes first).
_KERNEL_NAMES = (
    ("CUDNN_ATTENTION", ("cudnn",)),
    ("FLASH_ATTENTION", ("flash",)),
    ("EFFICIENT_ATTENTION", ("fmha", "mem_eff", "efficient_attention")),
)


def attention_kernels(kernel_names: list[str]) -> list[str]:
    """Backends whose fused attention kernels appear in `kernel_names`, most frequent first."""
    counts: dict[str, int] = {}
    for name in kernel_names:
        low = name.lower()
        for backend, fragments in _KERNEL_NAMES:
            if any(f in low for f in fragments):
                counts[backend] = counts.get(backend, 0) + 1
                break
    return sorted(counts, key=lambda b: -counts[b])


class AttentionKernels:
    """Profiles the GPU kernels of the code inside `with`; `.ran` then names the attention that ran:
    'CUDNN_ATTENTION', 'FLASH_ATTENTION', 'EFFICIENT_ATTENTION', or 'MATH' when no fused attention kernel
    ran. On a CPU it profiles nothing and `.ran` is None."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ran = device, None
        self._prof = profile(activities=[ProfilerActivity.CUDA], acc_events=True) if device.type == "cuda" else None

    def __enter__(self) -> "AttentionKernels":
        if self._prof is not None:
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is None:
            return
        torch.cuda.synchronize(self.device)
        self._prof.__exit__(*exc)
        if exc[0] is None:
            found = attention_kernels([e.name for e in self._prof.events()])
            self.ran = "+".join(found) if found else "MATH"
