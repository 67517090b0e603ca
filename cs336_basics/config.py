"""The one typed configuration of a run: model shape, training, float8, data and output.

A run's settings come from, in order: the dataclass defaults below, a recipe file (`--config`, TOML with the
sections [model] [train] [fp8] [data] [run]), the run's own `config.toml` when it resumes, and the command
line (the named flags and `--set SECTION.FIELD=VALUE`). The resolved config is written once, into the run
directory and every checkpoint, and read back from there by `--resume`, `generate` and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cs336_basics.errors import UserError
from cs336_basics.model.transformer import ModelConfig

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs"

TORCHAO_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
FP8_RECIPES = ("auto", "delayed", *TORCHAO_RECIPES)
FP8_FILTERS = ("all", "auto")
KERNEL_CASTS = ("none", "inputs", "grads", "all")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FUSED_ATTENTION = ("auto", "flash", "cudnn")
RESIDUAL_DTYPES = ("auto", "fp32", "bf16")
PARALLELISMS = ("auto", "ddp", "fsdp", "hsdp")
DASHBOARDS = ("tensorboard", "wandb")
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_FP8_MARGIN = 16


@dataclass(frozen=True)
class Fp8Config:
    """Float8 training. Everything float8 is decided here and nowhere else; `resolve` turns "auto" into what
    runs, so the config saved with a run says exactly what it trained with."""

    enabled: bool = False
    # delayed: our layers (scales from the last steps' amaxes; precision/fp8_delayed.py). TorchAO's recipes
    # scale each tensor by its own amax. auto: delayed, or tensorwise with filter = "auto" (whose per-layer
    # timing uses TorchAO's layers)
    recipe: str = "auto"
    filter: str = "all"  # all eligible layers, or "auto": only those timed faster in fp8 on this GPU
    emulate: bool = False  # float8 numerics computed in float32: any device, slow; for tests
    head: bool = True  # the output head and its cross-entropy in float8 too (precision/fp8_head.py)
    # The settings below shape the delayed recipe's layers; with a TorchAO recipe they resolve to off.
    fused_swiglu: bool = True  # each SwiGLU block as one function, SwiGLU and its casts in Triton kernels
    merge_w13: bool = True  # the fused SwiGLU's w1 and w3 as one float8 product each way
    kernel_casts: str = "all"  # which casts our Triton cast kernel does: none, inputs, grads (output gradients), all
    fast_accum: bool = True  # forward products with cuBLAS's fast accumulation (gradients keep full accumulation)
    weight_cache: bool = True  # weights cast to float8 once per optimizer step, not once per micro-batch
    margin: int = 0  # scales leave 2^margin of headroom above the amax history's max

    DELAYED_ONLY_OFF: typing.ClassVar[dict[str, Any]] = {
        "fused_swiglu": False, "merge_w13": False, "kernel_casts": "none", "fast_accum": False, "weight_cache": False,
        "margin": 0}

    def validate(self) -> "Fp8Config":
        _choice("fp8.recipe", self.recipe, FP8_RECIPES)
        _choice("fp8.filter", self.filter, FP8_FILTERS)
        _choice("fp8.kernel_casts", self.kernel_casts, KERNEL_CASTS)
        if self.margin < 0:
            raise UserError(f"fp8.margin must be >= 0 (powers of two of headroom), got {self.margin}")
        if self.margin > MAX_FP8_MARGIN:
            raise UserError(f"fp8.margin must be <= {MAX_FP8_MARGIN}: float8 (e4m3) spans about 2^17, so a headroom of "
                            f"2^{self.margin} rounds every value to zero; got {self.margin}")
        return self

    def resolve(self, sharded: bool = False, explicit: frozenset[str] = frozenset()) -> "Fp8Config":
        """The recipe and its settings as they will run. `sharded`: under FSDP, whose weights live in shards (the
        delayed recipe's weights are then all-gathered in float8, each with its own scale). `explicit`: the fp8
        fields the user set on the command line or in a recipe file; one that cannot apply is an error, never
        ignored."""
        self.validate()
        asked = {name for name in explicit if name.startswith("fp8.")}
        if not self.enabled:
            extra = sorted(asked - {"fp8.enabled", "fp8.recipe"})
            if extra:
                raise UserError(f"{', '.join(extra)} only apply to float8 training: add --use_fp8 or drop them")
            return self
        recipe = self.recipe
        if recipe == "auto":
            recipe = "tensorwise" if self.filter == "auto" else "delayed"
        if recipe == "delayed" and self.filter == "auto":
            raise UserError("fp8.filter auto times TorchAO's layers: use --fp8_recipe tensorwise, or fp8.filter=all")
        resolved = replace(self, recipe=recipe)
        if recipe != "delayed":
            wrong = [f"fp8.{k}" for k, off in self.DELAYED_ONLY_OFF.items()
                     if f"fp8.{k}" in asked and getattr(self, k) != off]
            if wrong:
                raise UserError(f"{', '.join(wrong)} set the delayed recipe's layers, not {recipe}'s: drop "
                                f"{'them' if len(wrong) > 1 else 'it'} or use --fp8_recipe delayed")
            return replace(resolved, **self.DELAYED_ONLY_OFF)
        if sharded:  # FSDP all-gathers each weight in float8 with its own scale instead (precision/fp8_fsdp.py)
            for name, why in (("weight_cache", "keeps whole float8 weights between micro-batches"),
                              ("merge_w13", "casts w1 and w3 with one scale")):
                if getattr(self, name) and f"fp8.{name}" in asked:
                    raise UserError(f"fp8.{name} {why}; under FSDP each weight is all-gathered in float8 with a "
                                    "scale of its own: drop it, or use run.parallelism=ddp")
            resolved = replace(resolved, weight_cache=False, merge_w13=False)
        if not self.fused_swiglu and self.merge_w13:
            if "fp8.merge_w13" in asked:
                raise UserError("fp8.merge_w13 runs the fused SwiGLU's w1 and w3 as one product: it needs "
                                "fp8.fused_swiglu=true")
            resolved = replace(resolved, merge_w13=False)
        return resolved


@dataclass(frozen=True)
class TrainConfig:
    """The training loop and how fast it runs (compile, attention kernels, checkpointing, dtypes)."""

    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (the norm is still logged)
    eval_interval: int = 200
    eval_steps: int = 20
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    log_interval: int = 10
    seed: int = 0
    compile_model: bool = False
    # auto: CUDA graphs ("reduce-overhead") for float8 in one process on a GPU, whose many small kernels a
    # step would leave the host as the bottleneck; "default" otherwise
    compile_mode: str = "auto"
    tune_kernels: bool = False  # inductor's coordinate-descent block sizes and 2-D tiling: slower compilation
    gradient_checkpointing: bool = True
    use_flash_attn: bool = False
    fused_attention: str = "auto"  # PyTorch's order of the fused attention kernels, or "flash" / "cudnn" first
    gc_interval: int = 50  # Python's automatic GC off while training, a young collection every N steps; 0: automatic
    residual_dtype: str = "auto"  # auto: bf16 on a GPU (under bf16 autocast), float32 on a CPU
    # bf16 training in one process on a GPU: weights cast to bf16 once per optimizer step rather than by autocast
    # in every micro-batch, as the float8 weight cache does, so the two precisions compare like for like
    bf16_weight_cache: bool = True

    def validate(self) -> "TrainConfig":
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "eval_interval", "eval_steps",
                     "checkpoint_interval", "keep_checkpoints", "log_interval"):
            if getattr(self, name) <= 0:
                raise UserError(f"train.{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"train.{name} must be a finite number, got {getattr(self, name)}")
        if self.gc_interval < 0:
            raise UserError(f"train.gc_interval must be >= 0 (0 leaves Python's collection on), got {self.gc_interval}")
        if self.grad_clip < 0:
            raise UserError(f"train.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.weight_decay < 0:
            raise UserError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise UserError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"train.seed must be in 0..{MAX_SEED} (a 32-bit seed), got {self.seed}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise UserError(f"need 0 < train.lr and 0 <= train.min_lr <= train.lr, got lr={self.lr}, min_lr={self.min_lr}")
        _choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        _choice("train.fused_attention", self.fused_attention, FUSED_ATTENTION)
        _choice("train.residual_dtype", self.residual_dtype, RESIDUAL_DTYPES)
        if self.tune_kernels and not self.compile_model:
            raise UserError("train.tune_kernels tunes the compiled kernels: add --compile_model")
        return self


@dataclass(frozen=True)
class DataConfig:
    train_data: tuple[str, ...] = ()  # corpus files, directories, globs (data/sources.py); empty: Python's own text
    val_data: str = ""  # empty: the last 2% of the training tokens
    tokenizer: str = ""  # a tokenizer.json to use; empty: train a byte-level BPE tokenizer on the training data
    cache_dir: str = "data_cache"  # tokenizers and token files, keyed by their inputs
    text_field: str = "text"  # the text of each .jsonl(.gz) line, .parquet and .arrow row (saved datasets too)
    encode_workers: int = 0  # processes that encode the corpus; 0: one per CPU core from 64 MB of corpus, else none

    def __post_init__(self) -> None:
        if not self.text_field.strip():
            raise UserError("data.text_field must name the text field of JSON lines and column of Parquet and Arrow "
                            "files (default text), got an empty string")


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = ""  # empty: runs/<recipe>-<time>
    device: str = "auto"  # auto: cuda if available, else cpu
    # under torchrun: ddp replicates the model on every rank and all-reduces gradients; fsdp shards weights,
    # gradients and optimizer state; hsdp replicates across dp_replicate groups and shards within each; auto:
    # ddp when the model, its gradients and optimizer state fit in one GPU's memory, else fsdp
    parallelism: str = "auto"
    dp_replicate: int = 1  # hsdp: the number of replica groups (the ranks of one group share a shard set)
    # fsdp/hsdp with gradient accumulation: gather each block's weights once per optimizer step and keep them,
    # and the float32 gradients, whole through the step's micro-batches (one all-gather and one reduce-scatter
    # a step instead of two all-gathers and one reduce-scatter a micro-batch), for a replica's bf16 weights and
    # float32 gradients more memory per process
    fsdp_gather_once: bool = False
    sample_tokens: int = 80  # tokens sampled after training (0: none)
    prompt: str = "The "
    check_memory: bool = True  # refuse a run whose estimated memory exceeds what the device has free
    dashboards: tuple[str, ...] = ()  # also log to: tensorboard, wandb (offline without a W&B key)
    wandb_project: str = "cs336_basics"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fp8: Fp8Config = field(default_factory=Fp8Config)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "Config":
        for section in fields(self):  # no NaN or infinity anywhere, whatever the field
            values = getattr(self, section.name)
            for f in fields(values):
                value = getattr(values, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise UserError(f"{section.name}.{f.name} must be a finite number, got {value}")
        self.model.validate()
        for name in ("rope_theta", "norm_eps"):
            if getattr(self.model, name) <= 0:
                raise UserError(f"model.{name} must be > 0, got {getattr(self.model, name)}")
        self.train.validate()
        self.fp8.validate()
        if not self.data.cache_dir.strip():
            raise UserError("data.cache_dir must name a directory (default data_cache), got an empty string")
        if any(not p.strip() for p in self.data.train_data):
            raise UserError(f"data.train_data holds an empty file name: {list(self.data.train_data)}")
        if self.run.dp_replicate < 1:
            raise UserError(f"run.dp_replicate must be >= 1, got {self.run.dp_replicate}")
        _choice("run.parallelism", self.run.parallelism, PARALLELISMS)
        for name in self.run.dashboards:
            _choice("run.dashboards", name, DASHBOARDS)
        if self.data.encode_workers < 0:
            raise UserError(f"data.encode_workers must be >= 0 (0: chosen by the corpus size), got {self.data.encode_workers}")
        if self.run.sample_tokens < 0:
            raise UserError(f"run.sample_tokens must be >= 0, got {self.run.sample_tokens}")
        if self.run.sample_tokens > 0 and not self.run.prompt:
            raise UserError("run.prompt is empty, and the sample after training starts from it: give a prompt "
                            "(e.g. --set run.prompt=\"The \") or --set run.sample_tokens=0")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, f.name)).items()}
                for f in fields(self)}

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "Config | None" = None, where: str = "") -> "Config":
        """`base` (defaults) with the sections and fields of `data` replaced; unknown names are errors."""
        base = base or cls()
        sections = {f.name: getattr(base, f.name) for f in fields(cls)}
        for name, values in data.items():
            if name not in sections:
                raise UserError(f"{where}unknown section [{name}]{_suggest(name, sections)}; sections are "
                                f"{', '.join(sections)}")
            if not isinstance(values, dict):
                raise UserError(f"{where}[{name}] must be a table of settings")
            sections[name] = replace(sections[name], **{k: coerce(f"{name}.{k}", sections[name], v, where)
                                                        for k, v in values.items()})
        return cls(**sections)


def section_fields(section: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(section)}


def coerce(key: str, section: Any, value: Any, where: str = "") -> Any:
    """`value` (from TOML or the command line, where it is a string) as the type of field `key` of `section`."""
    name = key.split(".", 1)[1]
    known = section_fields(section)
    if name not in known:
        raise UserError(f"{where}unknown setting {key}{_suggest(name, known, key.split('.')[0] + '.')}")
    kind = type(getattr(section, name))
    text = isinstance(value, str)
    try:
        if kind is bool:
            if text and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is tuple:
            items = value.split(",") if text else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return tuple(i for i in items if i)
        if kind is str:
            if not text:
                raise ValueError
            return value
    except ValueError:
        pass
    expected = {bool: "true or false", int: "an integer", float: "a number", tuple: "a list of strings",
                str: "a string"}[kind]
    raise UserError(f"{where}{key} must be {expected}, got {value!r}")


def parse_override(text: str) -> tuple[str, str]:
    """'train.lr=3e-4' -> ('train.lr', '3e-4')."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise UserError(f"--set takes SECTION.FIELD=VALUE (e.g. train.lr=3e-4), got {text!r}")
    return key.strip(), value.strip()


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """`config` with {"section.field": value} applied (values as strings or typed)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return Config.from_dict(nested, base=config)


def recipe_path(name_or_path: str) -> Path:
    """A recipe given as a path, or by name: configs/<name>.toml."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return path
    named = RECIPE_DIR / f"{name_or_path}.toml"
    if not named.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
        raise UserError(f"no recipe {name_or_path!r}: pass a .toml file or one of {', '.join(known)}")
    return named


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML ({e})") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None


def load_recipe(name_or_path: str, base: Config | None = None) -> tuple[Config, frozenset[str]]:
    """The config a recipe file describes over `base`, and the keys it set."""
    path = recipe_path(name_or_path)
    data = read_toml(path)
    keys = frozenset(f"{s}.{k}" for s, values in data.items() if isinstance(values, dict) for k in values)
    return Config.from_dict(data, base=base, where=f"{path}: "), keys


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Sections of scalars and lists of strings, as TOML (all a Config holds)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "[" + ", ".join(value(i) for i in v) + "]"

    parts = []
    for section, values in data.items():
        parts.append(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in values.items()))
    return "\n".join(parts)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _suggest(name: str, known: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
