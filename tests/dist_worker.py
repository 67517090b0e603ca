"""Helper processes for tests/test_distributed.py, started with torchrun (CPU, gloo)."""

import functools
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


def train_and_compare_scales(argv: list[str], reduce_amax: bool = True) -> None:
    """The training command on this rank; afterwards rank 0 says whether the delayed-float8 amax histories (from
    which the scales follow) are the same on every rank. reduce_amax=False: the ranks do not reduce their amaxes
    (a control that shows the comparison can fail)."""
    from cs336_basics.cli import train as cli
    from cs336_basics.precision import converters
    from cs336_basics.training.trainer import Trainer

    if not reduce_amax:
        converters.all_reduce_max = lambda amaxes: None
    gathers = count_fp8_all_gathers()
    train = Trainer.train

    def train_then_compare(self: Trainer) -> dict:
        summary = train(self)
        delayed = [c.scales for c in self.converters if getattr(c, "scales", None) is not None]
        if not delayed:
            return summary
        history = delayed[0].history
        gathered = [torch.empty_like(history) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, history)
        same = all(torch.equal(h, gathered[0]) for h in gathered)
        if dist.get_rank() == 0:
            sys.__stdout__.write(f"fp8 amax histories {'identical' if same else 'DIFFER'} on {len(gathered)} ranks\n")
        check_fp8_all_gather(delayed[0].layers)
        if gathers and dist.get_rank() == 0:
            sys.__stdout__.write(f"fp8 all-gathers per weight: {sum(gathers) / len(delayed[0].layers):g}\n")
        return summary

    Trainer.train = train_then_compare
    rc = cli.main(argv)
    sys.stdout.flush()
    sys.__stdout__.flush()
    os._exit(rc)


def count_fp8_all_gathers() -> list[int]:
    """Every float8 all-gather of a weight (FSDP2's pre-all-gather hook of TorchAO's weight type) appends a 1."""
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    calls: list[int] = []
    hook = WeightWithDynamicFloat8CastTensor.fsdp_pre_all_gather

    @functools.wraps(hook)  # FSDP2 checks the hook's signature
    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return hook(self, *args, **kwargs)

    WeightWithDynamicFloat8CastTensor.fsdp_pre_all_gather = counted
    return calls


def check_fp8_all_gather(layers: list) -> None:
    """Under FSDP: each layer's weight is a parameter FSDP all-gathers in float8, and the scale its shards were
    last cast with is that of the whole weight (448 / its amax)."""
    from torch.distributed.tensor import DTensor
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    if not isinstance(layers[0].weight, DTensor):
        return
    right = all(isinstance(m.weight._local_tensor, WeightWithDynamicFloat8CastTensor)
                and torch.allclose(m.weight._local_tensor._precomputed_scale, 448 / m.weight.full_tensor().abs().max())
                for m in layers)
    if dist.get_rank() == 0:
        sys.__stdout__.write(f"fp8 all-gather: {'whole-weight scales' if right else 'WRONG scales'}\n")


def fail_on_rank_1() -> None:
    """Rank 1 raises; rank 0 waits in a collective that can never complete. torchrun must end both."""
    ctx, _ = init_distributed(torch.device("cpu"))
    if ctx.rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    dist.all_reduce(torch.ones(1))
    shutdown()


if __name__ == "__main__":
    {"gather": lambda: gather_loaded_state(sys.argv[2], sys.argv[3]), "fail": fail_on_rank_1,
     "train": lambda: train_and_compare_scales(sys.argv[2:]),
     "train-unreduced": lambda: train_and_compare_scales(sys.argv[2:], reduce_amax=False)}[sys.argv[1]]()
    # The work is done and the group destroyed. Skip interpreter finalization: there a gloo worker thread
    # still joinable aborts the process now and then ("terminate called without an active exception", about 1
    # run in 15 with 4 ranks on 2 cores; upstream discussion: pytorch/pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
