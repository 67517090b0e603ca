"""Several processes (one per GPU) under torchrun, on PyTorch's own engine: torch.distributed initialised
from torchrun's environment (NCCL on CUDA, gloo on CPU), FSDP2 `fully_shard` per block then the root, HSDP
through a 2-D device mesh, and sharded checkpoints through torch.distributed.checkpoint.

DDP is not offered: DDP + torch.compile + TorchAO float8 has been broken upstream (DDP's bucketing hooks
and compiled float8 graphs), while FSDP2 with per-block compile is the combination TorchAO and torchtitan
test, and it also gives float8 all-gathers for the tensorwise recipe.
"""

from __future__ import annotations

import os
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
                 ctx: DistributedContext) -> None:
    """A torch.distributed.checkpoint directory (each rank writes its shards) plus meta.pt from rank 0;
    written under a temporary name and renamed by rank 0 once every rank has finished."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    if ctx.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if ctx.is_main:
        torch.save(meta, tmp / "meta.pt")
        os.replace(tmp, path)
    barrier()


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load a sharded checkpoint into a model sharded over any number of ranks (or none): DCP reshards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optimizers = [optimizer] if optimizer is not None else []
    model_state, optim_state = get_state_dict(model, optimizers)
    state = {"model": model_state, "optimizer": optim_state} if optimizers else {"model": model_state}
    with warnings.catch_warnings():  # one process reading a sharded checkpoint is intended, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optimizer", {}))
