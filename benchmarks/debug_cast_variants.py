"""Which way of writing the cast kernel's two layouts is right for float32 inputs on the GPU (NOTES 42): call 41
found both store_both and a float32 tl.trans wrong there, right for bf16. Each variant against the reference
(cast_both_reference), the row-major and transposed outputs counted apart. Debugging only; prints."""

import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cs336_basics.precision.fp8_cast import cast_both_reference  # noqa: E402
from cs336_basics.precision.fp8_head import E4M3, E4M3_MAX  # noqa: E402
from cs336_basics.precision.fp8_triton import store_both, this_tile  # noqa: E402


@triton.jit
def variant_kernel(x_ptr, scale_ptr, q_ptr, qt_ptr, M, N, HOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, cols, mask, offsets = this_tile(M, N, BLOCK_M, BLOCK_N)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = tl.clamp(x * tl.load(scale_ptr), -448.0, 448.0)
    t_offsets = cols[:, None].to(tl.int64) * M + rows[None, :]
    t_mask = (cols[:, None] < N) & (rows[None, :] < M)
    if HOW == 0:  # the kernel of call 36: the float8 tile stored both ways
        store_both(q_ptr, qt_ptr, y.to(tl.float8e4nv), rows, cols, offsets, M, mask)
    elif HOW == 1:  # call 41's: transposed in float32, cast after
        tl.store(q_ptr + offsets, y.to(tl.float8e4nv), mask=mask)
        tl.store(qt_ptr + t_offsets, tl.trans(y).to(tl.float8e4nv), mask=t_mask)
    elif HOW == 2:  # the float8 bits as uint8 (q_ptr, qt_ptr are uint8 views), stored both ways
        store_both(q_ptr, qt_ptr, y.to(tl.float8e4nv).to(tl.uint8, bitcast=True), rows, cols, offsets, M, mask)
    elif HOW == 3:  # the tile loaded a second time in transposed order, cast, stored row-major into qt
        xt = tl.load(x_ptr + rows[None, :].to(tl.int64) * N + cols[:, None], mask=t_mask, other=0.0).to(tl.float32)
        tl.store(q_ptr + offsets, y.to(tl.float8e4nv), mask=mask)
        tl.store(qt_ptr + t_offsets, tl.clamp(xt * tl.load(scale_ptr), -448.0, 448.0).to(tl.float8e4nv), mask=t_mask)
    elif HOW == 4:  # the float8 bits as uint8, transposed with tl.trans
        q = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        tl.store(q_ptr + offsets, q, mask=mask)
        tl.store(qt_ptr + t_offsets, tl.trans(q), mask=t_mask)
    else:  # the float8 tile transposed with tl.trans (call 33's explicit variant)
        q = y.to(tl.float8e4nv)
        tl.store(q_ptr + offsets, q, mask=mask)
        tl.store(qt_ptr + t_offsets, tl.trans(q), mask=t_mask)


def main() -> None:
    dev = os.environ.get("DEVICE", "cuda")
    M, N = (16384, 896) if dev == "cuda" else (100, 72)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(M, N, device=dev, generator=torch.Generator(device=dev).manual_seed(0)) * 2.0).to(dtype)
        s = E4M3_MAX / x.float().abs().max()
        want_q, want_qt, _ = cast_both_reference(x, s, False)
        for how in range(6):
            for bm, bn, w in ((64, 64, 4), (128, 64, 8), (32, 128, 4), (128, 32, 4)):
                q, qt = torch.empty(M, N, dtype=E4M3, device=dev), torch.empty(N, M, dtype=E4M3, device=dev)
                ptrs = (q.view(torch.uint8), qt.view(torch.uint8)) if how in (2, 4) else (q, qt)
                variant_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](x, s.reshape(1), *ptrs, M, N, HOW=how,
                                                                         BLOCK_M=bm, BLOCK_N=bn, num_warps=w)
                differ = [float((a.view(torch.uint8) != b.view(torch.uint8)).float().mean()) for a, b in ((q, want_q), (qt, want_qt))]
                print(f"{str(dtype)[6:]:8} variant {how} {bm}x{bn} w{w}: share differing row-major {differ[0]:.4f}, "
                      f"transposed {differ[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
