"""``NVWaveNet`` and ``Impl``: the NV-WaveNet PyTorch wrapper's API, on every device.

``NVWaveNet(**weights).infer(cond_input, Impl.AUTO)`` takes the wrapper's own argument names, so
weights exported by existing training code drop straight in. A CPU ``cond_input`` runs the CPU
path; a CUDA one runs the kernel variant that ``implementation`` names. Both run through a
:class:`nvwavenet.session.Session` whose pool is the caller's state, after ``infer`` has checked
every argument, values included.
"""
from __future__ import annotations

import threading

import torch

from . import engines, reference
from .engines import Impl
from .network import WaveNetWeights
from .sampling import draw_selectors
from .session import Session
from .state import check_state, new_state, reset_streams
from .inputs import check_cond_input, check_selectors, check_teacher_forcing

__all__ = ["Impl", "NVWaveNet"]

_NETWORK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# NVWaveNet.last_auto_rule after a CPU call: the implementation argument names CUDA variants only.
CPU_ENGINE_RULE = "cpu: a CPU cond_input runs the compiled CPU engine, whatever implementation names"
CPU_REFERENCE_RULE = ("cpu: the float32 PyTorch reference, without the compiled module "
                      "(NVWAVENET_ALLOW_REFERENCE=1)")


class NVWaveNet:
    """Autoregressive generation for one Deep Voice WaveNet (``docs/SPEC.md`` section 1).

    The positional arguments are NV-WaveNet's, shapes as in the SPEC; a trailing conv dimension of
    size 1 is accepted, and ``res_weights``/``res_biases`` may hold L - 1 or L layers. Keyword-only:
    ``conv_out_bias``/``conv_end_bias`` (A each, zero when None), ``dtype``, the precision of
    the weights (float32, float16 or bfloat16; products and softmax accumulate in float32, and on
    the CPU every activation is float32 too), and ``num_threads``, the threads of the compiled CPU
    engine: None (the default) uses up to one per CPU core, and at batch 1 measures while it runs
    whether splitting each step over the cores beats one thread (on a machine busy with other
    work it usually does not); an integer uses exactly that many. The CPU engine's output does not
    depend on the thread count.

    ``last_implementation`` is the CUDA variant the last CUDA call ran (what AUTO resolved to);
    ``last_auto_rule`` says how AUTO chose it (the measured table or the provisional rule, see
    :mod:`nvwavenet.autotune`), None when the call named a variant; after a CPU call it says which CPU
    path ran (:data:`CPU_ENGINE_RULE`, or :data:`CPU_REFERENCE_RULE` without the compiled module).
    """

    def __init__(self, embedding_prev, embedding_curr, conv_out_weight, conv_end_weight,
                 dilate_weights, dilate_biases, max_dilation, res_weights, res_biases,
                 skip_weights, skip_biases, use_embed_tanh, *, conv_out_bias=None,
                 conv_end_bias=None, dtype: torch.dtype = torch.float32,
                 num_threads: int | None = None):
        if dtype not in _NETWORK_DTYPES:
            raise TypeError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"num_threads: expected None or an integer >= 1, got {num_threads!r}")
        self.weights = WaveNetWeights.from_nv_wavenet_args(
            embedding_prev, embedding_curr, conv_out_weight, conv_end_weight, dilate_weights,
            dilate_biases, max_dilation, res_weights, res_biases, skip_weights, skip_biases,
            use_embed_tanh, conv_out_bias=conv_out_bias, conv_end_bias=conv_end_bias)
        self.dtype = dtype
        self.num_threads = num_threads
        self._cpu_weights: dict[torch.dtype, engines.CpuWeights] = {}  # packed on the first CPU call
        self._cuda_weights: dict[tuple[torch.device, torch.dtype], engines.PackedWeights] = {}
        self._sessions: dict[torch.device, Session] = {}  # what infer runs through, one per device
        self._session_lock = threading.Lock()
        self.last_implementation: Impl | None = None
        self.last_auto_rule: str | None = None

    # Sizes, under the names NV-WaveNet's documentation uses.
    @property
    def A(self) -> int:
        return self.weights.n_classes

    @property
    def R(self) -> int:
        return self.weights.n_residual

    @property
    def S(self) -> int:
        return self.weights.n_skip

    @property
    def num_layers(self) -> int:
        return self.weights.n_layers

    @property
    def max_dilation(self) -> int:
        return self.weights.max_dilation

    @property
    def receptive_field(self) -> int:
        return self.weights.receptive_field

    def __repr__(self) -> str:
        return (f"NVWaveNet(A={self.A}, R={self.R}, S={self.S}, layers={self.num_layers}, "
                f"max_dilation={self.max_dilation}, dtype={self.dtype})")

    def init_state(self, batch_size: int, device="cpu") -> dict:
        """A fresh generation state for ``batch_size`` streams (see :mod:`nvwavenet.state`).

        Pass it to :meth:`infer` as ``state=``: each call continues where the last one ended, and
        the state is updated in place.
        """
        return new_state(self.weights, batch_size, dtype=torch.float32, device=torch.device(device))

    def reset_streams(self, state: dict, streams) -> None:
        """Restart ``streams`` of ``state`` in place (a new utterance takes their place in the batch);
        the other streams go on undisturbed."""
        reset_streams(state, streams, self.A)

    def infer(self, cond_input: torch.Tensor, implementation: Impl = Impl.AUTO, *,
              selectors: torch.Tensor | None = None, generator: torch.Generator | None = None,
              teacher_forcing: torch.Tensor | None = None, prime: torch.Tensor | None = None,
              return_logits: bool = False, state: dict | None = None):
        """Generate one sample per step of ``cond_input`` ``(2R, batch, L, samples)``.

        Returns int32 classes ``(batch, samples)`` on ``cond_input``'s device, and with
        ``return_logits=True`` also float32 logits ``(batch, A, samples)``.

        - ``selectors``: the uniform numbers ``u_t``, float ``(batch, samples)`` in [0, 1); drawn
          from ``generator`` (or torch's default one) when None.
        - ``teacher_forcing``: int classes ``(batch, samples)`` fed back as the past instead of the
          drawn samples (which are still returned).
        - ``prime``: known classes ``(batch, P)``, ``P <= samples``, e.g. the start of existing
          audio: the first ``P`` steps run teacher-forced on them, then generation goes on freely.
          The result holds ``prime`` in its first ``P`` columns, then the generated samples.
        - ``state``: from :meth:`init_state`; generation continues from it and updates it.
        """
        if not isinstance(implementation, Impl):
            raise TypeError(f"implementation: expected an nvwavenet.Impl, got {implementation!r}")
        if not isinstance(return_logits, bool):
            raise TypeError(f"return_logits: expected a bool, got {type(return_logits).__name__}")
        # On the CPU, the engine's own threads look for NaN (see engines.find_nan_cpu).
        engine_scan = (isinstance(cond_input, torch.Tensor) and cond_input.device.type == "cpu"
                       and engines.has_extension())
        # int32 samples and float32 selectors, float32 logits when asked for, and a new state's queues.
        output_bytes = 8 + (4 * self.A if return_logits else 0)
        state_bytes = 0 if state is not None else (self.weights.receptive_field - 1) * self.R * 4 + 8
        batch, samples = check_cond_input(self.weights, cond_input, output_bytes=output_bytes, state_bytes=state_bytes,
                                          find_nan=(lambda cond: engines.find_nan_cpu(cond, self.num_threads))
                                          if engine_scan else None)
        device = cond_input.device
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"cond_input: expected a CPU or CUDA tensor, got one on {device}")
        u = (draw_selectors(batch, samples, generator, device) if selectors is None
             else check_selectors(selectors, batch, samples, device))
        teacher = (None if teacher_forcing is None else
                   check_teacher_forcing(teacher_forcing, self.A, batch, samples, device))
        if prime is not None:
            if teacher is not None:
                raise ValueError("prime: cannot be combined with teacher_forcing, which already fixes every step")
            prime = check_teacher_forcing(prime, self.A, batch, samples, device, name="prime", at_most=True)
        if state is None:
            state = self.init_state(batch, device)  # valid by construction
        else:
            check_state(state, self.weights, batch, device, samples=samples)

        if prime is None or prime.shape[1] == 0:
            return self._generate(cond_input, implementation, u, teacher, return_logits, state)
        primed = prime.shape[1]
        first = self._generate(cond_input[..., :primed], implementation, u[:, :primed], prime, return_logits, state)
        rest = self._generate(cond_input[..., primed:], implementation, u[:, primed:], None, return_logits, state)
        if not return_logits:
            return torch.cat([prime, rest], dim=1)
        return torch.cat([prime, rest[0]], dim=1), torch.cat([first[1], rest[1]], dim=2)

    def _generate(self, cond_input, implementation, u, teacher, return_logits, state):
        if cond_input.device.type == "cpu" and not engines.has_extension():
            engines.require_compiled("NVWaveNet.infer on the CPU")  # passes only under NVWAVENET_ALLOW_REFERENCE=1
            self.last_auto_rule = CPU_REFERENCE_RULE
            return reference.incremental(self.weights, cond_input, u, teacher_forcing=teacher,
                                         return_logits=return_logits, state=state, dtype=torch.float32)
        device = cond_input.device
        # A session is one caller's at a time: a call made while another thread's call holds this
        # device's session runs on a session of its own.
        if self._session_lock.acquire(blocking=False):
            try:
                session = self._sessions.get(device)
                if session is None:
                    session = self._sessions[device] = Session._whole_batch(self, device)
                out = session._run_state(state, cond_input, u, teacher, return_logits, implementation)
            finally:
                self._session_lock.release()
        else:
            out = Session._whole_batch(self, device)._run_state(state, cond_input, u, teacher, return_logits,
                                                                 implementation)
        if device.type == "cpu":
            self.last_auto_rule = CPU_ENGINE_RULE
        return (out.samples, out.logits) if return_logits else out.samples

    def _cpu_engine_weights(self, dtype: torch.dtype) -> engines.CpuWeights:
        """The CPU engine's weights in ``dtype``, packed once (shared with this network's sessions)."""
        if dtype not in self._cpu_weights:
            self._cpu_weights[dtype] = engines.CpuWeights.pack(self.weights, dtype)
        return self._cpu_weights[dtype]

    def _packed_for(self, device: torch.device, dtype: torch.dtype | None = None) -> engines.PackedWeights:
        """The weights in the kernels' layout on ``device`` in ``dtype`` (default: this network's),
        packed once per (device, dtype), after checking that CUDA kernels were built for this
        network and dtype (which no later call can change, so the check runs once with the
        packing, not on every call)."""
        key = (device, dtype or self.dtype)
        if key not in self._cuda_weights:
            engines.check_cuda_build(self.weights, key[1])
            self._cuda_weights[key] = engines.PackedWeights.pack(self.weights, device, key[1])
        return self._cuda_weights[key]
