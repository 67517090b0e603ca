"""Per-layer microbenchmark: forward + backward of one nn.Linear shape at the run's token count, bf16
versus TorchAO float8, both compiled. Its speedups drive `--fp8_filter auto` and optimize_performance.py."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from cs336_basics.precision.fp8 import LayerShape, float8_config


@dataclass(frozen=True)
class LayerTiming:
    in_features: int
    out_features: int
    tokens: int
    bf16_ms: float
    fp8_ms: float

    @property
    def speedup(self) -> float:
        return self.bf16_ms / self.fp8_ms

    def tflops(self, ms: float) -> float:
        return 6 * self.tokens * self.in_features * self.out_features / (ms * 1e-3) / 1e12


def median_ms(fn, warmup: int = 5, repeats: int = 30) -> float:
    """Median time of fn() in milliseconds, with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_linear(shape: LayerShape, tokens: int, recipe: str, device: torch.device) -> LayerTiming:
    from torchao.float8 import convert_to_float8_training

    in_f, out_f = shape
    bf16 = nn.Sequential(nn.Linear(in_f, out_f, bias=False)).to(device)
    fp8 = copy.deepcopy(bf16)
    convert_to_float8_training(fp8, config=float8_config(recipe, emulate=False))
    x = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16, requires_grad=True)  # activations are bf16
    grad_out = torch.randn(tokens, out_f, device=device, dtype=torch.bfloat16)

    def step(layer):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = layer(x)
            y.backward(grad_out)
        return torch.compile(run)

    return LayerTiming(in_f, out_f, tokens, median_ms(step(bf16)), median_ms(step(fp8)))


def measure_fp8_speedups(shapes: list[LayerShape], tokens: int, recipe: str, device: torch.device) -> dict[LayerShape, float]:
    return {shape: time_linear(shape, tokens, recipe, device).speedup for shape in shapes}


def main() -> int:
    """`python -m cs336_basics.perf.layer_bench '{"model": {...}, "tokens": N, "recipe": "tensorwise"}'`"""
    from cs336_basics.model.transformer import ModelConfig, Transformer
    from cs336_basics.precision.fp8 import linear_shapes

    spec = json.loads(sys.argv[1])
    with torch.device("meta"):
        model = Transformer(ModelConfig(**spec["model"]))
    rows = []
    for shape in linear_shapes(model) + [(model.cfg.dim, model.cfg.vocab_size)]:  # the head too, for the record
        t = time_linear(shape, spec["tokens"], spec["recipe"], torch.device("cuda"))
        rows.append(dict(asdict(t), speedup=round(t.speedup, 3), bf16_tflops=round(t.tflops(t.bf16_ms), 1),
                         fp8_tflops=round(t.tflops(t.fp8_ms), 1), head=shape[1] == model.cfg.vocab_size))
    print("RESULT " + json.dumps({"layers": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
