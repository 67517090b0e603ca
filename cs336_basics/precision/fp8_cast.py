"""Float8 casts as Triton kernels of ours: the launcher shared by every kernel in fp8_triton.py, the run-time
comparison of a kernel's outputs with its reference's, and the cast of one tensor into float8 in both layouts
with its amax.

A delayed-scaling float8 layer casts its input (e4m3) and its output gradient (e5m2) once row-major, for one
matmul, and once transposed, for the weight gradient's (cuBLAS wants the second operand column-major on
Hopper), and keeps the unscaled amax for the scale history. Inductor fuses these into the kernel that produces
the tensor (RMSNorm, its backward with the residual add, ...), but as row reductions (for the amax) whose
transposed stores are strided: at the seed size the RMSNorm kernels carrying casts measured about twice as slow
as bf16's norms. `cast_both_layouts` does the cast as an opaque op instead: one pass in 2-D tiles, each tile
loaded once and stored both ways with coalesced stores, the amax by one atomic max a tile. The producer then
writes its bf16 result plainly, and the op reads it once more: more bytes, fewer wasted cycles.
The config's fp8.kernel_casts chooses which casts (none, inputs, grads, all); the delayed recipe's default is
all of them: on the bf16 residual stream the fastest measured at the seed size, and
faster than inductor's casts at 1B (see docs/log.md). The layers hand it bf16 under autocast (a float32 RMSNorm
output is rounded to bf16 first, as TorchAO's Float8Linear does); float32 inputs take a slower path in the
kernel, the only one that came out right with the H200's Triton.

The `_reference` function is the same computation in PyTorch ops: the CPU path, and what the kernel is
checked against on the GPU (check_cast, before every run that uses it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from cs336_basics.precision.float8 import E4M3, E4M3_MAX, E5M2, E5M2_MAX, amax, cast_to

# (BLOCK_M, BLOCK_N, warps). Triton's autotuner times them on the first call of each shape and keeps the fastest
# (the stores are idempotent and the amax a max, so the repeated runs are harmless). At the seed shape the
# SwiGLU kernels' times differed by up to a third between these tiles.
Config = tuple[int, int, int]
CONFIGS: tuple[Config, ...] = ((64, 64, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8), (32, 128, 4), (128, 32, 4))
KERNELS = ("swiglu_forward", "swiglu_backward", "cast")
# Which of a delayed layer's casts go through cast_both_layouts: none (inductor's code, fused into the
# producers), the inputs' only (in the forward), the output gradients' only (in the backward), or all. On the
# bf16 residual stream "all" measured fastest at the seed size ("inputs" alone slower than none), and faster than
# none at 1B.
KERNEL_CASTS = ("none", "inputs", "grads", "all")


@functools.cache
def kernels() -> dict[str, Any]:
    """Each kernel of fp8_triton.py by name, and under "NAME tuned" with the autotuner over CONFIGS; compiled
    by Triton on first use (Triton comes with CUDA builds of torch, not with the CPU wheel)."""
    from cs336_basics.precision import fp8_triton

    found = {name: getattr(fp8_triton, f"{name}_fp8_kernel") for name in KERNELS}
    return found | {f"{name} tuned": fp8_triton.autotuned(kernel, CONFIGS) for name, kernel in found.items()}


def check_2d(*tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,),
             rows_may_stride: bool = False) -> None:
    """The kernels' inputs: contiguous (M, N) tensors of one shape, of the dtypes checked on the GPU for that kernel
    (a dtype's tiles can compile differently: float32 broke the transposed copies on an H200). rows_may_stride:
    or rows spaced by one common stride (the halves of an (M, 2N) array), for kernels that take a row stride."""
    shape = tensors[0].shape

    def laid_out(t: torch.Tensor) -> bool:
        if not rows_may_stride:
            return t.is_contiguous()
        return t.stride(1) == 1 and t.stride(0) == tensors[0].stride(0) >= shape[1]

    if not (len(shape) == 2 and all(t.shape == shape and laid_out(t) for t in tensors)):
        raise ValueError(f"the fp8 kernels take {'row-strided' if rows_may_stride else 'contiguous'} (M, N) tensors "
                         f"of one shape, got {[(tuple(t.shape), t.stride()) for t in tensors]}")
    if any(t.dtype not in dtypes for t in tensors):
        raise ValueError(f"this fp8 kernel takes {', '.join(map(str, dtypes))} tensors (run under autocast), "
                         f"got {[t.dtype for t in tensors]}")


STEPS = {E4M3: (0.125, 2.0**-9), E5M2: (0.25, 2.0**-16)}  # a float8 step relative to the value; the smallest subnormal


def steps_apart(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """How many steps of want's float8 format each value of got is from want's (a step: the value times
    2^-mantissa bits, or the smallest subnormal near zero); inf where got is NaN or inf and want is not."""
    relative, smallest = STEPS[want.dtype]
    gap = (got.float() - want.float()).abs().nan_to_num(nan=float("inf"))
    return gap / torch.clamp(relative * want.float().abs(), min=smallest)


def compare_fp8(name: str, got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> list[str]:
    """What is wrong in a kernel's outputs (row-major, transposed pairs of float8 tensors, then the amax(es))
    against its reference's: a transposed copy not byte-equal to its row-major copy transposed, a value more
    than one float8 step from the reference, an amax more than 1% off (one bf16 rounding of the largest value
    may differ between kernel and reference). The run-time checks' comparison."""
    *layouts, got_amax = got
    problems = []
    for i in range(0, len(layouts), 2):
        rows, cols, want_rows = layouts[i], layouts[i + 1], want[i]
        if not torch.equal(cols.view(torch.uint8), rows.t().contiguous().view(torch.uint8)):
            share = float((cols.view(torch.uint8) != rows.t().view(torch.uint8)).float().mean())
            problems.append(f"{name} output {i // 2}: the transposed copy differs from the row-major one in {share:.1%}")
        if not bool((steps_apart(rows, want_rows) <= 1).all()):
            problems.append(f"{name} output {i // 2}: values more than one float8 step from the reference")
    if not torch.allclose(got_amax.float(), want[-1].float(), rtol=1e-2, atol=0):
        problems.append(f"{name}: amax {got_amax.tolist()} where the reference has {want[-1].tolist()}")
    return problems


def launch(name: str, config: Config | None, M: int, N: int, *args: Any, **constants: Any) -> None:
    """Run kernel `name` over an (M, N) grid of tiles: with `config`, or the autotuner's choice if None."""
    if config is None:
        grid = lambda meta: (-(-M // meta["BLOCK_M"]), -(-N // meta["BLOCK_N"]))  # noqa: E731
        kernels()[f"{name} tuned"][grid](*args, M, N, **constants)
    else:
        bm, bn, warps = config
        kernels()[name][(-(-M // bm), -(-N // bn))](*args, M, N, **constants, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)


def cast_both_reference(x: torch.Tensor, scale: torch.Tensor, e5m2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x * scale in float8 (M, N), the same transposed (N, M), amax of x (0-dim fp32)): e5m2 or e4m3, saturating."""
    x8 = cast_to(x, scale, E5M2 if e5m2 else E4M3, E5M2_MAX if e5m2 else E4M3_MAX)
    return x8, x8.t().contiguous(), amax(x)


def cast_both(x: torch.Tensor, scale: torch.Tensor, e5m2: bool, config: Config | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As cast_both_reference, one Triton kernel on CUDA tensors (the reference elsewhere); `config` picks the
    tile (else the autotuner does)."""
    if x.device.type != "cuda":
        return cast_both_reference(x, scale, e5m2)
    check_2d(x, dtypes=(torch.bfloat16, torch.float32))
    M, N = x.shape
    dtype = E5M2 if e5m2 else E4M3
    x8, x8t = torch.empty(M, N, dtype=dtype, device=x.device), torch.empty(N, M, dtype=dtype, device=x.device)
    amax_x = torch.zeros(1, dtype=torch.float32, device=x.device)
    launch("cast", config, M, N, x, scale.float().reshape(1), x8, x8t, amax_x, FP8_MAX=E5M2_MAX if e5m2 else E4M3_MAX,
           E5M2=e5m2, TRANSPOSED_LOAD=x.dtype == torch.float32)
    return x8, x8t, amax_x.reshape(())


def check_cast(M: int, N: int, e5m2: bool, device: torch.device, seed: int = 0) -> list[str]:
    """The cast as training runs it (the autotuner's tile, bf16 in) at one of the run's shapes, on seeded random
    inputs of an activation's (e4m3) or a gradient's (e5m2) magnitudes, against the reference (compare_fp8).
    On a CPU both sides are the reference."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(M, N, device=device, generator=g) * (1e-3 if e5m2 else 2.0)).bfloat16()
    scale = (E5M2_MAX if e5m2 else E4M3_MAX) / amax(x)
    return compare_fp8(f"cast {'e5m2' if e5m2 else 'e4m3'} {M} x {N}", cast_both(x, scale, e5m2),
                       cast_both_reference(x, scale, e5m2))


# An opaque op for torch.compile and CUDA graphs: one node in the graph, the kernel (or on CPU the reference) inside.
@torch.library.custom_op("cs336::cast_fp8_both", mutates_args=())
def _cast_both_op(x: torch.Tensor, scale: torch.Tensor, e5m2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cast_both(x, scale, e5m2)


@_cast_both_op.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, e5m2: bool):
    M, N = x.shape
    dtype = E5M2 if e5m2 else E4M3
    return x.new_empty(M, N, dtype=dtype), x.new_empty(N, M, dtype=dtype), x.new_empty((), dtype=torch.float32)


def cast_both_layouts(x: torch.Tensor, scale: torch.Tensor, e5m2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, N) scaled into float8 (e5m2 or e4m3, saturating) row-major and transposed (N, M), and amax of x:
    in one pass through our kernel on a GPU, as an opaque op under torch.compile."""
    return _cast_both_op(x.contiguous(), scale, e5m2)
