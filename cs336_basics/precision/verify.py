"""Checks that FP8 training works on this machine: each prints PASS/FAIL with its figure.

On a GPU with float8 tensor cores it uses the real fp8 kernels and also times FP8+compile against FP8 eager
and BF16+compile; elsewhere it runs the same numerics through TorchAO's emulation and skips the timings.
"""

from __future__ import annotations

import contextlib
import copy
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from cs336_basics.data.batches import RandomWindows
from cs336_basics.data.corpus import write_default_corpus
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.perf.hardware import supports_fp8
from cs336_basics.precision.fp8 import convert_model_to_fp8, is_float8_model

# Gradient SQNR thresholds. One round-to-nearest cast to a float format with m mantissa bits leaves about
# 6.02 * m + 10.8 dB (relative error uniform within half an ulp): e4m3 (forward operands) ~29 dB, e5m2
# (the tensorwise recipe's gradients) ~23 dB. A weight gradient multiplies two cast operands and the error
# of every layer above it flows back into it, so the whole gradient sits several dB under the e5m2 figure:
# measured 18.5 dB on an H200 for the 6-layer check model below (a first threshold of 20 dB, set from CPU
# emulation, failed there). 15 dB (error power 3% of the signal) keeps ~8 dB of room under one e5m2 cast.
# Single small parameters (norm gains: sums over all tokens with cancellation) go lower; 10 dB for the
# worst one. A broken scale, a transposed operand or a dropped gradient gives ~0 dB or less, or NaN.
GRAD_SQNR_DB = 15.0
WORST_PARAM_SQNR_DB = 10.0
LOSS_REL_TOL = 0.01  # fp8 and bf16 losses on the same weights and batch agree to 1%
MERGED_SLACK = 1.25  # w1 | w3 as one product: its error to float32 at most this times the three layers' (+1e-3)


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    figure: str

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"[{status}] {self.name}: {self.figure}"


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference.float() - approx.float()).norm()
    return math.inf if noise == 0 else 20 * math.log10(reference.float().norm() / noise)


def check_config(device: torch.device) -> ModelConfig:
    if device.type == "cuda":  # the seed model's widths, fewer layers, so kernels run at realistic shapes
        return ModelConfig(vocab_size=8192, context_length=512, dim=896, n_layers=4, n_heads=14, intermediate_size=3584)
    return ModelConfig(vocab_size=256, context_length=64, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def byte_corpus(tmp_dir) -> np.ndarray:
    """Real text without a tokenizer: the bytes of CPython's documentation topics (vocabulary 256)."""
    train_path, _ = write_default_corpus(tmp_dir)
    return np.frombuffer(train_path.read_bytes(), dtype=np.uint8)


def loss_and_grads(model: Transformer, x, y, device) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def whole_sqnr_db(ref_grads: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> float:
    """SQNR of all parameters' gradients together against the reference's."""
    return sqnr_db(torch.cat([ref_grads[n].flatten() for n in ref_grads]), torch.cat([grads[n].flatten() for n in ref_grads]))


def error_line(e: Exception) -> str:
    """An exception in one line for a failed check: report, do not hide."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def first_and_last_losses(losses: list[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last five steps."""
    return float(np.mean(losses[:5])), float(np.mean(losses[-5:]))


def kernels_vs_reference(name: str, device: torch.device, run: Callable[[bool], tuple[torch.Tensor, ...]],
                         labels: tuple[str, ...], bounds: tuple[float, ...], what: str) -> Check:
    """`run(emulate)` through the real `torch._scaled_mm` kernels against `run(True)`, its reference (float32
    products of the same fp8 values): each result's relative error under its bound, no NaN."""
    results = []
    for emulate in (True, False):
        try:
            results.append(run(emulate))
        except (RuntimeError, NotImplementedError) as e:  # a CPU build without a float8 matmul kernel
            return Check(name, None, f"skipped: torch._scaled_mm on {device.type}: {e}")
    reference, real = results
    return compare_results(name, real, reference, labels, bounds, what)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """|got - want| / |want| (Frobenius norms, in float32)."""
    return float((got.float() - want.float()).norm() / want.float().norm())


def compare_results(name: str, real: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...],
                    labels: tuple[str, ...], bounds: tuple[float, ...], what: str) -> Check:
    """Each of `real`'s results within its relative-error bound of `reference`'s, and no NaN or inf."""
    errors = [relative_error(a, b) for a, b in zip(real, reference)]
    finite = all(torch.isfinite(t).all() for t in real)
    passed = finite and all(e < b for e, b in zip(errors, bounds))
    return Check(name, passed, f"{what}, relative error " + ", ".join(f"{l} {e:.1e}" for l, e in zip(labels, errors))
                 + f" (bounds {', '.join(f'{b:.0e}'.replace('e-0', 'e-') for b in bounds)})" + ("" if finite else "; NaN or inf"))


def check_fp8_head(device: torch.device) -> Check:
    """The float8 head + loss through the real kernels against its reference, on fresh random inputs."""
    from cs336_basics.precision.fp8_head import linear_cross_entropy_fp8

    n, d, v = (8192, 896, 8192) if device.type == "cuda" else (256, 64, 512)
    seed = secrets.randbits(31)  # fresh inputs each run (the global torch seed is fixed above)
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=g)
    w = torch.randn(v, d, device=device, generator=g) * 0.02
    t = torch.randint(0, v, (n,), device=device, generator=g)

    def run(emulate: bool) -> tuple[torch.Tensor, ...]:
        xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = linear_cross_entropy_fp8(xe, we, t, emulate=emulate)
        loss.backward()
        return loss.detach(), xe.grad, we.grad

    return kernels_vs_reference("float8 head: kernels vs reference", device, run,
                                ("loss", "input gradient", "weight gradient"), (1e-3, 2e-2, 2e-2),
                                f"{n} tokens x {v} classes (seed {seed})")


def check_bf16_weight_gradient(device: torch.device) -> Check:
    """bf16 runs' weight gradients (bf16_cache.weight_gradient, float32 straight out of cuBLAS on a GPU) against
    the float64 product of the same bf16 operands, on fresh random inputs; autocast's bf16-rounded gradient for
    comparison (it would fail the bound)."""
    from cs336_basics.precision.bf16_cache import weight_gradient

    m, n, k = (8192, 3584, 896) if device.type == "cuda" else (512, 96, 64)
    seed = secrets.randbits(31)
    gen = torch.Generator(device).manual_seed(seed)
    g = (torch.randn(m, n, device=device, generator=gen) * 1e-3).bfloat16()
    x = torch.randn(m, k, device=device, generator=gen).bfloat16()
    want = g.t().double() @ x.double()
    rounded_error = relative_error(weight_gradient(g, x, torch.float32, float32_out=False), want)
    return compare_results("bf16 weight gradient in float32 vs reference", (weight_gradient(g, x, torch.float32, True),),
                           (want,), ("weight gradient",), (1e-4,),
                           f"{m} tokens, {n} x {k} (seed {seed}; autocast's, rounded to bf16: {rounded_error:.1e})")


def check_delayed_layer(device: torch.device) -> Check:
    """Our delayed-scaling float8 linear (fp8_delayed.py) as training runs it by default, its casts through our
    kernel (fp8_cast.py; on CPU its PyTorch reference) and its products through torch._scaled_mm, the forward one
    with fast accumulation, against the reference (PyTorch casts, float32 products), on fresh random bf16 inputs
    with scales learned from them."""
    import torch.nn as nn

    from cs336_basics.precision.fp8_cast import resolve_kernel_casts
    from cs336_basics.precision.fp8_delayed import DelayedScaling, convert_to_delayed_float8

    n, k, m = (8192, 896, 3584) if device.type == "cuda" else (256, 64, 128)
    seed = secrets.randbits(31)
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(n, k, device=device, generator=g).bfloat16()
    w = torch.randn(m, k, device=device, generator=g) * 0.02
    grad_y = (torch.randn(n, m, device=device, generator=g) * 1e-3).bfloat16()

    def run(emulate: bool) -> tuple[torch.Tensor, ...]:
        model = nn.Sequential(nn.Linear(k, m, bias=False, device=device))
        with torch.no_grad():
            model[0].weight.copy_(w)
        convert_to_delayed_float8(model, {"0"}, emulate)
        layer = model[0]
        layer.kernel_casts = "none" if emulate else resolve_kernel_casts("auto", "delayed")  # the default: all
        layer.fast_accum = not emulate  # the default with the delayed recipe (setup.build_model)
        xe = x.clone().requires_grad_()
        DelayedScaling(model).calibrate(lambda: layer(xe).backward(grad_y), [layer.weight])
        xe.grad = None
        y = layer(xe)
        y.backward(grad_y)
        return y.detach(), xe.grad, layer.weight.grad

    return kernels_vs_reference("delayed float8 layer: kernels vs reference", device, run,
                                ("output", "input gradient", "weight gradient"), (2e-2, 2e-2, 2e-2),
                                f"{n} tokens, {k} -> {m}, casts by our kernel, fast accumulation (seed {seed})")


def check_swiglu_kernels(device: torch.device) -> Check:
    """The fused float8 SwiGLU (swiglu_fp8.py: our Triton kernels on CUDA) against the three delayed float8
    layers it replaces, with the same scales, on fresh random inputs: output and every gradient within a
    relative bound (the two paths round the SwiGLU products differently before the fp8 casts), no NaN. As
    training runs it by default, w1 | w3 as one product, it rounds w3's or w1's gradient under the other's scale,
    so it is held to float32 instead: each result's error to the float32 computation at most MERGED_SLACK times
    the three layers' (plus 1e-3)."""
    from cs336_basics.model.transformer import FeedForward
    from cs336_basics.precision.fp8_delayed import DelayedScaling, convert_to_delayed_float8
    from cs336_basics.precision.swiglu_fp8 import fuse_float8_swiglu

    n, d, f = (8192, 896, 3584) if device.type == "cuda" else (256, 64, 160)
    seed = secrets.randbits(31)
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=g).bfloat16()
    grad_y = (torch.randn(n, d, device=device, generator=g) * 1e-3).bfloat16()
    model = torch.nn.Sequential(FeedForward(ModelConfig(dim=d, intermediate_size=f))).to(device)
    plain = copy.deepcopy(model)  # the float32 computation the one-product path is held to
    convert_to_delayed_float8(model, {"0.w1", "0.w3", "0.w2"}, emulate=not supports_fp8(device))
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    params = list(model.parameters())
    with autocast:
        DelayedScaling(model).calibrate(lambda: model(x).backward(grad_y), params)
    fused, merged = copy.deepcopy(model), copy.deepcopy(model)
    fuse_float8_swiglu(fused)
    fuse_float8_swiglu(merged, merge_w13=True)
    results = []
    for module in (model, fused, merged):
        xe = x.clone().requires_grad_()
        with autocast:
            y = module(xe)
        y.backward(grad_y)
        results.append((y.detach(), xe.grad, *(p.grad for p in module.parameters())))
    xf = x.float().requires_grad_()
    yf = plain(xf)
    yf.backward(grad_y.float())
    exact = (yf.detach(), xf.grad, *(p.grad for p in plain.parameters()))
    labels = ("output", "input gradient", "w1 gradient", "w3 gradient", "w2 gradient")
    kernels = "Triton kernels" if device.type == "cuda" else "the PyTorch references (the kernels need CUDA)"
    name = "fused fp8 SwiGLU vs the three layers"
    two = compare_results(name, results[1], results[0], labels, (5e-2,) * len(labels),
                          f"{kernels}, {n} tokens, {d} -> {f} -> {d} (seed {seed}); as two products")
    layers = [relative_error(a, b) for a, b in zip(results[0], exact)]
    one = compare_results(name, results[2], exact, labels, tuple(MERGED_SLACK * e + 1e-3 for e in layers),
                          f"w1 | w3 as one product (the default), to float32 (the three layers: "
                          + ", ".join(f"{e:.1e}" for e in layers) + f"; bounds {MERGED_SLACK}x theirs + 1e-3)")
    # one's figure whole: its bounds, and a NaN or inf if one came out
    return Check(name, one.passed and two.passed,
                 f"{two.figure}; {one.figure}" + ("" if one.passed else " (over its bounds)"))


def short_compiled_training(model: Transformer, tokens: np.ndarray, cfg: ModelConfig, device: torch.device,
                            tmp_dir, steps: int = 40) -> list[float]:
    """`steps` compiled training steps of the Trainer (warm-up over the first 6), their losses."""
    from cs336_basics.training.trainer import TrainConfig, Trainer

    train_cfg = TrainConfig(batch_size=8, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=5, compile_model=True,
                            gradient_checkpointing=False, use_flash_attn=device.type == "cuda", eval_steps=2)
    trainer = Trainer(model, train_cfg, RandomWindows(tokens, 8, cfg.context_length, seed=1), tokens[:4096],
                      device, tmp_dir, log=lambda s: None)
    return [trainer.train_step(3e-3 if step > 5 else 3e-3 * (step + 1) / 6)[0].item() for step in range(steps)]


def check_delayed_scaling(bf16_model: Transformer, x: torch.Tensor, y: torch.Tensor, ref_grads: dict[str, torch.Tensor],
                          tokens: np.ndarray, cfg: ModelConfig, device: torch.device, emulate: bool, tmp_dir) -> Check:
    """The default recipe on one GPU (fp8_delayed.py, our own layer, not TorchAO's): after its calibration step
    its gradients against bf16's (the thresholds above), then compiled training steps that lower the loss."""
    from cs336_basics.precision.fp8_delayed import DelayedScaling

    name = "delayed scaling (default recipe): gradients, compiled training"
    model = copy.deepcopy(bf16_model)
    convert_model_to_fp8(model, "delayed", emulate=emulate, head=True)
    try:
        DelayedScaling(model).calibrate(lambda: loss_and_grads(model, x, y, device), list(model.parameters()))
        _, grads = loss_and_grads(model, x, y, device)
        whole = whole_sqnr_db(ref_grads, grads)
        losses = short_compiled_training(model, tokens, cfg, device, tmp_dir)
    except Exception as e:  # report, do not hide: the check fails with the message
        return Check(name, False, error_line(e))
    first, last = first_and_last_losses(losses)
    finite = all(math.isfinite(v) for v in losses)
    return Check(name, whole >= GRAD_SQNR_DB and finite and last < first - 0.5,
                 f"gradients {whole:.1f} dB against bf16 (threshold {GRAD_SQNR_DB}); {len(losses)} compiled steps, "
                 f"mean loss of steps 1-5 {first:.3f} -> last 5 {last:.3f}")


def run_checks(device: torch.device, tmp_dir, log: Callable[[str], None] = print) -> list[Check]:
    emulate = not supports_fp8(device)
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        log(check.line())

    try:
        import torchao

        record(Check("TorchAO importable", True, f"torchao {torchao.__version__}, torch {torch.__version__}"))
    except ImportError as e:
        record(Check("TorchAO importable", False, str(e)))
        return checks
    mode = "real fp8 kernels" if not emulate else f"emulated (no fp8 tensor cores on {device.type})"
    log(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; float8: {mode}")

    cfg = check_config(device)
    torch.manual_seed(0)
    bf16_model = Transformer(cfg).to(device)
    fp8_model = copy.deepcopy(bf16_model)
    report = convert_model_to_fp8(fp8_model, "tensorwise", emulate=emulate, head=True)  # what training converts
    n_float8 = sum(1 for m in fp8_model.modules() if type(m).__name__ == "Float8Linear")
    record(Check("Float8 modules after conversion", n_float8 > 0 and report.fp8_head,
                 f"{n_float8} Float8Linear of {report.total} linear layers, output head + loss in float8"))

    tokens = byte_corpus(tmp_dir)
    if cfg.vocab_size != 256:
        tokens = tokens.astype(np.uint32)
    x, y = RandomWindows(tokens, 8, cfg.context_length, seed=0).next_batch(device)
    ref_loss, ref_grads = loss_and_grads(bf16_model, x, y, device)
    fp8_loss, fp8_grads = loss_and_grads(fp8_model, x, y, device)
    rel = abs(fp8_loss - ref_loss) / abs(ref_loss)
    record(Check("FP8 vs BF16 loss, same weights and batch", rel < LOSS_REL_TOL,
                 f"{fp8_loss:.5f} vs {ref_loss:.5f} (relative difference {rel:.2e}, tolerance {LOSS_REL_TOL})"))
    whole = whole_sqnr_db(ref_grads, fp8_grads)
    worst_name, worst = min(((n, sqnr_db(ref_grads[n], fp8_grads[n])) for n in ref_grads), key=lambda t: t[1])
    record(Check("FP8 vs BF16 gradients (SQNR)", whole >= GRAD_SQNR_DB and worst >= WORST_PARAM_SQNR_DB,
                 f"all parameters {whole:.1f} dB (threshold {GRAD_SQNR_DB}); worst single parameter {worst:.1f} dB "
                 f"at {worst_name} (threshold {WORST_PARAM_SQNR_DB})"))

    record(check_fp8_head(device))
    record(check_delayed_layer(device))
    record(check_swiglu_kernels(device))
    record(check_bf16_weight_gradient(device))

    # Compile after conversion, then a short training run that must lower the loss.
    try:
        losses = short_compiled_training(fp8_model, tokens, cfg, device, tmp_dir)
        record(Check("torch.compile after FP8 conversion", is_float8_model(fp8_model),
                     f"{len(losses)} compiled fp8 training steps ran; Float8 modules kept"))
    except Exception as e:  # report, do not hide: the check fails with the compiler's message
        record(Check("torch.compile after FP8 conversion", False, error_line(e)))
        return checks
    first, last = first_and_last_losses(losses)
    record(Check("short FP8 training run lowers the loss", last < first - 0.5,
                 f"mean loss of steps 1-5 {first:.3f} -> steps 36-40 {last:.3f}"))
    record(check_delayed_scaling(bf16_model, x, y, ref_grads, tokens, cfg, device, emulate, tmp_dir))

    if emulate:
        record(Check("FP8+compile faster than FP8 eager", None,
                     "skipped: emulated float8 on this device says nothing about fp8 kernel speed"))
        return checks
    from cs336_basics.perf.bench_run import BenchSpec
    from cs336_basics.perf.matrix import run_child

    timing_cfg = ModelConfig(vocab_size=50304, context_length=1024, dim=896, n_layers=6, n_heads=14, intermediate_size=3584)
    rates = {}
    for name, precision, compiled in (("bf16+compile", "bf16", True), ("fp8+compile", "fp8-tensorwise", True),
                                      ("fp8 eager", "fp8-tensorwise", False)):
        spec = BenchSpec(name=name, model=asdict(timing_cfg), batch_size=16, precision=precision, compiled=compiled, steps=10)
        result = run_child("cs336_basics.perf.bench_run", asdict(spec), timeout=600)
        rates[name] = result.get("tokens_per_second")
        log(f"  {name}: {rates[name] or result.get('error')} tokens/s (seed widths, 6 layers, 16 x 1024)")
    if all(rates.values()):
        record(Check("FP8+compile faster than FP8 eager", rates["fp8+compile"] > rates["fp8 eager"],
                     f"{rates['fp8+compile'] / rates['fp8 eager']:.2f}x; FP8+compile vs BF16+compile: "
                     f"{rates['fp8+compile'] / rates['bf16+compile']:.2f}x"))
    else:
        record(Check("FP8+compile faster than FP8 eager", False, f"a timing run failed: {rates}"))
    return checks
