"""The shape of the Deep Voice WaveNet (SPEC section 1) and its validated weights.

Every engine (the float64 reference, the CPU engine, the CUDA kernels) and the training model
read the network through :class:`WaveNetWeights`, so the rules of the contract (dilation pattern,
which tap multiplies which past state, the accepted argument shapes) live in this one place.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .validation import as_tensor, check_allocation, check_finite

__all__ = ["layer_dilations", "receptive_field", "WaveNetWeights"]


def _check_layers_and_dilation(n_layers: int, max_dilation: int) -> None:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers: expected an integer >= 1, got {n_layers!r}")
    if (isinstance(max_dilation, bool) or not isinstance(max_dilation, int) or max_dilation < 1
            or max_dilation & (max_dilation - 1)):
        raise ValueError(f"max_dilation: expected a power of two >= 1, got {max_dilation!r}")
    # Each stream's state holds sum(d_l) rows; a dilation of 2^20 samples is already ~45 s of audio.
    if max_dilation > 2**20:
        raise ValueError(f"max_dilation: expected at most 2^20, got {max_dilation}")


def layer_dilations(n_layers: int, max_dilation: int) -> list[int]:
    """Dilation of each layer: doubling from 1 up to ``max_dilation``, then starting over."""
    _check_layers_and_dilation(n_layers, max_dilation)
    cycle = int(math.log2(max_dilation)) + 1
    return [2 ** (layer % cycle) for layer in range(n_layers)]


def receptive_field(n_layers: int, max_dilation: int) -> int:
    """Receptive field in samples of the embedded input ``x_0``: ``1 + sum(d_l)``.

    The audio history it reaches is one sample longer when ``embedding_prev`` is non-zero,
    because ``x_0[t]`` already looks two samples back.
    """
    return 1 + sum(layer_dilations(n_layers, max_dilation))


def _float_tensor(value, name: str) -> torch.Tensor:
    """``value`` as a floating-point tensor, without copying it: its shape is checked before
    anything of its size is allocated (an expanded, zero-stride tensor of 2^40 rows costs nothing
    to make, and its float64 copy would be terabytes)."""
    tensor = as_tensor(value, name, "a tensor")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def _finite_float64(tensor: torch.Tensor, name: str) -> torch.Tensor:
    check_allocation(name, tensor.numel() * 8, "cpu", "its float64 copy")
    check_finite(name, tensor)
    return tensor.detach().to("cpu", torch.float64)


def _shaped(value, name: str, shape: tuple[int, ...], meaning: str, sources: str) -> torch.Tensor:
    """The tensor with ``shape``; a trailing conv dimension of size 1 is squeezed first.

    ``sources`` names the arguments the sizes in ``meaning`` were read from: when the two disagree,
    either may be the wrong one, so the message names both.
    """
    tensor = _float_tensor(value, name)
    if tensor.dim() == len(shape) + 1 and tensor.shape[-1] == 1:
        tensor = tensor.squeeze(-1)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} ({meaning}, sizes read from {sources}), "
                         f"got {tuple(tensor.shape)}: {name} and {sources} disagree")
    return _finite_float64(tensor, name).contiguous()


def _layer_list(value, name: str, accepted_lengths: tuple[int, ...] | None = None) -> list:
    """``value`` as a list of per-layer entries; ``None`` accepts any non-zero count.

    The accepted lengths come from ``dilate_weights``, whose length sets the layer count: when the
    two disagree, either may be the one a layer short, so the message names both.

    An array or tensor with the layers stacked along its first dimension counts as such a list
    (export code often hands over one numpy array per kind of weight).
    """
    stacked = isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 2
    if not stacked and (isinstance(value, (np.ndarray, torch.Tensor)) or not isinstance(value, Sequence)):
        raise TypeError(f"{name}: expected a list of per-layer tensors, got {type(value).__name__}")
    if accepted_lengths is None:
        if len(value) == 0:
            raise ValueError(f"{name}: expected at least one layer, got an empty list")
    elif len(value) not in accepted_lengths:
        wanted = " or ".join(str(n) for n in accepted_lengths)
        raise ValueError(f"{name}: expected {wanted} per-layer tensors (the layer count read from dilate_weights), "
                         f"got {len(value)}: {name} and dilate_weights disagree")
    return list(value)


@dataclasses.dataclass(frozen=True)
class WaveNetWeights:
    """Validated, normalised weights of one network (float64 on the CPU unless moved).

    ``dilate_w[l, :, :, 0]`` multiplies ``x_l[t - d_l]`` and ``dilate_w[l, :, :, 1]`` multiplies
    ``x_l[t]``. ``res_w`` holds L - 1 layers: the last layer's residual output is never used.
    """

    embed_prev: torch.Tensor  # A x R
    embed_curr: torch.Tensor  # A x R
    dilate_w: torch.Tensor  # L x 2R x R x 2
    dilate_b: torch.Tensor  # L x 2R
    res_w: torch.Tensor  # (L-1) x R x R
    res_b: torch.Tensor  # (L-1) x R
    skip_w: torch.Tensor  # L x S x R
    skip_b: torch.Tensor  # L x S
    out_w: torch.Tensor  # A x S
    out_b: torch.Tensor  # A
    end_w: torch.Tensor  # A x A
    end_b: torch.Tensor  # A
    max_dilation: int
    use_embed_tanh: bool

    @property
    def n_classes(self) -> int:
        return self.embed_curr.shape[0]

    @property
    def n_residual(self) -> int:
        return self.embed_curr.shape[1]

    @property
    def n_skip(self) -> int:
        return self.skip_w.shape[1]

    @property
    def n_layers(self) -> int:
        return self.dilate_w.shape[0]

    @property
    def dilations(self) -> list[int]:
        return layer_dilations(self.n_layers, self.max_dilation)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.n_layers, self.max_dilation)

    @property
    def device(self) -> torch.device:
        return self.embed_curr.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_curr.dtype

    def to(self, device=None, dtype=None) -> WaveNetWeights:
        """A copy with every tensor moved to ``device`` and cast to ``dtype``."""
        moved = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device=device, dtype=dtype)
        return WaveNetWeights(**moved)

    @classmethod
    def from_nv_wavenet_args(
        cls,
        embedding_prev,
        embedding_curr,
        conv_out_weight,
        conv_end_weight,
        dilate_weights,
        dilate_biases,
        max_dilation,
        res_weights,
        res_biases,
        skip_weights,
        skip_biases,
        use_embed_tanh,
        conv_out_bias=None,
        conv_end_bias=None,
    ) -> WaveNetWeights:
        """Check the NV-WaveNet wrapper's arguments against each other and normalise them.

        Sizes are read off ``embedding_curr`` (A x R) and ``skip_weights[0]`` (S x R), the layer
        count off ``dilate_weights``; every other argument must agree, or a ``ValueError`` names it.
        """
        curr = _finite_float64(_float_tensor(embedding_curr, "embedding_curr"), "embedding_curr")
        if curr.dim() != 2:
            raise ValueError(f"embedding_curr: expected a 2-D tensor (A x R), got shape {tuple(curr.shape)}")
        n_classes, n_residual = curr.shape
        if n_classes < 2 or n_residual < 1:
            raise ValueError(f"embedding_curr: expected A >= 2 classes and R >= 1 channels, got shape {tuple(curr.shape)}")
        prev = _shaped(embedding_prev, "embedding_prev", (n_classes, n_residual), "A x R", "embedding_curr")

        dilate_weights = _layer_list(dilate_weights, "dilate_weights")
        n_layers = len(dilate_weights)
        # numpy's integers and bools are what export code reading an .npz hands over.
        if not isinstance(max_dilation, numbers.Integral) or isinstance(max_dilation, (bool, np.bool_)):
            raise TypeError(f"max_dilation: expected an int, got {type(max_dilation).__name__}")
        max_dilation = int(max_dilation)
        _check_layers_and_dilation(n_layers, max_dilation)
        if not isinstance(use_embed_tanh, (bool, np.bool_)):
            raise TypeError(f"use_embed_tanh: expected a bool, got {type(use_embed_tanh).__name__}")
        use_embed_tanh = bool(use_embed_tanh)

        dilate_biases = _layer_list(dilate_biases, "dilate_biases", (n_layers,))
        res_weights = _layer_list(res_weights, "res_weights", (n_layers - 1, n_layers))
        res_biases = _layer_list(res_biases, "res_biases", (n_layers - 1, n_layers))
        skip_weights = _layer_list(skip_weights, "skip_weights", (n_layers,))
        skip_biases = _layer_list(skip_biases, "skip_biases", (n_layers,))

        first_skip = _float_tensor(skip_weights[0], "skip_weights[0]")
        if first_skip.dim() == 3 and first_skip.shape[-1] == 1:
            first_skip = first_skip.squeeze(-1)
        if first_skip.dim() != 2:
            raise ValueError(f"skip_weights[0]: expected a 2-D tensor (S x R), got shape {tuple(first_skip.shape)}")
        n_skip = first_skip.shape[0]
        R, S, A = n_residual, n_skip, n_classes

        def stacked(values, name, shape, meaning, sources, count):
            return torch.stack([_shaped(values[i], f"{name}[{i}]", shape, meaning, sources) for i in range(count)])

        if n_layers > 1:
            res_w = stacked(res_weights, "res_weights", (R, R), "R x R", "embedding_curr", n_layers - 1)
            res_b = stacked(res_biases, "res_biases", (R,), "R", "embedding_curr", n_layers - 1)
        else:
            res_w = torch.zeros(0, R, R, dtype=torch.float64)
            res_b = torch.zeros(0, R, dtype=torch.float64)
        out_b = (torch.zeros(A, dtype=torch.float64) if conv_out_bias is None
                 else _shaped(conv_out_bias, "conv_out_bias", (A,), "A", "embedding_curr"))
        end_b = (torch.zeros(A, dtype=torch.float64) if conv_end_bias is None
                 else _shaped(conv_end_bias, "conv_end_bias", (A,), "A", "embedding_curr"))
        return cls(
            embed_prev=prev,
            embed_curr=curr.contiguous(),
            dilate_w=torch.stack([
                _dilate_weight(dilate_weights[i], f"dilate_weights[{i}]", R) for i in range(n_layers)]),
            dilate_b=stacked(dilate_biases, "dilate_biases", (2 * R,), "2R", "embedding_curr", n_layers),
            res_w=res_w,
            res_b=res_b,
            skip_w=stacked(skip_weights, "skip_weights", (S, R), "S x R", "skip_weights[0] and embedding_curr",
                           n_layers),
            skip_b=stacked(skip_biases, "skip_biases", (S,), "S", "skip_weights[0]", n_layers),
            out_w=_shaped(conv_out_weight, "conv_out_weight", (A, S), "A x S", "embedding_curr and skip_weights[0]"),
            out_b=out_b,
            end_w=_shaped(conv_end_weight, "conv_end_weight", (A, A), "A x A", "embedding_curr"),
            end_b=end_b,
            max_dilation=max_dilation,
            use_embed_tanh=use_embed_tanh,
        )


def _dilate_weight(value, name: str, n_residual: int) -> torch.Tensor:
    tensor = _float_tensor(value, name)
    shape = (2 * n_residual, n_residual, 2)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} (2R x R x 2 kernel taps, R read from embedding_curr), "
                         f"got {tuple(tensor.shape)}: {name} and embedding_curr disagree")
    return _finite_float64(tensor, name).contiguous()
