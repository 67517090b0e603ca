"""Why the -castall bench rows of call 36 ended with a NaN loss (NOTES 42): one float8 layer and one fused SwiGLU
with kernel_casts all against none (eager, compiled, compiled with CUDA graphs; bf16 and fp32 inputs), then a
few training steps of the small preset in each mode with the loss of every step and the first non-finite
amax. Debugging only; prints, writes nothing."""

import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cs336_basics.data.batches import RandomWindows
from cs336_basics.model.transformer import PRESETS, FeedForward, ModelConfig
from cs336_basics.precision.fp8_delayed import Float8DelayedLinear
from cs336_basics.precision.swiglu_fp8 import Float8DelayedSwiGLU
from cs336_basics.training.setup import Fp8Options, build_model
from cs336_basics.training.trainer import TrainConfig, Trainer

dev = torch.device(os.environ.get("DEVICE", "cuda"))  # DEVICE=cpu: a smoke test (emulated, tiny)
CPU = dev.type == "cpu"
D, F, B = (32, 64, 2) if CPU else (896, 3584, 16)


def module(kind: str, kc: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "layer":
        m = Float8DelayedLinear(torch.nn.Linear(D, D, bias=False).to(dev), emulate=CPU, kernel_casts=kc)
        m.x_scale.fill_(100.0), m.g_scale.fill_(4e6)
        return m
    ffn = FeedForward(ModelConfig(dim=D, intermediate_size=F)).to(dev)
    ls = [Float8DelayedLinear(getattr(ffn, n), emulate=CPU, kernel_casts=kc) for n in ("w1", "w3", "w2")]
    for m, xs in zip(ls, (100.0, 100.0, 50.0)):
        m.x_scale.fill_(xs), m.g_scale.fill_(4e6)
    return Float8DelayedSwiGLU(*ls)


def run(m: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, how: str, reps: int = 3) -> list[torch.Tensor]:
    f = m if how == "eager" else torch.compile(m, mode="reduce-overhead" if how == "graphs" else "default")
    for _ in range(reps):
        torch.compiler.cudagraph_mark_step_begin()
        xi = x.clone().requires_grad_()
        for p in m.parameters():
            p.grad = None
        with torch.autocast(dev.type, torch.bfloat16):
            y = f(xi)
        y.backward(dy)
    sinks = [s.grad.clone() for s in (mm.g_amax_sink for mm in m.modules() if isinstance(mm, Float8DelayedLinear))]
    return [y.detach().float().clone(), xi.grad.float().clone(), *(p.grad.float().clone() for p in m.parameters()), *sinks]



def parts_one_and_two() -> None:
    for kind in ("layer", "swiglu"):
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator(device=dev).manual_seed(1)
            x = torch.randn(B, 64, D, device=dev, generator=g).to(dtype)
            dy = torch.randn(B, 64, D, device=dev, generator=g).bfloat16() * 1e-4
            want = run(module(kind, "none"), x, dy, "eager")
            for how in ("eager", "compile", "graphs"):
                for kc in ("none", "all"):
                    for mm in (module(kind, kc),):
                        for s in (s for s in (l.g_amax_sink for l in mm.modules() if isinstance(l, Float8DelayedLinear))):
                            s.grad = torch.zeros_like(s)
                        got = run(mm, x, dy, how)
                    gaps = [float(((a - b).abs().max() / b.abs().max().clamp(min=1e-30))) for a, b in zip(got, want)]
                    nonfinite = [i for i, a in enumerate(got) if not torch.isfinite(a).all()]
                    print(f"{kind:6} {str(dtype)[6:]:8} {how:7} {kc:4}: worst relative gap {max(gaps):.3g}"
                          f" (each {[f'{v:.2g}' for v in gaps]}), non-finite results {nonfinite}", flush=True)
            torch._dynamo.reset()

    cfg = PRESETS["test" if CPU else "small"]
    tokens = (np.arange(1 << 20) * 7919 % cfg.vocab_size).astype(np.uint16)
    for mode in ("eager", "default", "reduce-overhead"):
        for kc in ("none", "all"):
            torch.manual_seed(0)
            model, _ = build_model(cfg, dev, Fp8Options(recipe="delayed", emulate=CPU, kernel_casts=kc), log=lambda s: None)
            trainer = Trainer(model, TrainConfig(batch_size=B, max_steps=8, compile_model=mode != "eager",
                                                 compile_mode=mode if mode != "eager" else "auto", gradient_checkpointing=False,
                                                 use_flash_attn=not CPU),
                              RandomWindows(tokens, B, cfg.context_length, 0), tokens[:4096], dev, Path(tempfile.mkdtemp()),
                              log=lambda s: None)
            losses, first_bad = [], None
            for step in range(8):
                losses.append(float(trainer.train_step(1e-3)[0]))
                h = trainer.fp8_scales.history
                if first_bad is None and not torch.isfinite(h).all():
                    bad = (~torch.isfinite(h[:, :, 0])).nonzero().tolist()
                    first_bad = (step, [(trainer.fp8_scales.layers[i].__class__.__name__, i, ["x", "g"][j]) for i, j in bad][:6])
                if not math.isfinite(losses[-1]) and first_bad is not None:
                    break
            print(f"train {mode:15} {kc:4}: losses {[round(l, 4) for l in losses]}; first non-finite amax {first_bad}", flush=True)
            del trainer, model
            torch._dynamo.reset()


def bench_like(preset: str, mode: str, kc: str, steps: int) -> None:
    """What bench_run.run does (random tokens over the vocabulary, lr 3e-4, no warm-up, the attention context and
    GC schedule), with the loss of every step; one step under the AttentionKernels profiler after step 6."""
    from cs336_basics.training.attention import AttentionKernels, attention_context

    cfg = PRESETS[preset]
    torch.manual_seed(0)
    model, _ = build_model(cfg, dev, Fp8Options(recipe="delayed", emulate=CPU, kernel_casts=kc), B * cfg.context_length,
                           log=lambda s: None)
    toks = np.random.default_rng(0).integers(0, cfg.vocab_size, size=1 << 22, dtype=np.int64).astype(np.uint32)
    trainer = Trainer(model, TrainConfig(batch_size=B, max_steps=10**6, warmup_steps=0, compile_model=mode != "eager",
                                         compile_mode=mode if mode != "eager" else "auto", gradient_checkpointing=False,
                                         use_flash_attn=not CPU),
                      RandomWindows(toks, B, cfg.context_length, 0), toks[:2048], dev, Path(tempfile.mkdtemp()), log=lambda s: None)
    losses, first_bad = [], None
    with attention_context(not CPU, "auto"):
        for step in range(steps):
            with AttentionKernels(dev) if step == 6 else contextlib.nullcontext():
                losses.append(float(trainer.train_step(3e-4)[0]))
            h = trainer.fp8_scales.history[:, :, 0]
            if first_bad is None and not (torch.isfinite(h).all() and (h > 0).all()):
                bad = (~(torch.isfinite(h) & (h > 0))).nonzero().tolist()
                first_bad = (step, [(i, ["x", "g"][j], float(h[i, j])) for i, j in bad][:8])
    s = trainer.fp8_scales.scales()
    print(f"bench-like {preset} {mode} {kc}: losses {[round(l, 3) for l in losses]}; first non-finite or zero amax "
          f"{first_bad}; scales x {float(s[:, 0].min()):.3g}..{float(s[:, 0].max()):.3g}, g {float(s[:, 1].min()):.3g}.."
          f"{float(s[:, 1].max()):.3g}", flush=True)
    torch._dynamo.reset()


def first_grads(preset: str, mode: str, kc: str, fused: str) -> None:
    """Calibration, then one forward + backward of the first step: which parameters' gradients are not finite."""
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    model, _ = build_model(cfg, dev, Fp8Options(recipe="delayed", emulate=CPU, kernel_casts=kc, fused_swiglu=fused == "fused"),
                           B * cfg.context_length, log=lambda s: None)
    toks = np.random.default_rng(0).integers(0, cfg.vocab_size, size=1 << 22, dtype=np.int64).astype(np.uint32)
    trainer = Trainer(model, TrainConfig(batch_size=B, max_steps=10**6, warmup_steps=0, compile_model=mode != "eager",
                                         compile_mode=mode if mode != "eager" else "auto", gradient_checkpointing=False,
                                         use_flash_attn=not CPU),
                      RandomWindows(toks, B, cfg.context_length, 0), toks[:2048], dev, Path(tempfile.mkdtemp()), log=lambda s: None)
    trainer._calibrate_fp8_scales()
    for rep in range(2):
        torch.compiler.cudagraph_mark_step_begin()
        x, y = trainer.train_data.next_batch(dev)
        with trainer.autocast:
            loss = trainer.model(x, y)
        loss.backward()
        bad = [(n, float(p.grad.float().abs().max()), int((~torch.isfinite(p.grad)).sum()))
               for n, p in trainer.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        print(f"first grads {preset} {mode} {kc} {fused} rep {rep}: loss {float(loss):.4f}, {len(bad)} of "
              f"{sum(1 for _ in trainer.model.parameters())} gradients not finite: {bad[:6]}", flush=True)
        for p in trainer.model.parameters():
            p.grad = None
    torch._dynamo.reset()


def patched(how: str) -> None:
    """cast_both wrapped: "check" compares the two layouts right after the kernel (synchronizing) and counts the
    casts whose transposed copy differs; "clone" returns copies of the outputs; "fixed" skips the autotuner."""
    from cs336_basics.precision import fp8_cast

    original = ORIGINAL[0]
    seen = {"casts": 0, "differing": [], "how": how}

    def cast_both(x, scale, e5m2, config=None):
        out = original(x, scale, e5m2, (64, 64, 4) if how == "fixed" else config)
        seen["casts"] += 1
        if how == "check" and not torch.equal(out[1].view(torch.uint8), out[0].t().view(torch.uint8)):
            seen["differing"].append((tuple(x.shape), str(x.dtype), e5m2))
        return tuple(t.clone() for t in out) if how == "clone" else out

    fp8_cast.cast_both = cast_both
    PATCHED.append(seen)


PATCHED: list = []
ORIGINAL: list = []
if __name__ == "__main__" and os.environ.get("FIRST_GRADS"):
    for item in os.environ["FIRST_GRADS"].split(","):
        parts = item.split(":")
        if len(parts) > 4:
            from cs336_basics.precision import fp8_cast
            ORIGINAL[:] = ORIGINAL or [fp8_cast.cast_both]
            patched(parts[4])
        first_grads(*parts[:4])
        if PATCHED:
            print("patch", PATCHED[-1]["how"], "casts", PATCHED[-1]["casts"], "differing", PATCHED[-1]["differing"][:6],
                  len(PATCHED[-1]["differing"]), flush=True)
elif __name__ == "__main__" and not os.environ.get("BENCH_LIKE"):
    parts_one_and_two()
elif __name__ == "__main__":
    for item in os.environ["BENCH_LIKE"].split(","):
        bench_like(*item.split(":")[:3], steps=int(item.split(":")[3]))
