"""The one typed config: recipes, the command line over them (31 options, --set for the rest), errors for what
cannot apply, TOML round trips, config.toml in the run directory and --resume reading it, and what the
package's source may and may not contain."""

import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from cs336_basics.cli.train import build_parser, load_config
from cs336_basics.config import (Config, DataConfig, Fp8Config, RunConfig, TrainConfig, load_recipe, read_toml,
                                 to_toml, with_overrides)
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig
from cs336_basics.training.checkpoint import config_from_checkpoint, load_checkpoint
from cs336_basics.training.prepare import resolve_config
from conftest import CPU, ROOT, TEST_FLAGS, losses, one_line_error, run_train

PACKAGE = ROOT / "cs336_basics"
LIBRARY = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]
SEED_FLAGS = ["--dim", "896", "--n_heads", "14", "--intermediate_size", "3584", "--batch_size", "16",
              "--gradient_accumulation_steps", "8", "--use_fp8", "--compile_model", "--use_flash_attn",
              "--no_gradient_checkpointing"]


def parse(argv: list, resumed: dict | None = None) -> tuple[Config, frozenset[str]]:
    return load_config(build_parser().parse_args([str(a) for a in argv]), resumed)


# --------------------------------------------------------------------------------------------- recipes
def test_the_recipes_load_validate_and_resolve():
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.toml")) == ["1b", "seed", "small", "tiny"]
    shapes = {}
    for name in ("tiny", "small", "seed", "1b"):
        config, keys = load_recipe(name)
        assert config.validate() is config and keys and all(k.count(".") == 1 for k in keys)
        assert load_recipe(ROOT / "configs" / f"{name}.toml")[0] == config  # by name or by path
        m = config.model
        shapes[name] = (m.vocab_size, m.context_length, m.dim, m.n_layers, m.n_heads, m.intermediate_size)
        emulated = with_overrides(config, {"fp8.emulate": True}) if config.fp8.enabled else config
        resolved = resolve_config(emulated, CPU, None, keys)
        assert resolved.fp8.recipe == ("delayed" if config.fp8.enabled else "auto")
        if config.fp8.enabled:  # under FSDP the same recipe runs, without the weight cache
            assert resolve_config(emulated, CPU, "fsdp", keys).fp8.weight_cache is False
    assert shapes == {"tiny": (2048, 128, 128, 4, 4, 384), "small": (8192, 512, 384, 6, 6, 1024),
                      "seed": (50304, 1024, 896, 24, 14, 3584), "1b": (50304, 2048, 2048, 16, 16, 5632)}
    seed = load_recipe("seed")[0]
    assert seed.fp8.enabled and seed.train.compile_model and seed.train.use_flash_attn
    assert not seed.train.gradient_checkpointing and (seed.train.batch_size, seed.train.gradient_accumulation_steps) == (16, 8)
    assert not load_recipe("tiny")[0].fp8.enabled  # the CPU quick start


def test_the_seeds_command_line_is_the_seed_recipe():
    """The seed's flags, verbatim, give the config of `--config seed`; nothing else differs from the defaults."""
    flags, _ = parse(SEED_FLAGS)
    recipe, _ = parse(["--config", "seed"])
    assert flags == recipe
    assert parse([])[0] == Config()


def test_help_lists_at_most_31_options_and_the_seeds_flags():
    out = subprocess.run([sys.executable, "train_h100.py", "--help"], capture_output=True, text=True, cwd=ROOT,
                         check=True, timeout=120).stdout
    options = [line.split()[0].rstrip(",") for line in out.splitlines() if re.match(r"^  -", line)]
    assert "--set" in options and "--config" in options and "--resume" in options
    assert len(options) <= 31, options
    for flag in SEED_FLAGS[::2][:5] + SEED_FLAGS[10:]:  # --dim ... --gradient_accumulation_steps, then the switches
        assert re.search(rf"^  {flag}\b", out, re.M), flag
    for gone in ("--preset", "--max_tokens", "--fp8_emulate", "--cache_dir", "--sample_tokens", "--prompt"):
        assert gone not in out
    assert not re.search(r"\bNOTES\b|\bcall \d+|\bsession\b", out, re.I)
    # the script's own example is the seed's command
    assert " ".join(SEED_FLAGS[:6]) in (ROOT / "train_h100.py").read_text()


# ------------------------------------------------------------------------------------------ precedence
def test_precedence_defaults_then_recipe_then_flags_and_set(tmp_path):
    config, explicit = parse(["--config", "tiny"])
    assert config.model.dim == 128 and config.train.min_lr == 2e-4  # the recipe's
    assert config.train.weight_decay == TrainConfig().weight_decay  # not in the recipe: the default
    assert "model.dim" in explicit and "train.weight_decay" not in explicit
    config, explicit = parse(["--config", "tiny", "--dim", 64, "--n_heads", 2, "--set", "train.min_lr=1e-5",
                              "--set", "model.n_layers=3", "--no-compile_model", "--set", "fp8.recipe=tensorwise"])
    assert (config.model.dim, config.model.n_heads, config.model.n_layers) == (64, 2, 3)
    assert config.train.min_lr == 1e-5 and config.train.lr == 2e-3 and config.train.compile_model is False
    assert config.fp8.recipe == "tensorwise" and config.model.vocab_size == 2048
    assert {"model.dim", "train.min_lr", "model.n_layers", "train.compile_model", "fp8.recipe"} <= explicit
    # a recipe file of one's own, and the flags over it
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[model]\ndim = 48\nn_heads = 2\n\n[train]\nlr = 1e-3\ncompile_model = true\n'
                      '[data]\ntrain_data = ["a.txt", "b.txt"]\n')
    config, explicit = parse(["--config", recipe, "--lr", 5e-4])
    assert config.model.dim == 48 and config.train.lr == 5e-4 and config.train.compile_model
    assert config.data.train_data == ("a.txt", "b.txt") and config.model.n_layers == ModelConfig().n_layers
    assert explicit == {"model.dim", "model.n_heads", "train.lr", "train.compile_model", "data.train_data"}


def test_a_run_records_what_the_recipe_and_the_flags_made(tmp_path, cli_data, capsys):
    corpus, cache = cli_data
    recipe = tmp_path / "test.toml"
    recipe.write_text("[model]\nvocab_size = 512\ncontext_length = 32\ndim = 32\nn_layers = 2\nn_heads = 2\n"
                      "intermediate_size = 64\n\n[train]\nbatch_size = 2\nmax_steps = 500\nlr = 1e-3\nmin_lr = 1e-4\n"
                      "eval_steps = 1\n\n[run]\nsample_tokens = 0\n")
    assert run_train(["--config", recipe, "--train_data", corpus, "--set", f"data.cache_dir={cache}",
                      "--out_dir", tmp_path / "run", "--max_steps", 2, "--set", "train.min_lr=5e-5"]) == 0
    saved = read_toml(tmp_path / "run" / "config.toml")
    assert saved["model"]["dim"] == 32 and saved["train"]["lr"] == 1e-3  # the recipe's
    assert saved["train"]["max_steps"] == 2 and saved["train"]["min_lr"] == 5e-5  # the command line's
    assert saved["train"]["weight_decay"] == TrainConfig().weight_decay  # the default
    assert Config.from_dict(saved) == Config.from_dict(load_checkpoint(tmp_path / "run")["config"])
    assert "run directory: " in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv, message", [
    (["--set", "train.lrr=1e-3"], "unknown setting train.lrr (did you mean train.lr?)"),
    (["--set", "trian.lr=1e-3"], "unknown section [trian] (did you mean train?)"),
    (["--set", "fp8.kernel_cast=all"], "unknown setting fp8.kernel_cast (did you mean fp8.kernel_casts?)"),
    (["--set", "model.dim=wide"], "model.dim must be an integer, got 'wide'"),
    (["--set", "fp8.emulate=maybe"], "fp8.emulate must be true or false, got 'maybe'"),
    (["--config", "seeed"], "no recipe 'seeed': pass a .toml file or one of 1b, seed, small, tiny"),
])
def test_unknown_or_malformed_settings_are_one_line_errors_with_a_suggestion(tmp_path, capsys, argv, message):
    one_line_error(capsys, run_train(argv + ["--out_dir", tmp_path / "run"]), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("[model]\ndimm = 64\n", "unknown setting model.dimm (did you mean model.dim?)"),
    ("[trainn]\nlr = 1e-3\n", "unknown section [trainn] (did you mean train?)"),
    ("[model]\ndim = \"wide\"\n", "model.dim must be an integer, got 'wide'"),
    ("[train]\nlr = 1\nlr = 2\n", "is not valid TOML"),
    ("dim = 64\n", "unknown section [dim]; sections are model, train, fp8, data, run"),
    ("train = 3\n", "[train] must be a table of settings"),
])
def test_a_bad_recipe_file_is_a_one_line_error_naming_the_file(tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    line = one_line_error(capsys, run_train(["--config", recipe, "--out_dir", tmp_path / "run"]), message)
    assert str(recipe) in line


def test_fp8_settings_need_use_fp8_and_delayed_ones_the_delayed_recipe(tmp_path):
    """Refused only when set explicitly (command line or recipe file): without --use_fp8, or a delayed-recipe
    setting away from its off value with a TorchAO recipe. Their off values, and the recipe's defaults, are fine."""
    def resolved(argv: list) -> Config:
        config, explicit = parse(argv)
        return resolve_config(config, CPU, None, explicit)

    fp8 = ["--use_fp8", "--set", "fp8.emulate=true"]
    with pytest.raises(UserError, match="fp8.margin only apply to float8 training: add --use_fp8"):
        resolved(["--set", "fp8.margin=1"])
    with pytest.raises(UserError, match="fp8.fused_swiglu set the delayed recipe's layers, not tensorwise's"):
        resolved(fp8 + ["--fp8_recipe", "tensorwise", "--set", "fp8.fused_swiglu=true"])
    off = resolved(fp8 + ["--fp8_recipe", "tensorwise", "--set", "fp8.fused_swiglu=false"])
    assert off.fp8.recipe == "tensorwise" and not off.fp8.fused_swiglu
    assert resolved(fp8 + ["--fp8_recipe", "rowwise"]).fp8.kernel_casts == "none"  # defaults resolve off, no error
    assert resolved(["--fp8_recipe", "tensorwise"]).fp8.recipe == "tensorwise"  # the recipe alone: not an error
    recipe = tmp_path / "casts.toml"
    recipe.write_text("[fp8]\nenabled = true\nemulate = true\nkernel_casts = \"all\"\n")
    assert resolved(["--config", recipe]).fp8.kernel_casts == "all"
    with pytest.raises(UserError, match="fp8.kernel_casts set the delayed recipe's layers, not tensorwise's"):
        resolved(["--config", recipe, "--fp8_recipe", "tensorwise"])
    seed = resolved(["--config", "seed", "--set", "fp8.emulate=true", "--fp8_recipe", "tensorwise"])
    assert seed.fp8.recipe == "tensorwise" and not seed.fp8.weight_cache


# ------------------------------------------------------------------------------------------ round trips
def test_config_toml_round_trip():
    odd = Config(model=ModelConfig(dim=64, n_heads=4, n_layers=3, vocab_size=1000, tie_embeddings=True, norm_eps=1e-6),
                 train=TrainConfig(lr=3.5e-4, min_lr=0.0, max_steps=7, compile_mode="reduce-overhead", grad_clip=0.0),
                 fp8=Fp8Config(enabled=True, recipe="rowwise", kernel_casts="none", margin=2),
                 data=DataConfig(train_data=("a b.txt", 'quote".txt', "back\\slash.txt"), val_data="", tokenizer="t.json"),
                 run=RunConfig(out_dir="runs/x", prompt='Say "hi"\\n', sample_tokens=0))
    for config in (Config(), odd, *(load_recipe(n)[0] for n in ("tiny", "small", "seed", "1b"))):
        text = config.to_toml()
        assert to_toml(config.to_dict()) == text
        back = Config.from_dict(tomllib.loads(text))
        assert back == config and back.to_toml() == text


def test_config_from_a_checkpoint_prefers_the_runs_config_toml(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    inside = Config(train=TrainConfig(lr=1e-3))
    state = {"model_config": inside.model.to_dict(), "config": inside.to_dict(), "run_dir": str(run)}
    assert config_from_checkpoint(state) == inside  # no config.toml: the checkpoint's own
    (run / "config.toml").write_text(replace(inside, train=TrainConfig(lr=2e-3)).to_toml())
    assert config_from_checkpoint(state).train.lr == 2e-3
    (run / "config.toml").write_text("[train]\nlrr = 1\n")
    with pytest.raises(UserError, match=r"config.toml: unknown setting train.lrr \(did you mean train.lr\?\)"):
        config_from_checkpoint(state)


# ------------------------------------------------------------------------------------- config.toml + resume
def test_resume_reads_the_runs_config_and_the_checkpoint_records_the_resolved_one(tmp_path, tiny_cli, capsys):
    train, base = tiny_cli
    run = tmp_path / "run"
    assert train(base + ["--out_dir", run, "--max_steps", 2, "--lr", 2e-3, "--set", "train.min_lr=1e-4",
                         "--use_fp8", "--set", "fp8.emulate=true"]) == 0
    saved = read_toml(run / "config.toml")
    assert saved["fp8"]["recipe"] == "delayed" and saved["fp8"]["enabled"] and saved["fp8"]["emulate"]  # not "auto"
    state = load_checkpoint(run)
    assert state["config"]["fp8"]["recipe"] == "delayed" and Config.from_dict(state["config"]) == Config.from_dict(saved)
    assert state["converter_names"] == ["Float8Converter"] and state["config"]["train"]["lr"] == 2e-3
    capsys.readouterr()

    one_line_error(capsys, train(["--resume", run, "--dim", 64]), "model.dim differ from the checkpoint's model")
    one_line_error(capsys, train(["--resume", run, "--set", "model.n_layers=3"]), "model.n_layers differ")
    assert train(["--resume", run, "--dim", 32, "--max_steps", 3]) == 0  # the same value: fine
    out = capsys.readouterr().out
    assert "resumed from" in out and "FP8 (delayed, emulated)" in out
    again = read_toml(run / "config.toml")
    assert again == {**saved, "train": {**saved["train"], "max_steps": 3}}  # the run's settings, the new step count
    assert max(losses(run)) == 3

    assert train(["--resume", run, "--no-use_fp8", "--max_steps", 4]) == 0  # the fp8 run continues in bf16
    out = capsys.readouterr().out
    assert "precision         fp32" in out and "float8" not in out.lower()
    assert read_toml(run / "config.toml")["fp8"]["enabled"] is False
    assert load_checkpoint(run)["converter_names"] == [] and max(losses(run)) == 4
    assert train(["--resume", run, "--use_fp8", "--max_steps", 5]) == 0  # and back, its scales calibrated afresh
    assert "calibrated on one micro-batch" in capsys.readouterr().out


def test_a_run_resumed_with_the_delayed_recipe_gets_its_settings_not_those_a_torchao_recipe_turned_off(tmp_path, tiny_cli):
    """A TorchAO run's config.toml records the delayed recipe's settings as off (they did not apply). Resumed with
    --fp8_recipe delayed, the run gets the delayed recipe's own settings (fused SwiGLU, kernel casts, weight cache,
    fast accumulation), as a new delayed run would, unless the command line sets them."""
    train, base = tiny_cli
    run = tmp_path / "run"
    assert train(base + ["--out_dir", run, "--max_steps", 1, "--use_fp8", "--set", "fp8.emulate=true",
                         "--fp8_recipe", "tensorwise"]) == 0
    assert read_toml(run / "config.toml")["fp8"]["fused_swiglu"] is False  # what ran
    assert train(["--resume", run, "--max_steps", 2, "--fp8_recipe", "delayed", "--set", "fp8.fast_accum=false"]) == 0
    fp8 = read_toml(run / "config.toml")["fp8"]
    assert fp8["recipe"] == "delayed" and fp8["fast_accum"] is False  # as asked
    assert (fp8["fused_swiglu"], fp8["merge_w13"], fp8["kernel_casts"], fp8["weight_cache"]) == (True, True, "all", True)


# ------------------------------------------------------------------------------------- the package's source
def string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the string literals of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


# (file, line's text) of reads allowed despite the rule below: none
ALLOWED_OUTSIDE_READS: tuple[tuple[str, str], ...] = ()


def test_nothing_in_the_package_reads_benchmarks_or_outside_the_repository():
    """No path into benchmarks/ (the repository's tools and reports, not part of the package) or above the
    repository (../shared): the package runs from a wheel too."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, text in string_constants(path):
            if (text in ("benchmarks", "shared", "..") or re.match(r"^(\.\./|benchmarks/|shared/)", text)
                    or "../shared" in text or 'shared" /' in text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
        for line, source in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""/ ?["']shared["']|["']shared["'] ?/|/ ?["']benchmarks["']|["']benchmarks["'] ?/""", source):
                found.append(f"{path.relative_to(ROOT)}:{line}: {source.strip()}")
    found = [f for f in found if not any(f.startswith(file) and text in f for file, text in ALLOWED_OUTSIDE_READS)]
    assert not found, "\n".join(sorted(set(found)))


def test_no_process_wording_in_the_package_source():
    """No pointers to working notes, numbered calls or sessions in the package: comments say why."""
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bNOTES\b", line) or re.search(r"\bcall \d+|\bsessions?\b", line, re.I)]
    assert not found, "\n".join(found)


def test_the_trainer_knows_little_of_float8():
    """The converters' hooks carry float8 (and bf16 weight caching); the Trainer only calls them."""
    lines = [line for line in (PACKAGE / "training" / "trainer.py").read_text().splitlines()
             if re.search(r"fp8|float8", line, re.I)]
    assert len(lines) <= 5, "\n".join(lines)


def test_the_library_does_not_import_the_applications():
    """cs336_basics.cli (the commands) builds on the library, never the other way round."""
    found = []
    for path in LIBRARY:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if any(n == "cs336_basics.cli" or n.startswith("cs336_basics.cli.") for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert LIBRARY and not found, found
    assert {p.relative_to(PACKAGE).parts[0] for p in LIBRARY} >= {"data", "model", "precision", "training", "perf",
                                                                 "config.py"}


def test_model_shapes_live_in_the_recipes():
    import cs336_basics.model.transformer as transformer

    assert not hasattr(transformer, "PRESETS")
    assert "--preset" not in " ".join(a for action in build_parser()._actions for a in action.option_strings)
    assert TEST_FLAGS  # the tests' model is given by flags, as a user's would be
