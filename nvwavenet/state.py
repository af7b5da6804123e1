"""The generation state that every engine reads and updates in place.

Fast WaveNet keeps, for layer ``l``, the last ``d_l`` inputs ``x_l`` in a queue: at step ``t`` the
slot ``t mod d_l`` holds ``x_l[t - d_l]``, which the dilated convolution needs, and is then
overwritten with ``x_l[t]``. All layers' queues sit in one tensor, stream-major, so a stream's state
is one contiguous block (streams can be reset or swapped independently):

- ``queues``: ``(batch, sum(d_l), R)`` floating point; layer ``l`` owns rows
  ``[sum(d_0..d_{l-1}), sum(d_0..d_l))``. Zeros mean "before the start" (``x_l[tau < 0] = 0``).
- ``history``: ``(batch, 2)`` int32, the samples ``y_{t-2}, y_{t-1}`` (``A // 2`` at the start).
- ``position``: 0-d int64 on the CPU, the steps generated so far (it picks the slots).
"""
from __future__ import annotations

import torch

from .network import WaveNetWeights

__all__ = ["new_state", "layer_offsets", "check_state"]


def layer_offsets(dilations: list[int]) -> list[int]:
    """First queue row of each layer, and the total row count last."""
    offsets = [0]
    for dilation in dilations:
        offsets.append(offsets[-1] + dilation)
    return offsets


def new_state(weights: WaveNetWeights, batch: int, *, dtype=torch.float32, device="cpu") -> dict:
    """The state before the first sample: empty queues, history ``A // 2``, position 0."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch!r}")
    rows = layer_offsets(weights.dilations)[-1]
    return {
        "queues": torch.zeros(batch, rows, weights.n_residual, dtype=dtype, device=device),
        "history": torch.full((batch, 2), weights.n_classes // 2, dtype=torch.int32, device=device),
        "position": torch.zeros((), dtype=torch.int64),
    }


def check_state(state, weights: WaveNetWeights, batch: int, device: torch.device) -> None:
    """Raise unless ``state`` is a state of this network for ``batch`` streams on ``device``."""
    if not isinstance(state, dict) or set(state) != {"queues", "history", "position"}:
        raise TypeError("state: expected the dict made by init_state() with keys "
                        "'queues', 'history', 'position'")
    rows = layer_offsets(weights.dilations)[-1]
    expected = {"queues": (batch, rows, weights.n_residual), "history": (batch, 2), "position": ()}
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state['{key}']: expected a tensor, got {type(value).__name__}")
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
    if state["position"].dtype != torch.int64 or state["position"].device.type != "cpu":
        raise TypeError("state['position']: expected a 0-d int64 tensor on the CPU")
