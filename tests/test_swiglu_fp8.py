"""SwiGLU's fp8 backward (cs336_basics/precision/swiglu_fp8.py): the PyTorch reference the Triton kernel is
checked against on the GPU (benchmarks/kernel_swiglu_fp8.py), and the CPU path."""

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cs336_basics.precision.fp8_head import E5M2, E5M2_MAX
from cs336_basics.precision.swiglu_fp8 import swiglu_backward, swiglu_backward_fp8, swiglu_backward_fp8_reference

ROOT = Path(__file__).resolve().parents[1]


def test_swiglu_backward_is_autograds():
    torch.manual_seed(0)
    h1, h3 = (torch.randn(8, 24, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dg = torch.randn(8, 24, dtype=torch.float64)
    (F.silu(h1) * h3).backward(dg)
    dh1, dh3 = swiglu_backward(dg, h1.detach(), h3.detach())
    torch.testing.assert_close(dh1.double(), h1.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dh3.double(), h3.grad, rtol=1e-6, atol=1e-7)


def test_reference_casts_both_layouts_saturates_and_keeps_the_unscaled_amax():
    torch.manual_seed(1)
    dg, h1, h3 = ((torch.randn(32, 48) * s).bfloat16() for s in (1e-3, 2.0, 2.0))
    dh1, dh3 = swiglu_backward(dg, h1, h3)
    assert dh1.dtype == torch.bfloat16
    amax1, amax3 = float(dh1.float().abs().max()), float(dh3.float().abs().max())
    s1, s3 = torch.tensor(E5M2_MAX / amax1), torch.tensor(4 * E5M2_MAX / amax3)  # dh3: a quarter of its range saturates
    d1, d1t, d3, d3t, amax = swiglu_backward_fp8_reference(dg, h1, h3, s1, s3)
    assert d1.dtype == d3.dtype == E5M2 and d1.shape == (32, 48) and d1t.shape == (48, 32) and d1t.is_contiguous()
    assert torch.equal(d1t.float(), d1.float().t()) and torch.equal(d3t.float(), d3.float().t())
    assert amax.tolist() == [amax1, amax3]  # of the gradients, not of their scaled copies
    assert torch.isfinite(d3.float()).all() and float(d3.float().abs().max()) == E5M2_MAX
    torch.testing.assert_close(d1.float() / s1, dh1.float(), rtol=0.13, atol=0)  # e5m2: 2 mantissa bits
    assert (dh3.float().abs() * s3 > E5M2_MAX).float().mean() > 0.01


def test_off_cuda_the_reference_runs():
    dg, h1, h3 = (torch.randn(4, 8).bfloat16() for _ in range(3))
    s = torch.tensor(1e4)
    for got, want in zip(swiglu_backward_fp8(dg, h1, h3, s, s), swiglu_backward_fp8_reference(dg, h1, h3, s, s)):
        assert torch.equal(got.float(), want.float())


def test_kernel_bench_without_a_gpu_is_a_one_line_error():
    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_swiglu_fp8.py")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == "error: kernel_swiglu_fp8.py times a Triton kernel: it needs a CUDA GPU"
