"""Checks of generation inputs against a network (SPEC section 2), shared by the float64 reference
and every engine's public entry: the conditioning, the uniform numbers, teacher forcing.

Values are checked here, where inputs enter (``NVWaveNet.infer``, the reference); the hot path of
a :class:`nvwavenet.session.Session` checks shapes, dtypes and devices only.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .network import WaveNetWeights
from .validation import check_allocation

__all__ = ["COND_DTYPES", "check_cond_input", "find_nan_torch", "check_selectors", "check_teacher_forcing"]

COND_DTYPES = (torch.float32, torch.float16)


def check_cond_input(weights: WaveNetWeights, cond_input, *, dtypes=COND_DTYPES,
                     find_nan: Callable[[torch.Tensor], tuple[int, int] | None] | None = None,
                     output_bytes: int = 8, state_bytes: int = 0) -> tuple[int, int]:
    """Check ``cond_input`` is ``(2R, batch, L, samples)`` without NaN, and that what generation
    allocates, ``output_bytes`` per stream and sample (samples, selectors, logits) and
    ``state_bytes`` per stream (a new state), fits on its device; return ``(batch, samples)``.

    ``find_nan`` gives the ``(stream, sample)`` of the earliest NaN, or None; the default is
    :func:`find_nan_torch`.
    """
    if not isinstance(cond_input, torch.Tensor):
        raise TypeError(f"cond_input: expected a torch.Tensor, got {type(cond_input).__name__}")
    if cond_input.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"cond_input: expected dtype {names}, got {str(cond_input.dtype).replace('torch.', '')}")
    if cond_input.dim() != 4:
        raise ValueError("cond_input: expected 4 dimensions (2R, batch, layers, samples), "
                         f"got shape {tuple(cond_input.shape)}")
    channels, batch, layers, samples = cond_input.shape
    if channels != 2 * weights.n_residual:
        raise ValueError(f"cond_input: expected {2 * weights.n_residual} channels in dimension 0 "
                         f"(2R with R={weights.n_residual}), got {channels}")
    if layers != weights.n_layers:
        raise ValueError(f"cond_input: expected {weights.n_layers} layers in dimension 2, got {layers}")
    if batch < 1:
        raise ValueError(f"cond_input: expected a batch of at least 1 stream in dimension 1, got {batch}")
    check_allocation("cond_input", batch * (samples * output_bytes + state_bytes), cond_input.device,
                     f"the outputs{' and state' if state_bytes else ''} for {batch} streams of {samples} samples")
    # From a NaN on, that stream's samples are garbage, which no engine can tell from data (the CPU
    # engine's vectorised tanh and sigmoid even turn NaN into finite activations); refused before
    # anything runs, so no state changes. Infinite values are accepted: tanh and sigmoid take them
    # to their limits, as the reference does.
    found = (find_nan or find_nan_torch)(cond_input) if cond_input.numel() else None
    if found is not None:
        positions = int(_nan_positions(cond_input).sum())  # only on failure
        raise ValueError(f"cond_input: expected no NaN values, got NaN at {positions} (stream, sample) "
                         f"positions, the earliest at stream {found[0]}, sample {found[1]}")
    return batch, samples


def _nan_positions(cond_input: torch.Tensor) -> torch.Tensor:
    """Bool ``(batch, samples)``: where ``cond_input`` holds a NaN in some channel or layer."""
    return torch.isnan(cond_input).any(dim=2).any(dim=0)


def find_nan_torch(cond_input: torch.Tensor) -> tuple[int, int] | None:
    """``(stream, sample)`` of the earliest NaN of ``cond_input`` ``(2R, batch, L, samples)`` (the
    first stream at that sample), or None, on any device.

    ``max`` propagates NaN and only NaN, so one pass decides; the search for where runs only on
    failure. (``amax`` gives the same answer but took 4x as long on a strided slice such as
    ``cond[..., :2]``.)
    """
    if not bool(torch.isnan(cond_input.max())):
        return None
    nan_at = _nan_positions(cond_input)
    sample = int(nan_at.any(dim=0).nonzero()[0])
    return int(nan_at[:, sample].nonzero()[0]), sample


def check_selectors(selectors, batch: int, samples: int, device: torch.device) -> torch.Tensor:
    """``selectors`` as float32 ``(batch, samples)`` values in [0, 1) on ``device``."""
    if not isinstance(selectors, torch.Tensor):
        raise TypeError(f"selectors: expected a torch.Tensor or None, got {type(selectors).__name__}")
    if not selectors.is_floating_point():
        raise TypeError(f"selectors: expected a floating-point tensor, got dtype {selectors.dtype}")
    if tuple(selectors.shape) != (batch, samples):
        raise ValueError(f"selectors: expected shape {(batch, samples)} (batch, samples), "
                         f"got {tuple(selectors.shape)}")
    if selectors.device != device:
        raise ValueError(f"selectors: expected a tensor on {device} like cond_input, got one on {selectors.device}")
    if selectors.numel() and not bool(((selectors >= 0) & (selectors < 1)).all()):
        raise ValueError("selectors: expected values in [0, 1)")
    return selectors.to(torch.float32)


def check_teacher_forcing(teacher, n_classes: int, batch: int, samples: int, device: torch.device, *,
                          name: str = "teacher_forcing", at_most: bool = False) -> torch.Tensor:
    """``teacher`` as int32 ``(batch, samples)`` classes in [0, A) on ``device``.

    With ``at_most``, fewer than ``samples`` steps are accepted (a prefix, as for priming).
    """
    if not isinstance(teacher, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(teacher).__name__}")
    if teacher.is_floating_point() or teacher.is_complex() or teacher.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor of classes, got dtype {teacher.dtype}")
    fits = (teacher.dim() == 2 and teacher.shape[0] == batch
            and (teacher.shape[1] <= samples if at_most else teacher.shape[1] == samples))
    if not fits:
        wanted = f"(batch={batch}, at most {samples})" if at_most else f"{(batch, samples)} (batch, samples)"
        raise ValueError(f"{name}: expected shape {wanted}, got {tuple(teacher.shape)}")
    if teacher.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} like cond_input, got one on {teacher.device}")
    if teacher.numel() and not bool(((teacher >= 0) & (teacher < n_classes)).all()):
        raise ValueError(f"{name}: expected classes in [0, {n_classes}), "
                         f"got values from {int(teacher.min())} to {int(teacher.max())}")
    return teacher.to(torch.int32)
