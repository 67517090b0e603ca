"""A run as a Hugging Face `transformers` Llama directory, and such a directory as a run.

Export (`export_hf`): config.json (a LlamaConfig), model.safetensors and the tokenizer files that
`AutoTokenizer.from_pretrained` reads without custom code (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), plus generation_config.json; their eos token is the run's end-of-document token
(<|endoftext|>, </s>, ...). Import (`import_hf`): a run directory with one checkpoint, checkpoints/step_0000000/
(meta.json, model.safetensors, tokenizer.json with such an end token), that generate samples from.

The two models compute the same function, name for name:

    ours                                   transformers (LlamaForCausalLM)
    embed.weight                           model.embed_tokens.weight
    layers.i.attn_norm.weight              model.layers.i.input_layernorm.weight
    layers.i.attn.qkv.weight [0:C]         model.layers.i.self_attn.q_proj.weight
    layers.i.attn.qkv.weight [C:2C]        model.layers.i.self_attn.k_proj.weight
    layers.i.attn.qkv.weight [2C:3C]       model.layers.i.self_attn.v_proj.weight
    layers.i.attn.out.weight               model.layers.i.self_attn.o_proj.weight
    layers.i.ffn_norm.weight               model.layers.i.post_attention_layernorm.weight
    layers.i.ffn.w1 / w3 / w2 .weight      model.layers.i.mlp.gate_proj / up_proj / down_proj .weight
    output.norm.weight                     model.norm.weight
    output.proj.weight                     lm_head.weight (absent when the embeddings are tied)

The fused qkv output is laid out (3, n_heads, head_dim), so its three row blocks are q, k and v with heads in
the order q_proj's rows hold them. Rotary embeddings need no permutation: ours rotate the pairs
(x[i], x[i + D/2]), which is transformers' rotate_half, with the same frequencies theta^(-2i/D)
(tests/test_hf_interop.py checks the logits). What a Llama config can say and our model cannot (grouped-query
attention, biases, rope scaling, another activation or head size) is refused, naming the field.

Nothing here needs transformers installed: the files are plain JSON and safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from cs336_basics.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BEGIN_TOKENS = ("<s>", "<|begin_of_text|>")  # SentencePiece's (Llama 1-2, Mistral) and Llama 3's beginning of text


# ----------------------------------------------------------------------------------------------- configs
def hf_config(model_config: dict[str, Any], dtype: str = "float32", eot: int | None = None,
              bos: int | None = None) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM with our model's shape (model_config: ModelConfig.to_dict()); eot is the
    end-of-document token's id (eos), bos the beginning-of-text one's (default: eot)."""
    from cs336_basics.model.transformer import ModelConfig

    cfg = ModelConfig(**model_config).validate()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": eot if bos is None else bos,
        "eos_token_id": eot,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _refuse(where: str, field: str, value: Any, why: str) -> UserError:
    return UserError(f"{where}: {field} = {json.dumps(value)} cannot be represented by this project's model ({why})")


def model_config_from_hf(config: dict[str, Any], where: str = HF_CONFIG) -> dict[str, Any]:
    """ModelConfig.to_dict() of a Llama config.json; a setting our model cannot represent is a UserError naming
    the field."""
    from cs336_basics.model.transformer import ModelConfig

    def get(field: str, default: Any = None) -> Any:
        return config.get(field, default)

    model_type = get("model_type")
    if model_type != "llama":
        raise _refuse(where, "model_type", model_type, "only llama models are imported")
    for arch in get("architectures") or ["LlamaForCausalLM"]:
        if arch != "LlamaForCausalLM":
            raise _refuse(where, "architectures", get("architectures"), "only LlamaForCausalLM is imported")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(get(field), int) or isinstance(get(field), bool):
            raise UserError(f"{where}: {field} is missing or not an integer ({get(field)!r})")
    heads = get("num_attention_heads")
    kv_heads = get("num_key_value_heads", heads)
    if kv_heads is not None and kv_heads != heads:
        raise _refuse(where, "num_key_value_heads", kv_heads,
                      f"grouped-query attention; ours needs num_key_value_heads = num_attention_heads = {heads}")
    if get("hidden_act", "silu") != "silu":
        raise _refuse(where, "hidden_act", get("hidden_act"), "the feed-forward is SwiGLU: silu only")
    for field in ("attention_bias", "mlp_bias"):
        if get(field, False):
            raise _refuse(where, field, get(field), "projections have no bias")
    if get("rope_scaling") is not None:
        raise _refuse(where, "rope_scaling", get("rope_scaling"), "plain rotary embeddings only")
    rope_theta = get("rope_theta")
    params = get("rope_parameters")
    if params is not None:  # transformers 5 writes the rope settings here
        if not isinstance(params, dict):
            raise UserError(f"{where}: rope_parameters is not a table ({params!r})")
        extra = {k: v for k, v in params.items() if k not in ("rope_type", "rope_theta")}
        if params.get("rope_type", "default") != "default" or extra:
            raise _refuse(where, "rope_parameters", params, "plain rotary embeddings only (rope_type default)")
        rope_theta = params.get("rope_theta", rope_theta)
    if (get("pretraining_tp") or 1) != 1:
        raise _refuse(where, "pretraining_tp", get("pretraining_tp"), "one tensor-parallel slice only")
    head_dim = get("head_dim")
    if head_dim is not None and head_dim * heads != get("hidden_size"):
        raise _refuse(where, "head_dim", head_dim,
                      f"ours is hidden_size / num_attention_heads = {get('hidden_size')} / {heads}")
    model_config = dict(
        vocab_size=get("vocab_size"), context_length=get("max_position_embeddings", 2048), dim=get("hidden_size"),
        n_layers=get("num_hidden_layers"), n_heads=heads, intermediate_size=get("intermediate_size"),
        rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
        norm_eps=float(get("rms_norm_eps", 1e-6)), tie_embeddings=bool(get("tie_word_embeddings", False)))
    try:
        return ModelConfig(**model_config).validate().to_dict()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------------------------- weights
def _check_names(have: set[str], want: set[str], where: str) -> None:
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        detail = "; ".join(part for part in (f"missing {', '.join(missing[:4])}" if missing else "",
                                             f"unexpected {', '.join(extra[:4])}" if extra else "") if part)
        raise UserError(f"the weights of {where} do not fit its config ({detail})")


def to_hf_state_dict(state: dict[str, torch.Tensor], model_config: dict[str, Any],
                     dtype: torch.dtype = torch.float32, where: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Our state dict as LlamaForCausalLM's (lm_head.weight left out when the embeddings are tied)."""
    from cs336_basics.model.transformer import ModelConfig

    cfg = ModelConfig(**model_config)
    want = {"embed.weight", "output.norm.weight", "output.proj.weight"} | {
        f"layers.{i}.{name}.weight" for i in range(cfg.n_layers)
        for name in ("attn_norm", "attn.qkv", "attn.out", "ffn_norm", "ffn.w1", "ffn.w2", "ffn.w3")}
    _check_names(set(state), want, where)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", dtype).contiguous()

    out = {"model.embed_tokens.weight": cast(state["embed.weight"]), "model.norm.weight": cast(state["output.norm.weight"])}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = cast(state["output.proj.weight"])
    for i in range(cfg.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].chunk(3, dim=0)
        out.update({
            hf + "input_layernorm.weight": cast(state[ours + "attn_norm.weight"]),
            hf + "self_attn.q_proj.weight": cast(q),
            hf + "self_attn.k_proj.weight": cast(k),
            hf + "self_attn.v_proj.weight": cast(v),
            hf + "self_attn.o_proj.weight": cast(state[ours + "attn.out.weight"]),
            hf + "post_attention_layernorm.weight": cast(state[ours + "ffn_norm.weight"]),
            hf + "mlp.gate_proj.weight": cast(state[ours + "ffn.w1.weight"]),
            hf + "mlp.up_proj.weight": cast(state[ours + "ffn.w3.weight"]),
            hf + "mlp.down_proj.weight": cast(state[ours + "ffn.w2.weight"]),
        })
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], model_config: dict[str, Any],
                       where: str = "the model") -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's state dict as ours, in float32; tied embeddings share one tensor."""
    from cs336_basics.model.transformer import ModelConfig

    cfg = ModelConfig(**model_config)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # older files hold it
    want = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{name}.weight" for i in range(cfg.n_layers)
        for name in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    if not cfg.tie_embeddings:
        want.add("lm_head.weight")
    elif "lm_head.weight" in tensors:  # a tied model saved with both names: they must agree
        if not torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            raise UserError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from the embeddings")
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    _check_names(set(tensors), want, where)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous()

    embed = cast(tensors["model.embed_tokens.weight"])
    out = {"embed.weight": embed}
    for i in range(cfg.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out.update({
            ours + "attn_norm.weight": cast(tensors[hf + "input_layernorm.weight"]),
            ours + "attn.qkv.weight": torch.cat([cast(tensors[hf + f"self_attn.{p}_proj.weight"]) for p in "qkv"]),
            ours + "attn.out.weight": cast(tensors[hf + "self_attn.o_proj.weight"]),
            ours + "ffn_norm.weight": cast(tensors[hf + "post_attention_layernorm.weight"]),
            ours + "ffn.w1.weight": cast(tensors[hf + "mlp.gate_proj.weight"]),
            ours + "ffn.w3.weight": cast(tensors[hf + "mlp.up_proj.weight"]),
            ours + "ffn.w2.weight": cast(tensors[hf + "mlp.down_proj.weight"]),
        })
    out["output.norm.weight"] = cast(tensors["model.norm.weight"])
    out["output.proj.weight"] = embed if cfg.tie_embeddings else cast(tensors["lm_head.weight"])
    _check_shapes(out, cfg, where)
    return out


def _check_shapes(state: dict[str, torch.Tensor], cfg, where: str) -> None:
    from cs336_basics.model.transformer import Transformer

    with torch.device("meta"):
        expected = Transformer(cfg).state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{where}: {name} has shape {tuple(tensor.shape)}, its config needs "
                            f"{tuple(expected[name].shape)}")


# ----------------------------------------------------------------------------------------------- tokenizer
def bos_eos_tokens(tokenizer) -> tuple[str, str]:  # noqa: ANN001  (tokenizers.Tokenizer)
    """(bos, eos) of the exported model: eos is the run's end-of-document token (data.tokenizer.end_token), which
    ends every document it was trained on; bos is the tokenizer's own beginning-of-text token (BEGIN_TOKENS) when
    it has one as a special token, else the end token too (GPT-2's convention)."""
    from cs336_basics.data.tokenizer import end_token, special_tokens

    eos = end_token(tokenizer)
    added = special_tokens(tokenizer)
    return next((token for token in BEGIN_TOKENS if token in added), eos), eos


def hf_tokenizer_files(tokenizer_json: str, context_length: int, bos: str, eos: str) -> dict[str, str]:
    """tokenizer.json (as the run holds it), tokenizer_config.json and special_tokens_map.json: a
    PreTrainedTokenizerFast with the bos and eos tokens given (bos_eos_tokens)."""
    special = {"bos_token": bos, "eos_token": eos}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": context_length}
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


# ----------------------------------------------------------------------------------------------- directories
def _fresh_dir(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{what} {path} exists and is not an empty directory; choose a new directory")


def _write_dir(path: Path, write) -> None:  # noqa: ANN001
    """Fill a temporary directory beside `path` with write(tmp), then rename it to `path` (an interrupted export
    leaves no half-written directory under the name)."""
    from cs336_basics.training.checkpoint import publish, temp_dir_for

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(path)
    try:
        write(tmp)
        if path.is_dir():  # an empty directory given as the destination
            path.rmdir()
        publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_hf(source: Path, out_dir: Path, dtype: str = "float32", log=print) -> Path:  # noqa: ANN001
    """A run directory, checkpoint (one-process or sharded) or `generate --export` file as a transformers Llama
    directory `out_dir` (new or empty)."""
    from safetensors.torch import save_file

    from cs336_basics.training.checkpoint import load_model_weights, tokenizer_from_json

    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_dir = Path(out_dir)
    _fresh_dir(out_dir, "the output directory")
    state = load_model_weights(Path(source), log=log)
    model_config = state["model_config"]
    tensors = to_hf_state_dict(state["model"], model_config, DTYPES[dtype], where=state["path"])
    tokenizer = tokenizer_from_json(state["tokenizer"], state["path"])
    bos, eos = bos_eos_tokens(tokenizer)
    bos_id, eos_id = tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
    config = hf_config(model_config, dtype, eos_id, bos_id)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}

    def write(tmp: Path) -> None:
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        for name, text in hf_tokenizer_files(state["tokenizer"], model_config["context_length"], bos, eos).items():
            (tmp / name).write_text(text, encoding="utf-8")

    _write_dir(out_dir, write)
    return out_dir


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, or of the shards model.safetensors.index.json names (pickle files such as
    pytorch_model.bin are not read: loading them could run code)."""
    from cs336_basics.training.checkpoint import load_weights

    if (hf_dir / HF_WEIGHTS).is_file():
        return load_weights(hf_dir / HF_WEIGHTS)[0]
    if (hf_dir / HF_INDEX).is_file():
        try:
            weight_map = json.loads((hf_dir / HF_INDEX).read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{hf_dir / HF_INDEX} is not a safetensors index ({e})") from None
        tensors: dict[str, torch.Tensor] = {}
        for name in files:
            if Path(name).name != name:
                raise UserError(f"{hf_dir / HF_INDEX} names a file outside its directory: {name}")
            tensors.update(load_weights(hf_dir / name)[0])
        return tensors
    if any((hf_dir / name).exists() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise UserError(f"{hf_dir} holds pytorch_model.bin (pickle), which is not loaded (loading it could run "
                        "code); save the model with safetensors (save_pretrained's default) and import that")
    raise UserError(f"{hf_dir} has no {HF_WEIGHTS} nor {HF_INDEX}")


def read_hf_header(hf_dir: Path, needed_by: str) -> tuple[dict[str, Any], str]:
    """(our model config, the tokenizer's JSON text) of a transformers Llama directory, checked: what can be
    refused before its weights are read. `needed_by` names what needs the tokenizer, for the error."""
    from cs336_basics.training.checkpoint import TOKENIZER

    if not (hf_dir / HF_CONFIG).is_file():
        raise UserError(f"{hf_dir} is not a transformers model directory (no {HF_CONFIG})")
    try:
        config = json.loads((hf_dir / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{hf_dir / HF_CONFIG} cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{hf_dir / HF_CONFIG} is not a JSON object")
    model_config = model_config_from_hf(config, str(hf_dir / HF_CONFIG))
    if not (hf_dir / TOKENIZER).is_file():
        raise UserError(f"{hf_dir} has no {TOKENIZER} (a tokenizers file); {needed_by} needs the model's tokenizer")
    return model_config, (hf_dir / TOKENIZER).read_text(encoding="utf-8")


def import_hf(hf_dir: Path, out_run_dir: Path) -> Path:
    """A transformers Llama directory as a new run directory `out_run_dir` (new or empty) with one checkpoint,
    checkpoints/step_0000000/ (meta.json, model.safetensors, tokenizer.json), in the project's checkpoint layout.
    Returns the checkpoint's path."""
    from cs336_basics.config import Config
    from cs336_basics.data.tokenizer import tokenizer_fingerprint
    from cs336_basics.model.transformer import ModelConfig
    from cs336_basics.training.checkpoint import FORMAT, META, TOKENIZER, WEIGHTS, save_weights, step_path, \
        tokenizer_from_json
    from cs336_basics.training.metrics import dumps_strict

    hf_dir, out_run_dir = Path(hf_dir), Path(out_run_dir)
    model_config, tokenizer_text = read_hf_header(hf_dir, "generate")
    tokenizer = tokenizer_from_json(tokenizer_text, str(hf_dir))  # refuses one without an end-of-document token
    _fresh_dir(out_run_dir, "the run directory")
    weights = from_hf_state_dict(read_hf_weights(hf_dir), model_config, where=str(hf_dir))
    meta = {"step": 0, "world_size": 1, "model_config": model_config,
            "config": Config(model=ModelConfig(**model_config)).to_dict(), "converter_names": [],
            "optimizer_saved": False, "run_name": out_run_dir.name,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "imported_from": str(hf_dir.resolve()),
            "format": FORMAT}
    checkpoint = step_path(out_run_dir, 0)

    def write_run(tmp_run: Path) -> None:
        directory = step_path(tmp_run, 0)
        directory.mkdir(parents=True)
        (directory / META).write_text(dumps_strict(meta, indent=1), encoding="utf-8")
        save_weights(directory / WEIGHTS, weights, {"format": f"cs336_basics.checkpoint/{FORMAT}"})
        (directory / TOKENIZER).write_text(tokenizer_text, encoding="utf-8")
        (tmp_run / TOKENIZER).write_text(tokenizer_text, encoding="utf-8")
        for f in (directory / META, directory / WEIGHTS, directory / TOKENIZER):
            _fsync_file(f)

    _write_dir(out_run_dir, write_run)
    return checkpoint


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
