"""The delayed recipe's weights all-gathered in float8 under FSDP2: half the bytes of bf16 all-gathers.

Each Float8DelayedLinear's weight becomes TorchAO's WeightWithDynamicFloat8CastTensor, the parameter type
whose FSDP2 hooks cast the local shard to e4m3 before the all-gather and hand the layer the gathered weight as
a Float8TrainingTensor (its e4m3 data and scale); the layer then reads that instead of casting the weight
itself (fp8_delayed.weight_fp8). Every shard must cast with the same scale, the scale of the whole weight:
after each optimizer step `precompute_weight_scales` takes every layer's shard amax, reduces them over the
ranks in one all-reduce, and gives each weight its scale, so each all-gather in the step (forward and backward,
every micro-batch; once a step with run.fsdp_gather_once) casts only its 1/N shard with no collective of its
own. Before the first of them (no scale yet) TorchAO's hook reduces each weight's amax itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cs336_basics.precision.float8 import E4M3, E4M3_MAX


def gather_weights_in_fp8(layers: list[nn.Module]) -> None:
    """Make each layer's weight a parameter that FSDP2 all-gathers in float8 (before fully_shard); the layers
    read the gathered float8 weight from then on (their `gathered_fp8` flag)."""
    from torchao.float8.float8_training_tensor import LinearMMConfig
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    for layer in layers:
        weight = layer.weight
        layer.weight = nn.Parameter(WeightWithDynamicFloat8CastTensor(weight.data, LinearMMConfig(), E4M3),
                                    requires_grad=weight.requires_grad)
        layer.gathered_fp8 = True


def gathered_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 data (N, K), 1 / scale) of a weight FSDP2 all-gathered in float8 (a Float8TrainingTensor)."""
    return weight._data, weight._scale.reciprocal()


@torch.no_grad()
def precompute_weight_scales(layers: list[nn.Module]) -> None:
    """After the optimizer step: every gathered-in-fp8 weight's scale (448 / the amax of the whole weight), from
    one all-reduce of all the shards' amaxes."""
    from torch.distributed.tensor import DTensor

    weights = [layer.weight for layer in layers if isinstance(layer.weight, DTensor)]
    if not weights:
        return
    amaxes = torch.stack(torch._foreach_norm(weights, ord=math.inf))  # a Partial DTensor: the ranks' maxes
    amaxes = torch.clamp(amaxes, min=1e-12)  # the clamp needs the whole value: DTensor all-reduces here, once
    # float64 as TorchAO computes it, so the scale a shard casts with does not depend on the compiler
    scales = (E4M3_MAX / amaxes.to(torch.float64)).to_local().to(torch.float32)
    for weight, scale in zip(weights, scales.unbind()):
        weight._local_tensor._precomputed_scale = scale
