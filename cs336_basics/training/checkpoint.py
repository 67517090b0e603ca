"""Checkpoints: one directory per checkpoint, written whole under a temporary name and renamed; the last K kept;
the newest intact one chosen on resume; nothing in them able to run code when loaded.

Layout (format 4):

    <run>/checkpoints/step_0000500/
        meta.json           step, config, model config, data files, tokenizer fingerprint, converter names (JSON)
        model.safetensors   the weights (a one-process run)
        .metadata, *.distcp the weights and optimizer moments as torch.distributed.checkpoint shards (several processes)
        state.pt            optimizer moments (one process), sampler, RNG and converter state: tensors and plain data
        tokenizer.json      the run's tokenizer

Loading never unpickles code: the weights are safetensors (a JSON header and raw tensor bytes); state.pt is read
with `torch.load(weights_only=True)`, which rebuilds tensors, numbers, strings, lists, tuples and dicts only; a
sharded checkpoint's `.metadata` (which torch.distributed.checkpoint writes with pickle and reads with plain
`pickle.load`) is read by an unpickler that admits DCP's own metadata classes and nothing else, and the byte items
of its shards with `weights_only=True` (distributed.load_sharded). A file that holds anything else is refused.

`generate --export FILE` writes one safetensors file with the config, step and tokenizer in its metadata, from
which generate samples on its own (load_model_weights).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from cs336_basics.errors import UserError
from cs336_basics.training.metrics import dumps_strict

FORMAT = 4
META, WEIGHTS, STATE, TOKENIZER = "meta.json", "model.safetensors", "state.pt", "tokenizer.json"
STATE_KEYS = ("optimizer", "sampler", "rng", "converters")  # what state.pt holds; "model" is model.safetensors
EXPORT_FORMAT = "cs336_basics.export/1"
_NAME = re.compile(r"^step_(\d+)(\.pt)?$")  # step_N/ (this format) or step_N.pt (one pickle file: older versions)
OLDER_VERSION = ("written by an older version of cs336_basics (one pickle file, which is not loaded: unpickling it "
                 "could run code); resume or sample from it with the version that wrote it, or start a new run")


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: Path) -> list[Path]:
    d = checkpoint_dir(out_dir)
    found = [p for p in d.iterdir() if _NAME.match(p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def step_path(out_dir: Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step_{step:07d}"


def temp_dir_for(path: Path) -> Path:
    """A fresh, empty temporary directory beside `path` (a leftover of an interrupted write is removed first)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished temporary directory to `path`, replacing a checkpoint of the same step."""
    _fsync_dir_files(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old.tmp")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir_files(directory: Path) -> None:
    """The files on disk before the rename that publishes them (a power loss never leaves a renamed directory of
    empty files)."""
    for f in directory.iterdir():
        if f.is_file():
            _fsync(f)
    _fsync(directory)


# ------------------------------------------------------------------------------------------------ weights
def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors. Names that alias another tensor (tied embeddings) are stored once and
    recorded in the metadata's "aliases"."""
    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        key = (tensor.device.type, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensor = tensor.cpu()
        storage = tensor.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory: a view of an already stored tensor is stored as a copy
        tensor = tensor.clone() if storage in storages or not tensor.is_contiguous() else tensor
        storages.add(tensor.untyped_storage().data_ptr())
        unique[name] = tensor
    metadata = dict(metadata or {})
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    save_file(unique, str(path), metadata=metadata)


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a safetensors file; a file that is not one is a UserError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        aliases = json.loads(metadata.pop("aliases", "{}"))
        for name, target in aliases.items():
            tensors[name] = tensors[target]
    except Exception as e:  # safetensors raises its own error type for a bad header or a short file
        raise UserError(f"{path} is not a safetensors file or is corrupt or truncated "
                        f"({type(e).__name__}: {_first_line(e)})") from None
    return tensors, metadata


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


# -------------------------------------------------------------------------------------------------- save
def write_checkpoint_files(directory: Path, state: dict[str, Any], files: dict[str, str] | None = None) -> None:
    """meta.json (everything but the state's tensors), state.pt (STATE_KEYS present), model.safetensors (if the
    state has "model") and the given text files, into `directory`."""
    directory = Path(directory)
    meta = {k: v for k, v in state.items() if k not in STATE_KEYS and k != "model"}
    meta["format"] = FORMAT
    (directory / META).write_text(dumps_strict(meta, indent=1), encoding="utf-8")
    torch.save({k: state[k] for k in STATE_KEYS if k in state}, directory / STATE)
    if "model" in state:
        save_weights(directory / WEIGHTS, state["model"], {"format": f"cs336_basics.checkpoint/{FORMAT}"})
    for name, text in (files or {}).items():
        (directory / name).write_text(text, encoding="utf-8")


def save_checkpoint(out_dir: Path, step: int, state: dict[str, Any], keep: int,
                    files: dict[str, str] | None = None) -> Path:
    """One process's checkpoint of `state` (a Trainer.state_dict) as step_N/, atomically; the last `keep` kept."""
    path = step_path(out_dir, step)
    tmp = temp_dir_for(path)
    try:
        write_checkpoint_files(tmp, state, files)
        publish(tmp, path)  # a crash before this line leaves the older checkpoints and a stray step_N.tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(out_dir, keep)
    return path


# -------------------------------------------------------------------------------------------------- load
def _corrupt(path: Path, detail: str) -> UserError:
    return UserError(f"checkpoint {path} is corrupt or truncated ({detail})")


def _load_plain(file: Path) -> Any:
    """torch.load of tensors and plain data only; anything else (a pickled object, code) is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise UserError(f"{file} holds Python objects other than tensors and plain data and is not loaded "
                            "(loading it could run code); it was not written by cs336_basics") from None
        raise _corrupt(file, _first_line(e)) from None
    except Exception as e:
        raise _corrupt(file, f"{type(e).__name__}: {_first_line(e)}") from None


def read_checkpoint(path: Path, with_state: bool = True, with_weights: bool = True) -> dict[str, Any]:
    """One checkpoint directory: its meta.json, and state.pt's contents (with_state) and model.safetensors's
    weights as "model" (with_weights); a sharded checkpoint's weights stay on disk ("sharded_path", checked).
    Any problem is a UserError that says what is wrong with the checkpoint."""
    from cs336_basics.model.transformer import ModelConfig

    path = Path(path)
    if path.is_file():
        if path.suffix == ".pt" or _NAME.match(path.name):
            raise UserError(f"checkpoint {path} was {OLDER_VERSION}")
        raise UserError(f"{path} is a file, not a checkpoint; pass a run directory or its checkpoints/step_N")
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a checkpoints/step_N directory")
    if not (path / META).exists():
        if (path / "meta.pt").exists():
            raise UserError(f"sharded checkpoint {path} was {OLDER_VERSION}")
        raise _corrupt(path, f"no {META}") if _NAME.match(path.name) else UserError(
            f"{path} is not a checkpoint (no {META}); pass a run directory or its checkpoints/step_N")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, f"{META}: {_first_line(e)}") from None
    if not isinstance(meta, dict) or "model_config" not in meta or "step" not in meta:
        raise _corrupt(path, f"{META} has no step or model config")
    if meta.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} has format {meta.get('format')!r}, this version reads format {FORMAT}: "
                        "it was written by another version of cs336_basics; use that version, or start a new run")
    try:
        ModelConfig(**meta["model_config"])
    except (TypeError, ValueError) as e:
        raise _corrupt(path, f"its model config: {_first_line(e)}") from None
    state = dict(meta)
    sharded = (path / ".metadata").exists()
    if sharded:
        from cs336_basics.training.distributed import check_sharded

        check_sharded(path)
        state["sharded_path"] = str(path)
    elif not (path / WEIGHTS).exists():
        raise _corrupt(path, f"no {WEIGHTS}")
    elif with_weights:
        state["model"], _ = load_weights(path / WEIGHTS)
    if with_state:
        if not (path / STATE).exists():
            raise _corrupt(path, f"no {STATE}")
        extra = _load_plain(path / STATE)
        needed = STATE_KEYS if not sharded else tuple(k for k in STATE_KEYS if k != "optimizer")
        if not isinstance(extra, dict) or any(k not in extra for k in needed):
            raise _corrupt(path / STATE, f"it lacks {', '.join(k for k in needed if k not in (extra or {}))}")
        state.update({k: extra[k] for k in STATE_KEYS if k in extra})
    state["path"] = str(path)
    state["run_dir"] = str(path.parent.parent)  # <run>/checkpoints/step_N
    return state


def load_checkpoint(path: Path, log: Callable[[str], None] | None = None, with_state: bool = True,
                    with_weights: bool = True) -> dict[str, Any]:
    """A checkpoint directory, or the newest intact checkpoint of a run directory: a newer one that cannot be read
    (a crash mid-write, a damaged disk) is skipped, and `log` says so in one line. See read_checkpoint."""
    path = Path(path)
    if not (path.is_dir() and not (path / META).exists() and not _NAME.match(path.name)):
        return read_checkpoint(path, with_state, with_weights)
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"no checkpoint in {path} (expected {checkpoint_dir(path)}/step_*); check the run directory")
    skipped: list[tuple[Path, UserError]] = []
    for candidate in reversed(found):
        try:
            state = read_checkpoint(candidate, with_state, with_weights)
        except UserError as e:
            skipped.append((candidate, e))
            continue
        if skipped:
            (log or _stderr)(f"warning: skipped {len(skipped)} unreadable newer checkpoint"
                             f"{'s' if len(skipped) > 1 else ''} ({'; '.join(str(e) for _, e in skipped[:2])}); "
                             f"using {candidate}")
        return state
    raise skipped[0][1]  # none intact: the newest one's problem


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def tokenizer_text(state: dict[str, Any]) -> str:
    """The tokenizer a checkpoint was trained with: its own tokenizer.json, else its run directory's (whose
    fingerprint must match the checkpoint's)."""
    from tokenizers import Tokenizer

    from cs336_basics.data.tokenizer import tokenizer_fingerprint

    want = state.get("tokenizer_fingerprint")
    tried = []
    for candidate in (Path(state["path"]) / TOKENIZER, Path(state["run_dir"]) / TOKENIZER):
        if not candidate.is_file():
            continue
        tried.append(str(candidate))
        try:
            text = candidate.read_text(encoding="utf-8")
            if want is None or tokenizer_fingerprint(Tokenizer.from_str(text)) == want:
                return text
        except Exception:  # unreadable: try the next one
            continue
    if tried:
        raise UserError(f"{' and '.join(tried)} are not the tokenizer checkpoint {state['path']} was trained with")
    raise UserError(f"no {TOKENIZER} beside checkpoint {state['path']} nor in its run directory {state['run_dir']}")


def model_from_weights(state: dict[str, Any], device: torch.device):  # -> Transformer
    """The plain model of a load_model_weights state on `device`, in eval mode: plain tensors whether the run
    trained in fp8 or bf16; weights that do not fit the recorded config are a one-line error."""
    from cs336_basics.model.transformer import ModelConfig, Transformer

    model = Transformer(ModelConfig(**state["model_config"])).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"the weights in {state['path']} do not fit its model config "
                        f"({str(e).strip().splitlines()[0][:200]})") from None
    return model.eval()


def load_model_weights(path: Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """For generate: {"model" (a plain state dict), "model_config", "config", "step", "path", "tokenizer" (its JSON)}
    from a run directory, a checkpoint directory of either kind, or a file written by `generate --export`."""
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS and (path.parent / META).exists():
        path = path.parent  # a checkpoint's model.safetensors: the checkpoint
    if path.is_file() and path.suffix != ".pt" and not _NAME.match(path.name):
        return load_export(path)
    state = load_checkpoint(path, log=log, with_state=False)
    if "sharded_path" in state:
        from cs336_basics.model.transformer import ModelConfig, Transformer
        from cs336_basics.training.distributed import load_sharded

        model = Transformer(ModelConfig(**state["model_config"]))
        load_sharded(Path(state["sharded_path"]), model, optimizer=None)
        state["model"] = model.state_dict()
    state["tokenizer"] = tokenizer_text(state)
    return state


def export_model(state: dict[str, Any], file: Path) -> None:
    """The weights of a load_model_weights result as one safetensors file; its metadata holds the config, the step
    and the tokenizer, so that generate samples from the file alone. Written atomically."""
    file = Path(file)
    metadata = {"format": EXPORT_FORMAT, "model_config": json.dumps(state["model_config"]),
                "config": dumps_strict(state.get("config") or {}), "step": str(state["step"]),
                "tokenizer": state["tokenizer"]}
    if state.get("tokenizer_fingerprint"):
        metadata["tokenizer_fingerprint"] = state["tokenizer_fingerprint"]
    tmp = file.with_name(file.name + ".tmp")
    try:
        save_weights(tmp, state["model"], metadata)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_export(file: Path) -> dict[str, Any]:
    """A file written by `generate --export`, as load_model_weights returns it."""
    from cs336_basics.model.transformer import ModelConfig

    tensors, metadata = load_weights(file)
    if metadata.get("format") != EXPORT_FORMAT or "tokenizer" not in metadata or "model_config" not in metadata:
        raise UserError(f"{file} is not a model written by generate --export (no {EXPORT_FORMAT} metadata); pass a "
                        "run directory, a checkpoint directory or an exported file")
    try:
        model_config = json.loads(metadata["model_config"])
        ModelConfig(**model_config)
        config = json.loads(metadata.get("config") or "{}")
        step = int(metadata.get("step", "0"))
    except (TypeError, ValueError) as e:
        raise UserError(f"{file}: its metadata is damaged ({_first_line(e)})") from None
    return {"model": tensors, "model_config": model_config, "config": config, "step": step, "path": str(file),
            "tokenizer": metadata["tokenizer"], "tokenizer_fingerprint": metadata.get("tokenizer_fingerprint")}


def config_from_checkpoint(state: dict[str, Any]):  # -> Config
    """The config a run trained with: its run directory's config.toml, else the one inside the checkpoint."""
    from cs336_basics.config import Config, read_toml

    saved = Path(state.get("run_dir", "")) / "config.toml"
    if "run_dir" in state and saved.is_file():
        return Config.from_dict(read_toml(saved), where=f"{saved}: ")
    if "config" in state:
        return Config.from_dict(state["config"])
    raise UserError(f"checkpoint {state.get('path', '')} holds no config: it was {OLDER_VERSION}")


def tokenizer_from_json(text: str, where: str):  # -> tokenizers.Tokenizer
    """A tokenizer from the JSON a checkpoint or an exported file holds (load_model_weights' "tokenizer"), with an
    end-of-document token as training requires (data.tokenizer.end_token: <|endoftext|>, </s>, ...)."""
    from tokenizers import Tokenizer

    from cs336_basics.data.tokenizer import end_token

    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"the tokenizer of {where} cannot be read ({_first_line(e)})") from None
    try:
        end_token(tokenizer)
    except UserError as e:
        raise UserError(f"the tokenizer of {where} has {e}") from None
    return tokenizer
