"""The Trainer: takes a prepared model (training/prepare.py) and runs AdamW with warm-up + cosine LR,
gradient accumulation and clipping, bf16 autocast over fp32 weights on CUDA, the converters' hooks around
each optimizer step, periodic evaluation, atomic checkpoints and honest throughput figures."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from cs336_basics.config import Config
from cs336_basics.data.batches import RandomWindows, validation_batches
from cs336_basics.errors import UserError
from cs336_basics.perf.flops import mfu, roofline_tokens_per_second
from cs336_basics.perf.hardware import current_device_peaks
from cs336_basics.training.attention import FUSED_ORDERS, AttentionKernels, attention_context
from cs336_basics.training.checkpoint import TOKENIZER, prune_checkpoints, save_checkpoint, step_path
from cs336_basics.training.dashboards import Dashboards
from cs336_basics.training.distributed import (DistributedContext, all_reduce_mean, all_reduce_sum, barrier,
                                               load_sharded, save_sharded, set_gradient_sync_for)
from cs336_basics.training.garbage import ScheduledGC
from cs336_basics.training.lr_schedule import lr_at
from cs336_basics.training.metrics import MetricsLog, plot_losses
from cs336_basics.training.prepare import PreparedModel
from cs336_basics.training.throughput import Throughput
from cs336_basics.training.transforms import CUDA_GRAPH_MODES


class TrainingDiverged(UserError):
    pass


def _raw_rng_state() -> tuple:
    """The global RNGs' state as their own objects: cheap to take at every step."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(legacy=False), torch.get_rng_state(), cuda


def _plain_rng_state(raw: tuple) -> dict[str, Any]:
    """A _raw_rng_state as tensors, numbers, strings, lists and dicts, which torch.load(weights_only=True) reads."""
    (version, internal, gauss), numpy, cpu, cuda = raw
    state = {"python": [version, list(internal), gauss],
             "numpy": {"bit_generator": numpy["bit_generator"], "pos": int(numpy["state"]["pos"]),
                       "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
                       "has_gauss": int(numpy["has_gauss"]), "gauss": float(numpy["gauss"])},
             "torch": cpu}
    if cuda is not None:
        state["cuda"] = list(cuda)
    return state


def rng_state() -> dict[str, Any]:
    return _plain_rng_state(_raw_rng_state())


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"], "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"],
                         "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(
        self,
        prepared: PreparedModel,
        config: Config,
        train_data: RandomWindows,
        val_tokens: np.ndarray,
        device: torch.device,
        out_dir: Path,
        run_info: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        ctx: DistributedContext = DistributedContext(),
        token_bytes: np.ndarray | None = None,
    ) -> None:
        self.config, self.cfg = config, config.train.validate()
        self.device, self.out_dir, self.ctx = device, out_dir, ctx
        self.log = log if ctx.is_main else (lambda message: None)
        self.train_data, self.val_tokens = train_data, val_tokens
        # (vocab,) UTF-8 bytes each token id stands for: validation also reports bits per byte, which compare
        # across tokenizers (None: loss and perplexity only)
        self._token_bytes = None if token_bytes is None else torch.as_tensor(token_bytes, device=device)
        self.val_bits_per_byte: float | None = None
        self.run_info = run_info or {}
        self.model_cfg = config.model
        self.prepared = prepared
        self.model, self.eval_model, self.converters = prepared.model, prepared.eval_model, prepared.converters
        self.compile_mode = prepared.compile_mode
        # With CUDA graphs every micro-batch (and every evaluation batch) begins a new graph generation: the
        # previous one's outputs are dead, and the blocks' graphs, chained within one forward pass, keep theirs.
        self._cuda_graphs = self.compile_mode in CUDA_GRAPH_MODES
        self._grad_sums: list[torch.Tensor] | None = None  # with CUDA graphs and accumulation: see _move_grads_out
        # DDP: gradients are views of DDP's all-reduce buckets, kept between steps (zeroed, never freed); every
        # micro-batch adds into them, and only the last one's backward all-reduces them.
        self._ddp = prepared.parallelism == "ddp"
        self._gather_once = prepared.sharded and config.run.fsdp_gather_once  # see apply_fsdp
        self._params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in self._params)
        self.optimizer = self._build_optimizer()
        # On one device the fused AdamW kernel applies the clipping factor as it reads each gradient (the
        # grad_scale contract GradScaler uses), saving a separate read-and-write pass over all gradients.
        # Sharded gradients (DTensors) are clipped by PyTorch's own clip_grads_with_norm_.
        self._clip_in_optimizer = bool(self.optimizer.defaults.get("fused")) and not prepared.sharded
        self._prepared_hooks = False
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        self.dashboards = Dashboards(config.run.dashboards if ctx.is_main else (), config, out_dir,
                                     self.run_info.get("run_name", out_dir.name))
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", sink=self.dashboards.log)
        self.peaks = current_device_peaks(device)
        self.step = 0
        self.summary: dict[str, Any] = {}
        self._announced = False  # the first measured tokens/s after warm-up is printed once
        self._last_loss = float("nan")  # the last synchronized (rank-averaged) training loss
        # Exact resume after a stop at any moment: the sampler, RNG and converter state at the start of the step in
        # progress (None between steps), which an interrupted step is checkpointed with: the step is not taken.
        self._step_start: dict[str, Any] | None = None
        self._critical = False  # in the optimizer step and its bookkeeping: a signal waits until they are done
        self._signal_pending = False
        self._stop_requested = False  # several processes: a signal stops every rank at an agreed step boundary
        self._stop_check: tuple[torch.Tensor, Any] | None = None
        self._saved_step: int | None = None  # the step of the last checkpoint written

    def _first_pass(self) -> None:
        """One forward + backward on the batch the first step will draw (the sampler is rewound): what a
        converter's `prepare` hook may run once, e.g. to learn delayed float8's first scales."""
        sampler_state = self.train_data.state_dict()
        x, y = self.train_data.next_batch(self.device)
        self.train_data.load_state_dict(sampler_state)
        with self.autocast:
            loss = self.model(x, y)
        loss.backward()

    def _prepare_hooks(self) -> None:
        if not self._prepared_hooks:
            for converter in self.converters:
                converter.prepare(self._first_pass, self._params)
            if self._ddp:  # gradients of our own from the start: backward adds into them (see _zero_grads)
                for p in self._params:
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
            self._prepared_hooks = True

    def _zero_grads(self) -> None:
        """Freed after each step (the next backward allocates them), or under DDP zeroed in place: there they are
        views of DDP's buckets, and a missing .grad would be taken from backward's own output, which under CUDA
        graphs the next replay overwrites (pytorch/pytorch#169545)."""
        self.optimizer.zero_grad(set_to_none=not self._ddp)

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
    def _resumable_state(self) -> dict[str, Any]:
        """What a step changes besides the weights and optimizer moments, as it is now (no device sync)."""
        return {"sampler": self.train_data.state_dict(), "rng": _raw_rng_state(),
                "converters": [converter.snapshot() for converter in self.converters]}

    def meta_state(self) -> dict[str, Any]:
        """Everything but the weights and optimizer moments: tensors and plain data only. In the middle of a step
        (a stop), the sampler, RNG and converter state of the step's start: the checkpoint is of the steps done."""
        at = self._step_start if self._step_start is not None else self._resumable_state()
        return {
            "step": self.step,
            "world_size": self.ctx.world_size,
            "sampler": at["sampler"],
            "rng": _plain_rng_state(at["rng"]),
            "model_config": self.model_cfg.to_dict(),
            "config": self.config.to_dict(),
            "converter_names": [type(converter).__name__ for converter in self.converters],
            "converters": [c.snapshot_state(snapshot) for c, snapshot in zip(self.converters, at["converters"])],
            "optimizer_saved": bool(self.optimizer.state),  # (no state before the first step: see state_dict)
            **self.run_info,
        }

    def state_dict(self) -> dict[str, Any]:
        """One-process checkpoint: weights and optimizer state keyed by parameter name (plain tensors). Before the
        first step the optimizer has no state, and None is saved: get_state_dict would create it by a step of its
        own (with zero gradients and learning rate), which would count as a step in AdamW's bias correction."""
        if self.optimizer.state:
            model_state, optim_state = get_state_dict(self.model, self.optimizer)
        else:
            model_state, optim_state = get_model_state_dict(self.model), None
        return {**self.meta_state(), "model": model_state, "optimizer": optim_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From either checkpoint kind, into this run's (possibly sharded) model, whatever the old world size."""
        options = StateDictOptions(full_state_dict=self.prepared.sharded)
        if "sharded_path" in state:
            load_sharded(Path(state["sharded_path"]), self.model,
                         self.optimizer if state.get("optimizer_saved", True) else None)
        elif state.get("optimizer") is None:  # saved before the first step: the optimizer starts afresh
            set_model_state_dict(self.model, state["model"], options=options)
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                           options=options)
        self.train_data.load_state_dict(state["sampler"])
        saved = state.get("converters") or []
        # a checkpoint of another precision holds another list of converters: their state does not carry over
        if [type(c).__name__ for c in self.converters] == state.get("converter_names"):
            for converter, converter_state in zip(self.converters, saved):
                if converter_state is not None:
                    converter.load_state_dict(converter_state)
        set_rng_state(state["rng"])
        self.step = self._saved_step = state["step"]
        self._step_start = None
        if self.ctx.is_main:
            self.metrics.truncate_after(self.step)

    def _checkpoint_files(self) -> dict[str, str]:
        """Text files each checkpoint carries: the run's tokenizer, so that the checkpoint alone can be sampled."""
        tokenizer = self.out_dir / TOKENIZER
        return {TOKENIZER: tokenizer.read_text(encoding="utf-8")} if tokenizer.is_file() else {}

    def save(self) -> Path:
        if self.prepared.sharded:
            path = step_path(self.out_dir, self.step)
            if self.ctx.is_main:
                path.parent.mkdir(parents=True, exist_ok=True)
            save_sharded(path, self.model, self.optimizer, self.meta_state(), self.ctx,
                         self._checkpoint_files() if self.ctx.is_main else None)
            if self.ctx.is_main:
                prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        else:  # one process, or DDP: every rank holds the same state, and rank 0 writes it in the one-process format
            path = step_path(self.out_dir, self.step)
            if self.ctx.is_main:
                save_checkpoint(self.out_dir, self.step, self.state_dict(), self.cfg.keep_checkpoints,
                                self._checkpoint_files())
            barrier()  # (no process group in one process: nothing to wait for)
        self._saved_step = self.step
        self.log(f"checkpoint: {path}")
        return path

    # ------------------------------------------------------------------------------------- stopping
    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT / SIGTERM while training. One process: a KeyboardInterrupt at once (the step in progress is
        checkpointed as not taken), or, within the optimizer step, as soon as it is done. Several processes: every
        rank stops at the same step boundary (_agreed_stop); a second signal interrupts at once. (Nothing is
        printed here: a handler that prints while the interrupted code prints fails.)"""
        if self.ctx.enabled and not self._stop_requested:
            self._stop_requested = True
        elif self._critical:
            self._signal_pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _signals_handled(self) -> Any:
        """The Trainer's SIGINT/SIGTERM handling while it trains (main thread only), the previous handlers after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def _uninterruptible(self) -> Any:
        """The optimizer step and the bookkeeping that makes it a step done: a signal arriving meanwhile takes
        effect right after (a step is taken whole or not at all)."""
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self._signal_pending:
            self._signal_pending = False
            raise KeyboardInterrupt

    def _agreed_stop(self) -> bool:
        """Several processes: whether a rank was asked to stop, the same answer on every rank. Each step boundary
        reduces the ranks' flags; the reduction started at the previous boundary is read, so the host never waits
        for the step it has just queued."""
        if not self.ctx.enabled:
            return False
        # a fill on the device, not a copy from the host (which would wait for the queued work)
        flag = (torch.ones if self._stop_requested else torch.zeros)(1, device=self.device)
        reduced = all_reduce_sum(flag, self.ctx)
        event = None
        if self.device.type == "cuda":
            reduced = reduced.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        previous, self._stop_check = self._stop_check, (reduced, event)
        if previous is None:
            return False
        value, done = previous
        if done is not None:
            done.synchronize()
        return bool(value.item() > 0)

    # ------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def evaluate(self) -> float:
        """The mean validation loss (nats a token); with token byte counts, bits per byte too (val_bits_per_byte)."""
        self.eval_model.eval()
        # (sum of window losses, windows, sum of target bytes)
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in validation_batches(self.val_tokens, self.cfg.batch_size, self.model_cfg.context_length,
                                       self.cfg.eval_steps, self.device, self.ctx.rank, self.ctx.world_size):
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with self.autocast:
                loss = self.eval_model(x, y).double()
            n_bytes = self._token_bytes[y].sum().double() if self._token_bytes is not None else loss.new_zeros(())
            total += torch.stack([loss * x.shape[0], loss.new_tensor(float(x.shape[0])), n_bytes])
        self.eval_model.train()
        total = all_reduce_sum(total, self.ctx)
        loss, windows, n_bytes = total.tolist()
        if n_bytes > 0:  # every window holds context_length target tokens
            self.val_bits_per_byte = loss * self.model_cfg.context_length / math.log(2) / n_bytes
        return loss / windows

    def roofline_bound(self) -> float:
        """Upper bound on this run's global tokens/s from the device's datasheet peaks (needs self.peaks)."""
        per_device = self.tokens_per_step // self.ctx.world_size
        return self.ctx.world_size * roofline_tokens_per_second(self.model_cfg, self.peaks, self.prepared.fp8, per_device,
                                                                self.n_params, fp8_head=self.prepared.fp8_head)

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
        """Train to cfg.max_steps. A Ctrl-C or SIGTERM writes a checkpoint first, of the steps done: one
        interrupted part-way is not counted, and the resumed run takes it whole (resume is exact)."""
        with (attention_context(self.cfg.use_flash_attn, self.cfg.fused_attention), self._signals_handled(),
              self.dashboards):  # closed on the way out, an interrupt or a failure too: what was logged is kept
            try:
                self._train_loop()
            except KeyboardInterrupt:
                self._abandon_step()
                if self._saved_step == self.step:
                    self.log(f"\ninterrupted at step {self.step}, whose checkpoint is written")
                else:
                    self.log(f"\ninterrupted at step {self.step}: writing a final checkpoint")
                    self.save()
                raise
            finally:
                if self.ctx.is_main:
                    plot_losses(self.metrics.read(), self.out_dir / "loss.png", f"{self.run_info.get('run_name', 'training')}")
        return self.summary

    def _abandon_step(self) -> None:
        """An interrupted step: its gradients are dropped (the checkpoint takes the step's start state)."""
        if self._step_start is not None:
            self._zero_grads()

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns (summed micro-batch
        losses, gradient norm before clipping) as device tensors, without synchronizing; self.step counts it.
        Everything up to the optimizer step can be interrupted (the step is then not taken, see meta_state); the
        optimizer step and its bookkeeping run whole."""
        if self._step_start is None:
            self._step_start = self._resumable_state()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._prepare_hooks()
        for converter in self.converters:
            converter.before_step()
        loss_sum = torch.zeros((), device=self.device)
        accumulation = self.cfg.gradient_accumulation_steps
        for micro_batch in range(accumulation):
            if self._ddp:  # gradients all-reduced in the last micro-batch's backward only
                self.model.set_requires_gradient_sync(micro_batch == accumulation - 1)
            elif self._gather_once:
                set_gradient_sync_for(self.model, micro_batch == accumulation - 1)
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, y = self.train_data.next_batch(self.device)
            with self.autocast:
                loss = self.model(x, y)
            (loss / accumulation).backward()
            loss_sum += loss.detach()
            if micro_batch < accumulation - 1:
                for converter in self.converters:
                    converter.between_micro_batches()
                if self._cuda_graphs and not self._ddp:
                    self._move_grads_out(first=micro_batch == 0)
        if self._cuda_graphs and accumulation > 1 and not self._ddp:
            torch._foreach_add_([p.grad for p in self._params], self._grad_sums)
        for converter in self.converters:
            converter.before_optimizer_step()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if self.cfg.grad_clip > 0:
            if self._clip_in_optimizer:  # gradients are divided by max(1, norm / grad_clip) inside the step
                self.optimizer.grad_scale = torch.clamp((grad_norm + 1e-6) / self.cfg.grad_clip, min=1.0)
            else:
                torch.nn.utils.clip_grads_with_norm_(self._params, self.cfg.grad_clip, grad_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        with self._uninterruptible():
            self.optimizer.step()
            self._zero_grads()
            for converter in self.converters:
                converter.after_optimizer_step()
            self.step += 1
            self._step_start = None
        return loss_sum, grad_norm

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
        # The first steps (compilation, allocator and kernel warm-up) are excluded from tokens/s.
        throughput = Throughput(warmup_steps=3 if cfg.compile_model else 1, sync=self._sync)
        if self._step_start is None:  # the calibration below draws a batch: part of the first step
            self._step_start = self._resumable_state()
        self._prepare_hooks()  # here rather than in the first step: before the progress bar
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
                    collector.step_done(self.step)
                    bar.update(1)
                    throughput.step_done(self.tokens_per_step)
                    self._after_step(lr, loss_sum, grad_norm, throughput, bar)
                    if self._agreed_stop():
                        self.log(f"\na stop was asked for: every rank stops after step {self.step}")
                        raise KeyboardInterrupt
                self._step_start = None  # (no step was left to take)
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
        if do_log or do_eval or do_save:  # a checkpoint is written only after a finite loss
            self._last_loss = all_reduce_mean(loss_sum / cfg.gradient_accumulation_steps, self.ctx).item()
            if not math.isfinite(self._last_loss):
                from cs336_basics.training.divergence import divergence_message  # the cause, existing checkpoints

                raise TrainingDiverged(divergence_message(self._last_loss, self.step, cfg, self.out_dir, float(grad_norm)))
        if do_log:
            self._log_step(lr, self._last_loss, float(grad_norm), throughput.interval_rate(), bar)
        if do_eval or do_save:
            throughput.pause()  # evaluation and checkpoint writes are not training throughput
            if do_eval:
                val_loss = self.evaluate()
                if self.ctx.is_main:
                    record = {"step": self.step, "val_loss": round(val_loss, 5),
                              "val_perplexity": round(math.exp(min(val_loss, 50)), 3)}
                    if self.val_bits_per_byte is not None:
                        record["val_bits_per_byte"] = round(self.val_bits_per_byte, 5)
                    self.metrics.write(record)
                bpb = f", {self.val_bits_per_byte:.4f} bits/byte" if self.val_bits_per_byte is not None else ""
                bar.write(f"step {self.step}: train loss {self._last_loss:.4f}, val loss {val_loss:.4f}, "
                          f"val perplexity {math.exp(min(val_loss, 50)):.2f}{bpb}")
                self.summary["val_loss"] = val_loss
                if self.val_bits_per_byte is not None:
                    self.summary["val_bits_per_byte"] = self.val_bits_per_byte
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
        for converter in self.converters:
            self.summary.update(converter.summary())

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
        for converter in self.converters:
            if (line := converter.log_metrics(record)) and self.ctx.is_main:
                bar.write(line)
        if self.ctx.is_main:
            self.metrics.write(record)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=record.get("tokens_per_second", "warm-up"), lr=f"{lr:.1e}")
