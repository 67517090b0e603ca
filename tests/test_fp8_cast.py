"""Our float8 cast kernel (cs336_basics/precision/fp8_cast.py): its PyTorch reference, the delayed layer and the
fused SwiGLU with the cast through it (on CPU the reference runs: the same numbers as inductor's path, exactly),
and every kernel of fp8_triton.py in Triton's CPU interpreter where Triton is installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cs336_basics.precision.float8 import E4M3, E4M3_MAX, E5M2, E5M2_MAX
from cs336_basics.precision.fp8_cast import cast_both_reference

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("e5m2", [False, True], ids=["e4m3", "e5m2"])
def test_reference_casts_both_layouts_saturates_and_keeps_the_unscaled_amax(e5m2):
    torch.manual_seed(0)
    x = (torch.randn(24, 40) * 3).bfloat16()
    top = float(x.float().abs().max())
    fp8_max = E5M2_MAX if e5m2 else E4M3_MAX
    q, qt, amax = cast_both_reference(x, torch.tensor(2 * fp8_max / top), e5m2)  # half the range saturates
    assert q.dtype == qt.dtype == (E5M2 if e5m2 else E4M3) and q.shape == (24, 40) and qt.shape == (40, 24)
    assert qt.is_contiguous() and torch.equal(qt.float(), q.float().t())
    assert float(amax) == top and float(q.float().abs().max()) == fp8_max and torch.isfinite(q.float()).all()


def test_kernels_refuse_what_was_not_checked_on_the_gpu():
    """The kernels' launch check: contiguous 2-D tensors of one shape, of the dtypes checked on the GPU: bf16, and
    for the cast float32 too (whose tiles needed their own transpose on the GPU)."""
    from cs336_basics.precision.fp8_cast import check_2d

    a = torch.zeros(4, 8, dtype=torch.bfloat16)
    check_2d(a, a.clone())
    check_2d(a.float(), dtypes=(torch.bfloat16, torch.float32))
    with pytest.raises(ValueError, match="takes torch.bfloat16 tensors"):
        check_2d(a, a.float())
    with pytest.raises(ValueError, match="one shape"):
        check_2d(a, a.t())


def _layers(kernel_casts: str, seed: int = 0):
    from cs336_basics.model.transformer import FeedForward, ModelConfig
    from cs336_basics.precision.fp8_delayed import Float8DelayedLinear
    from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU

    torch.manual_seed(seed)
    ffn = FeedForward(ModelConfig(dim=32, intermediate_size=80))
    w1, w3, w2 = (Float8DelayedLinear(getattr(ffn, n), emulate=True, kernel_casts=kernel_casts) for n in ("w1", "w3", "w2"))
    for m, x_scale, g_scale in ((w1, 200.0, 3e6), (w3, 200.0, 4e6), (w2, 300.0, 5e6)):
        m.x_scale.fill_(x_scale)
        m.g_scale.fill_(g_scale)
    return w1, Float8DelayedSwiGLU(w1, w3, w2)


@pytest.mark.parametrize("which", ["layer", "fused SwiGLU"])
def test_cast_through_the_op_gives_the_same_numbers(which):
    """On CPU the op runs the reference: the layer and the fused SwiGLU must give bit for bit what they give
    with inductor's path (outputs, every gradient, the amaxes), so only the kernel can differ on a GPU."""
    results = []
    for kernel_casts in ("none", "inputs", "grads", "all"):
        layer, fused = _layers(kernel_casts)
        module = layer if which == "layer" else fused
        x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
        dy = torch.randn(2, 12, module(x).shape[-1], generator=torch.Generator().manual_seed(2)) * 1e-3
        x.grad = None
        module(x).backward(dy)
        params = [p.grad for p in module.parameters()]
        fp8_layers = [m for m in module.modules() if hasattr(m, "g_amax_sink")]
        results.append([module(x).detach(), x.grad, *params, *(m.g_amax_sink.grad for m in fp8_layers),
                        *(m.x_amax for m in fp8_layers)])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("which", ["layer", "fused SwiGLU"])
def test_under_autocast_the_kernel_casts_the_input_from_bf16(which):
    """With kernel_casts all, a float32 input under autocast is rounded to bf16 before the cast (as TorchAO's
    Float8Linear does): the same numbers as inductor's path given that bf16 input, bit for bit."""
    outs = []
    for kernel_casts, to_bf16 in (("all", False), ("none", True)):
        layer, fused = _layers(kernel_casts)
        module = layer if which == "layer" else fused
        x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", torch.bfloat16):
            outs.append(module(x.bfloat16() if to_bf16 else x).float())
    assert torch.equal(*outs)


INTERPRETED = """
import torch
from cs336_basics.precision import swiglu_fp8 as S
from cs336_basics.precision.float8 import E4M3, E4M3_MAX, E5M2, E5M2_MAX
from cs336_basics.precision.fp8_cast import cast_both_reference, launch
torch.manual_seed(0)
M, N = 100, 72  # ragged against every tile below
dg, h1, h3 = ((torch.randn(M, N) * s).bfloat16() for s in (1e-3, 2.0, 2.0))
s, s1, s3 = torch.tensor(30.0), torch.tensor(5e6), torch.tensor(6e6)
for config in [(32, 32, 4), (64, 16, 4), (16, 64, 2)]:
    g8, _, g_amax = S.swiglu_forward_fp8_reference(h1, h3, s)
    out = [torch.empty(M, N, dtype=E4M3), torch.empty(N, M, dtype=E4M3), torch.zeros(1)]
    launch("swiglu_forward", config, M, N, h1, h3, s.reshape(1), *out, N, FP8_MAX=E4M3_MAX)
    assert torch.equal(out[1].view(torch.uint8), out[0].t().contiguous().view(torch.uint8)), config
    torch.testing.assert_close(out[2].reshape(()), g_amax, rtol=1e-2, atol=0)
    ref = S.swiglu_backward_fp8_reference(dg, h1, h3, s1, s3)
    out = [torch.empty(M, N, dtype=E5M2), torch.empty(N, M, dtype=E5M2), torch.empty(M, N, dtype=E5M2),
           torch.empty(N, M, dtype=E5M2), torch.zeros(2)]
    launch("swiglu_backward", config, M, N, dg, h1, h3, torch.stack([s1, s3]), *out, N, N, FP8_MAX=E5M2_MAX)
    for rows, cols in ((0, 1), (2, 3)):
        assert torch.equal(out[cols].view(torch.uint8), out[rows].t().contiguous().view(torch.uint8)), config
    torch.testing.assert_close(out[4], ref[4], rtol=1e-2, atol=0)
    # the interpreter rounds to fp8 by truncation, the GPU to nearest: values within two steps of the reference
    for got, want, (step, smallest) in ((out[0], ref[0], (0.25, 2**-16)), (out[2], ref[2], (0.25, 2**-16))):
        gap = (got.float() - want.float()).abs() / (want.float().abs() * step).clamp(min=smallest)
        assert float(gap.max()) <= 2, (config, float(gap.max()))
    # w1 | w3 as one product: h1 and h3 the halves of (M, 2N), the gradients into the halves of (M, 2N) and (2N, M)
    h13 = torch.cat([h1, h3], dim=1)
    out = [torch.empty(M, N, dtype=E4M3), torch.empty(N, M, dtype=E4M3), torch.zeros(1)]
    launch("swiglu_forward", config, M, N, *S.split_halves(h13), s.reshape(1), *out, 2 * N, FP8_MAX=E4M3_MAX)
    want = [torch.empty(M, N, dtype=E4M3), torch.empty(N, M, dtype=E4M3), torch.zeros(1)]
    launch("swiglu_forward", config, M, N, h1, h3, s.reshape(1), *want, N, FP8_MAX=E4M3_MAX)
    assert all(torch.equal(a.view(torch.uint8) if a.dtype == E4M3 else a, b.view(torch.uint8) if b.dtype == E4M3 else b)
               for a, b in zip(out, want)), config
    d13, d13t, amax13 = torch.empty(M, 2 * N, dtype=E5M2), torch.empty(2 * N, M, dtype=E5M2), torch.zeros(2)
    launch("swiglu_backward", config, M, N, dg, *S.split_halves(h13), torch.stack([s1, s1]), d13[:, :N], d13t[:N],
           d13[:, N:], d13t[N:], amax13, 2 * N, 2 * N, FP8_MAX=E5M2_MAX)
    want = [torch.empty(M, N, dtype=E5M2), torch.empty(N, M, dtype=E5M2), torch.empty(M, N, dtype=E5M2),
            torch.empty(N, M, dtype=E5M2), torch.zeros(2)]
    launch("swiglu_backward", config, M, N, dg, h1, h3, torch.stack([s1, s1]), *want, N, N, FP8_MAX=E5M2_MAX)
    assert torch.equal(d13.view(torch.uint8), torch.cat([want[0], want[2]], dim=1).view(torch.uint8)), config
    assert torch.equal(d13t.view(torch.uint8), torch.cat([want[1], want[3]]).view(torch.uint8)), config
    assert torch.equal(amax13, want[4]), config
    for e5m2, scale, x in ((False, s, h1), (False, s, h1.float() * 1.001), (True, s1, dg)):  # float32 in too
        want = cast_both_reference(x, scale, e5m2)
        out = [torch.empty(M, N, dtype=want[0].dtype), torch.empty(N, M, dtype=want[0].dtype), torch.zeros(1)]
        launch("cast", config, M, N, x, scale.reshape(1), *out, FP8_MAX=E5M2_MAX if e5m2 else E4M3_MAX, E5M2=e5m2,
               TRANSPOSED_LOAD=x.dtype == torch.float32)
        assert torch.equal(out[1].view(torch.uint8), out[0].t().contiguous().view(torch.uint8)), config
        torch.testing.assert_close(out[2].reshape(()), want[2], rtol=0, atol=0)
        step = 0.25 if e5m2 else 0.125
        gap = (out[0].float() - want[0].float()).abs() / (want[0].float().abs() * step).clamp(min=2**-16 if e5m2 else 2**-9)
        assert float(gap.max()) <= 4, (config, e5m2, float(gap.max()))  # e4m3 truncated: up to 4 (sub)normal steps
print("ok")
"""


def test_kernels_index_mask_and_transpose_in_tritons_interpreter():
    """Every kernel of fp8_triton.py in Triton's CPU interpreter: where each tile reads and writes (ragged edges
    masked), both layouts holding the same values, the amaxes. Needs Triton, which the CPU lock file leaves out
    (`pip install triton` to run it); on a GPU benchmarks/kernel_swiglu_fp8.py checks the values too."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_kernels_compile_for_hopper():
    """Every kernel of fp8_triton.py compiled for sm90 (to a cubin, with Triton's own ptxas; no GPU needed) with
    each input dtype and constant the launchers pass. Triton's interpreter accepts code the compiler refuses: an
    e5m2 cast written as a jit helper returning two float8 types did not compile, which this catches."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cs336_basics.precision import fp8_triton as k

    tiles = {"BLOCK_M": 64, "BLOCK_N": 64}
    cases = [(k.swiglu_forward_fp8_kernel, "h1_ptr h3_ptr".split(), "*bf16", "scale_ptr amax_ptr".split(),
              "g_ptr gt_ptr".split(), "*fp8e4nv", {"FP8_MAX": 448.0}),
             (k.swiglu_backward_fp8_kernel, "dg_ptr h1_ptr h3_ptr".split(), "*bf16", "scale_ptr amax_ptr".split(),
              "d1_ptr d1t_ptr d3_ptr d3t_ptr".split(), "*fp8e5", {"FP8_MAX": 57344.0})]
    for e5m2 in (False, True):
        for x_type in ("*bf16", "*fp32"):
            cases.append((k.cast_fp8_kernel, ["x_ptr"], x_type, "scale_ptr amax_ptr".split(), "q_ptr qt_ptr".split(),
                          "*fp8e5" if e5m2 else "*fp8e4nv",
                          {"FP8_MAX": 57344.0 if e5m2 else 448.0, "E5M2": e5m2, "TRANSPOSED_LOAD": x_type == "*fp32"}))
    for kernel, inputs, in_type, fp32_ptrs, outputs, out_type, constants in cases:
        signature = {**dict.fromkeys(inputs, in_type), **dict.fromkeys(fp32_ptrs, "*fp32"), **dict.fromkeys(outputs, out_type),
                     "M": "i32", "N": "i32", "stride_h": "i32", "stride_d": "i32", **dict.fromkeys([*constants, *tiles], "constexpr")}
        signature = {name: signature[name] for name in kernel.arg_names}  # the kernel's argument order
        compiled = triton.compile(ASTSource(kernel, signature, constexprs={**constants, **tiles}),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], (kernel.fn.__name__, in_type, constants)


