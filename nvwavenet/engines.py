"""The thin layer over the compiled module ``nvwavenet._C``: loading it, and filling its Params.

Python owns every buffer as a torch tensor (so PyTorch's caching allocator serves all device
memory); the compiled engines only see raw pointers, sizes and strides (``csrc/nvwavenet.h``).
Importing nvwavenet never fails for lack of the compiled part: the error comes, with advice, when
something that needs it is called.

The CPU engine runs with the best instruction set the CPU has (``build_info()["cpu_isa"]``); the
environment variable ``NVWAVENET_CPU_ISA`` (``auto``, ``avx512``, ``avx2+fma`` or ``generic``) overrides that,
e.g. to test or time the portable fallback.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import struct

import torch

from . import autotune, build_check
from ._version import __version__
from .network import WaveNetWeights

try:
    from . import _C
    MISSING_BUILD: build_check.MissingBuild | None = None
except ImportError as error:
    _C = None
    # Python words a module that was never built as a circular import; say what it is: never built,
    # a source tree shadowing an installed build, or a build that fails to load.
    MISSING_BUILD = build_check.diagnose(error)

__all__ = ["Impl", "build_info", "extension", "has_extension", "require_compiled", "cpu_isa", "PackedWeights",
           "CpuWeights", "weight_params", "set_cond", "set_call", "set_teacher", "check_state_layout", "make_params",
           "find_nan_cpu", "CUDA_VARIANTS", "check_cuda_build", "spin_timeout_ns", "cuda_plan", "STATUS_BYTES",
           "cuda_status_error"]

_DTYPE_CODES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def extension():
    """The compiled module, or a RuntimeError that says how to build it."""
    if _C is None:
        raise RuntimeError(MISSING_BUILD.message())
    return _C


def require_compiled(what: str) -> None:
    """Before ``what`` (a fast-path entry point) does any work: returns when the compiled module
    loaded or ``NVWAVENET_ALLOW_REFERENCE=1`` accepts the reference, else raises the diagnosis
    (:func:`nvwavenet.build_check.require`)."""
    build_check.require(MISSING_BUILD, what)


_CPU_ISAS = ("auto", "avx512", "avx2+fma", "generic")


def has_extension() -> bool:
    """Whether the compiled module loaded: ``build_info()["extension"]``, without building the dict."""
    return _C is not None


def requested_cpu_isa() -> str:
    """``NVWAVENET_CPU_ISA``, checked: ``auto`` (the default), ``avx512``, ``avx2+fma`` or ``generic``."""
    requested = os.environ.get("NVWAVENET_CPU_ISA", "auto").strip() or "auto"
    if requested not in _CPU_ISAS:
        raise ValueError(f"NVWAVENET_CPU_ISA: expected one of {', '.join(_CPU_ISAS)}, got {requested!r}")
    return requested


def cpu_isa() -> str:
    """The instruction set the CPU engine runs with: ``NVWAVENET_CPU_ISA`` if set (and not
    ``auto``), else the best this CPU supports."""
    requested = requested_cpu_isa()
    return extension().build_info()["cpu_isa"] if requested == "auto" else requested


def build_info() -> dict:
    """What was compiled: ``cuda`` (bool), ``cuda_archs``, ``sizes`` ((R, S, A) tuples the CUDA
    kernels were built for), ``variant_sizes`` (the sizes per CUDA variant name: PERSISTENT, CLUSTER,
    CLUSTER_FOLD, CLUSTER_BATCHED, CLUSTER_ROLES and CLUSTER_SKIP_BLOCKS only have the sizes whose
    layers fit one block's shared memory), ``variants`` (the compiled module's variant names and codes, as :class:`Impl`
    has them), ``precisions``, ``version``,
    ``extension`` (whether ``_C`` loaded), and for the CPU engine ``cpu_isa`` (``"avx512"``, ``"avx2+fma"`` or ``"generic"``, see :func:`cpu_isa`)
    and ``cpu_threads`` (threads it uses by default: the CPUs this process may run on). Without the
    compiled module, ``error`` says why (:mod:`nvwavenet.build_check`) and ``shadowed`` whether this
    source tree hides an installed build."""
    if _C is None:
        return {"version": __version__, "extension": False, "cuda": False, "cuda_archs": [],
                "sizes": [], "variant_sizes": {}, "variants": {}, "precisions": [], "cpu_isa": None, "cpu_threads": 0,
                "shadowed": MISSING_BUILD.shadowed, "error": MISSING_BUILD.message()}
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
    fold_w: torch.Tensor  # (L-1) x 2R x R: W_cur(l+1) W_res(l), for CLUSTER_FOLD
    fold_b: torch.Tensor  # (L-1) x 2R: W_cur(l+1) b_res(l)

    @classmethod
    def pack(cls, weights: WaveNetWeights, device: torch.device, dtype: torch.dtype) -> PackedWeights:
        w = weights.to(device, dtype)
        both_taps = torch.cat([w.dilate_w[..., 0], w.dilate_w[..., 1]], dim=2)
        names = [f.name for f in dataclasses.fields(cls)]
        tensors = {name: getattr(w, name) for name in names if name not in ("dilate_w", "fold_w", "fold_b")}
        tensors["dilate_w"] = both_taps
        # The fold in float64 from the stored weights, rounded once to dtype (csrc/nvwavenet.h).
        layers = weights.n_layers - 1
        cur = weights.dilate_w[1:, :, :, 1].to(device, torch.float64)
        tensors["fold_w"] = (cur @ weights.res_w[:layers].to(device, torch.float64)).to(dtype)
        tensors["fold_b"] = (cur @ weights.res_b[:layers, :, None].to(device, torch.float64))[..., 0].to(dtype)
        return cls(**{name: tensor.contiguous() for name, tensor in tensors.items()})


def weight_params(weights: WaveNetWeights, packed: PackedWeights):
    """A ``_C.Params`` with the sizes and the weight pointers filled (the caller keeps ``packed`` alive)."""
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
        p = weight_params(weights, packed)
        blocked = torch.empty(extension().cpu_packed_bytes(p), dtype=torch.uint8)
        extension().pack_cpu_weights(p, blocked.data_ptr(), blocked.numel())
        return cls(packed, blocked)


def set_cond(p, cond_input: torch.Tensor) -> None:
    """The conditioning fields of ``_C.Params`` ``p``: pointer, dtype and strides."""
    p.cond, p.cond_dtype = cond_input.data_ptr(), dtype_code(cond_input.dtype)
    (p.cond_stride_channel, p.cond_stride_batch,
     p.cond_stride_layer, p.cond_stride_time) = cond_input.stride()


def set_call(p, cond_input: torch.Tensor, selectors: torch.Tensor, samples_ptr: int, samples_strides: tuple,
             logits_ptr: int, logits_strides: tuple) -> None:
    """The per-call fields of ``_C.Params`` ``p``: the conditioning and the selectors, and the
    outputs by address and strides (``logits_ptr`` 0: no logits)."""
    set_cond(p, cond_input)
    p.selectors = selectors.data_ptr()
    p.selectors_stride_batch, p.selectors_stride_time = selectors.stride()
    p.samples = samples_ptr
    p.samples_stride_batch, p.samples_stride_time = samples_strides
    p.logits = logits_ptr
    p.logits_stride_batch, p.logits_stride_class, p.logits_stride_time = logits_strides


def set_teacher(p, teacher: torch.Tensor | None) -> None:
    """``_C.Params`` ``p``'s teacher forcing: int32 classes ``(batch, samples)``, or None for none."""
    p.teacher = 0 if teacher is None else teacher.data_ptr()
    p.teacher_stride_batch, p.teacher_stride_time = (0, 0) if teacher is None else teacher.stride()


def check_state_layout(state: dict) -> None:
    """Raises unless ``state``'s queues and history (checked otherwise by ``state.check_state``)
    are laid out as the engines read and write them through raw pointers."""
    for key, dtype in (("queues", torch.float32), ("history", torch.int32)):
        tensor = state[key]
        # A tensor over a byte buffer (safetensors with an unpadded header) can start at any address;
        # the engines read and write it in place as 4-byte values.
        aligned = tensor.data_ptr() % tensor.element_size() == 0
        if tensor.dtype != dtype or not tensor.is_contiguous() or not aligned:
            raise TypeError(f"state['{key}']: the compiled engines expect a contiguous, aligned {dtype} "
                            f"tensor (as init_state() makes), got {tensor.dtype}"
                            f"{'' if tensor.is_contiguous() else ', non-contiguous'}"
                            f"{'' if aligned else f' at an unaligned address (pass a copy: state[{key!r}].clone())'}")


def make_params(weights: WaveNetWeights, packed: PackedWeights, cond_input: torch.Tensor,
                selectors: torch.Tensor, samples: torch.Tensor, state: dict, *,
                teacher: torch.Tensor | None = None, logits: torch.Tensor | None = None,
                cpu_blocked: torch.Tensor | None = None):
    """A filled ``_C.Params`` on the whole-batch ``state``, for calling an engine directly (tests,
    the host build of the CUDA sources; the package itself calls the engines through
    ``nvwavenet.session.Session``). The caller keeps every tensor alive until the engine returns.

    ``cpu_blocked`` is :attr:`CpuWeights.blocked`, for the CPU engine."""
    check_state_layout(state)
    p = weight_params(weights, packed)
    p.batch, p.num_samples = samples.shape
    if cpu_blocked is not None:
        p.cpu_weights, p.cpu_weights_bytes = cpu_blocked.data_ptr(), cpu_blocked.numel()

    set_call(p, cond_input, selectors, samples.data_ptr(), samples.stride(),
             *((0, (0, 0, 0)) if logits is None else (logits.data_ptr(), logits.stride())))
    set_teacher(p, teacher)
    p.queues, p.history = state["queues"].data_ptr(), state["history"].data_ptr()
    p.position = int(state["position"])
    return p


def find_nan_cpu(cond_input: torch.Tensor, num_threads: int | None = None) -> tuple[int, int] | None:
    """:func:`nvwavenet.inputs.find_nan_torch` for CPU ``cond_input`` (float32 or float16), on the
    CPU engine's own threads (``csrc/cpu/nan_scan.cpp``): PyTorch's OpenMP threads, woken by a
    reduction just before the engine runs, spin and take its cores (with PyTorch's ``max``,
    streaming in chunks of 50 samples at batch 64 lost 25-40%; with this scan, about 12%)."""
    p = extension().Params()
    channels, p.batch, p.L, p.num_samples = cond_input.shape
    p.R = channels // 2
    set_cond(p, cond_input)
    p.num_threads = num_threads or 0
    stream, sample = extension().find_nan_cond(p)
    return None if stream < 0 else (stream, sample)


class Impl(enum.IntEnum):
    """Which CUDA kernel variant runs; ``AUTO`` picks the fastest that fits.

    - ``SINGLE_BLOCK``: one block per stream or per tile of 2, 4 or 8 streams; any size; the many-stream
      variant.
    - ``DUAL_BLOCK``: two cooperating blocks per stream (layer chain | skip sums, head, sampling).
    - ``PERSISTENT``: one thread-block cluster per stream with the weights held in shared memory
      (sm_90); only for networks whose weights fit one cluster, else a ValueError says why.
    - ``CLUSTER``: PERSISTENT's kernel with fence-free hand-offs (``st.async`` into the consumer's
      shared memory, completed on its ``mbarrier``). Opt-in only: it has not run on a GPU yet,
      and ``AUTO`` never picks it.
    - ``CLUSTER_FOLD``: CLUSTER with W_cur(l+1) W_res(l) folded into one stored matrix per layer, so
      a layer block's chain has one barrier per layer instead of two (fewer layers fit a block).
      Opt-in only: it has not run on a GPU yet, and ``AUTO`` never picks it.
    - ``TENSOR_CORE``: one block per tile of 8-64 streams, every product on the tensor cores
      (mma.sync, float32 accumulation; float32 weights through the 3xTF32 split, not built for
      R=256). Opt-in: no GPU has run it yet, and AUTO picks it only where a measured table says
      it passed and is fastest.
    - ``CLUSTER_BATCHED``: CLUSTER's kernel with several streams per cluster (``streams_per_block``
      1, 2, 4 or 8; 0: its plan chooses), so that each weight read serves every stream of the
      cluster. Opt-in only: it has not run on a GPU yet, and ``AUTO`` never picks it.
    - ``CLUSTER_ROLES``: CLUSTER with warp-specialised roles in its layer blocks (8 warps run the
      layer chain, 8 the skip products as each layer's gated output is ready). Opt-in only: it has
      not run on a GPU yet, and ``AUTO`` never picks it.
    - ``CLUSTER_SKIP_BLOCKS``: CLUSTER with part of each layer's W_skip moved out of the layer
      blocks into skip blocks of their own, so that float32 R64/S256/A256 L20 fits one cluster (10
      layer blocks, 3 head blocks, 3 skip blocks). Opt-in only: it has not run on a GPU yet, and
      ``AUTO`` never picks it.

    ``AUTO``'s rule lives in :mod:`nvwavenet.autotune` and never picks a variant that cannot run the
    call. A CPU ``cond_input`` always runs the CPU path, whatever is asked for. Blocks that wait on
    each other give up after ``NVWAVENET_SPIN_TIMEOUT_MS`` (default 2000) with a RuntimeError.
    """

    AUTO = 0
    SINGLE_BLOCK = 1
    DUAL_BLOCK = 2
    PERSISTENT = 3
    CLUSTER = 4
    TENSOR_CORE = 5
    CLUSTER_FOLD = 6
    CLUSTER_BATCHED = 7
    CLUSTER_ROLES = 8
    CLUSTER_SKIP_BLOCKS = 9


# The concrete CUDA variants and their codes: Impl without AUTO (C++'s table, NVWAVENET_FOR_EACH_VARIANT
# in csrc/nvwavenet.h, is checked against Impl by the tests and reported as build_info()["variants"]).
CUDA_VARIANTS = {variant.name: variant.value for variant in Impl if variant != Impl.AUTO}

SPIN_TIMEOUT_ENV = "NVWAVENET_SPIN_TIMEOUT_MS"
DEFAULT_SPIN_TIMEOUT_MS = 2000.0


def spin_timeout_ns() -> int:
    """How long a CUDA block may wait on another before the kernel stops with an error.

    ``NVWAVENET_SPIN_TIMEOUT_MS`` (milliseconds, default 2000): raise it on a GPU shared with other
    work, or under compute-sanitizer, which slows kernels down by orders of magnitude.
    """
    text = os.environ.get(SPIN_TIMEOUT_ENV, "").strip()
    if not text:
        return int(DEFAULT_SPIN_TIMEOUT_MS * 1e6)
    try:
        milliseconds = float(text)
    except ValueError:
        milliseconds = float("nan")
    if not milliseconds > 0:
        raise ValueError(f"{SPIN_TIMEOUT_ENV}: expected a number of milliseconds > 0, got {text!r}")
    return int(milliseconds * 1e6)


def check_cuda_build(weights: WaveNetWeights, dtype: torch.dtype) -> dict:
    """``build_info()``, after checking that CUDA kernels were built for this network and dtype."""
    info = build_info()
    if not info["cuda"]:
        raise RuntimeError(
            "cond_input is on CUDA, but this nvwavenet build has no CUDA kernels "
            "(nvcc was not found when it was built). Reinstall with nvcc on the PATH, or pass "
            "a CPU tensor to run the CPU path.")
    size = (weights.n_residual, weights.n_skip, weights.n_classes)
    built = [tuple(s) for s in info["sizes"]]
    if size not in built:
        listed = ", ".join(str(s) for s in built)
        raise ValueError(f"(R, S, A) = {size}: no CUDA kernels were built for this size; built: {listed}. "
                         "Add it to csrc/sizes.h and rebuild, or run on the CPU.")
    name = _DTYPE_CODES[dtype]
    if name not in info["precisions"]:
        raise ValueError(f"dtype: no CUDA kernels were built for {name}; built: {', '.join(info['precisions'])}")
    return info


# (device, sizes, dtype, L, batch, implementation) -> (variant name, AUTO's rule, tile): AUTO's
# choice costs a table look-up and a plan per candidate, and short streaming calls repeat the same
# key. Plans themselves are cached once, by the compiled module (launch.cu, cached_plan), under a
# key that adds the variant and the tile. Refusals of an explicit implementation are not kept (they raise).
_DECISIONS: dict = {}


def cuda_plan(params, implementation: str, device: torch.device) -> tuple[str, str | None, int, dict]:
    """``(variant name, AUTO's rule or None, tile, plan)`` for ``params`` on ``device`` (``implementation``
    an ``Impl`` name), the tile also left in ``params.streams_per_block``; an explicit variant
    that cannot run raises a ValueError that says why."""
    C = extension()
    key = (params.device, params.R, params.S, params.A, int(params.weight_dtype), params.L, params.batch,
           implementation)
    known = _DECISIONS.get(key)
    if known is not None:
        name, rule, params.streams_per_block = known
        return name, rule, params.streams_per_block, C.cuda_plan(params, CUDA_VARIANTS[name])
    multiprocessors = torch.cuda.get_device_properties(device).multi_processor_count

    def plan_for(name):
        params.streams_per_block = autotune.streams_per_block(name, params.batch, multiprocessors)
        return C.cuda_plan(params, CUDA_VARIANTS[name])

    rule = None
    if implementation == "AUTO":
        gpu = torch.cuda.get_device_name(device)
        dtype = params.weight_dtype.name.lower()
        size = (params.R, params.S, params.A)
        table = autotune.load_table()
        plans = {name: plan_for(name) for name in autotune.candidates(table, gpu, dtype, size)}
        decision = autotune.decide(params.batch, plans, gpu=gpu, dtype=dtype, size=size, table=table)
        name, rule = decision.variant, decision.rule
        plan = plan_for(name)  # also leaves the chosen variant's tile in params
    else:
        name = implementation
        plan = plan_for(name)
        if not plan["runnable"]:
            raise ValueError(f"implementation: Impl.{name} cannot run this configuration on "
                             f"{torch.cuda.get_device_name(device)}: {plan['reason']}")
    if len(_DECISIONS) >= 4096:
        _DECISIONS.clear()
    _DECISIONS[key] = (name, rule, params.streams_per_block)
    return name, rule, params.streams_per_block, plan


# csrc/cuda/status.h's DeviceStatus, the first bytes of a CUDA call's workspace:
# int32 code, abort, site, block; int64 step; uint64 observed, expected.
_STATUS_FORMAT = "<iiiiqQQ"
STATUS_BYTES = struct.calcsize(_STATUS_FORMAT)


def cuda_status_error(status: torch.Tensor, variant: str) -> str | None:
    """The RuntimeError text for a kernel's status block (``STATUS_BYTES`` uint8 on the CPU, copied
    from the workspace after the kernel), or None when the kernel finished normally."""
    code, _, site, block, step, observed, expected = struct.unpack(_STATUS_FORMAT, status.numpy().tobytes())
    if code == 0:
        return None
    return extension().cuda_status_message(code, site, block, step, observed, expected, CUDA_VARIANTS[variant],
                                            spin_timeout_ns())
