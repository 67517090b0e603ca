"""Our Triton kernels (imported by fp8_cast.kernels() on first use on a GPU: Triton comes with CUDA builds of
torch, not with the CPU wheel the tests run on). Their PyTorch references, the wrappers that launch them and the
reasons are in swiglu_fp8.py (SwiGLU's forward and backward with their casts) and fp8_cast.py (a cast)."""

import triton
import triton.language as tl


@triton.jit
def this_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's tile of an (M, N) array: its rows, columns, in-bounds mask and row-major offsets."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, cols, (rows[:, None] < M) & (cols[None, :] < N), rows[:, None].to(tl.int64) * N + cols[None, :]


@triton.jit
def store_both(ptr, ptr_t, q, rows, cols, offsets, M, mask):
    """q (BLOCK_M, BLOCK_N), the tile at rows x cols (row-major offsets) of the (M, N) array at ptr, and at
    cols x rows of the (N, M) array at ptr_t. Triton's layout pass moves the tile through shared memory for the
    second store, so both coalesce (storing tl.trans(q) as an (N, M) block instead measured the same)."""
    tl.store(ptr + offsets, q, mask=mask)
    tl.store(ptr_t + cols[None, :].to(tl.int64) * M + rows[:, None], q, mask=mask)


@triton.jit
def swiglu_value(a, b):
    """silu(h1) * h3 (float32 tiles a, b), rounded to bf16 as the graph's g is."""
    return (a * tl.sigmoid(a) * b).to(tl.bfloat16).to(tl.float32)


@triton.jit
def swiglu_forward_fp8_kernel(h1_ptr, h3_ptr, scale_ptr, g_ptr, gt_ptr, amax_ptr, stride_h, M, N,
                              FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """stride_h: h1's and h3's row stride (N; 2N when they are the halves of w1 | w3's one product)."""
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    h_offsets = rows[:, None].to(tl.int64) * stride_h + cols[None, :]
    a = tl.load(h1_ptr + h_offsets, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(h3_ptr + h_offsets, mask=mask, other=0.0).to(tl.float32)
    g = swiglu_value(a, b)
    q = tl.clamp(g * tl.load(scale_ptr), -FP8_MAX, FP8_MAX).to(tl.float8e4nv)
    store_both(g_ptr, gt_ptr, q, rows, cols, offsets, M, mask)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(g)))  # non-negative floats order as their bits do


@triton.jit
def swiglu_gradients(d, a, b):
    """The gradients of h1 and h3 (float32 tiles) from dg = d, h1 = a, h3 = b, rounded to bf16 as the graph's are."""
    sig = tl.sigmoid(a)
    dh1 = (d * b * sig * (1 + a * (1 - sig))).to(tl.bfloat16).to(tl.float32)
    dh3 = (d * a * sig).to(tl.bfloat16).to(tl.float32)
    return dh1, dh3


@triton.jit
def swiglu_backward_fp8_kernel(dg_ptr, h1_ptr, h3_ptr, scale_ptr, d1_ptr, d1t_ptr, d3_ptr, d3t_ptr, amax_ptr,
                               stride_h, stride_d, M, N, FP8_MAX: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr):
    """stride_h, stride_d: the row strides of h1 and h3, and of the row-major d1 and d3 (N; 2N for the halves
    of (M, 2N) arrays when w1 and w3 run as one product)."""
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    d = tl.load(dg_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h_offsets = rows[:, None].to(tl.int64) * stride_h + cols[None, :]
    a = tl.load(h1_ptr + h_offsets, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(h3_ptr + h_offsets, mask=mask, other=0.0).to(tl.float32)
    dh1, dh3 = swiglu_gradients(d, a, b)
    q1 = tl.clamp(dh1 * tl.load(scale_ptr), -FP8_MAX, FP8_MAX).to(tl.float8e5)
    q3 = tl.clamp(dh3 * tl.load(scale_ptr + 1), -FP8_MAX, FP8_MAX).to(tl.float8e5)
    d_offsets = rows[:, None].to(tl.int64) * stride_d + cols[None, :]
    store_both(d1_ptr, d1t_ptr, q1, rows, cols, d_offsets, M, mask)
    store_both(d3_ptr, d3t_ptr, q3, rows, cols, d_offsets, M, mask)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(dh1)))  # non-negative floats order as their bits do
    tl.atomic_max(amax_ptr + 1, tl.max(tl.abs(dh3)))


@triton.jit
def to_fp8(y, E5M2: tl.constexpr):
    """y, scaled and clamped, in e5m2 or e4m3."""
    if E5M2:
        q = y.to(tl.float8e5)
    else:
        q = y.to(tl.float8e4nv)
    return q


@triton.jit
def cast_fp8_kernel(x_ptr, scale_ptr, q_ptr, qt_ptr, amax_ptr, M, N, FP8_MAX: tl.constexpr, E5M2: tl.constexpr,
                    TRANSPOSED_LOAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr)
    q = to_fp8(tl.clamp(x * scale, -FP8_MAX, FP8_MAX), E5M2)
    if TRANSPOSED_LOAD:
        # float32 x (RMSNorm's output of the float32 residual stream): a tile loaded as float32 and transposed in
        # registers came out wrong on an H200 in every form tried (store_both, tl.trans of the float32, float8 or
        # uint8 tile: 25-37% of the transposed copy), bf16 never did; loading the tile a second time in
        # transposed order was right. The second load mostly hits L2. Likely triton-lang/triton#11111: the ptxas
        # Triton bundles for Hopper (12.9) miscompiles a float8 tile stored both ways; ptxas 13.3 does not.
        tl.store(q_ptr + offsets, q, mask=mask)
        t_mask = (cols[:, None] < N) & (rows[None, :] < M)
        xt = tl.load(x_ptr + rows[None, :].to(tl.int64) * N + cols[:, None], mask=t_mask, other=0.0).to(tl.float32)
        qt = to_fp8(tl.clamp(xt * scale, -FP8_MAX, FP8_MAX), E5M2)
        tl.store(qt_ptr + cols[:, None].to(tl.int64) * M + rows[None, :], qt, mask=t_mask)
    else:
        store_both(q_ptr, qt_ptr, q, rows, cols, offsets, M, mask)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(x)))  # non-negative floats order as their bits do


def autotuned(kernel: triton.JITFunction, configs: tuple[tuple[int, int, int], ...]) -> triton.runtime.Autotuner:
    """`kernel` under Triton's autotuner over (BLOCK_M, BLOCK_N, warps) configs, keyed by shape."""
    return triton.autotune([triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn), num_warps=w) for bm, bn, w in configs],
                           key=["M", "N"])(kernel)
