"""Several processes (one per GPU) under torchrun, on PyTorch's own engine: torch.distributed initialised
from torchrun's environment (NCCL on CUDA, gloo on CPU), FSDP2 `fully_shard` per block then the root, HSDP
through a 2-D device mesh, and sharded checkpoints through torch.distributed.checkpoint.

DDP is not offered: DDP + torch.compile + TorchAO float8 has been broken upstream (DDP's bucketing hooks
and compiled float8 graphs), while FSDP2 with per-block compile is the combination TorchAO and torchtitan
test, and it also gives float8 all-gathers for the tensorwise recipe.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from cs336_basics.errors import UserError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_replicate: int = 1
    dp_shard: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, dp_replicate: int | None = None) -> tuple[DistributedContext, torch.device]:
    """Read torchrun's environment; a plain `python` launch is a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        if dp_replicate not in (None, 1):
            raise UserError("--dp_replicate needs several processes: launch with torchrun --nproc_per_node N")
        return DistributedContext(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    replicate = dp_replicate or 1
    if world_size % replicate:
        raise UserError(f"--dp_replicate {replicate} does not divide the {world_size} processes")
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank, world_size, local_rank, replicate, world_size // replicate), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_rank0(obj: Any, ctx: DistributedContext) -> Any:
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if value.device.type == "cuda" else dist.ReduceOp.SUM)
        if value.device.type != "cuda":  # gloo has no AVG
            value /= ctx.world_size
    return value


def all_reduce_sum(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def apply_fsdp(model: nn.Module, ctx: DistributedContext, device: torch.device) -> None:
    """fully_shard each transformer block, then the root: bf16 parameters and fp32 gradient reduction on
    CUDA, fp32 throughout on CPU. With dp_replicate > 1 the mesh is 2-D and FSDP2 runs as HSDP."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if ctx.dp_replicate > 1:
        mesh = init_device_mesh(device.type, (ctx.dp_replicate, ctx.dp_shard), mesh_dim_names=("dp_replicate", "dp_shard"))
    else:
        mesh = init_device_mesh(device.type, (ctx.world_size,), mesh_dim_names=("dp_shard",))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" else MixedPrecisionPolicy())
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        # The last block's parameters are needed again as soon as backward starts: keeping them gathered
        # saves one all-gather per step (torchtitan does the same); the root is never resharded after forward.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < last)
    fully_shard(model, mesh=mesh, mp_policy=policy)


# ------------------------------------------------------------------------------------- checkpoints
def save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                 ctx: DistributedContext, files: dict[str, str] | None = None) -> None:
    """A torch.distributed.checkpoint directory (each rank writes its shards of the weights and optimizer moments)
    plus, from rank 0, meta.json and state.pt (checkpoint.write_checkpoint_files: `meta` without weights) and
    `files`; written under a temporary name and renamed by rank 0 once every rank has finished."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    from cs336_basics.training.checkpoint import publish, temp_dir_for, write_checkpoint_files

    tmp = path.with_name(path.name + ".tmp")
    if ctx.is_main:
        temp_dir_for(path)
    barrier()
    if meta.get("optimizer_saved", True):
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    else:  # before the first step: no optimizer state (get_state_dict would make some by a step of its own)
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(tmp))
    if ctx.is_main:
        write_checkpoint_files(tmp, {k: v for k, v in meta.items() if k not in ("model", "optimizer")}, files)
        publish(tmp, path)
    barrier()


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a sharded checkpoint into a model sharded over any number of ranks (or none): DCP reshards. Read
    without unpickling code (see _SafeReader and _SafeLoadPlanner)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optimizers = [optimizer] if optimizer is not None else []
    model_state, optim_state = get_state_dict(model, optimizers)
    state = {"model": model_state, "optimizer": optim_state} if optimizers else {"model": model_state}
    with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(state, storage_reader=_safe_reader(path), planner=_safe_planner())
        except (Exception, CheckpointException) as e:  # DCP gathers the ranks' failures in a CheckpointException
            causes = [failure[0] for failure in e.failures.values()] if isinstance(e, CheckpointException) else [e]
            if any(isinstance(c, pickle.UnpicklingError) for c in causes):
                raise UserError(f"sharded checkpoint {path} is refused: it holds Python objects other than tensors "
                                "and plain data (loading it could run code)") from None
            text = str(causes[0]).strip() if causes else ""
            first = f"{type(causes[0]).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__
            raise UserError(f"sharded checkpoint {path} does not load into this model ({first})") from None
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optimizer", {}))


# torch.distributed.checkpoint writes its `.metadata` with pickle and its FileSystemReader reads it back with plain
# pickle.load, which would run whatever a crafted file asks for; its default planner loads the shards' byte items
# with torch.load(weights_only=False). These are read here with an unpickler that admits only the classes DCP's
# metadata is made of, and with weights_only=True.
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    *((_DCP_METADATA, name) for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                         "ChunkStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta",
                                         "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "Path"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"its .metadata names {module}.{name}, which is not part of a checkpoint's "
                                     "metadata (loading it could run code)")


def read_sharded_metadata(path: Path) -> Any:
    """The DCP metadata of a sharded checkpoint directory, unpickled with DCP's metadata classes only."""
    with open(Path(path) / ".metadata", "rb") as f:
        return _MetadataUnpickler(f).load()


def check_sharded(path: Path) -> None:
    """A sharded checkpoint's metadata reads safely and names shard files that are all there, whole."""
    from cs336_basics.training.checkpoint import _corrupt

    path = Path(path)
    try:
        metadata = read_sharded_metadata(path)
    except pickle.UnpicklingError as e:
        if "not part of a checkpoint" in str(e):
            raise UserError(f"sharded checkpoint {path} is refused: {e}") from None
        raise _corrupt(path, f".metadata: {e}") from None
    except Exception as e:
        raise _corrupt(path, f".metadata: {type(e).__name__}") from None
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise _corrupt(path, ".metadata lists no shards")
    ends: dict[str, int] = {}
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise _corrupt(path, f".metadata names a shard outside the checkpoint ({name!r})")
        ends[name] = max(ends.get(name, 0), int(info.offset) + int(info.length))
    for name, end in ends.items():
        file = path / name
        if not file.is_file() or file.stat().st_size < end:
            raise _corrupt(path, f"shard {name} is {'missing' if not file.is_file() else 'truncated'}")


def _safe_reader(path: Path):  # -> FileSystemReader
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):  # as FileSystemReader's, without pickle.load
            metadata = read_sharded_metadata(Path(str(self.path)))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    return _SafeReader(str(path))


def _safe_planner():  # -> DefaultLoadPlanner
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class _SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:  # noqa: ANN001  as DefaultLoadPlanner's, weights_only=True
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return _SafeLoadPlanner()
