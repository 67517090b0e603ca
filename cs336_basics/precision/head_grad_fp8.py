"""The float8 output head's logit gradient as one Triton kernel (issue 5; branch fp8-head-kernel, NOTES 46).

fp8_head.py's backward computes g = softmax(logits) - onehot(targets) for the 16K x 50K logits, casts it to e5m2
with its static scale, and makes the transposed copy the weight gradient's product needs. Inductor compiles that
into a row-reduction kernel that takes 1.83 ms a seed step and a transposing copy of 0.65 ms (call 35), while the
work is one read of the bf16 logits and two float8 writes: 3.3 GB, ~0.9 ms at the H200's bandwidth. The kernel
does it in 2-D tiles as the SwiGLU kernels do (each tile loaded once, stored row-major and transposed; bf16 in,
the path every GPU check has passed), given the forward's log-sum-exp per row.

`head_grad_fp8_reference` is the same computation in PyTorch ops (fp8_head.py's own): the CPU path and what the
kernel is checked against, on the GPU before a run trains (`check_head_grad`) and in benchmarks/kernel_swiglu_fp8.py.
"""

from __future__ import annotations

import torch

from cs336_basics.precision.fp8_cast import Config, check_2d, compare_fp8, launch
from cs336_basics.precision.fp8_head import E5M2, E5M2_MAX, cast_to


def head_grad_fp8_reference(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax - onehot) * 57344 in e5m2, (N, V) and transposed (V, N); logits (N, V) bf16, lse (N,) float32."""
    onehot = torch.arange(logits.shape[1], device=logits.device)[None, :] == targets[:, None]
    g = torch.exp(logits.float() - lse[:, None]) - onehot.float()  # in [-1, 1]
    g8 = cast_to(g, E5M2_MAX, E5M2, E5M2_MAX)
    return g8, g8.t().contiguous()


def head_grad_fp8(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, config: Config | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """As head_grad_fp8_reference, one Triton kernel on CUDA tensors (the reference elsewhere); `config` picks
    the tile (else the autotuner does)."""
    if logits.device.type != "cuda":
        return head_grad_fp8_reference(logits, lse, targets)
    check_2d(logits)
    M, N = logits.shape
    g8, g8t = torch.empty(M, N, dtype=E5M2, device=logits.device), torch.empty(N, M, dtype=E5M2, device=logits.device)
    launch("head_grad", config, M, N, logits, lse.float().contiguous(), targets.contiguous(), g8, g8t, FP8_MAX=E5M2_MAX)
    return g8, g8t


@torch.library.custom_op("cs336::head_grad_fp8", mutates_args=())
def _head_grad_fp8_op(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return head_grad_fp8(logits, lse, targets)


@_head_grad_fp8_op.register_fake
def _(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor):
    M, N = logits.shape
    return logits.new_empty(M, N, dtype=E5M2), logits.new_empty(N, M, dtype=E5M2)


def head_grad(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit gradient in e5m2, row-major and transposed: through our kernel on a GPU, as one opaque op under
    torch.compile."""
    return _head_grad_fp8_op(logits.contiguous(), lse, targets)


def check_head_grad(M: int, V: int, device: torch.device, seed: int = 0) -> list[str]:
    """The kernel as training runs it (the autotuner's tile) at the run's shape (M tokens, V vocabulary) on seeded
    logits of a trained head's spread, against the reference (compare_fp8; no amax here: a zero stands in)."""
    g = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(M, V, device=device, generator=g) * 3).bfloat16()
    lse = torch.logsumexp(logits.float(), dim=-1)
    targets = torch.randint(0, V, (M,), device=device, generator=g)
    zero = torch.zeros((), device=device)
    return compare_fp8(f"head gradient {M} x {V}", (*head_grad_fp8(logits, lse, targets), zero),
                       (*head_grad_fp8_reference(logits, lse, targets), zero))
