"""The thin layer over the compiled module ``nvwavenet._C``: loading it, and filling its Params.

Python owns every buffer as a torch tensor (so PyTorch's caching allocator serves all device
memory); the compiled engines only see raw pointers, sizes and strides (``csrc/nvwavenet.h``).
Importing nvwavenet never fails for lack of the compiled part: the error comes, with advice, when
something that needs it is called.

The CPU engine runs with the best instruction set the CPU has (``build_info()["cpu_isa"]``); the
environment variable ``NVWAVENET_CPU_ISA`` (``auto``, ``avx2+fma`` or ``generic``) overrides that,
e.g. to test or time the portable fallback.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from ._version import __version__
from .network import WaveNetWeights

try:
    from . import _C
    _IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # a source checkout that was never built
    _C = None
    _IMPORT_ERROR = error

__all__ = ["build_info", "extension", "cpu_isa", "PackedWeights", "CpuWeights", "make_params",
           "generate_cpu"]

_DTYPE_CODES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def extension():
    """The compiled module, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError(
            "nvwavenet's compiled module nvwavenet._C is not available "
            f"({_IMPORT_ERROR}). Install the package with `pip install .`, or build it in place "
            "with `python setup.py build_ext --inplace`.")
    return _C


_CPU_ISAS = ("auto", "avx2+fma", "generic")


def cpu_isa() -> str:
    """The instruction set the CPU engine runs with: ``NVWAVENET_CPU_ISA`` if set (and not
    ``auto``), else the best this CPU supports."""
    requested = os.environ.get("NVWAVENET_CPU_ISA", "auto").strip() or "auto"
    if requested not in _CPU_ISAS:
        raise ValueError(f"NVWAVENET_CPU_ISA: expected one of {', '.join(_CPU_ISAS)}, got {requested!r}")
    return extension().build_info()["cpu_isa"] if requested == "auto" else requested


def build_info() -> dict:
    """What was compiled: ``cuda`` (bool), ``cuda_archs``, ``sizes`` ((R, S, A) tuples the CUDA
    kernels were built for), ``precisions``, ``version``, ``extension`` (whether ``_C`` loaded),
    and for the CPU engine ``cpu_isa`` (``"avx2+fma"`` or ``"generic"``, see :func:`cpu_isa`)
    and ``cpu_threads`` (threads it uses by default: the CPUs this process may run on)."""
    if _C is None:
        return {"version": __version__, "extension": False, "cuda": False, "cuda_archs": [],
                "sizes": [], "precisions": [], "cpu_isa": None, "cpu_threads": 0,
                "error": str(_IMPORT_ERROR)}
    return {**_C.build_info(), "cpu_isa": cpu_isa(), "extension": True}


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


def _weight_params(weights: WaveNetWeights, packed: PackedWeights):
    """A ``_C.Params`` with the sizes and the weight pointers filled."""
    p = extension().Params()
    p.R, p.S, p.A, p.L = weights.n_residual, weights.n_skip, weights.n_classes, weights.n_layers
    p.max_dilation, p.use_embed_tanh = weights.max_dilation, weights.use_embed_tanh
    p.weight_dtype = dtype_code(packed.embed_curr.dtype)
    for field in dataclasses.fields(PackedWeights):
        setattr(p, field.name, getattr(packed, field.name).data_ptr())
    return p


@dataclasses.dataclass(frozen=True)
class CpuWeights:
    """The weights for the CPU engine: the Params layout in ``dtype``, and the engine's own blocked
    copy made from it (``csrc/cpu/packing.h``), which is what it streams through the cache. Its
    matrices keep ``dtype`` (float16 / bfloat16 halve the bytes per sample and are widened to
    float32 in registers); everything else is float32."""

    packed: PackedWeights
    blocked: torch.Tensor  # uint8, cpu_packed_bytes long, 64-byte aligned (torch's CPU allocator)

    @classmethod
    def pack(cls, weights: WaveNetWeights, dtype: torch.dtype = torch.float32) -> CpuWeights:
        packed = PackedWeights.pack(weights, torch.device("cpu"), dtype)
        p = _weight_params(weights, packed)
        blocked = torch.empty(extension().cpu_packed_bytes(p), dtype=torch.uint8)
        extension().pack_cpu_weights(p, blocked.data_ptr(), blocked.numel())
        return cls(packed, blocked)


def make_params(weights: WaveNetWeights, packed: PackedWeights, cond_input: torch.Tensor,
                selectors: torch.Tensor, samples: torch.Tensor, state: dict, *,
                teacher: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                cpu_blocked: torch.Tensor | None = None):
    """A filled ``_C.Params``. The caller keeps every tensor alive until the engine returns.

    ``cpu_blocked`` is :attr:`CpuWeights.blocked`, for the CPU engine."""
    for key, dtype in (("queues", torch.float32), ("history", torch.int32)):
        tensor = state[key]
        if tensor.dtype != dtype or not tensor.is_contiguous():
            raise TypeError(f"state['{key}']: the compiled engines expect a contiguous {dtype} "
                            f"tensor (as init_state() makes), got {tensor.dtype}"
                            f"{'' if tensor.is_contiguous() else ', non-contiguous'}")
    p = _weight_params(weights, packed)
    p.batch, p.num_samples = samples.shape
    if cpu_blocked is not None:
        p.cpu_weights, p.cpu_weights_bytes = cpu_blocked.data_ptr(), cpu_blocked.numel()

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


def generate_cpu(params) -> None:
    """Runs the CPU engine on filled ``params`` (without the GIL), with :func:`cpu_isa`."""
    extension().generate_cpu(params, cpu_isa())
