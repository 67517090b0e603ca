"""Several processes (one per GPU) under torchrun, on PyTorch's own engine: torch.distributed initialised
from torchrun's environment (NCCL on CUDA, gloo on CPU), and one of three ways to split the work:

- ddp: every rank holds the whole model; gradients are all-reduced in buckets while backward still runs
  (PyTorch's DistributedDataParallel, through the composable `replicate`, which keeps the model's own class
  and state-dict keys). For models whose weights, gradients and optimizer state fit in one GPU.
- fsdp: FSDP2 `fully_shard` per block then the root: weights, gradients and optimizer state sharded, each
  block's weights all-gathered before it runs. For models that do not fit.
- hsdp: FSDP2 over a 2-D mesh: replicated across `dp_replicate` groups, sharded within each.

Checkpoints: ddp writes the one-process format from rank 0 (every rank holds the same state); fsdp and hsdp
write torch.distributed.checkpoint directories. Either resumes in any mode and at any world size.
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

from cs336_basics.config import Config
from cs336_basics.errors import UserError


SHARDED = ("fsdp", "hsdp")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_replicate: int = 1
    dp_shard: int = 1
    launched: bool = False  # started by torchrun (a process group exists), even with one process

    @property
    def enabled(self) -> bool:
        return self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def processes_on_host(self) -> int:
        """This job's processes on this machine (torchrun's LOCAL_WORLD_SIZE): on a CPU they share its memory."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, dp_replicate: int | None = None) -> tuple[DistributedContext, torch.device]:
    """Read torchrun's environment; a plain `python` launch is a world of one with no process group. torchrun
    with one process gets a process group of one: it runs the same code as N processes do."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not launched_by_torchrun():
        if dp_replicate not in (None, 1):
            raise UserError("run.dp_replicate needs several processes: launch with torchrun --nproc_per_node N")
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
    return DistributedContext(rank, world_size, local_rank, replicate, world_size // replicate, launched=True), device


def choose_parallelism(config: Config, device: torch.device, ctx: DistributedContext) -> tuple[str, str]:
    """(the mode a torchrun job runs, why). `auto`: hsdp with run.dp_replicate > 1; otherwise ddp when one
    process's share of a replicated run (weights, gradients, AdamW state and activations: perf/memory.py's
    estimate) fits in the memory this device has free, fsdp when it does not."""
    from cs336_basics.perf.memory import _size, available_memory, estimate_training_memory

    mode = config.run.parallelism
    if mode == "hsdp" and ctx.dp_replicate < 2:
        raise UserError("run.parallelism hsdp replicates over run.dp_replicate groups: set run.dp_replicate to "
                        "2 or more (a divisor of the number of processes), or use fsdp")
    if mode in ("ddp", "fsdp") and ctx.dp_replicate > 1:
        raise UserError(f"run.dp_replicate {ctx.dp_replicate} sets up hsdp, not {mode}: drop it or use "
                        "run.parallelism=hsdp")
    if mode != "auto":
        return mode, "as configured"
    if ctx.dp_replicate > 1:
        return "hsdp", f"run.dp_replicate = {ctx.dp_replicate}"
    needed = estimate_training_memory(config, device.type).total
    available, where = available_memory(device)
    if available is None:
        return "fsdp", f"the free memory of {device} cannot be read"
    processes_here = ctx.processes_on_host if device.type == "cpu" else 1
    share = available // processes_here
    if needed <= share:
        return "ddp", (f"the whole model's training state and activations (about {_size(needed)}) fit in the "
                       f"{_size(share)} {where}" + (f" per process" if processes_here > 1 else ""))
    return "fsdp", f"about {_size(needed)} a replica would need exceeds the {_size(share)} {where}"


def apply_ddp(model: nn.Module, device: torch.device) -> None:
    """Replicate `model` on every rank (DistributedDataParallel under the composable `replicate`, which leaves its
    class and state-dict keys as they are). Gradients land in DDP's buckets (gradient_as_bucket_view: .grad is a
    view of the bucket, no copy) and each bucket is all-reduced as soon as backward has filled it; the Trainer
    keeps the gradients between steps (zeroed, not freed), so they stay those views."""
    from torch.distributed._composable.replicate import replicate

    # The blocks are compiled one by one, each a bucket-sized unit already: dynamo's DDP optimizer would split
    # every block's graph at DDP's bucket boundaries, into more graphs and more CUDA-graph replays per block.
    torch._dynamo.config.optimize_ddp = False
    where = {"device_id": device} if device.type == "cuda" else {}
    replicate(model, gradient_as_bucket_view=True, **where)


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


def apply_fsdp(model: nn.Module, ctx: DistributedContext, device: torch.device, gather_once: bool = False) -> None:
    """fully_shard each transformer block, then the root: bf16 parameters and fp32 gradient reduction on
    CUDA, fp32 throughout on CPU. With dp_replicate > 1 the mesh is 2-D and FSDP2 runs as HSDP.
    `gather_once` (run.fsdp_gather_once): no block frees its weights after forward; the Trainer keeps them, and
    the gradients, unsharded until the last micro-batch's backward (set_gradient_sync_for)."""
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
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < last and not gather_once)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def set_gradient_sync_for(model: nn.Module, last_micro_batch: bool) -> None:
    """run.fsdp_gather_once: before a micro-batch, whether its backward reduce-scatters the gradients and frees
    the gathered weights (the last of a step) or adds into the whole float32 gradients and keeps them."""
    model.set_requires_gradient_sync(last_micro_batch)
    model.set_reshard_after_backward(last_micro_batch)


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
