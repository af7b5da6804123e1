"""``Session``: a persistent pool of generation states that streams join and leave by slot.

A session owns ``max_streams`` rows of generation state (queues and history, ``nvwavenet.state``)
on one device, and each row's position. A stream is admitted into a free row (its *slot*), runs
any number of :meth:`Session.step` calls with any other admitted streams, in any order and at any
positions, and is released; no row ever moves, and no call touches a row it does not name. This is
what causal-conv1d's ``conv_state_indices`` and vLLM's persistent batch do: the engines read
``Params.slots`` and ``Params.positions`` (``csrc/nvwavenet.h``).

``step`` is the hot path. It checks shapes, dtypes and devices (any strides), never values: the
conditioning and the selectors are the caller's, checked where they entered (``NVWaveNet.infer``,
``Vocoder``'s mel input, the server's frame decoder). Its outputs and the engine's arguments are
preallocated, and a stream's output is bit for bit what it would be alone, in any batch, on any
number of threads (the CPU engine computes every number in one order, see
``csrc/cpu/engine.cpp``).

On CUDA a step synchronises nothing with the host: the kernel is launched (``cuda_launch``), its
status block is copied to pinned memory behind it, and that copy is looked at by a later call (or
:meth:`Session.synchronize`), which raises the kernel's error then. The slot and position arrays a
call reads are device tensors at fixed addresses for a slot set and are advanced on the device, so
a step of a slot set that has already run once (warm-up: plan, workspace, outputs, positions on
the device), with cond and selectors at fixed addresses, issues only stream-ordered work and is
written to be captured in a CUDA graph (``torch.cuda.graph``); under capture it skips the status
read-back. A replay advances the device positions but not :meth:`Session.position`, which counts
the captured step once. (No GPU has run this module yet: the CUDA path, capture included, is
untested.)

``NVWaveNet.infer`` runs through a session too (:meth:`Session._whole_batch`): one without a pool
of its own, which each call points at the caller's whole-batch state (``nvwavenet.state``), slots
``0 .. batch - 1`` at the state's position, so that every call of a generation engine goes through
:meth:`Session._run`.

What a session keeps between calls is bounded: at most 256 slot sets (their slot and position
arrays), and preallocated outputs for at most :data:`OUTPUTS_KEPT` call shapes, of at most
:data:`OUTPUT_BYTES_KEPT` bytes together (or the newest alone, when it is larger), the oldest
dropped first.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch

from . import engines, inference
from .engines import Impl
from .inputs import COND_DTYPES
from .state import MAX_POSITION, check_state, layer_offsets
from .validation import check_allocation, check_int

__all__ = ["Session", "OUTPUTS_KEPT", "OUTPUT_BYTES_KEPT"]

# Outputs a session keeps for later calls of the same shape. A server cycles through a few slot sets
# and call lengths; a caller that tries many would otherwise keep a buffer for each, and logits
# are large (batch x A x samples float32: 786 MB for 32 streams of 24000 samples at A=256).
OUTPUTS_KEPT = 64
OUTPUT_BYTES_KEPT = 64 << 20


class _SlotSet:
    """What a call of one slot set needs beyond the pool: the slots as an index and as the int32
    array the engine reads, the engine's position array (call order), and on CUDA its plan."""

    def __init__(self, slots: tuple[int, ...], cond_prefix: tuple[int, int, int], device: torch.device):
        self.index = np.fromiter(slots, dtype=np.int64, count=len(slots))
        self.batch = len(slots)
        self.cond_prefix = cond_prefix  # cond.shape[:3] of its calls
        host_slots = torch.tensor(slots, dtype=torch.int32)
        self.positions = torch.zeros(len(slots), dtype=torch.int64)
        if device.type == "cuda":
            self.slots = host_slots.pin_memory().to(device, non_blocking=True)
            self.positions = self.positions.to(device)
            self.plan = None  # (variant name, rule, tile, workspace bytes), on the first call
        else:
            self.slots = host_slots
        self.slots_ptr, self.positions_ptr = self.slots.data_ptr(), self.positions.data_ptr()


class _Outputs:
    """A call's outputs and the pointers and strides the engine gets for them, filled with poison
    (-1, NaN) so that an element the engine failed to write cannot pass as data."""

    def __init__(self, batch: int, classes: int, samples: int, logits: bool, device: torch.device):
        self.samples = torch.full((batch, samples), -1, dtype=torch.int32, device=device)
        self.logits = (torch.full((batch, classes, samples), float("nan"), dtype=torch.float32, device=device)
                       if logits else None)
        self.samples_ptr, self.samples_strides = self.samples.data_ptr(), self.samples.stride()
        self.logits_ptr, self.logits_strides = ((self.logits.data_ptr(), self.logits.stride()) if logits
                                                else (0, (0, 0, 0)))

    @property
    def nbytes(self) -> int:
        return self.samples.nbytes + (0 if self.logits is None else self.logits.nbytes)


class Session:
    """A pool of ``max_streams`` generation states of ``net`` on ``device``.

    - ``admit(state=None) -> slot``: a free row, reset to the start of a stream (empty queues, history
      ``A // 2``, position 0) or holding a one-stream ``state``. Raises RuntimeError when every row is
      in use. ``export(slot)``: the stream's state, as ``NVWaveNet.init_state(1)`` makes them.
    - ``release(slot)``: the row is free again; the other rows are not touched.
    - ``step(slots, cond, selectors, *, logits=False, audio=False)``: ``num_samples`` more steps of
      the streams in ``slots`` (a sequence of admitted slots, distinct, any order): ``cond``
      ``(2R, len(slots), L, num_samples)`` (float32 or float16, as ``NVWaveNet.infer`` takes), any
      strides; ``selectors`` float32 ``(len(slots), num_samples)`` in [0, 1), any strides. Returns
      int32 classes ``(len(slots), num_samples)``, with ``logits=True`` also float32 logits
      ``(len(slots), A, num_samples)``, with ``audio=True`` also the classes mu-law decoded to float32
      on the device (what :func:`nvwavenet.mu_law_decode` gives, bit for bit). The returned tensors
      are views of the session's own buffers: valid until its next ``step``, ``clone()`` to keep them.
      On the CPU, ``steps`` (one count per slot, each in [0, num_samples]) lets streams with fewer
      steps ready share the call: stream ``i`` runs ``steps[i]`` steps and its position advances by
      that many; its outputs at later steps are left as they were (unspecified).
    - ``position(slot)``: the steps the stream in ``slot`` has generated; ``slots``: the admitted
      slots, ascending; ``free``: how many rows are free.

    ``dtype``: the weights' precision (default ``net.dtype``). ``implementation`` picks the CUDA
    variant (an ``nvwavenet.Impl``, default AUTO), as in ``NVWaveNet.infer``. On the CPU, threads
    are ``net.num_threads``'s. One caller at a time: a session is not safe to share between threads.
    """

    def __init__(self, net, max_streams: int, *, device="cpu", dtype: torch.dtype | None = None,
                 implementation=None):
        if not isinstance(net, inference.NVWaveNet):
            raise TypeError(f"net: expected an nvwavenet.NVWaveNet, got {type(net).__name__}")
        self.max_streams = check_int("max_streams", max_streams, 1, maximum=2**31 - 1)
        self._setup(net, device, dtype, implementation)
        rows = layer_offsets(net.weights.dilations)[-1]
        check_allocation("max_streams", self.max_streams * (rows * self._R * 4 + 16), self.device,
                         f"a session of {self.max_streams} streams")
        self._queues = torch.zeros(self.max_streams, rows, self._R, dtype=torch.float32, device=self.device)
        self._history = torch.full((self.max_streams, 2), self._A // 2, dtype=torch.int32, device=self.device)
        self._admitted = np.zeros(self.max_streams, dtype=bool)
        self._free = list(range(self.max_streams - 1, -1, -1))  # pop() takes the lowest row
        self._params = self._base_params(net.weights)
        self._params.queues, self._params.history = self._queues.data_ptr(), self._history.data_ptr()
        self._set_rows(np.zeros(self.max_streams, dtype=np.int64))

    @classmethod
    def _whole_batch(cls, net, device: torch.device) -> Session:
        """The session ``NVWaveNet.infer`` runs through on ``device``, in ``net.dtype``: it has no
        pool of its own; :meth:`_run_state` points it at the caller's state on every call. The
        network keeps it, so it refers to the network weakly: a dropped network is freed at
        once, with its packed weights (device memory on CUDA), not at the next cycle collection."""
        session = cls.__new__(cls)
        session._setup(weakref.proxy(net), device, None, None)
        session._params = session._base_params(net.weights)
        return session

    def _setup(self, net, device, dtype, implementation) -> None:
        """The checked arguments and the empty caches; no pool, no Params."""
        self.net = net
        try:
            self.device = torch.device(device)
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"device: expected a torch device, got {device!r}") from error
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device: expected a CPU or CUDA device, got {self.device}")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = net.dtype if dtype is None else dtype
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
        implementation = Impl.AUTO if implementation is None else implementation
        if not isinstance(implementation, Impl):
            raise TypeError(f"implementation: expected an nvwavenet.Impl, got {implementation!r}")
        self.implementation = implementation
        weights = net.weights
        self._A, self._R, self._L = weights.n_classes, weights.n_residual, weights.n_layers
        self._sets: dict = {}  # slots (a tuple) -> _SlotSet; in a whole-batch session, batch (an int) -> _SlotSet
        self._last: _SlotSet | None = None
        # (slot set, samples, logits) -> _Outputs, oldest first; bounded by _keep_outputs.
        self._outputs: dict[tuple[_SlotSet, int, bool], _Outputs] = {}
        self._output_bytes = 0
        self._decode_table: torch.Tensor | None = None
        self._cond_codes = {dtype: engines.dtype_code(dtype) for dtype in COND_DTYPES}

    def _set_rows(self, positions: np.ndarray) -> None:
        """The pool's rows: each one's position (int64 on the host), which the engine reads and
        advances through a pointer."""
        self._positions, self._positions_ptr = positions, positions.ctypes.data
        self._params.pool_rows = len(positions)

    def _base_params(self, weights):
        """The Params fields no call changes: sizes, weights, threads, the CUDA stream's device."""
        if self.device.type == "cpu":
            packed = self.net._cpu_engine_weights(self.dtype)
            params = engines.weight_params(weights, packed.packed)
            params.cpu_weights, params.cpu_weights_bytes = packed.blocked.data_ptr(), packed.blocked.numel()
            params.num_threads = self.net.num_threads or 0
            self._isa = engines.requested_cpu_isa()
        else:
            with torch.cuda.device(self.device):
                packed = self.net._packed_for(self.device, self.dtype)
            params = engines.weight_params(weights, packed)
            params.device = self.device.index
            params.spin_timeout_ns = engines.spin_timeout_ns()
            self._workspace = torch.empty(0, dtype=torch.uint8, device=self.device)
            self._status_pending: list[tuple[torch.cuda.Event, torch.Tensor, str]] = []
        self._packed = packed  # kept alive: params points into it
        return params

    # ---------------------------------------------------------------------------------- slots

    def admit(self, state: dict | None = None) -> int:
        """A free slot, reset to the start of a stream, or holding ``state`` (a one-stream state of
        this network, e.g. from :meth:`export`, ``NVWaveNet.init_state(1)`` or ``load_state``),
        checked here, where it enters."""
        if state is not None:
            check_state(state, self.net.weights, 1, self.device)
        if not self._free:
            raise RuntimeError(f"admit: all max_streams={self.max_streams} slots are in use; release one first")
        slot = self._free.pop()
        if state is None:
            self._queues[slot].zero_()
            self._history[slot].fill_(self._A // 2)
            self._positions[slot] = 0
        else:
            self._queues[slot].copy_(state["queues"][0])
            self._history[slot].copy_(state["history"][0])
            self._positions[slot] = int(state["position"])
        self._admitted[slot] = True
        return slot

    def export(self, slot: int) -> dict:
        """A copy of the stream in ``slot`` as a one-stream state (``nvwavenet.state``): for
        ``save_state``, ``NVWaveNet.infer(state=...)`` or :meth:`admit` into another session."""
        self._check_admitted(slot, "slot")
        return {"queues": self._queues[slot:slot + 1].clone(), "history": self._history[slot:slot + 1].clone(),
                "position": torch.tensor(int(self._positions[slot]), dtype=torch.int64)}

    def release(self, slot: int) -> None:
        """Frees ``slot``; nobody else's state changes."""
        self._check_admitted(slot, "slot")
        self._admitted[slot] = False
        self._free.append(slot)
        self._free.sort(reverse=True)
        # Sets that name the row are stale: its next stream starts at position 0.
        self._sets = {key: entry for key, entry in self._sets.items() if slot not in key}
        self._drop_outputs(lambda entry: slot in entry.index)
        if self._last is not None and slot in self._last.index.tolist():
            self._last = None

    def position(self, slot: int) -> int:
        """Steps the stream in ``slot`` has generated."""
        self._check_admitted(slot, "slot")
        return int(self._positions[slot])

    @property
    def slots(self) -> list[int]:
        return np.flatnonzero(self._admitted).tolist()

    @property
    def free(self) -> int:
        return len(self._free)

    def _check_admitted(self, slot, name: str) -> None:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)):
            raise TypeError(f"{name}: expected a slot (an int from admit()), got {slot!r}")
        if not 0 <= slot < self.max_streams or not self._admitted[slot]:
            raise ValueError(f"{name}: slot {slot} is not admitted in this session "
                             f"(admitted: {self.slots[:16]}{'...' if len(self.slots) > 16 else ''})")

    def _slot_set(self, slots) -> _SlotSet:
        if isinstance(slots, (tuple, list, range)):
            key = tuple(slots)
        elif isinstance(slots, (torch.Tensor, np.ndarray)) and slots.ndim == 1 and (
                not isinstance(slots, torch.Tensor) or slots.device.type == "cpu"):
            key = tuple(slots.tolist())
        else:
            raise TypeError(f"slots: expected a sequence of slots (ints from admit()), got {type(slots).__name__}")
        entry = self._sets.get(key)
        if entry is not None:
            return entry
        if not key:
            raise ValueError("slots: expected at least one slot")
        for i, slot in enumerate(key):
            self._check_admitted(slot, f"slots[{i}]")
        if len(set(key)) != len(key):
            raise ValueError(f"slots: expected distinct slots, got {list(key)}")
        if len(self._sets) >= 256:
            self._sets.clear()
            self._drop_outputs(lambda entry: True)
        self._sets[key] = entry = _SlotSet(key, (2 * self._R, len(key), self._L), self.device)
        return entry

    def _keep_outputs(self, entry: _SlotSet, samples: int, logits: bool) -> _Outputs:
        """New outputs for calls of ``entry`` with ``samples`` steps, kept for the next such call
        after dropping the oldest kept ones beyond :data:`OUTPUTS_KEPT` / :data:`OUTPUT_BYTES_KEPT`
        (a dropped buffer lives on only in the caller's hands, if the caller kept it)."""
        out = _Outputs(entry.batch, self._A, samples, logits, self.device)
        while self._outputs and (len(self._outputs) >= OUTPUTS_KEPT
                                 or self._output_bytes + out.nbytes > OUTPUT_BYTES_KEPT):
            self._output_bytes -= self._outputs.pop(next(iter(self._outputs))).nbytes
        self._outputs[entry, samples, logits] = out
        self._output_bytes += out.nbytes
        return out

    def _drop_outputs(self, stale) -> None:
        """Forgets the kept outputs of the slot sets for which ``stale(entry)`` is true."""
        self._outputs = {key: out for key, out in self._outputs.items() if not stale(key[0])}
        self._output_bytes = sum(out.nbytes for out in self._outputs.values())

    # ----------------------------------------------------------------------------------- step

    def step(self, slots: Sequence[int], cond: torch.Tensor, selectors: torch.Tensor, *,
             logits: bool = False, audio: bool = False, steps: Sequence[int] | None = None):
        """``num_samples = cond.shape[3]`` more steps of the streams in ``slots`` (see the class), or
        on the CPU ``steps[i]`` (in [0, num_samples]) for the stream in ``slots[i]``."""
        # Everything here runs per call and per turn of a server: attribute reads and comparisons,
        # then one crossing into the compiled engine (about the cost of an empty pybind call per
        # argument). The thorough, slower checks run only to name what is wrong.
        entry = self._sets.get(slots if type(slots) is tuple else tuple(slots) if type(slots) is list else None)
        if entry is None:
            entry = self._slot_set(slots)
        code = self._cond_codes.get(getattr(cond, "dtype", None))
        if (code is None or cond.ndim != 4 or cond.shape[:3] != entry.cond_prefix or cond.device != self.device
                or not isinstance(selectors, torch.Tensor) or selectors.dtype is not torch.float32
                or selectors.shape != (entry.batch, cond.shape[3]) or selectors.device != self.device):
            self._check_step(cond, selectors, entry.batch)  # raises: names what is wrong
        samples = cond.shape[3]
        out = self._outputs.get((entry, samples, logits))
        if out is None:
            out = self._keep_outputs(entry, samples, logits)
        steps_ptr = 0
        if steps is not None:
            steps_ptr, steps_array = self._steps(steps, entry.batch)  # steps_array: alive through the call
        if samples:
            self._run(entry, cond, code, selectors, out, samples, steps_ptr)
        if not (logits or audio):
            return out.samples
        results = (out.samples,) + ((out.logits,) if logits else ()) + ((self._decode(out.samples),) if audio else ())
        return results

    def _run(self, entry: _SlotSet, cond, code, selectors, out: _Outputs, samples: int, steps_ptr: int) -> None:
        """The engine call, for ``samples`` > 0 steps: every call of a generation engine in the
        package is this one."""
        if self.device.type == "cpu":
            # The engine checks every value it indexes with (slots, positions, history) itself.
            engines.extension().session_step_cpu(
                self._params, cond.data_ptr(), code, cond.stride(), selectors.data_ptr(), selectors.stride(),
                out.samples_ptr, out.samples_strides, out.logits_ptr, out.logits_strides, entry.batch, samples,
                entry.slots_ptr, steps_ptr, self._positions_ptr, entry.positions_ptr, self._isa)
        else:
            self._launch(entry, cond, code, selectors, out, samples)

    def _run_state(self, state: dict, cond, selectors, teacher, logits: bool, implementation) -> _Outputs:
        """One ``NVWaveNet.infer`` call on a :meth:`_whole_batch` session: the pool is ``state``'s
        queues and history, updated in place, slots ``0 .. batch - 1``, all at ``state``'s
        position, which then advances. Everything was checked by ``infer``, values included
        (``teacher``: int32 classes like ``selectors``, or None). On CUDA, waits for the kernel and
        raises its error. Returns new outputs (the caller keeps them)."""
        engines.check_state_layout(state)
        batch, samples = selectors.shape
        entry = self._sets.get(batch)
        if entry is None:  # only the latest batch size is kept
            self._sets = {batch: _SlotSet(tuple(range(batch)), (2 * self._R, batch, self._L), self.device)}
            entry = self._sets[batch]
            self._set_rows(np.empty(batch, dtype=np.int64))
        if implementation is not self.implementation:
            self.implementation, entry.plan = implementation, None  # CUDA: the plan was another implementation's
        position = int(state["position"])
        self._positions.fill(position)
        self._last = None  # CUDA: the device positions are set from this state's
        p = self._params
        p.queues, p.history = state["queues"].data_ptr(), state["history"].data_ptr()
        if self.device.type == "cpu":  # read per call, as the network and the environment say now
            p.num_threads, self._isa = self.net.num_threads or 0, engines.requested_cpu_isa()
        out = _Outputs(batch, self._A, samples, logits, self.device)
        if samples:
            engines.set_teacher(p, teacher)
            try:
                self._run(entry, cond, self._cond_codes[cond.dtype], selectors, out, samples, 0)
            finally:
                engines.set_teacher(p, None)
            self.synchronize()
        state["position"].fill_(position + samples)
        return out

    def _steps(self, steps, batch: int) -> tuple[int, torch.Tensor]:
        """The address of ``steps`` as the engine's int64 array, and the array (kept alive by the
        caller for the call); the engine checks the values."""
        if self.device.type != "cpu":
            raise ValueError("steps: per-stream step counts run on the CPU engine only; "
                             "the CUDA kernels run every stream for cond.shape[3] steps")
        if isinstance(steps, torch.Tensor) and steps.device.type != "cpu":
            raise ValueError(f"steps: expected step counts on the CPU, got a tensor on {steps.device}")
        try:
            array = torch.as_tensor(steps)
        except (TypeError, ValueError, RuntimeError):
            array = None
        # as_tensor(..., dtype=int64) would take 1.5 as 1 and True as 1.
        if array is None or array.is_floating_point() or array.is_complex() or array.dtype == torch.bool:
            raise TypeError(f"steps: expected one step count (int) per slot, got {steps!r}")
        array = array.to(torch.int64).contiguous()
        if array.shape != (batch,):
            raise ValueError(f"steps: expected {batch} step counts (one per slot), got shape {tuple(array.shape)}")
        return array.data_ptr(), array

    def _check_step(self, cond, selectors, batch: int) -> None:
        """Raises the error that names what is wrong with a step's tensors."""
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cond: expected a torch.Tensor, got {type(cond).__name__}")
        if cond.dtype not in COND_DTYPES:
            raise TypeError(f"cond: expected dtype {' or '.join(map(str, COND_DTYPES))}, got {cond.dtype}")
        shape = cond.shape
        if len(shape) != 4 or shape[0] != 2 * self._R or shape[1] != batch or shape[2] != self._L:
            raise ValueError(f"cond: expected shape (2R={2 * self._R}, len(slots)={batch}, L={self._L}, samples), "
                             f"got {tuple(shape)}")
        if cond.device != self.device:
            raise ValueError(f"cond: expected a tensor on {self.device} (the session's device), got one on {cond.device}")
        if not isinstance(selectors, torch.Tensor):
            raise TypeError(f"selectors: expected a torch.Tensor, got {type(selectors).__name__}")
        samples = shape[3]
        if selectors.dtype != torch.float32 or selectors.shape != (batch, samples):
            raise ValueError(f"selectors: expected float32 of shape (len(slots)={batch}, samples={samples}), "
                             f"got {selectors.dtype} of shape {tuple(selectors.shape)}")
        if selectors.device != self.device:
            raise ValueError(f"selectors: expected a tensor on {self.device} (the session's device), "
                             f"got one on {selectors.device}")

    def _launch(self, entry: _SlotSet, cond, code, selectors, out: _Outputs, samples: int) -> None:
        # Under stream capture (torch.cuda.graph) only stream work may be issued: no event queries,
        # no status read-back (a replayed graph's status is the caller's to check).
        capturing = torch.cuda.is_current_stream_capturing()
        if not capturing:
            self._check_status(block=False)
        positions = self._positions[entry.index]
        # Checked here: the kernels index with positions + t and cannot read them back cheaply.
        if int(positions.max()) > MAX_POSITION - samples:
            raise ValueError(f"slots: a stream at position {int(positions.max())} cannot take {samples} more samples "
                             "(the position would overflow int64)")
        p = self._params
        p.batch, p.num_samples = entry.batch, samples
        engines.set_call(p, cond, selectors, out.samples_ptr, out.samples_strides, out.logits_ptr, out.logits_strides)
        p.slots, p.positions = entry.slots_ptr, entry.positions_ptr
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            p.stream = stream.cuda_stream
            # The device copy of the positions is current while the same set runs call after call.
            if entry is not self._last:
                entry.positions.copy_(torch.from_numpy(positions).pin_memory(), non_blocking=True)
            if entry.plan is None:
                name, rule, tile, plan = engines.cuda_plan(p, self.implementation.name, self.device)
                entry.plan = (name, rule, tile, plan["workspace_bytes"])
            name, rule, p.streams_per_block, workspace_bytes = entry.plan
            if self._workspace.numel() < workspace_bytes:
                self._workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=self.device)
            p.workspace, p.workspace_bytes = self._workspace.data_ptr(), self._workspace.numel()
            engines.extension().cuda_launch(p, engines.CUDA_VARIANTS[name])
            if not capturing:  # the status block, read by a later call: nothing here waits for the kernel
                status = torch.empty(engines.STATUS_BYTES, dtype=torch.uint8, pin_memory=True)
                status.copy_(self._workspace[:engines.STATUS_BYTES], non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
                self._status_pending.append((event, status, name))
            entry.positions.add_(samples)
        self._positions[entry.index] += samples
        self._last = entry
        self.net.last_implementation, self.net.last_auto_rule = type(self.implementation)[name], rule

    def _check_status(self, block: bool) -> None:
        """Raises the error of the first finished CUDA call whose kernel reported one."""
        while self._status_pending:
            event, status, name = self._status_pending[0]
            if block:
                event.synchronize()
            elif not event.query():
                return
            self._status_pending.pop(0)
            message = engines.cuda_status_error(status, name)
            if message is not None:
                self._status_pending.clear()
                raise RuntimeError(message)

    def synchronize(self) -> None:
        """Waits for this session's CUDA work and raises a kernel's error, if one reported any."""
        if self.device.type == "cuda":
            self._check_status(block=True)

    def _decode(self, classes: torch.Tensor) -> torch.Tensor:
        """mu-law audio of ``classes``, on the device: a table of every class, made once by
        :func:`nvwavenet.audio.mu_law_decode` (so the values are its own), then a gather."""
        if self._decode_table is None:
            from .audio import mu_law_decode
            self._decode_table = mu_law_decode(torch.arange(self._A), self._A).to(self.device)
        return self._decode_table[classes.long()]
