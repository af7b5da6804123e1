"""Training: AdamW on masked cross-entropy (WaveNet, mu-law classes) or masked MSE (regression).

:func:`train` runs in one process or, under ``torchrun``, as distributed data parallel (gloo on
the CPU, NCCL on GPUs): it joins the process group that ``torchrun``'s environment describes.

Reproducibility: the data order is a function of ``TrainConfig.seed``, the epoch and the step
only, and nothing else in a step is random, so

- a run resumed from a checkpoint continues with exactly the losses of an uninterrupted run
  (model, optimizer and step are restored; the data order is recomputed);
- ``N`` processes with per-process batches of ``batch_size / N`` see the same global batches as one
  process with ``batch_size``: every global batch is split across the ranks, and the loss is
  normalised by the global count of unmasked positions, so the averaged gradients are the same.

The model's initial weights are the caller's: seed torch (``torch.manual_seed``) before building it.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoint import TRAINING_FILE, load_training_state, load_weights, save_model, save_training_state
from .data import TrainingWindows
from .model import WaveNet
from .validation import check_int

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "train", "batch_indices"]


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train`.

    ``batch_size`` is the global batch (split across the processes under ``torchrun``);
    ``checkpoint_every=0`` saves only at the end; ``grad_clip=None`` turns clipping off.
    """

    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    device: str = "cpu"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self):
        for name, minimum in (("steps", 1), ("batch_size", 1), ("checkpoint_every", 0), ("num_workers", 0),
                              ("seed", 0)):
            check_int(name, getattr(self, name), minimum)
        # An infinite rate or decay "trains" to NaN weights; an infinite clip is no clip (say None).
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate: expected a finite positive number, got {self.learning_rate!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(f"grad_clip: expected a finite positive norm or None, got {self.grad_clip!r}")


@dataclasses.dataclass
class TrainResult:
    """``losses[i]``: the masked mean loss of step ``i`` over all processes, from step 0 (also
    the steps before a resume)."""

    losses: list[float]
    steps: int
    checkpoint_dir: str | None

    def __str__(self) -> str:
        last = f", last loss {self.losses[-1]:.4f}" if self.losses else ""
        saved = f", checkpoint in {self.checkpoint_dir}" if self.checkpoint_dir else ""
        return f"trained {self.steps} steps{last}{saved}"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`; its message says which step the checkpoint holds, if any.

    ``steps_done``: the steps completed (from step 0, also those before a resume);
    ``saved_step``: the step of the complete checkpoint in ``checkpoint_dir`` (None when there is none).
    """

    def __init__(self, steps_done: int, saved_step: int | None, checkpoint_dir: str | None, while_saving: bool):
        self.steps_done, self.saved_step, self.checkpoint_dir = steps_done, saved_step, checkpoint_dir
        if while_saving:
            what = (f"while writing the checkpoint of step {steps_done} to {checkpoint_dir}: its files may be of "
                    "two steps, which resuming refuses")
        elif saved_step is None:
            what = f"after {steps_done} steps; nothing was saved"
        else:
            what = f"after {steps_done} steps; {checkpoint_dir} holds the checkpoint of step {saved_step}"
        super().__init__(f"interrupted {what}")


def batch_indices(num_items: int, batch_size: int, seed: int, step: int, rank: int = 0,
                  world_size: int = 1) -> list[int]:
    """The dataset indices that process ``rank`` trains on at ``step``.

    Each epoch is a permutation seeded by ``(seed, epoch)``, cut into ``num_items // batch_size``
    global batches (the incomplete rest is left out); rank ``r`` takes every ``world_size``-th item
    of its global batch, from item ``r``.
    """
    per_epoch = num_items // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    order = torch.randperm(num_items, generator=generator)
    return order[position * batch_size:(position + 1) * batch_size][rank::world_size].tolist()


class _StepBatches:
    """A batch sampler yielding this rank's batch for each step from ``first`` to ``last - 1``."""

    def __init__(self, num_items, config: TrainConfig, first: int, rank: int, world_size: int):
        self.num_items, self.config, self.first = num_items, config, first
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.config.steps - self.first

    def __iter__(self):
        for step in range(self.first, self.config.steps):
            yield batch_indices(self.num_items, self.config.batch_size, self.config.seed, step,
                                self.rank, self.world_size)


def _join_process_group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _device(config: TrainConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: {config.device!r} asked for, but no CUDA GPU is visible")
        if device.index is None and "LOCAL_RANK" in os.environ:  # one GPU per torchrun process
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _check_model(model, dataset: TrainingWindows) -> None:
    if not isinstance(dataset, TrainingWindows):
        raise TypeError(f"dataset: expected a nvwavenet.data.TrainingWindows, got {type(dataset).__name__}")
    if isinstance(model, WaveNet) == dataset.is_regression:
        raise ValueError(f"dataset: cut for a {'regression' if dataset.is_regression else 'WaveNet'} model, "
                         f"got a {type(model).__name__}; build TrainingWindows with this model")
    if model.receptive_field != dataset.receptive_field:
        raise ValueError(f"dataset: windows cut for receptive field {dataset.receptive_field}, the model's "
                         f"is {model.receptive_field}")
    if isinstance(model, WaveNet) and model.n_in_channels != dataset.audio_config.quantization_channels:
        raise ValueError(f"dataset: {dataset.audio_config.quantization_channels} mu-law classes, the model "
                         f"has n_in_channels={model.n_in_channels}")


def _masked_loss_sum(model, batch: dict, dataset: TrainingWindows, device: torch.device):
    """(sum of the per-position losses at unmasked positions, their count)."""
    samples = batch["samples"].to(device)
    mask = batch["mask"].to(device)
    if dataset.is_regression:
        per_position = (model(samples) - samples) ** 2
    else:
        logits = model(batch["features"].to(device), samples, cond_offset=dataset.cond_offset)
        per_position = F.cross_entropy(logits, samples, reduction="none")
    return (per_position * mask).sum(), mask.sum()


def _resume(model, optimizer, config: TrainConfig, world_size: int,
            targets_per_window: int) -> tuple[int, list[float]]:
    """Load weights and optimizer from ``config.checkpoint_dir``; returns (step, losses so far)."""
    load_weights(config.checkpoint_dir, model)
    training = load_training_state(config.checkpoint_dir, optimizer, ("losses", "seed", "batch_size", "world_size"))
    # The data order depends on these; another value would not continue the same run.
    compared = [("seed", config.seed), ("batch_size", config.batch_size), ("world_size", world_size)]
    if "targets_per_window" in training:  # checkpoints written before it was saved do not have it
        compared.append(("targets_per_window", targets_per_window))
    for name, value in compared:
        if training[name] != value:
            raise ValueError(f"{name}: the checkpoint's run used {training[name]}, got {value}; resuming "
                             "exactly needs the same value")
    for group in optimizer.param_groups:  # settings of this call win over the saved ones
        group["lr"], group["weight_decay"] = config.learning_rate, config.weight_decay
    if training["step"] > config.steps:
        raise ValueError(f"steps: the checkpoint is at step {training['step']} already, got {config.steps}")
    return training["step"], training["losses"]


# glibc's mallopt parameters (malloc.h) and the defaults it starts with.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


@contextlib.contextmanager
def _heap_keeps_freed_memory(device: torch.device):
    """On the CPU under glibc, keep the memory that one training step frees for the next one.

    PyTorch's CPU tensors come straight from malloc, and glibc serves every block over 32 MiB
    (a batch of one layer's activations) with a fresh mmap and unmaps it at free, so every step
    faulted its whole working set in anew: with the command line's default model, half of each
    step was spent in the kernel. glibc's defaults are set back, and the kept memory given back,
    when training ends. A process whose environment tunes malloc itself is left as it is.
    """
    tuned_by_user = any(name in os.environ for name in _MALLOC_SETTINGS)
    libc = (ctypes.CDLL(None) if device.type == "cpu" and platform.libc_ver()[0] == "glibc"
            and not tuned_by_user else None)
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def train(model, dataset: TrainingWindows, config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train ``model`` (a :class:`~nvwavenet.model.WaveNet` or
    :class:`~nvwavenet.model.CausalConvRegressor`) on ``dataset`` in place, up to ``config.steps``.

    With ``config.checkpoint_dir``, process 0 saves a checkpoint (:mod:`nvwavenet.checkpoint`)
    every ``checkpoint_every`` steps and at the end; ``resume=True`` continues from the one there
    (if there is one) with the same seed, batch size and process count.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    _check_model(model, dataset)
    if len(dataset) < config.batch_size:
        raise ValueError(f"batch_size: {config.batch_size} is more than the dataset's {len(dataset)} windows")
    device = _device(config)
    rank, world_size, owns_group = _join_process_group(device)
    after_first_step = contextlib.ExitStack()
    steps_done, saved_step, saving = 0, None, False  # for the message of an interruption
    progress = None
    try:
        if config.batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of the {world_size} processes, got {config.batch_size}")
        model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        start, losses = 0, []
        if resume and config.checkpoint_dir and (Path(config.checkpoint_dir) / TRAINING_FILE).is_file():
            start, losses = _resume(model, optimizer, config, world_size, dataset.targets_per_window)
            steps_done = saved_step = start
        network = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                   if world_size > 1 else model)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_StepBatches(len(dataset), config, start, rank, world_size),
            num_workers=config.num_workers)

        def stop(step: int, what: str) -> RuntimeError:
            kept = ("nothing was saved" if saved_step is None
                    else f"{config.checkpoint_dir} keeps the checkpoint of step {saved_step}")
            return RuntimeError(f"step {step}: {what}; training stopped ({kept}); a lower learning rate may help")

        def save(step: int) -> None:
            nonlocal saved_step, saving
            # A finite loss can be followed by an update to infinite weights (a huge learning
            # rate); they must not replace the checkpoint there is.
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise stop(step, "the weights are no longer finite")
            saving = True
            if rank == 0:
                save_model(config.checkpoint_dir, model, dataset.audio_config, step=step)
                save_training_state(config.checkpoint_dir, optimizer, step, {
                    "losses": losses, "seed": config.seed, "batch_size": config.batch_size,
                    "world_size": world_size, "targets_per_window": dataset.targets_per_window,
                    "config": dataclasses.asdict(config)})
            if world_size > 1:
                dist.barrier()  # nobody races ahead of (or resumes from) a half-written checkpoint
            saving, saved_step = False, step

        progress = tqdm(total=config.steps, initial=start, disable=not config.progress or rank > 0,
                        desc="training", unit="step")
        for step, batch in enumerate(loader, start=start):
            loss_sum, count = _masked_loss_sum(network, batch, dataset, device)
            totals = torch.stack([loss_sum.detach(), count.to(loss_sum.dtype)])
            if world_size > 1:
                dist.all_reduce(totals)
            loss = float(totals[0] / totals[1])
            # Every rank sees the same reduced loss, so all stop here together, before an update
            # that would turn the weights into NaN.
            if not math.isfinite(loss):
                raise stop(step + 1, f"the loss is {loss}")
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over processes: scaling by world_size leaves the gradient of
            # the global masked mean. (Every window has at least one target, so the count is > 0.)
            (loss_sum * (world_size / totals[1])).backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss)
            steps_done = step + 1
            if step == start:
                # Not before: the first step also allocates what lives for the whole run (the
                # gradients, the optimizer's state) between its activations, and in a heap that
                # keeps freed memory that left it fragmented in some runs (peak RSS 4.1 GiB, not 2.3).
                after_first_step.enter_context(_heap_keeps_freed_memory(device))
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)  # redrawn at the bar's own pace
            if config.checkpoint_dir and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                save(step + 1)
        progress.close()
        if config.checkpoint_dir and (not config.checkpoint_every or config.steps % config.checkpoint_every):
            save(config.steps)
        return TrainResult(losses=losses, steps=config.steps, checkpoint_dir=config.checkpoint_dir)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()  # ends the bar's line: the message that follows gets its own
        raise TrainingInterrupted(steps_done, saved_step, config.checkpoint_dir, saving) from None
    finally:
        after_first_step.close()
        if owns_group:
            dist.destroy_process_group()
