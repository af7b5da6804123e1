"""The generation state that every engine reads and updates in place.

Fast WaveNet keeps, for layer ``l``, the last ``d_l`` inputs ``x_l`` in a queue: at step ``t`` the
slot ``t mod d_l`` holds ``x_l[t - d_l]``, which the dilated convolution needs, and is then
overwritten with ``x_l[t]``. All layers' queues sit in one tensor, stream-major, so a stream's state
is one contiguous block (streams can be reset or swapped independently):

- ``queues``: ``(batch, sum(d_l), R)`` floating point; layer ``l`` owns rows
  ``[sum(d_0..d_{l-1}), sum(d_0..d_l))``. Zeros mean "before the start" (``x_l[tau < 0] = 0``).
- ``history``: ``(batch, 2)`` int32, the samples ``y_{t-2}, y_{t-1}`` (``A // 2`` at the start).
- ``position``: 0-d int64 on the CPU, the steps generated so far (it picks the slots).

A state is a plain dict of tensors: ``copy_state`` clones it, ``save_state``/``load_state`` write and
read it as safetensors (no pickle). Streams can join and leave a running batch: ``reset_streams``
restarts some streams in place, ``select_streams`` keeps a subset, ``concat_states`` joins states
made at different positions (their queues are rotated to a common position first).
"""
from __future__ import annotations

import numbers

import torch

from .checkpoint import read_safetensors, write_safetensors
from .network import WaveNetWeights
from .validation import check_allocation, check_finite, check_int

# The largest position a state can reach: ``position + samples`` must stay an int64.
MAX_POSITION = 2**63 - 1

__all__ = ["new_state", "layer_offsets", "check_state", "copy_state", "save_state", "load_state",
           "reset_streams", "select_streams", "concat_states", "move_to_position"]

_KEYS = ("queues", "history", "position")


def layer_offsets(dilations: list[int]) -> list[int]:
    """First queue row of each layer, and the total row count last."""
    offsets = [0]
    for dilation in dilations:
        offsets.append(offsets[-1] + dilation)
    return offsets


def new_state(weights: WaveNetWeights, batch: int, *, dtype=torch.float32, device="cpu") -> dict:
    """The state before the first sample: empty queues, history ``A // 2``, position 0."""
    check_int("batch_size", batch)
    rows = layer_offsets(weights.dilations)[-1]
    check_allocation("batch_size", batch * rows * weights.n_residual * torch.finfo(dtype).bits // 8, device,
                     f"a state for {batch} streams")
    state = {
        "queues": torch.zeros(batch, rows, weights.n_residual, dtype=dtype, device=device),
        "history": torch.full((batch, 2), weights.n_classes // 2, dtype=torch.int32, device=device),
        "position": torch.zeros((), dtype=torch.int64),
    }
    _mark_verified(state["queues"])  # valid by construction
    _mark_verified(state["history"], weights.n_classes)
    return state


def _check_keys(state, name: str = "state") -> dict:
    """``state`` if it is a dict of tensors under the keys that :func:`new_state` makes."""
    if not isinstance(state, dict) or set(state) != set(_KEYS):
        raise TypeError(f"{name}: expected the dict made by init_state() with keys "
                        "'queues', 'history', 'position'")
    for key in _KEYS:
        if not isinstance(state[key], torch.Tensor):
            raise TypeError(f"{name}['{key}']: expected a tensor, got {type(state[key]).__name__}")
    return state


def check_state(state, weights: WaveNetWeights, batch: int, device: torch.device, *, samples: int = 0) -> None:
    """Raise unless ``state`` is a state of this network for ``batch`` streams on ``device``, from
    which ``samples`` more steps can be generated."""
    _check_keys(state)
    rows = layer_offsets(weights.dilations)[-1]
    expected = {"queues": (batch, rows, weights.n_residual), "history": (batch, 2), "position": ()}
    for key, shape in expected.items():
        value = state[key]
        if tuple(value.shape) != shape:
            raise ValueError(f"state['{key}']: expected shape {shape} for this network and a batch of "
                             f"{batch}, got {tuple(value.shape)}")
    for key in ("queues", "history"):
        if state[key].device != device:
            raise ValueError(f"state['{key}']: expected a tensor on {device} like cond_input, "
                             f"got one on {state[key].device}")
    if not state["queues"].is_floating_point():
        raise TypeError(f"state['queues']: expected a floating-point tensor, got {state['queues'].dtype}")
    if state["history"].dtype != torch.int32:
        raise TypeError(f"state['history']: expected int32, got {state['history'].dtype}")
    history = state["history"]
    # The CUDA kernels look the history up in the embeddings unchecked: a state of another network
    # (a larger A) would read outside them.
    if not _verified(history, weights.n_classes):
        if history.numel() and not bool(((history >= 0) & (history < weights.n_classes)).all()):
            raise ValueError(f"state['history']: expected classes in [0, {weights.n_classes}) for this network, "
                             f"got values from {int(history.min())} to {int(history.max())}")
        _mark_verified(history, weights.n_classes)
    if state["position"].dtype != torch.int64 or state["position"].device.type != "cpu":
        raise TypeError("state['position']: expected a 0-d int64 tensor on the CPU")
    # The engines index slots with position + t: past the int64 range that is undefined behaviour
    # (a memory error in the CPU engine under AddressSanitizer).
    position = int(state["position"])
    if not 0 <= position <= MAX_POSITION - samples:
        raise ValueError(f"state['position']: expected a step count in [0, 2^63 - 1 - {samples}] so that {samples} "
                         f"more samples keep it an int64, got {position}")
    # Generation keeps every queue entry finite (tanh and sigmoid bound each update): a non-finite
    # one is a damaged state, and would turn that stream's output into garbage.
    if not _verified(state["queues"]):
        check_finite("state['queues']", state["queues"])
        _mark_verified(state["queues"])


# The values of a state are checked where it enters (a state made elsewhere, a loaded one), not on
# every call: a tensor remembers the version counter it was checked at. Engines write the queues
# and history through raw pointers, which leaves the counter as it was; any PyTorch write to them
# (an edit by the user, copy_, index_fill_) moves it, and the next check_state scans again.
def _verified(tensor: torch.Tensor, tag=None) -> bool:
    try:
        return getattr(tensor, "_nvwavenet_verified", None) == (tensor._version, tag)
    except RuntimeError:  # inference-mode tensors have no version counter
        return False


def _mark_verified(tensor: torch.Tensor, tag=None) -> None:
    try:
        tensor._nvwavenet_verified = (tensor._version, tag)
    except RuntimeError:
        pass


def copy_state(state: dict) -> dict:
    """An independent copy (generation from it does not touch the original)."""
    _check_keys(state)
    return {key: state[key].clone() for key in _KEYS}


def save_state(state: dict, path) -> None:
    """Write ``state`` to ``path`` as safetensors."""
    _check_keys(state)
    write_safetensors(path, {key: state[key] for key in _KEYS}, name="path")


def load_state(path, device="cpu") -> dict:
    """Read a state written by :func:`save_state` onto ``device`` (position stays on the CPU)."""
    loaded = read_safetensors(path, "path")
    if set(loaded) != set(_KEYS):
        raise ValueError(f"path: {path} does not hold a generation state (keys {sorted(loaded)})")
    if loaded["queues"].is_floating_point():
        check_finite(f"path: {path}: its queues", loaded["queues"])
    return {"queues": loaded["queues"].to(device), "history": loaded["history"].to(device),
            "position": loaded["position"]}


def _stream_index(streams, batch: int, device) -> torch.Tensor:
    """``streams`` (an int, a sequence of ints or an integer tensor) as a flat long index."""
    try:
        index = torch.as_tensor(streams).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        index = None
    # as_tensor(..., dtype=long) would truncate 1.5 to stream 1 and take True for stream 1.
    if index is None or (index.numel() and (index.is_floating_point() or index.is_complex()
                                            or index.dtype == torch.bool)):
        raise TypeError(f"streams: expected stream indices (an int, ints or an integer tensor), got {streams!r}")
    index = index.long()
    if index.numel() and (index.min() < 0 or index.max() >= batch):
        raise ValueError(f"streams: expected stream indices in [0, {batch}), got {index.tolist()}")
    return index.to(device)


def reset_streams(state: dict, streams, n_classes: int) -> None:
    """Restart ``streams`` in place, as if they had just joined: empty queues, history ``A // 2``.

    Their slot positions need no change: an empty queue reads as zeros from any slot.
    """
    index = _stream_index(streams, _check_keys(state)["queues"].shape[0], state["queues"].device)
    state["queues"].index_fill_(0, index, 0.0)
    state["history"].index_fill_(0, index, n_classes // 2)


def select_streams(state: dict, streams) -> dict:
    """A new state holding only ``streams`` (in that order), e.g. when others have finished."""
    index = _stream_index(streams, _check_keys(state)["queues"].shape[0], state["queues"].device)
    return {"queues": state["queues"].index_select(0, index), "history": state["history"].index_select(0, index),
            "position": state["position"].clone()}


def move_to_position(state: dict, position: int, dilations: list[int]) -> dict:
    """An equivalent state whose position is ``position``.

    Layer ``l``'s slot ``p mod d_l`` holds what the next step reads; rolling each queue by the
    change of position keeps every entry where the new position will look for it.
    """
    shift = check_int("position", position, 0, types=(numbers.Integral,)) - int(_check_keys(state)["position"])
    queues = state["queues"].clone()
    offsets = layer_offsets(dilations)
    for start, dilation in zip(offsets[:-1], dilations):
        queues[:, start:start + dilation] = torch.roll(queues[:, start:start + dilation], shift % dilation, dims=1)
    return {"queues": queues, "history": state["history"].clone(),
            "position": torch.tensor(int(position), dtype=torch.int64)}


def concat_states(states: list[dict], dilations: list[int]) -> dict:
    """One state holding every stream of ``states``, at the first state's position."""
    if not isinstance(states, (list, tuple)):
        raise TypeError(f"states: expected a list of states, got {type(states).__name__}")
    if not states:
        raise ValueError("states: expected at least one state")
    for i, state in enumerate(states):
        if _check_keys(state, f"states[{i}]")["queues"].shape[1:] != states[0]["queues"].shape[1:]:
            raise ValueError(f"states[{i}]: expected queues of shape (batch, {', '.join(map(str, states[0]['queues'].shape[1:]))}) "
                             f"like states[0] (one network), got {tuple(state['queues'].shape)}")
    position = int(states[0]["position"])
    aligned = [move_to_position(state, position, dilations) for state in states]
    return {"queues": torch.cat([s["queues"] for s in aligned]), "history": torch.cat([s["history"] for s in aligned]),
            "position": torch.tensor(position, dtype=torch.int64)}
