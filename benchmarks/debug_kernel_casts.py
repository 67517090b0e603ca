"""Why the -castall bench rows of call 36 ended with a NaN loss (benchmarks/NOTES.md 42; calls 37-40 ran it).
Debugging only: it prints, writes nothing. Three uses:

  python3 benchmarks/debug_kernel_casts.py
      one float8 layer and one fused SwiGLU with kernel_casts all against none (eager, compiled, compiled with
      CUDA graphs; bf16 and float32 inputs), then 8 training steps of the small preset in each mode (call 37);
  BENCH_LIKE=PRESET:MODE:CASTS:STEPS[,...]   e.g. seed:reduce-overhead:all:12
      what bench_run.run does, with every step's loss and the first non-finite amax (call 38);
  FIRST_GRADS=PRESET:MODE:CASTS:fused|unfused[:check|clone|fixed][,...]
      calibration and the first step's gradients: which are not finite; with a patch of fp8_cast.cast_both
      (check: both layouts compared right after each cast; clone: outputs copied; fixed: one tile, no
      autotuner) (calls 39-40).

MODE is eager, default or reduce-overhead; CASTS none, grads or all. DEVICE=cpu runs a tiny emulated smoke test.
"""

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


def make_trainer(cfg: ModelConfig, mode: str, kc: str, tokens: np.ndarray, fused: bool | None = None) -> Trainer:
    """The model with every delayed layer's casts `kc`, behind a Trainer compiled as `mode` ("eager": not)."""
    torch.manual_seed(0)
    model, _ = build_model(cfg, dev, Fp8Options(recipe="delayed", emulate=CPU, kernel_casts=kc, fused_swiglu=fused),
                           B * cfg.context_length, log=lambda s: None)
    train_cfg = TrainConfig(batch_size=B, max_steps=10**6, warmup_steps=0, compile_model=mode != "eager",
                            compile_mode=mode if mode != "eager" else "auto", gradient_checkpointing=False,
                            use_flash_attn=not CPU)
    return Trainer(model, train_cfg, RandomWindows(tokens, B, cfg.context_length, 0), tokens[:2048], dev,
                   Path(tempfile.mkdtemp()), log=lambda s: None)


def random_tokens(cfg: ModelConfig) -> np.ndarray:
    return np.random.default_rng(0).integers(0, cfg.vocab_size, size=1 << 22, dtype=np.int64).astype(np.uint32)


def modules_then_small_training() -> None:
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
            trainer = make_trainer(cfg, mode, kc, tokens)
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
            del trainer
            torch._dynamo.reset()


def bench_like(preset: str, mode: str, kc: str, steps: int) -> None:
    """What bench_run.run does (random tokens over the vocabulary, lr 3e-4, no warm-up, the attention context and
    GC schedule), with the loss of every step; one step under the AttentionKernels profiler after step 6."""
    from cs336_basics.training.attention import AttentionKernels, attention_context

    cfg = PRESETS[preset]
    trainer = make_trainer(cfg, mode, kc, random_tokens(cfg))
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
    trainer = make_trainer(cfg, mode, kc, random_tokens(cfg), fused=fused == "fused")
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


def patched(how: str) -> dict:
    """Wrap fp8_cast.cast_both (see the module's docstring); returns what the wrapper saw. The custom op looks
    cast_both up when it runs, so compiled graphs call the wrapper too."""
    from cs336_basics.precision import fp8_cast

    seen: dict = {"casts": 0, "differing": [], "how": how}

    def cast_both(x, scale, e5m2, config=None):
        out = ORIGINAL_CAST(x, scale, e5m2, (64, 64, 4) if how == "fixed" else config)
        seen["casts"] += 1
        if how == "check" and not torch.equal(out[1].view(torch.uint8), out[0].t().view(torch.uint8)):
            seen["differing"].append((tuple(x.shape), str(x.dtype), e5m2))
        return tuple(t.clone() for t in out) if how == "clone" else out

    fp8_cast.cast_both = cast_both
    return seen


def main() -> None:
    from cs336_basics.precision import fp8_cast

    if os.environ.get("FIRST_GRADS"):
        for item in os.environ["FIRST_GRADS"].split(","):
            preset, mode, kc, fused, *patch = item.split(":")
            seen = patched(patch[0]) if patch else None
            first_grads(preset, mode, kc, fused)
            fp8_cast.cast_both = ORIGINAL_CAST
            if seen:
                print("patch", seen["how"], "casts", seen["casts"], "differing", seen["differing"][:6],
                      len(seen["differing"]), flush=True)
    elif os.environ.get("BENCH_LIKE"):
        for item in os.environ["BENCH_LIKE"].split(","):
            preset, mode, kc, steps = item.split(":")
            bench_like(preset, mode, kc, int(steps))
    else:
        modules_then_small_training()


if __name__ == "__main__":
    from cs336_basics.precision.fp8_cast import cast_both as ORIGINAL_CAST

    main()
