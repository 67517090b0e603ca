"""Tokens/s of generation with the K/V cache against the cacheless sampler, at batch 1 and in a batch.

    python benchmarks/generation_speed.py --config tiny --device cpu --new_tokens 100 --out gen_tiny.json

A model of a recipe's shape (`--config`: a name in configs/ or a .toml file) with random weights, greedy
decoding (`--temperature` for sampling), no stop token, so every row generates exactly `--new_tokens`. Four
rows:

  cacheless  batch 1   generate(use_cache=False): the model's full forward over the context for every token
  cached     batch 1   generate(): prefill once, then one token at a time through the K/V cache
  cacheless  batch B   generate_batch(use_cache=False): the B prompts one after another, cacheless
  cached     batch B   generate_batch(): the B prompts (lengths prompt_len/2 .. prompt_len) in one batch

tokens/s counts new tokens only (B x new_tokens for a batch), timed from the call to its return. A warm-up
call of each mode is excluded; each row is the median of `--repeats` timed calls, taken round robin over the
modes. The 1-minute load average before and after is recorded: on a shared CPU, other processes slow the
multi-threaded products far more than their share (compare runs at a low load, or with --threads 1). Where
the prompts and the new tokens fit in the context, the script also checks that cached and cacheless greedy
tokens agree (exit status 1 if they do not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.config import load_recipe  # noqa: E402
from cs336_basics.generation import generate, generate_batch  # noqa: E402
from cs336_basics.model.transformer import Transformer  # noqa: E402


def timed(fn, device: torch.device) -> tuple[float, list]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", help="a recipe name (configs/<name>.toml) or a .toml file")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--new_tokens", type=int, default=100)
    p.add_argument("--prompt_len", type=int, default=16, help="the longest prompt; a batch's run from half this up")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but no CUDA GPU is available")
    if args.new_tokens <= 0 or args.prompt_len <= 0 or args.batch <= 0 or args.repeats <= 0:
        sys.exit("error: --new_tokens, --prompt_len, --batch and --repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_recipe(args.config)[0].model
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = Transformer(cfg).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    lengths = [args.prompt_len] + [int(torch.randint(max(1, args.prompt_len // 2), args.prompt_len + 1, (1,),
                                                     generator=g)) for _ in range(args.batch - 1)]
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    N = args.new_tokens

    def sampler() -> torch.Generator:
        return torch.Generator(device).manual_seed(args.seed)

    modes = {
        ("cacheless", 1): lambda n: [generate(model, prompts[0], n, args.temperature, generator=sampler(),
                                              use_cache=False)],
        ("cached", 1): lambda n: [generate(model, prompts[0], n, args.temperature, generator=sampler())],
        ("cacheless", args.batch): lambda n: generate_batch(model, prompts, n, args.temperature,
                                                            generator=sampler(), use_cache=False),
        ("cached", args.batch): lambda n: generate_batch(model, prompts, n, args.temperature, generator=sampler()),
    }
    for fn in modes.values():
        timed(lambda: fn(min(N, 8)), device)  # warm-up: allocator, kernels, lazy imports
    load_before = os.getloadavg()
    seconds, outputs = {key: [] for key in modes}, {}
    for _ in range(args.repeats):  # round robin: a busy spell of the machine spreads over every mode
        for key, fn in modes.items():
            s, outputs[key] = timed(lambda: fn(N), device)
            seconds[key].append(s)
    load_after = os.getloadavg()
    rows = []
    for (mode, batch), times in seconds.items():
        tokens = sum(len(o) for o in outputs[(mode, batch)])
        median = statistics.median(times)
        rows.append(dict(mode=mode, batch=batch, new_tokens=tokens, seconds=median, seconds_all=times,
                         tok_s=tokens / median))

    fits = max(lengths) + N <= cfg.context_length
    agree = None
    if fits and args.temperature <= 0:
        agree = all(outputs[("cached", b)] == outputs[("cacheless", b)] for b in (1, args.batch))
    by = {(r["mode"], r["batch"]): r["tok_s"] for r in rows}
    speedup = {f"batch_{b}": by[("cached", b)] / by[("cacheless", b)] for b in (1, args.batch)}
    result = dict(
        config=args.config, model=cfg.to_dict(), params=model.num_params(), device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, threads=torch.get_num_threads(), new_tokens=N, prompt_lengths=lengths,
        temperature=args.temperature, repeats=args.repeats, rows=rows, cached_over_cacheless=speedup,
        within_context=fits, greedy_agree=agree, cpu_count=os.cpu_count(),
        load_average_1min=dict(before=load_before[0], after=load_after[0]),
    )

    print(f"{args.config}: {model.num_params() / 1e6:.2f}M params, context {cfg.context_length}, {N} new tokens, "
          f"prompts of {min(lengths)}-{max(lengths)} tokens, {device} ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; load average {load_before[0]:.1f} -> {load_after[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'mode':<10} {'batch':>5} {'seconds':>9} {'tokens/s':>10}")
    for r in rows:
        print(f"{r['mode']:<10} {r['batch']:>5} {r['seconds']:>9.3f} {r['tok_s']:>10.1f}")
    print("cached / cacheless: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items())
          + ("" if agree is None else f"; greedy tokens agree: {agree}"))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if agree is not False else 1


if __name__ == "__main__":
    sys.exit(main())
