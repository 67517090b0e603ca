"""Experimental variants of our fp8 Triton kernels, checked and timed by `kernel_swiglu_fp8.py --variants` before
any replaces a kernel of cs336_basics/precision/fp8_triton.py (benchmarks/NOTES.md 90). Needs Triton (CUDA
builds of torch; the tests run it in Triton's CPU interpreter where Triton is installed).

`swiglu_backward_fp8_persistent`: the fp8 SwiGLU backward moves its bytes at ~56-63% of the H200's bandwidth
(343 us a 1B layer, 213 us a seed one) where inductor's bf16 SwiGLU backward, moving as many, reaches ~88%.
Every tile shape of the autotuner's list ends alike, so the suspect is latency, not access pattern: a program
loads three tiles, computes, stores four, and with the registers a 128 x 128 tile needs few programs share an
SM, so little overlaps. Here a fixed number of programs walk the tiles in a software-pipelined loop (the next
tile's loads issued while this one computes and stores) and keep their amaxes in registers: two atomics a
program instead of two a tile. Calls 74-75 (NOTES 96): slower than ours at every config (256-646 us against 215 at
the seed shape), as were larger and smaller tiles; inductor's code for the same outputs takes 221 us and bf16's
SwiGLU backward 140: what costs is the two transposed fp8 outputs.

`swiglu_backward_fp8_tma` (and `swiglu_forward_fp8_tma`, one transposed output): ours with the transposed
outputs (and optionally the row-major ones too) written by Hopper's tensor memory accelerator: the tile is
transposed on its way into shared memory and stored as one bulk copy (`cp.async.bulk.tensor`) instead of
Triton's convert-then-store of single bytes. Host-side tensor descriptors (triton.tools.tensor_descriptor;
Triton >= 3.4); the stores clip at the array's edges, so ragged tiles need no mask. TMA wants 16-byte aligned
rows: M and N multiples of 16 (NOTES 97).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from typing import Callable

from triton.tools.tensor_descriptor import TensorDescriptor

from cs336_basics.precision.fp8_head import E4M3, E4M3_MAX, E5M2, E5M2_MAX
from cs336_basics.precision.fp8_triton import store_both, swiglu_gradients, swiglu_value, this_tile

# (BLOCK_M, BLOCK_N, warps, pipeline stages, programs per SM)
PERSISTENT_CONFIGS = ((128, 128, 8, 2, 1), (128, 128, 8, 3, 1), (64, 128, 4, 2, 2), (128, 64, 4, 2, 2),
                      (64, 64, 4, 2, 4), (64, 64, 4, 3, 4))


@triton.jit
def swiglu_backward_fp8_persistent_kernel(dg_ptr, h1_ptr, h3_ptr, scale_ptr, d1_ptr, d1t_ptr, d3_ptr, d3t_ptr,
                                          amax_ptr, M, N, FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr,
                                          BLOCK_N: tl.constexpr, STAGES: tl.constexpr, ITERS: tl.constexpr):
    """fp8_triton.swiglu_backward_fp8_kernel's computation (contiguous (M, N) operands), tile after tile: ITERS
    tiles a program, program_id + i x programs (a constant trip count: Triton's interpreter takes no runtime loop
    bound; tiles past the last fall outside the mask)."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    s1 = tl.load(scale_ptr)
    s3 = tl.load(scale_ptr + 1)
    amax1 = tl.full((), 0.0, tl.float32)
    amax3 = tl.full((), 0.0, tl.float32)
    for i in tl.range(0, ITERS, num_stages=STAGES):
        tile = tl.program_id(0) + i * tl.num_programs(0)
        rows = (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
        d = tl.load(dg_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(h1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(h3_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dh1, dh3 = swiglu_gradients(d, a, b)
        q1 = tl.clamp(dh1 * s1, -FP8_MAX, FP8_MAX).to(tl.float8e5)
        q3 = tl.clamp(dh3 * s3, -FP8_MAX, FP8_MAX).to(tl.float8e5)
        store_both(d1_ptr, d1t_ptr, q1, rows, cols, offsets, M, mask)
        store_both(d3_ptr, d3t_ptr, q3, rows, cols, offsets, M, mask)
        amax1 = tl.maximum(amax1, tl.max(tl.abs(dh1)))
        amax3 = tl.maximum(amax3, tl.max(tl.abs(dh3)))
    tl.atomic_max(amax_ptr, amax1)  # non-negative floats order as their bits do
    tl.atomic_max(amax_ptr + 1, amax3)


def programs_per_device(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 elsewhere (Triton's CPU interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def swiglu_backward_fp8_persistent(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                                   scale3: torch.Tensor, config: tuple[int, int, int, int, int]
                                   ) -> tuple[torch.Tensor, ...]:
    """swiglu_fp8.swiglu_backward_fp8's outputs (d1, d1t, d3, d3t, amaxes) from the persistent variant; config:
    one of PERSISTENT_CONFIGS."""
    block_m, block_n, warps, stages, per_sm = config
    M, N = dg.shape
    d1, d3 = (torch.empty(M, N, dtype=E5M2, device=dg.device) for _ in range(2))
    d1t, d3t = (torch.empty(N, M, dtype=E5M2, device=dg.device) for _ in range(2))
    amax = torch.zeros(2, dtype=torch.float32, device=dg.device)
    scales = torch.stack([scale1.float().reshape(()), scale3.float().reshape(())])
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    programs = min(tiles, per_sm * programs_per_device(dg.device))
    swiglu_backward_fp8_persistent_kernel[(programs,)](dg, h1, h3, scales, d1, d1t, d3, d3t, amax, M, N,
                                                       FP8_MAX=E5M2_MAX, BLOCK_M=block_m, BLOCK_N=block_n,
                                                       STAGES=stages, ITERS=triton.cdiv(tiles, programs),
                                                       num_warps=warps)
    return d1, d1t, d3, d3t, amax


def label(config: tuple[int, int, int, int, int]) -> str:
    block_m, block_n, warps, stages, per_sm = config
    return f"persistent {block_m}x{block_n} w{warps} s{stages} {per_sm}/SM"


# how a TMA variant gets its transposed tile: a bf16 tile transposed in registers (the values are bf16-rounded, so
# the cast after it gives the same bytes), or the inputs read a second time in transposed order (mostly L2 hits)
# and the values computed again. Transposing the fp8 tile itself (tl.trans(q)) wrote ~25% of the transposed
# outputs wrong on the H200 at every tile (call 76): triton-lang/triton#11111's ptxas bug, as in NOTES 42.
BF16, RELOAD = 1, 2
# (BLOCK_M, BLOCK_N, warps, row-major outputs by TMA too, BF16 or RELOAD)
TMA_CONFIGS = ((64, 64, 4, False, BF16), (32, 128, 4, False, BF16), (128, 64, 8, False, BF16), (64, 128, 4, True, BF16),
               (64, 64, 4, False, RELOAD), (32, 128, 4, False, RELOAD), (128, 64, 8, False, RELOAD))


@triton.jit
def load_transposed(ptr, rows, cols, M, N):
    """The tile rows x cols of the bf16 (M, N) array at ptr as a float32 (BLOCK_N, BLOCK_M) tile, loaded in
    transposed order."""
    mask = (cols[:, None] < N) & (rows[None, :] < M)
    return tl.load(ptr + rows[None, :].to(tl.int64) * N + cols[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def swiglu_backward_fp8_tma_kernel(dg_ptr, h1_ptr, h3_ptr, scale_ptr, d1, d1t_desc, d3, d3t_desc, amax_ptr, M, N,
                                   FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                   ROW_TMA: tl.constexpr, HOW: tl.constexpr):
    """fp8_triton.swiglu_backward_fp8_kernel's computation (contiguous (M, N) operands) with the transposed outputs
    stored through tensor descriptors; d1, d3: pointers, or with ROW_TMA descriptors too."""
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    d = tl.load(dg_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(h1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(h3_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dh1, dh3 = swiglu_gradients(d, a, b)
    s1, s3 = tl.load(scale_ptr), tl.load(scale_ptr + 1)
    q1 = tl.clamp(dh1 * s1, -FP8_MAX, FP8_MAX).to(tl.float8e5)
    q3 = tl.clamp(dh3 * s3, -FP8_MAX, FP8_MAX).to(tl.float8e5)
    row0, col0 = tl.program_id(0) * BLOCK_M, tl.program_id(1) * BLOCK_N
    if ROW_TMA:
        d1.store([row0, col0], q1)
        d3.store([row0, col0], q3)
    else:
        tl.store(d1 + offsets, q1, mask=mask)
        tl.store(d3 + offsets, q3, mask=mask)
    if HOW == 2:  # RELOAD
        dh1t, dh3t = swiglu_gradients(load_transposed(dg_ptr, rows, cols, M, N),
                                      load_transposed(h1_ptr, rows, cols, M, N), load_transposed(h3_ptr, rows, cols, M, N))
    else:  # BF16: exact, the gradients are bf16-rounded
        dh1t = tl.trans(dh1.to(tl.bfloat16)).to(tl.float32)
        dh3t = tl.trans(dh3.to(tl.bfloat16)).to(tl.float32)
    d1t_desc.store([col0, row0], tl.clamp(dh1t * s1, -FP8_MAX, FP8_MAX).to(tl.float8e5))
    d3t_desc.store([col0, row0], tl.clamp(dh3t * s3, -FP8_MAX, FP8_MAX).to(tl.float8e5))
    tl.atomic_max(amax_ptr, tl.max(tl.abs(dh1)))  # non-negative floats order as their bits do
    tl.atomic_max(amax_ptr + 1, tl.max(tl.abs(dh3)))


def swiglu_backward_fp8_tma(dg: torch.Tensor, h1: torch.Tensor, h3: torch.Tensor, scale1: torch.Tensor,
                            scale3: torch.Tensor, config: tuple[int, int, int, bool, int]) -> tuple[torch.Tensor, ...]:
    """swiglu_fp8.swiglu_backward_fp8's outputs (d1, d1t, d3, d3t, amaxes) from the TMA-store variant; config: one
    of TMA_CONFIGS."""
    block_m, block_n, warps, row_tma, how = config
    M, N = dg.shape
    d1, d3 = (torch.empty(M, N, dtype=E5M2, device=dg.device) for _ in range(2))
    d1t, d3t = (torch.empty(N, M, dtype=E5M2, device=dg.device) for _ in range(2))
    amax = torch.zeros(2, dtype=torch.float32, device=dg.device)
    scales = torch.stack([scale1.float().reshape(()), scale3.float().reshape(())])
    rows = [TensorDescriptor.from_tensor(t, [block_m, block_n]) if row_tma else t for t in (d1, d3)]
    columns = [TensorDescriptor.from_tensor(t, [block_n, block_m]) for t in (d1t, d3t)]
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    swiglu_backward_fp8_tma_kernel[grid](dg, h1, h3, scales, rows[0], columns[0], rows[1], columns[1], amax, M, N,
                                         FP8_MAX=E5M2_MAX, BLOCK_M=block_m, BLOCK_N=block_n, ROW_TMA=row_tma,
                                         HOW=how, num_warps=warps)
    return d1, d1t, d3, d3t, amax


@triton.jit
def swiglu_forward_fp8_tma_kernel(h1_ptr, h3_ptr, scale_ptr, g, gt_desc, amax_ptr, M, N, FP8_MAX: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROW_TMA: tl.constexpr,
                                  HOW: tl.constexpr):
    """fp8_triton.swiglu_forward_fp8_kernel's computation (contiguous (M, N) operands) with the transposed output
    stored through a tensor descriptor; g: a pointer, or with ROW_TMA a descriptor too."""
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    a = tl.load(h1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(h3_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = swiglu_value(a, b)
    scale = tl.load(scale_ptr)
    q = tl.clamp(y * scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv)
    row0, col0 = tl.program_id(0) * BLOCK_M, tl.program_id(1) * BLOCK_N
    if ROW_TMA:
        g.store([row0, col0], q)
    else:
        tl.store(g + offsets, q, mask=mask)
    if HOW == 2:  # RELOAD
        yt = swiglu_value(load_transposed(h1_ptr, rows, cols, M, N), load_transposed(h3_ptr, rows, cols, M, N))
    else:  # BF16: exact, y is bf16-rounded
        yt = tl.trans(y.to(tl.bfloat16)).to(tl.float32)
    gt_desc.store([col0, row0], tl.clamp(yt * scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv))
    tl.atomic_max(amax_ptr, tl.max(tl.abs(y)))


def swiglu_forward_fp8_tma(h1: torch.Tensor, h3: torch.Tensor, scale: torch.Tensor,
                           config: tuple[int, int, int, bool, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """swiglu_fp8.swiglu_forward_fp8's outputs (g8, g8t, amax) from the TMA-store variant; config: one of
    TMA_CONFIGS."""
    block_m, block_n, warps, row_tma, how = config
    M, N = h1.shape
    g8, g8t = torch.empty(M, N, dtype=E4M3, device=h1.device), torch.empty(N, M, dtype=E4M3, device=h1.device)
    amax = torch.zeros(1, dtype=torch.float32, device=h1.device)
    row = TensorDescriptor.from_tensor(g8, [block_m, block_n]) if row_tma else g8
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    swiglu_forward_fp8_tma_kernel[grid](h1, h3, scale.float().reshape(1), row,
                                        TensorDescriptor.from_tensor(g8t, [block_n, block_m]), amax, M, N,
                                        FP8_MAX=E4M3_MAX, BLOCK_M=block_m, BLOCK_N=block_n, ROW_TMA=row_tma,
                                        HOW=how, num_warps=warps)
    return g8, g8t, amax.reshape(())


def tma_label(config: tuple[int, int, int, bool, int]) -> str:
    block_m, block_n, warps, row_tma, how = config
    return (f"tma {block_m}x{block_n} w{warps} ({'all stores' if row_tma else 'transposed stores'}, "
            f"{'bf16 transpose' if how == BF16 else 'reload'})")


Backward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


def forward_variants() -> list[tuple[str, Forward]]:
    """(label, fn(h1, h3, scale)) of every experimental SwiGLU forward, for kernel_swiglu_fp8.py."""
    return [(tma_label(c), lambda *a, c=c: swiglu_forward_fp8_tma(*a, config=c)) for c in TMA_CONFIGS]


def backward_variants() -> list[tuple[str, Backward]]:
    """(label, fn(dg, h1, h3, scale1, scale3)) of every experimental SwiGLU backward, for kernel_swiglu_fp8.py."""
    found: list[tuple[str, Backward]] = []
    for config in PERSISTENT_CONFIGS:
        found.append((label(config), lambda *a, c=config: swiglu_backward_fp8_persistent(*a, config=c)))
    for config in TMA_CONFIGS:
        found.append((tma_label(config), lambda *a, c=config: swiglu_backward_fp8_tma(*a, config=c)))
    return found
