"""The Trainer: takes a built (and possibly float8-converted) model, applies activation checkpointing and
torch.compile, and runs AdamW with warm-up + cosine LR, gradient accumulation and clipping, bf16 autocast
over fp32 weights on CUDA, periodic evaluation, atomic checkpoints and honest throughput figures."""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from cs336_basics.data.batches import RandomWindows, validation_batches
from cs336_basics.errors import UserError
from cs336_basics.model.transformer import Transformer
from cs336_basics.perf.flops import mfu, roofline_tokens_per_second
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.precision.fp8 import (has_fp8_head, is_float8_model, precompute_float8_dynamic_scale_for_fsdp,
                                        uses_fp8_all_gather)
from cs336_basics.precision.bf16_cache import Bf16WeightCache, cache_bf16_weights
from cs336_basics.precision.fp8_delayed import DelayedScaling, has_delayed_fp8, set_float8_compute
from cs336_basics.training.attention import FUSED_ORDERS, AttentionKernels, attention_context
from cs336_basics.training.checkpoint import checkpoint_dir, prune_checkpoints, save_checkpoint
from cs336_basics.training.distributed import (DistributedContext, all_reduce_mean, all_reduce_sum, apply_fsdp,
                                               load_sharded, save_sharded)
from cs336_basics.training.garbage import ScheduledGC
from cs336_basics.training.lr_schedule import lr_at
from cs336_basics.training.metrics import MetricsLog, plot_losses
from cs336_basics.training.throughput import Throughput
from cs336_basics.training.transforms import (COMPILE_MODES, CUDA_GRAPH_MODES, RESIDUAL_DTYPES,
                                              apply_activation_checkpointing, cast_residual_stream, check_tune_kernels,
                                              compile_model, resolve_compile_mode, resolve_residual_dtype)

FP8_MODE_MESSAGE = "TorchAO FP8 mode enabled - model contains Float8 modules"
# Settings of the delayed recipe's layers, refused (not ignored) in a run without them, with what each does.
DELAYED_ONLY = {"fp8_weight_cache": "casts the weights of the delayed recipe's layers",
                "fp8_start_step": "switches the delayed recipe's layers from bf16 to float8",
                "fp8_margin": "sets the headroom of the delayed recipe's scales (TorchAO's recipes scale each tensor "
                              "by its own amax)",
                "fp8_grad_margin": "sets the headroom of the delayed recipe's gradient scales (TorchAO's recipes scale "
                                   "each tensor by its own amax)"}
SATURATION_WARNING = 2.0  # a delayed-fp8 cast whose amax was over 2x its scale's range is reported as it happens
FP8_DELAYED_MODE_MESSAGE = "FP8 mode enabled - model contains Float8 modules (Float8DelayedLinear, delayed scaling)"


class TrainingDiverged(UserError):
    pass


@dataclass
class TrainConfig:
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
    compile_model: bool = False
    compile_mode: str = "auto"  # "auto": CUDA graphs for fp8 on one GPU (transforms.py)
    tune_kernels: bool = False  # inductor's coordinate-descent tuning and 2-D tiling (transforms.TUNED_KERNELS)
    gradient_checkpointing: bool = True
    use_flash_attn: bool = False
    fused_attention: str = "auto"  # fused SDPA kernels in PyTorch's order ("auto") or "flash" / "cudnn" first
    gc_interval: int = 50  # Python's automatic GC off while training, a young collection every N steps; 0: automatic
    residual_dtype: str = "auto"  # "bf16" (auto on CUDA): the stream in bf16 while training (transforms.cast_residual_stream)
    # delayed fp8: cast the weights once per optimizer step (fp8_delayed.DelayedScaling); None: on with the delayed
    # recipe's layers (the Trainer records what it resolved)
    fp8_weight_cache: bool | None = None
    # delayed fp8: scales leave 2^fp8_margin of headroom above the amax history's max (fp8_delayed.DelayedScaling)
    fp8_margin: int = 0
    # delayed fp8: the gradients' own headroom, 2^fp8_grad_margin (experimental); None: as fp8_margin
    fp8_grad_margin: int | None = None
    # delayed fp8: the steps before this one train in bf16 (the float8 layers compute as the plain ones), the
    # float8 products start here, their scales calibrated then (experimental; 0: float8 from the first step)
    fp8_start_step: int = 0
    # bf16 runs on one GPU: every nn.Linear's bf16 weight cast once per optimizer step instead of by autocast in
    # every micro-batch (precision/bf16_cache.py; the fp8 weight cache's counterpart, NOTES 71, 73); None: on where
    # it applies (resolve_bf16_weight_cache; the Trainer records what it resolved)
    bf16_weight_cache: bool | None = None
    seed: int = 0

    def asked(self, name: str) -> bool:
        """Whether setting `name` was given: neither its default nor False (what the Trainer records for a run
        without the delayed layers' weight cache), so an explicit --fp8_grad_margin 0 counts and resumes do not."""
        value = getattr(self, name)
        default = next(f.default for f in fields(self) if f.name == name)
        return value is not None and value is not False and value != default

    def validate(self) -> "TrainConfig":
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "eval_interval", "eval_steps",
                     "checkpoint_interval", "keep_checkpoints", "log_interval"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.gc_interval < 0:
            raise UserError(f"--gc_interval must be >= 0 (0 leaves Python's automatic collection on), got {self.gc_interval}")
        if self.grad_clip < 0:
            raise UserError(f"--grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.fp8_start_step < 0:
            raise UserError(f"--fp8_start_step must be >= 0 (0: float8 from the first step), got {self.fp8_start_step}")
        if self.fp8_margin < 0:
            raise UserError(f"--fp8_margin must be >= 0 (powers of two of headroom for the delayed scales), got {self.fp8_margin}")
        if self.fp8_grad_margin is not None and self.fp8_grad_margin < 0:
            raise UserError(f"--fp8_grad_margin must be >= 0 (powers of two of headroom for the delayed gradient scales), "
                            f"got {self.fp8_grad_margin}")
        if self.warmup_steps < 0:
            raise UserError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise UserError(f"need 0 < --lr and 0 <= --min_lr <= --lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise UserError(f"--residual_dtype must be one of {', '.join(RESIDUAL_DTYPES)}, got {self.residual_dtype!r}")
        if self.fused_attention not in FUSED_ORDERS:
            raise UserError(f"--fused_attention must be one of {', '.join(FUSED_ORDERS)}, got {self.fused_attention!r}")
        if self.compile_model and self.compile_mode not in COMPILE_MODES:
            raise UserError(f"--compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.tune_kernels and not self.compile_model:
            raise UserError("--tune_kernels tunes the compiled kernels: add --compile_model")
        return self


def resolve_bf16_weight_cache(asked: bool | None, fp8: bool, device: torch.device, distributed: bool) -> bool:
    """Whether a run casts its bf16 weights once per optimizer step: where bf16 autocast trains on one GPU, unless
    asked not to (None or True); asked for where it does not apply: an error, not ignored."""
    applies = not fp8 and device.type == "cuda" and not distributed
    if asked and not applies:
        raise UserError("--bf16_weight_cache applies to bf16 training under autocast on one GPU (float8 runs have "
                        "--fp8_weight_cache; CPU training is float32): drop it")
    return applies and asked is not False


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(
        self,
        model: Transformer,
        cfg: TrainConfig,
        train_data: RandomWindows,
        val_tokens: np.ndarray,
        device: torch.device,
        out_dir: Path,
        run_info: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        ctx: DistributedContext = DistributedContext(),
    ) -> None:
        cfg = cfg.validate()
        fp8, delayed = is_float8_model(model), has_delayed_fp8(model)
        for name, what in DELAYED_ONLY.items():
            if cfg.asked(name) and not delayed:
                raise UserError(f"--{name} {what}: add --use_fp8 with --fp8_recipe delayed (the default on one GPU), "
                                "or drop it")
        # "auto" settings resolved for this device and model (as the CLI already did for its runs), so checkpoints
        # record what ran
        cfg = replace(cfg, residual_dtype=resolve_residual_dtype(cfg.residual_dtype, device, ctx.enabled, asked=False),
                      fp8_weight_cache=delayed and cfg.fp8_weight_cache is not False,
                      bf16_weight_cache=resolve_bf16_weight_cache(cfg.bf16_weight_cache, fp8, device, ctx.enabled))
        self.cfg, self.device, self.out_dir, self.ctx = cfg, device, out_dir, ctx
        self.log = log if ctx.is_main else (lambda message: None)
        self.train_data, self.val_tokens = train_data, val_tokens
        self.run_info = run_info or {}
        self.model_cfg = model.cfg
        self.model = model
        self.fp8 = fp8
        self.fp8_head = has_fp8_head(model)
        self.fp8_scales = (DelayedScaling(model, cache_weights=cfg.fp8_weight_cache, margin=cfg.fp8_margin,
                                            grad_margin=cfg.fp8_grad_margin)
                            if delayed else None)
        self._fp8_compute_on = True  # the float8 layers' products are on (off before --fp8_start_step)
        if self.fp8:
            self.log(FP8_DELAYED_MODE_MESSAGE + ("; weights cast to float8 once per optimizer step (--fp8_weight_cache)"
                                                 if cfg.fp8_weight_cache else "") if self.fp8_scales else FP8_MODE_MESSAGE)
        # Evaluation runs every model in one precision (bf16 autocast on CUDA, fp32 on CPU) so that fp8 and
        # bf16 runs report comparable validation losses: a plain model that shares the trained weights.
        # (Sharded parameters cannot be shared that way: under FSDP an fp8 run evaluates in fp8.)
        # A bf16 residual stream is a training setting too: evaluation keeps float32's.
        bf16_residual = cfg.residual_dtype == "bf16"
        # (With the bf16 weight cache the training model's casts are a step old after the optimizer's update.)
        plain_eval = self.fp8 or bf16_residual or cfg.bf16_weight_cache
        self.eval_model = self._plain_view(model) if plain_eval and not ctx.enabled else model
        # Transformations, in order, after any float8 conversion: bf16 weights cast once per step, the residual
        # stream's dtype, activation checkpointing, then compile, then FSDP2 sharding when several processes run.
        self.bf16_cache = None
        if cfg.bf16_weight_cache:
            layers = cache_bf16_weights(model)
            self.bf16_cache = Bf16WeightCache(model)
            self.log(f"bf16 weights of {layers} linear layers cast once per optimizer step (--no-bf16_weight_cache: by "
                     "autocast in every micro-batch)")
        if bf16_residual:
            cast_residual_stream(model)
            self.log("residual stream in bf16 (FSDP's bf16 parameters), in evaluation too" if ctx.enabled else
                     "residual stream in bf16 while training (--residual_dtype); evaluation in float32")
        if cfg.gradient_checkpointing:
            apply_activation_checkpointing(model)
        self.compile_mode = resolve_compile_mode(cfg.compile_mode, self.fp8, device, ctx.enabled) if cfg.compile_model else None
        # With CUDA graphs every micro-batch (and every evaluation batch) begins a new graph generation: the
        # previous one's outputs are dead, and the blocks' graphs, chained within one forward pass, keep theirs.
        self._cuda_graphs = self.compile_mode in CUDA_GRAPH_MODES
        self._grad_sums: list[torch.Tensor] | None = None  # with CUDA graphs and accumulation: see _move_grads_out
        if cfg.tune_kernels:
            check_tune_kernels(device)
        if cfg.compile_model:
            compile_model(model, self.compile_mode, cfg.tune_kernels)
            if self.eval_model is not model:  # untuned: evaluation is too small a share of a run to pay for tuning
                compile_model(self.eval_model, self.compile_mode)
            if self.fp8_scales is not None and self.fp8_scales.cache_weights:
                self.fp8_scales.compile_weight_casts()
        if ctx.enabled:
            apply_fsdp(model, ctx, device)
        self._fp8_fsdp_scales = self.fp8 and ctx.enabled and uses_fp8_all_gather(model)
        self._params = list(model.parameters())
        self.n_params = sum(p.numel() for p in self._params)
        self.optimizer = self._build_optimizer()
        # On one device the fused AdamW kernel applies the clipping factor as it reads each gradient (the
        # grad_scale contract GradScaler uses), saving a separate read-and-write pass over all gradients.
        # Sharded gradients (DTensors) are clipped by PyTorch's own clip_grads_with_norm_.
        self._clip_in_optimizer = bool(self.optimizer.defaults.get("fused")) and not ctx.enabled
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        self.metrics = MetricsLog(out_dir / "metrics.jsonl")
        self.peaks = current_device_peaks(device)
        self.step = 0
        self.summary: dict[str, Any] = {}
        self._announced = False  # the first measured tokens/s after warm-up is printed once
        self._last_loss = float("nan")  # the last synchronized (rank-averaged) training loss

    def _calibrate_fp8_scales(self) -> None:
        """Delayed-scaling float8 layers learn their first scales from one eager forward + backward on the
        batch the first step will draw (the sampler is rewound), with the weights this run starts from."""
        assert self.fp8_scales is not None
        sampler_state = self.train_data.state_dict()
        x, y = self.train_data.next_batch(self.device)
        self.train_data.load_state_dict(sampler_state)

        def forward_backward() -> None:
            with self.autocast:
                loss = self.model(x, y)
            loss.backward()

        self.fp8_scales.calibrate(forward_backward, self._params)
        self.log(f"fp8 delayed scaling: {len(self.fp8_scales.layers)} layers calibrated on one micro-batch")

    @staticmethod
    def _plain_view(model: Transformer) -> Transformer:
        with torch.device("meta"):
            plain = Transformer(model.cfg)
        plain.load_state_dict(model.state_dict(), assign=True)  # shares storage with the trained weights
        cos, sin = model.rope_cos, model.rope_sin
        plain.rope_cos, plain.rope_sin = cos, sin
        return plain

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay = [p for p in self.model.parameters() if p.dim() >= 2]  # matrices and embeddings
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]  # norm gains
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step: micro-batch x accumulation x context x processes."""
        return (self.cfg.batch_size * self.cfg.gradient_accumulation_steps * self.model_cfg.context_length
                * self.ctx.world_size)

    # ----------------------------------------------------------------------------------------- state
    def meta_state(self) -> dict[str, Any]:
        """Everything but the weights and optimizer moments."""
        return {
            "format": 2,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "sampler": self.train_data.state_dict(),
            "rng": rng_state(),
            "model_config": self.model_cfg.to_dict(),
            "train_config": asdict(self.cfg),
            "fp8": self.fp8,
            "fp8_delayed_scaling": self.fp8_scales.state_dict() if self.fp8_scales and self.fp8_scales.calibrated else None,
            **self.run_info,
        }

    def state_dict(self) -> dict[str, Any]:
        """One-process checkpoint: weights and optimizer state keyed by parameter name (plain tensors)."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {**self.meta_state(), "model": model_state, "optimizer": optim_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From either checkpoint kind, into this run's (possibly sharded) model, whatever the old world size."""
        if "sharded_path" in state:
            load_sharded(Path(state["sharded_path"]), self.model, self.optimizer)
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=self.ctx.enabled))
        self.train_data.load_state_dict(state["sampler"])
        if self.fp8_scales is not None and state.get("fp8_delayed_scaling") is not None:
            try:
                self.fp8_scales.load_state_dict(state["fp8_delayed_scaling"])
            except ValueError as e:  # another set of float8 layers: the first step calibrates afresh
                self.log(f"fp8 delayed scaling: not resumed ({e}); recalibrating")
        set_rng_state(state["rng"])
        self.step = state["step"]
        if self.ctx.is_main:
            self.metrics.truncate_after(self.step)

    def save(self) -> Path:
        if self.ctx.enabled:
            path = checkpoint_dir(self.out_dir) / f"step_{self.step:07d}"
            if self.ctx.is_main:
                path.parent.mkdir(parents=True, exist_ok=True)
            save_sharded(path, self.model, self.optimizer, self.meta_state(), self.ctx)
            if self.ctx.is_main:
                prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        else:
            path = save_checkpoint(self.out_dir, self.step, self.state_dict(), self.cfg.keep_checkpoints)
        self.log(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def evaluate(self) -> float:
        self.eval_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of window losses, windows)
        for x, y in validation_batches(self.val_tokens, self.cfg.batch_size, self.model_cfg.context_length,
                                       self.cfg.eval_steps, self.device, self.ctx.rank, self.ctx.world_size):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.autocast:
                loss = self.eval_model(x, y).double()
            total += torch.stack([loss * x.shape[0], torch.tensor(float(x.shape[0]), device=self.device, dtype=torch.float64)])
        self.eval_model.train()
        total = all_reduce_sum(total, self.ctx)
        return (total[0] / total[1]).item()

    def roofline_bound(self) -> float:
        """Upper bound on this run's global tokens/s from the device's datasheet peaks (needs self.peaks)."""
        per_device = self.tokens_per_step // self.ctx.world_size
        return self.ctx.world_size * roofline_tokens_per_second(self.model_cfg, self.peaks, self.fp8, per_device, self.n_params,
                                                                fp8_head=self.fp8_head)

    def mfu(self, tokens_per_second: float) -> float:
        """Per-device model FLOPs utilisation against the bf16 datasheet peak (needs self.peaks)."""
        return mfu(tokens_per_second / self.ctx.world_size, self.model_cfg, self.peaks)

    def _measured_line(self, tokens_per_second: float) -> str:
        line = f"measured after warm-up: {tokens_per_second:,.0f} tokens/s"
        if self.peaks:
            bound = self.roofline_bound()
            line += (f", {100 * tokens_per_second / bound:.0f}% of the {bound:,.0f} tokens/s upper bound, "
                     f"MFU {100 * self.mfu(tokens_per_second):.1f}% (bf16 peak)")
        return line

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self) -> dict[str, Any]:
        """Train to cfg.max_steps. A Ctrl-C or SIGTERM (raised as KeyboardInterrupt) writes a checkpoint first."""
        with attention_context(self.cfg.use_flash_attn, self.cfg.fused_attention):
            try:
                self._train_loop()
            except KeyboardInterrupt:
                self.log(f"\ninterrupted at step {self.step}: writing a final checkpoint")
                self.save()
                raise
            finally:
                if self.ctx.is_main:
                    plot_losses(self.metrics.read(), self.out_dir / "loss.png", f"{self.run_info.get('run_name', 'training')}")
        return self.summary

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns (summed micro-batch
        losses, gradient norm before clipping) as device tensors, without synchronizing."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        scales = self._active_fp8_scales()
        if scales is not None and not scales.calibrated:
            self._calibrate_fp8_scales()
        if scales is not None:
            scales.cast_weights()  # with --fp8_weight_cache: once for all of this step's micro-batches
        if self.bf16_cache is not None:
            self.bf16_cache.cast_weights()
        loss_sum = torch.zeros((), device=self.device)
        accumulation = self.cfg.gradient_accumulation_steps
        for micro_batch in range(accumulation):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = self.train_data.next_batch(self.device)
            with self.autocast:
                loss = self.model(x, y)
            (loss / accumulation).backward()
            loss_sum += loss.detach()
            if micro_batch < accumulation - 1:
                if scales is not None:
                    scales.after_backward()  # the max of the micro-batches' gradient amaxes, not their sum
                if self._cuda_graphs:
                    self._move_grads_out(first=micro_batch == 0)
        if self._cuda_graphs and accumulation > 1:
            torch._foreach_add_([p.grad for p in self._params], self._grad_sums)
        if scales is not None:  # this step's amaxes set the next step's float8 scales
            scales.update()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if self.cfg.grad_clip > 0:
            if self._clip_in_optimizer:  # gradients are divided by max(1, norm / grad_clip) inside the step
                self.optimizer.grad_scale = torch.clamp((grad_norm + 1e-6) / self.cfg.grad_clip, min=1.0)
            else:
                torch.nn.utils.clip_grads_with_norm_(self._params, self.cfg.grad_clip, grad_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._fp8_fsdp_scales:  # one all-reduce for every layer's weight scale, for the next fp8 all-gather
            precompute_float8_dynamic_scale_for_fsdp(self.model)
        return loss_sum, grad_norm

    def _active_fp8_scales(self) -> DelayedScaling | None:
        """The delayed scales when this step trains in float8: None before --fp8_start_step, whose steps run the
        float8 layers as plain ones; at that step the layers switch (the compiled model recompiles once) and the
        scales calibrate afresh."""
        if self.fp8_scales is None:
            return None
        on = self.step >= self.cfg.fp8_start_step
        if on != self._fp8_compute_on:
            set_float8_compute(self.model, on)
            self._fp8_compute_on = on
            if on:  # the first float8 step: scales from the weights as they are now
                self.fp8_scales.calibrated = False
                self.log(f"\nstep {self.step + 1}: float8 products from here on (--fp8_start_step {self.cfg.fp8_start_step})")
        return self.fp8_scales if on else None

    def _move_grads_out(self, first: bool) -> None:
        """Under CUDA graphs a micro-batch's gradients are the backward graph's outputs, which the next replay
        overwrites (pytorch/pytorch#169545): sum them into buffers of our own and drop them. The last
        micro-batch's gradients stay where they are, with the sums added in, until the optimizer step."""
        grads = [p.grad for p in self._params]
        if self._grad_sums is None:
            self._grad_sums = [torch.empty_like(g) for g in grads]
        (torch._foreach_copy_ if first else torch._foreach_add_)(self._grad_sums, grads)
        for p in self._params:
            p.grad = None

    def _train_loop(self) -> None:
        cfg = self.cfg
        self._logged_through = self.step  # the last step whose fp8 saturation was reported
        # The first steps (compilation, allocator and kernel warm-up) are excluded from tokens/s.
        throughput = Throughput(warmup_steps=3 if cfg.compile_model else 1, sync=self._sync)
        if (scales := self._active_fp8_scales()) is not None and not scales.calibrated:
            self._calibrate_fp8_scales()  # here rather than in the first step: before the progress bar
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True,
                   disable=not self.ctx.is_main)
        try:
            with ScheduledGC(cfg.gc_interval) as collector:
                while self.step < cfg.max_steps:
                    lr = lr_at(self.step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
                    # The last warm-up step is profiled to report the attention kernels that really ran.
                    watch = throughput.steps == throughput.warmup_steps - 1
                    with AttentionKernels(self.device) if watch else contextlib.nullcontext() as kernels:
                        loss_sum, grad_norm = self.train_step(lr)
                    if kernels is not None and kernels.ran is not None:
                        self._report_attention(kernels.ran, bar)
                    self.step += 1
                    collector.step_done(self.step)
                    bar.update(1)
                    throughput.step_done(self.tokens_per_step)
                    self._after_step(lr, loss_sum, grad_norm, throughput, bar)
        except KeyboardInterrupt:  # the figures of the steps done are kept (the CLI writes them to summary.json)
            self.summary["interrupted_at_step"] = self.step
            self._summarize(throughput, interrupted=True)
            raise
        finally:
            bar.close()  # before any error message, so that message is the last line
        self._summarize(throughput)

    def _report_attention(self, ran: str, bar: tqdm) -> None:
        self.summary["attention_ran"] = ran
        if self.ctx.is_main:
            bar.write(f"attention kernels that ran: {ran}")
            order = FUSED_ORDERS[self.cfg.fused_attention]  # None for "auto": no kernel was asked for by name
            asked = order[0].name if order else None
            if self.cfg.use_flash_attn and (ran == "MATH" or (asked and not ran.startswith(asked))):
                bar.write(f"WARNING: --use_flash_attn --fused_attention {self.cfg.fused_attention} was asked for, but "
                          f"{ran} ran (a graph from the compile cache, or inputs that kernel does not take)")

    def _after_step(self, lr: float, loss_sum: torch.Tensor, grad_norm: torch.Tensor, throughput: Throughput,
                    bar: tqdm) -> None:
        """Logging, evaluation and checkpoints at their intervals (and always after the last step)."""
        cfg, last = self.cfg, self.step == self.cfg.max_steps
        if throughput.steps == throughput.warmup_steps:
            self.summary["warmup_seconds"] = throughput.warmup_seconds
            bar.write(f"warm-up{' and compilation' if cfg.compile_model else ''}: {throughput.warmup_steps} "
                      f"steps in {throughput.warmup_seconds:.1f} s (excluded from tokens/s)")
        do_log = self.step % cfg.log_interval == 0 or last
        do_eval = self.step % cfg.eval_interval == 0 or last
        do_save = self.step % cfg.checkpoint_interval == 0 or last
        if do_log or do_save:  # a checkpoint is written only after a finite loss
            self._last_loss = all_reduce_mean(loss_sum / cfg.gradient_accumulation_steps, self.ctx).item()
            if not math.isfinite(self._last_loss):
                raise TrainingDiverged(
                    f"loss became {self._last_loss} at step {self.step}; lower --lr (now {cfg.lr}) or raise "
                    f"--warmup_steps; the last good checkpoint is kept in {self.out_dir / 'checkpoints'}"
                )
        if do_log:
            self._log_step(lr, self._last_loss, float(grad_norm), throughput.interval_rate(), bar)
        if do_eval or do_save:
            throughput.pause()  # evaluation and checkpoint writes are not training throughput
            if do_eval:
                val_loss = self.evaluate()
                if self.ctx.is_main:
                    self.metrics.write({"step": self.step, "val_loss": round(val_loss, 5),
                                        "val_perplexity": round(math.exp(min(val_loss, 50)), 3)})
                bar.write(f"step {self.step}: train loss {self._last_loss:.4f}, val loss {val_loss:.4f}, "
                          f"val perplexity {math.exp(min(val_loss, 50)):.2f}")
                self.summary["val_loss"] = val_loss
            if do_save:
                self.save()
            throughput.resume()

    def _summarize(self, throughput: Throughput, interrupted: bool = False) -> None:
        self.summary.update(final_train_loss=self._last_loss, steps=self.step)
        rate = throughput.logged_rate() if interrupted else throughput.overall_rate()
        if rate:
            self.summary["tokens_per_second"] = rate
            self.summary["tokens_per_second_per_device"] = rate / self.ctx.world_size
            self.summary["world_size"] = self.ctx.world_size
            if self.peaks:
                self.summary["mfu_bf16_peak"] = self.mfu(rate)
                bound = self.roofline_bound()
                self.summary["roofline_tokens_per_second"] = bound
                self.summary["fraction_of_roofline"] = rate / bound
        if self.device.type == "cuda":
            self.summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30

    def _log_step(self, lr: float, loss: float, grad_norm: float, tokens_per_second: float | None, bar: tqdm) -> None:
        record: dict[str, Any] = {"step": self.step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(grad_norm, 4)}
        if tokens_per_second and not self._announced:
            self._announced = True
            bar.write(self._measured_line(tokens_per_second))
        if tokens_per_second:
            record["tokens_per_second"] = round(tokens_per_second)
            if self.ctx.enabled:
                record["tokens_per_second_per_device"] = round(tokens_per_second / self.ctx.world_size)
            if self.peaks:
                record["mfu_bf16_peak"] = round(self.mfu(tokens_per_second), 4)
        if self.device.type == "cuda":
            record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        if self.fp8_scales is not None:
            self._log_saturation(record, bar)
        if self.ctx.is_main:
            self.metrics.write(record)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=record.get("tokens_per_second", "warm-up"), lr=f"{lr:.1e}")

    def _log_saturation(self, record: dict[str, Any], bar: tqdm) -> None:
        """Delayed fp8 scales come from earlier steps: record the casts that clipped since the last log, and say so
        when one clipped at over SATURATION_WARNING x its range (a few percent over is routine while tensors grow)."""
        count, ratio, name = self.fp8_scales.take_saturation()
        first, self._logged_through = self._logged_through + 1, self.step
        record["fp8_saturated"], record["fp8_overflow"] = count, round(ratio, 3)
        self.summary["fp8_saturated"] = self.summary.get("fp8_saturated", 0) + count
        self.summary["fp8_overflow_max"] = max(self.summary.get("fp8_overflow_max", 0.0), ratio)
        if ratio > SATURATION_WARNING and self.ctx.is_main:
            bar.write(f"fp8: {count} casts clipped in steps {first}-{self.step}, the largest {name} at "
                      f"{ratio:.2f}x its scale's range (delayed scales lag growing tensors; --fp8_grad_margin or "
                      "--fp8_margin adds headroom)")
