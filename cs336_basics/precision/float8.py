"""Float8 primitives shared by the float8 kernels (fp8_cast.py, fp8_triton.py) and layers (fp8_delayed.py,
fp8_head.py, swiglu_fp8.py): the two formats and their largest values, the saturating cast, the dynamic
tensorwise cast, the amax, and the scaled matrix product. Imports only torch.

`scaled_mm(..., emulate=True)` computes the product as a float32 matmul of the dequantised float8 values: exact
float8 numerics on any device, which is what the CPU tests run.
"""

from __future__ import annotations

import torch

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
E4M3_MAX, E5M2_MAX = torch.finfo(E4M3).max, torch.finfo(E5M2).max


def cast_to(x: torch.Tensor, scale: torch.Tensor | float, dtype: torch.dtype, max_value: float) -> torch.Tensor:
    """x * scale in float8, saturating."""
    return (x.float() * scale).clamp(-max_value, max_value).to(dtype)


def to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic tensorwise e4m3 cast: (x * scale in fp8, 1 / scale), scale = 448 / amax(x)."""
    amax = x.detach().abs().amax().float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return cast_to(x, scale, E4M3, E4M3_MAX), scale.reciprocal()


def amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a float32 scalar, reduced per row first (the same rows the cast walks, so the compiler can
    put both in one kernel), then over rows."""
    return x.detach().abs().amax(dim=-1).amax().float()


def scaled_mm(a: torch.Tensor, b: torch.Tensor, inv_a: torch.Tensor, inv_b: torch.Tensor,
              out_dtype: torch.dtype, emulate: bool, fast_accum: bool = False) -> torch.Tensor:
    """(a * inv_a) @ (b * inv_b) for fp8 a (M, K) row-major and b (K, N) column-major, in out_dtype.
    fast_accum: cuBLAS's fast accumulation (the tensor cores' own accumulator, without its periodic promotion to
    float32), as TorchAO's Float8Linear uses for the forward product; emulation computes in float32 either way."""
    if emulate:
        return ((a.float() @ b.float()) * (inv_a * inv_b)).to(out_dtype)
    return torch._scaled_mm(a, b, scale_a=inv_a, scale_b=inv_b, out_dtype=out_dtype, use_fast_accum=fast_accum)


def column_major(t: torch.Tensor) -> torch.Tensor:
    """t with the same shape and values, laid out column-major (cuBLAS wants the second operand of a float8
    product so on Hopper)."""
    return t.t().contiguous().t()
