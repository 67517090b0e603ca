"""Helper processes for tests/test_distributed.py, started with torchrun (CPU, gloo)."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cs336_basics.model.transformer import ModelConfig, Transformer  # noqa: E402
from cs336_basics.training.checkpoint import load_checkpoint  # noqa: E402
from cs336_basics.training.distributed import apply_fsdp, barrier, init_distributed, load_sharded, shutdown  # noqa: E402


def gather_loaded_state(run_dir: str, out_file: str) -> None:
    """Load the newest (sharded) checkpoint of run_dir into an FSDP2 model over this world; rank 0 saves the
    full model state it reassembles."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    ctx, device = init_distributed(torch.device("cpu"))
    meta = load_checkpoint(Path(run_dir))
    model = Transformer(ModelConfig(**meta["model_config"]))
    apply_fsdp(model, ctx, device)
    optimizer = torch.optim.AdamW(model.parameters())
    load_sharded(Path(meta["sharded_path"]), model, optimizer)
    full, _ = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        torch.save(full, out_file)
    barrier()  # no rank leaves the group while rank 0 still writes (gloo may abort the last one out)
    shutdown()


def fail_on_rank_1() -> None:
    """Rank 1 raises; rank 0 waits in a collective that can never complete. torchrun must end both."""
    ctx, _ = init_distributed(torch.device("cpu"))
    if ctx.rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    dist.all_reduce(torch.ones(1))
    shutdown()


if __name__ == "__main__":
    {"gather": lambda: gather_loaded_state(sys.argv[2], sys.argv[3]), "fail": fail_on_rank_1}[sys.argv[1]]()
    # The work is done and the group destroyed. Skip interpreter finalization: there a gloo worker thread
    # still joinable aborts the process now and then ("terminate called without an active exception", about 1
    # run in 15 with 4 ranks on 2 cores; upstream discussion: pytorch/pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
