"""SwiGLU's backward with its float8 outputs in one pass (issue 5, benchmarks/NOTES.md 33 and 38).

In an fp8 step the gradients of w1 x and w3 x leave SwiGLU's backward only to be cast to e5m2 twice each: once
row-major (for the input gradient's matmul) and once transposed (for the weight gradient's, which cuBLAS wants
column-major on Hopper), with their amax kept for the delayed scales. Inductor fuses all of it into one
row-reduction kernel (the amax) whose transposed stores are strided: at the seed size it moves ~0.6 GB in
296 us a layer, ~2 TB/s (call 19). `swiglu_backward_fp8` does the same in 2-D tiles: each tile is loaded once,
stored row-major and transposed (the transpose happens in registers and shared memory, so both stores are
coalesced), and its amax joins the global one through an atomic max: no reduction pass shapes the kernel.

`swiglu_backward_fp8_reference` is the same computation in PyTorch ops as inductor compiles the model's graph
(fp32 throughout, the gradients rounded once to the bf16 they are in the graph, then scaled and cast; the amax
as fp8_delayed takes it): the CPU path, and what the Triton kernel is checked against on the GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from cs336_basics.precision.fp8_delayed import amax
from cs336_basics.precision.fp8_head import E5M2, E5M2_MAX, cast_to

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def swiglu_backward(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of g = silu(h1) * h3 with respect to h1 and h3, in fp32, rounded to the inputs' dtype."""
    a, b, d = h1.float(), h3.float(), dg.float()
    sig = torch.sigmoid(a)
    dh1 = d * b * sig * (1 + a * (1 - sig))
    dh3 = d * a * sig
    return dh1.to(dg.dtype), dh3.to(dg.dtype)


def swiglu_backward_fp8_reference(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                                  scale3: torch.Tensor) -> Outputs:
    """(dh1 e5m2 (M, N), dh1 e5m2 transposed (N, M), the same for dh3, amax of [dh1, dh3] (2,) fp32), each
    gradient scaled by its scale and saturated at e5m2's largest value."""
    outs: list[torch.Tensor] = []
    amaxes = []
    for grad, scale in zip(swiglu_backward(dg, h1, h3), (scale1, scale3)):
        g8 = cast_to(grad, scale, E5M2, E5M2_MAX)
        outs += [g8, g8.t().contiguous()]
        amaxes.append(amax(grad))
    return outs[0], outs[1], outs[2], outs[3], torch.stack(amaxes)


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_backward_fp8_kernel(dg_ptr, h1_ptr, h3_ptr, scale_ptr, d1_ptr, d1t_ptr, d3_ptr, d3t_ptr, amax_ptr,
                                   M, N, FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
        offsets_t = cols[None, :].to(tl.int64) * M + rows[:, None]  # the same elements in the (N, M) copies
        d = tl.load(dg_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(h1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(h3_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(a)
        # rounded to bf16 as the graph's gradients are, then scaled and cast
        dh1 = (d * b * sig * (1 + a * (1 - sig))).to(tl.bfloat16).to(tl.float32)
        dh3 = (d * a * sig).to(tl.bfloat16).to(tl.float32)
        s1 = tl.load(scale_ptr)
        s3 = tl.load(scale_ptr + 1)
        q1 = tl.clamp(dh1 * s1, -FP8_MAX, FP8_MAX).to(tl.float8e5)
        q3 = tl.clamp(dh3 * s3, -FP8_MAX, FP8_MAX).to(tl.float8e5)
        tl.store(d1_ptr + offsets, q1, mask=mask)
        tl.store(d3_ptr + offsets, q3, mask=mask)
        tl.store(d1t_ptr + offsets_t, q1, mask=mask)
        tl.store(d3t_ptr + offsets_t, q3, mask=mask)
        tl.atomic_max(amax_ptr, tl.max(tl.abs(dh1)))  # non-negative floats order as their bits do
        tl.atomic_max(amax_ptr + 1, tl.max(tl.abs(dh3)))

    return swiglu_backward_fp8_kernel


def swiglu_backward_fp8(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                        scale3: torch.Tensor, block_m: int = 64, block_n: int = 64, num_warps: int = 4) -> Outputs:
    """As swiglu_backward_fp8_reference, one Triton kernel on CUDA tensors (the reference elsewhere)."""
    if dg.device.type != "cuda":
        return swiglu_backward_fp8_reference(dg, h1, h3, scale1, scale3)
    if not (dg.shape == h1.shape == h3.shape and dg.dim() == 2 and dg.is_contiguous() and h1.is_contiguous()
            and h3.is_contiguous()):
        raise ValueError(f"swiglu_backward_fp8 takes three contiguous (M, N) tensors, got {dg.shape}, {h1.shape}, {h3.shape}")
    M, N = dg.shape
    d1, d3 = torch.empty(M, N, dtype=E5M2, device=dg.device), torch.empty(M, N, dtype=E5M2, device=dg.device)
    d1t, d3t = torch.empty(N, M, dtype=E5M2, device=dg.device), torch.empty(N, M, dtype=E5M2, device=dg.device)
    amax = torch.zeros(2, dtype=torch.float32, device=dg.device)
    scales = torch.stack([scale1.float().reshape(()), scale3.float().reshape(())])
    grid = (-(-M // block_m), -(-N // block_n))
    _kernel()[grid](dg, h1, h3, scales, d1, d1t, d3, d3t, amax, M, N, FP8_MAX=E5M2_MAX, BLOCK_M=block_m,
                    BLOCK_N=block_n, num_warps=num_warps)
    return d1, d1t, d3, d3t, amax
