"""The thin layer over the compiled module ``nvwavenet._C``: loading it, and filling its Params.

Python owns every buffer as a torch tensor (so PyTorch's caching allocator serves all device
memory); the compiled engines only see raw pointers, sizes and strides (``csrc/nvwavenet.h``).
Importing nvwavenet never fails for lack of the compiled part: the error comes, with advice, when
something that needs it is called.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import torch

from ._version import __version__
from .network import WaveNetWeights

try:
    from . import _C
    _IMPORT_ERROR: str | None = None
except ImportError as error:
    _C = None
    # Python words a module that was never built as a circular import; say what it is.
    _IMPORT_ERROR = ("it was never built" if importlib.util.find_spec(f"{__package__}._C") is None
                     else f"it failed to load: {error}")

__all__ = ["build_info", "extension", "PackedWeights", "make_params"]

_DTYPE_CODES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def extension():
    """The compiled module, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError(
            f"nvwavenet's compiled module nvwavenet._C is not available: {_IMPORT_ERROR}. Install the package with `pip install .`, or build it in place "
            "with `python setup.py build_ext --inplace`.")
    return _C


def build_info() -> dict:
    """What was compiled: ``cuda`` (bool), ``cuda_archs``, ``sizes`` ((R, S, A) tuples the CUDA
    kernels were built for), ``precisions``, ``version``, and ``extension`` (whether ``_C`` loaded)."""
    if _C is None:
        return {"version": __version__, "extension": False, "cuda": False, "cuda_archs": [],
                "sizes": [], "precisions": [], "error": _IMPORT_ERROR}
    return {**_C.build_info(), "extension": True}


def dtype_code(dtype: torch.dtype):
    return getattr(extension().DType, _DTYPE_CODES[dtype])


@dataclasses.dataclass(frozen=True)
class PackedWeights:
    """The weights in the Params layout (contiguous, row-major [out][in]) on one device."""

    embed_prev: torch.Tensor
    embed_curr: torch.Tensor
    dilate_w: torch.Tensor  # L x 2R x 2R: [W_prev | W_curr]
    dilate_b: torch.Tensor
    res_w: torch.Tensor
    res_b: torch.Tensor
    skip_w: torch.Tensor
    skip_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    end_w: torch.Tensor
    end_b: torch.Tensor

    @classmethod
    def pack(cls, weights: WaveNetWeights, device: torch.device, dtype: torch.dtype) -> PackedWeights:
        w = weights.to(device, dtype)
        both_taps = torch.cat([w.dilate_w[..., 0], w.dilate_w[..., 1]], dim=2)
        names = [f.name for f in dataclasses.fields(cls)]
        tensors = {name: getattr(w, name) for name in names if name != "dilate_w"}
        tensors["dilate_w"] = both_taps
        return cls(**{name: tensor.contiguous() for name, tensor in tensors.items()})


def make_params(weights: WaveNetWeights, packed: PackedWeights, cond_input: torch.Tensor,
                selectors: torch.Tensor, samples: torch.Tensor, state: dict, *,
                teacher: torch.Tensor | None = None, logits: torch.Tensor | None = None):
    """A filled ``_C.Params``. The caller keeps every tensor alive until the engine returns."""
    C = extension()
    p = C.Params()
    p.R, p.S, p.A, p.L = weights.n_residual, weights.n_skip, weights.n_classes, weights.n_layers
    p.max_dilation, p.use_embed_tanh = weights.max_dilation, weights.use_embed_tanh
    p.batch, p.num_samples = samples.shape
    p.weight_dtype = dtype_code(packed.embed_curr.dtype)
    for field in dataclasses.fields(PackedWeights):
        setattr(p, field.name, getattr(packed, field.name).data_ptr())

    p.cond, p.cond_dtype = cond_input.data_ptr(), dtype_code(cond_input.dtype)
    (p.cond_stride_channel, p.cond_stride_batch,
     p.cond_stride_layer, p.cond_stride_time) = cond_input.stride()
    p.selectors = selectors.data_ptr()
    p.selectors_stride_batch, p.selectors_stride_time = selectors.stride()
    if teacher is not None:
        p.teacher = teacher.data_ptr()
        p.teacher_stride_batch, p.teacher_stride_time = teacher.stride()
    p.samples = samples.data_ptr()
    p.samples_stride_batch, p.samples_stride_time = samples.stride()
    if logits is not None:
        p.logits = logits.data_ptr()
        p.logits_stride_batch, p.logits_stride_class, p.logits_stride_time = logits.stride()
    p.queues, p.history = state["queues"].data_ptr(), state["history"].data_ptr()
    p.position = int(state["position"])
    return p
