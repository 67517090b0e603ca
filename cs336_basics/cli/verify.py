"""Checks that float8 training works on this machine, each printed as PASS, FAIL or SKIP with its figure.

cs336-verify and verify_fp8_compilation.py end with "N passed, N failed, N skipped"; the exit status is 1 on a
FAIL.

On a GPU with float8 tensor cores it uses the real fp8 kernels and also times FP8+compile against FP8 eager
and BF16+compile (each in its own process, as the benchmark matrix runs its rows); elsewhere it runs the same
numerics through emulation and skips the timings. Training goes through prepare_model and the Trainer, as
cs336-train builds and steps a model.

    python verify_fp8_compilation.py [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cs336_basics.cli import run_main
from cs336_basics.config import Config, Fp8Config, RunConfig, TrainConfig, with_overrides
from cs336_basics.data.batches import RandomWindows
from cs336_basics.data.corpus import write_default_corpus
from cs336_basics.model.transformer import ModelConfig, Transformer
from cs336_basics.perf.hardware import supports_fp8
from cs336_basics.precision.converters import Float8Converter
from cs336_basics.precision.fp8 import is_float8_model
from cs336_basics.training.attention import attention_context
from cs336_basics.training.prepare import PreparedModel, prepare_model, resolve_config
from cs336_basics.training.trainer import Trainer

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


TRAIN_STEPS = 40


def quiet(message: str) -> None:
    """The converters' and the Trainer's log lines: the checks print their own."""


def check_model(device: torch.device) -> ModelConfig:
    if device.type == "cuda":  # the seed model's widths, fewer layers, so kernels run at realistic shapes
        return ModelConfig(vocab_size=8192, context_length=512, dim=896, n_layers=4, n_heads=14, intermediate_size=3584)
    return ModelConfig(vocab_size=256, context_length=64, dim=64, n_layers=2, n_heads=4, intermediate_size=128)


def tensorwise_fp8(emulate: bool) -> Fp8Config:
    """What float8 training converts to with TorchAO's tensorwise recipe, the head in float8 too."""
    return Fp8Config(enabled=True, recipe="tensorwise", emulate=emulate, head=True)


def delayed_fp8(emulate: bool) -> Fp8Config:
    """Our delayed-scaling layers one by one (no fused SwiGLU), inductor's casts, weights cast once per step and,
    with real kernels, the forward products with fast accumulation."""
    return Fp8Config(enabled=True, recipe="delayed", emulate=emulate, fused_swiglu=False, merge_w13=False,
                     kernel_casts="none", fast_accum=not emulate, weight_cache=True)


def check_config(device: torch.device, fp8: Fp8Config, steps: int = TRAIN_STEPS) -> Config:
    """A short compiled float8 training run of the check model on `device`, resolved as cs336-train resolves one."""
    train = TrainConfig(batch_size=8, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=5, compile_model=True,
                        gradient_checkpointing=False, use_flash_attn=device.type == "cuda", eval_steps=2)
    config = Config(model=check_model(device), train=train, fp8=fp8, run=RunConfig(device=str(device)))
    return resolve_config(config, device)


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
        layer.kernel_casts = "none" if emulate else Fp8Config().kernel_casts  # the default: all
        layer.fast_accum = not emulate  # the default with the delayed recipe (Fp8Config.fast_accum)
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
                          "w1 | w3 as one product (the default), to float32 (the three layers: "
                          + ", ".join(f"{e:.1e}" for e in layers) + f"; bounds {MERGED_SLACK}x theirs + 1e-3)")
    # one's figure whole: its bounds, and a NaN or inf if one came out
    return Check(name, one.passed and two.passed,
                 f"{two.figure}; {one.figure}" + ("" if one.passed else " (over its bounds)"))


def short_compiled_training(config: Config, tokens: np.ndarray, device: torch.device,
                            tmp_dir: Path) -> tuple[PreparedModel, list[float]]:
    """The model of `config` built by prepare_model (converted, compiled) from the initial weights of the check's
    reference model (seed 0), then config.train.max_steps steps of the Trainer (learning-rate warm-up over the
    first 6); the prepared model and the steps' losses."""
    torch.manual_seed(0)
    prepared = prepare_model(config, device, log=quiet)
    train = config.train
    trainer = Trainer(prepared, config, RandomWindows(tokens, train.batch_size, config.model.context_length, seed=1),
                      tokens[:4096], device, tmp_dir, log=quiet)
    with attention_context(train.use_flash_attn, train.fused_attention):
        losses = [trainer.train_step(train.lr if step > 5 else train.lr * (step + 1) / 6)[0].item()
                  for step in range(train.max_steps)]
    return prepared, losses


def check_delayed_scaling(bf16_model: Transformer, x: torch.Tensor, y: torch.Tensor, ref_grads: dict[str, torch.Tensor],
                          tokens: np.ndarray, config: Config, device: torch.device, tmp_dir: Path) -> Check:
    """The default recipe in one process (fp8_delayed.py, our own layer, not TorchAO's), converted by the
    Float8Converter of `config`: after its calibration step its gradients against bf16's (the thresholds above),
    then compiled training steps that lower the loss."""
    name = "delayed scaling (default recipe): gradients, compiled training"
    model = copy.deepcopy(bf16_model)
    converter = Float8Converter(config.fp8, device, log=quiet)
    try:
        converter.convert(model)
        converter.prepare(lambda: loss_and_grads(model, x, y, device), list(model.parameters()))  # calibration
        converter.before_step()  # the weights cast to float8 for this step
        _, grads = loss_and_grads(model, x, y, device)
        whole = whole_sqnr_db(ref_grads, grads)
        _, losses = short_compiled_training(config, tokens, device, tmp_dir)
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

    config = check_config(device, tensorwise_fp8(emulate))
    cfg = config.model
    torch.manual_seed(0)
    bf16_model = Transformer(cfg).to(device)
    fp8_model = copy.deepcopy(bf16_model)
    converter = Float8Converter(config.fp8, device, log=quiet)  # what training converts with
    converter.convert(fp8_model)
    report = converter.report
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

    # A model built, converted and compiled by prepare_model, then a short training run that must lower the loss.
    try:
        prepared, losses = short_compiled_training(config, tokens, device, tmp_dir)
        record(Check("torch.compile after FP8 conversion", is_float8_model(prepared.model) and prepared.compile_mode is not None,
                     f"{len(losses)} compiled fp8 training steps ran (torch.compile mode {prepared.compile_mode}); "
                     "Float8 modules kept"))
    except Exception as e:  # report, do not hide: the check fails with the compiler's message
        record(Check("torch.compile after FP8 conversion", False, error_line(e)))
        return checks
    first, last = first_and_last_losses(losses)
    record(Check("short FP8 training run lowers the loss", last < first - 0.5,
                 f"mean loss of steps 1-5 {first:.3f} -> steps {len(losses) - 4}-{len(losses)} {last:.3f}"))
    record(check_delayed_scaling(bf16_model, x, y, ref_grads, tokens, check_config(device, delayed_fp8(emulate)),
                                 device, tmp_dir))

    if emulate:
        record(Check("FP8+compile faster than FP8 eager", None,
                     "skipped: emulated float8 on this device says nothing about fp8 kernel speed"))
        return checks
    record(check_timings(device, log))
    return checks


def check_timings(device: torch.device, log: Callable[[str], None]) -> Check:
    """The seed model's widths at 6 layers, 16 x 1024 tokens a step: bf16 and tensorwise fp8 compiled, and fp8
    eager, each a row of the benchmark matrix in its own process."""
    from cs336_basics.cli.bench import row_spec, run_child

    name = "FP8+compile faster than FP8 eager"
    base = with_overrides(Config(), {"model.n_layers": 6, "train.batch_size": 16, "train.gradient_accumulation_steps": 1,
                                     "run.device": str(device)})
    rates = {}
    for label, mode in (("bf16+compile", "bf16-compile"), ("fp8+compile", "fp8-tensorwise-compile"),
                        ("fp8 eager", "fp8-tensorwise-eager")):
        result = run_child("cs336_basics.cli.bench_run", asdict(row_spec(base, mode, steps=10, device=device)),
                           timeout=600)
        rates[label] = result.get("tokens_per_second")
        log(f"  {label}: {rates[label] or result.get('error')} tokens/s (seed widths, 6 layers, 16 x 1024)")
    if not all(rates.values()):
        return Check(name, False, f"a timing run failed: {rates}")
    return Check(name, rates["fp8+compile"] > rates["fp8 eager"],
                 f"{rates['fp8+compile'] / rates['fp8 eager']:.2f}x; FP8+compile vs BF16+compile: "
                 f"{rates['fp8+compile'] / rates['bf16+compile']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    from cs336_basics.cli.train import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda if available)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checks = run_checks(resolve_device(args.device), Path(tmp))
    failed = [c for c in checks if c.passed is False]
    passed = sum(c.passed is True for c in checks)
    skipped = sum(c.passed is None for c in checks)
    print(f"{passed} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if failed else 0


def cli() -> int:
    return run_main(main)
