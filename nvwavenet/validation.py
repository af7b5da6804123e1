"""Checks of arguments: generation inputs against a network, shared by the reference and every
engine, and the integer, finite-value, folder and config-field checks that every module's sizes,
settings, signals and files use.

Each message names the argument, what was expected and what was given (SPEC section 2).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # network.py itself uses these checks
    from .network import WaveNetWeights

__all__ = ["check_int", "as_tensor", "check_finite", "check_allocation", "check_folder", "check_fields",
           "check_cond_input", "find_nan_torch", "check_selectors", "check_teacher_forcing"]

COND_DTYPES = (torch.float32, torch.float16)
# The highest sample rate in common use (768 kHz converters). Rates come from WAV headers and
# configs; resampling from a rate above it builds filters of millions of taps per 100 kHz.
MAX_SAMPLE_RATE = 768_000


def check_int(name: str, value, minimum: int = 1, *, types: tuple[type, ...] = (int,),
              maximum: int | None = None) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an instance of ``types``
    (a bool never counts) or lies outside ``[minimum, maximum]``.

    ``maximum`` bounds sizes read from files before anything of that size is allocated.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, types) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer <= {maximum}, got {value!r}")
    return int(value)


def as_tensor(value, name: str, expected: str = "a tensor or array") -> torch.Tensor:
    """``value`` (a tensor, a numpy array of either byte order and any strides, nested lists) as a tensor, or a
    TypeError naming ``name`` instead of torch's "Could not infer dtype" or "byte order
    different from the native byte order" (big-endian ``.npy`` files load as such arrays)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    if isinstance(value, np.ndarray) and any(stride < 0 for stride in value.strides):
        # A reversed view (np.flip, a[::-1]), which torch cannot wrap: copied, once the copy is
        # known to fit (a flipped zero-stride view can stand for terabytes).
        check_allocation(name, value.size * value.itemsize, "cpu", "a copy of its negative-stride view")
        value = value.copy()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}") from error


def check_finite(name: str, values) -> None:
    """Raise a ValueError naming ``name`` unless every value of ``values`` (array or tensor) is finite.

    NaN and infinities pass clipping, resampling, the STFT and the WAV writer without an error and
    come out as garbage: classes out of range, NaN mels, samples written as 0.
    """
    finite = torch.isfinite(values) if isinstance(values, torch.Tensor) else np.isfinite(values)
    if not bool(finite.all()):
        raise ValueError(f"{name}: expected finite values, got {int((~finite).sum())} NaN or infinite "
                         f"of {math.prod(finite.shape)}")


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_allocation(name: str, nbytes: int, device, what: str) -> None:
    """Raise a ValueError naming ``name`` when ``what`` (the outputs or state that ``name``'s sizes
    call for) takes more bytes than ``device`` has at all.

    Run before any work: an expanded (zero-stride) input costs nothing to make, but the outputs of
    its size would be allocated, and the work over it done, before anything failed.
    """
    device = torch.device(device)
    available = device_memory(device)
    if nbytes > available:
        raise ValueError(f"{name}: {what} would take {nbytes / 2**30:.3g} GiB, more than the {available / 2**30:.3g} "
                         f"GiB of memory {device} has")


def check_folder(name: str, path, expected: str) -> None:
    """Raise a NotADirectoryError naming ``name`` when ``path`` is a file, where ``expected`` (e.g.
    "a folder for the plots") is wanted. Called before the work: mkdir's FileExistsError would come
    after it, and says nothing of what was expected."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{name}: {path} is a file, expected {expected}")


def check_fields(what: str, values, cls) -> None:
    """Raise unless ``values`` (a config read back from JSON) is a dict of fields of dataclass ``cls``."""
    if not isinstance(values, dict):
        raise TypeError(f"{what}: expected a dict of fields, got {type(values).__name__}")
    unknown = sorted(map(str, set(values) - {field.name for field in dataclasses.fields(cls)}))
    if unknown:
        raise ValueError(f"{what}: unknown fields {unknown}")


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
