"""Leaf checks of arguments: the integer, tensor, finite-value, allocation, folder and config-field
checks that every module's sizes, settings, signals and files use. It imports nothing of the
package, so any module (the network's own validation included) can use it; the checks of
generation inputs against a network are in :mod:`nvwavenet.inputs`.

Each message names the argument, what was expected and what was given (SPEC section 2).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch

__all__ = ["check_int", "as_tensor", "check_finite", "check_allocation", "check_folder", "check_fields"]

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
