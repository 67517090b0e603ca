from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from cs336_basics.config import Config, DataConfig, Fp8Config, RunConfig, TrainConfig  # noqa: E402
from cs336_basics.model.transformer import ModelConfig  # noqa: E402

torch.set_num_threads(2)

# The tests' model: two blocks of width 32, context 32, a 512-token vocabulary (16 divides every width, as
# the float8 matrix units and the float8 head need).
TEST = ModelConfig(vocab_size=512, context_length=32, dim=32, n_layers=2, n_heads=2, intermediate_size=64)
# The same model as command-line flags.
TEST_FLAGS = ["--dim", 32, "--n_heads", 2, "--n_layers", 2, "--intermediate_size", 64, "--context_length", 32,
              "--vocab_size", 512]
CPU = torch.device("cpu")


def quiet(message: str) -> None:
    pass


def fp8_config(recipe: str = "delayed", **fields) -> Fp8Config:
    """Emulated float8 (any device) with `recipe` and the given fields."""
    return Fp8Config(enabled=True, recipe=recipe, emulate=True, **fields)


def make_config(model: ModelConfig = TEST, fp8: Fp8Config | None = None, **train) -> Config:
    """A config of the test model: the given train fields over small defaults (no checkpointing, one
    evaluation batch)."""
    base = dict(batch_size=4, max_steps=10, warmup_steps=1, gradient_checkpointing=False, eval_steps=1, lr=3e-3)
    return Config(model=model, train=TrainConfig(**{**base, **train}), fp8=fp8 or Fp8Config(), data=DataConfig(),
                  run=RunConfig(sample_tokens=0))


def make_trainer(config: Config, tokens: np.ndarray, out_dir: Path, val_tokens: np.ndarray | None = None,
                 explicit: frozenset[str] = frozenset(), log: Callable[[str], None] = quiet):
    """The Trainer of `config` on CPU, built as training builds it: resolve_config -> prepare_model -> Trainer."""
    from cs336_basics.data.batches import RandomWindows
    from cs336_basics.training.prepare import prepare_model, resolve_config
    from cs336_basics.training.trainer import Trainer

    config = resolve_config(config, CPU, None, explicit)
    prepared = prepare_model(config, CPU, log=log)
    sampler = RandomWindows(tokens, config.train.batch_size, config.model.context_length, config.train.seed)
    return Trainer(prepared, config, sampler, tokens if val_tokens is None else val_tokens, CPU, out_dir, log=log)


def prepared_model(config: Config, log: Callable[[str], None] = quiet, explicit: frozenset[str] = frozenset()):
    """prepare_model of the resolved `config` on CPU."""
    from cs336_basics.training.prepare import prepare_model, resolve_config

    return prepare_model(resolve_config(config, CPU, None, explicit), CPU, log=log)


def broken_swiglu_kernels() -> list[tuple[str, Callable, str]]:
    """(a fused SwiGLU kernel of precision/swiglu_fp8.py, a broken stand-in for it, how check_kernels' report of
    it begins): a wrong transposed copy (as the GPU's Triton once made one of ours), and values off."""
    from cs336_basics.precision import swiglu_fp8 as S

    right_forward, right_backward = S.swiglu_forward_fp8, S.swiglu_backward_fp8

    def transposed_wrong(h1, h3, scale, config=None):  # noqa: ANN001, ANN202
        g8, g8t, amax = right_forward(h1, h3, scale)
        return g8, g8t.flip(0).contiguous(), amax

    def values_wrong(dg, h1, h3, s1, s3, config=None):  # noqa: ANN001, ANN202
        d1, d1t, d3, d3t, amax = right_backward(dg * 2, h1, h3, s1, s3)
        return d1, d1t, d3, d3t, amax / 2

    return [("swiglu_forward_fp8", transposed_wrong, "forward output 0: the transposed copy differs"),
            ("swiglu_backward_fp8", values_wrong, "backward output 0: values more than one float8 step")]


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def one_line_error(capsys, rc: int, pattern: str) -> str:
    """Exit 2 and one 'error: ...' line last on stderr (progress bars may precede it), never a traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("error: ") and pattern in err[-1], err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture(autouse=True)
def fresh_compiler_caches():
    """Each test compiles from a fresh dynamo cache, so one test's compiled functions never count against
    another's recompilation limit (the order of the test files would otherwise decide whether a compiled test
    hits it). Inductor's compiled kernels stay cached."""
    torch._dynamo.reset()
    yield


@pytest.fixture
def shakespeare() -> Path:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """~60 KB of mixed-script text with document separators."""
    docs = []
    for i in range(300):
        docs.append(f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7}. "
                    f"Ünïcödé ✓ 日本語 {i % 13} — «quoted» text.\n" * 2)
    path = tmp_path / "corpus.txt"
    path.write_text("<|endoftext|>".join(docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cli_data(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, cache directory) shared by the CLI tests: the tokenizer and token files are made once."""
    root = tmp_path_factory.mktemp("cli_data")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox {i % 17} jumps over {i % 5} lazy dogs.\n"
                              for i in range(600)))
    return corpus, root / "cache"


def run_train(argv: list) -> int:
    """The training CLI in this process, as `train_h100.py ARGV` runs it (exit code; one-line errors)."""
    from cs336_basics.cli import run_main
    from cs336_basics.cli.train import main as train_main

    return run_main(train_main, [str(a) for a in argv])


@pytest.fixture
def tiny_cli(cli_data):
    """(train(argv) -> exit code, base arguments) for CLI tests of the training flags: the test model on a
    small corpus, 2-sequence micro-batches, an evaluation of one batch every 2 steps, no sample; each test adds
    --out_dir, --max_steps and the flags under test."""
    corpus, cache = cli_data
    base = [*TEST_FLAGS, "--train_data", corpus, "--set", f"data.cache_dir={cache}", "--batch_size", 2,
            "--eval_interval", 2, "--set", "train.eval_steps=1", "--set", "run.sample_tokens=0"]
    return run_train, base


__all__ = ["CPU", "ROOT", "TEST", "TEST_FLAGS", "broken_swiglu_kernels", "fp8_config", "losses", "make_config", "make_trainer",
           "one_line_error", "prepared_model", "quiet", "run_train"]
