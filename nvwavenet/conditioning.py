"""Mel frames to NVWaveNet conditioning, one hop of samples per frame, however the frames arrive.

The training model upsamples frames with a ``ConvTranspose1d(window W, stride H)`` and maps them
with a 1x1 conv to ``2R * L`` channels. Sample ``n`` receives contributions from the frames ``f``
with ``f * H <= n < f * H + W``: the hop of samples ``[q * H, (q + 1) * H)`` depends on frame
``q`` and the ``ceil(W / H) - 1`` frames before it, never on later ones. So as soon as frame
``q`` arrives, its hop of conditioning is final.

:class:`FrameConditioner` computes each hop on its own, from exactly that window of frames, with
the same tensor shapes every time. Streaming and one-shot vocoding therefore run the identical
arithmetic and give bitwise-identical conditioning, and with it identical samples (a difference
in the last bit can flip a sample drawn near a CDF boundary, after which free-running
generation diverges). Memory is one window of frames, whatever the length of the utterance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import WaveNet, check_frames
from .validation import check_finite

__all__ = ["FrameConditioner"]


class FrameConditioner:
    """Conditioning ``(2R, batch, L, H)`` per mel frame, for a trained :class:`WaveNet`."""

    def __init__(self, model: WaveNet, *, device=None, dtype: torch.dtype = torch.float32):
        if not isinstance(model, WaveNet):
            raise TypeError(f"model: expected a nvwavenet.model.WaveNet, got {type(model).__name__}")
        if model.upsamp_window < model.upsamp_stride:
            raise ValueError(f"model: upsamp_window ({model.upsamp_window}) shorter than upsamp_stride "
                             f"({model.upsamp_stride}) leaves samples no frame reaches")
        device = torch.device(device) if device is not None else model.embed.weight.device
        take = lambda t: t.detach().to(device=device, dtype=dtype)
        self.hop = model.upsamp_stride
        self.n_channels = model.n_cond_channels
        self.n_layers = model.n_layers
        self.n_residual = model.n_residual_channels
        # Earlier frames whose upsampling window still reaches into a frame's own hop.
        self.context = math.ceil(model.upsamp_window / model.upsamp_stride) - 1
        # Frame q - j reaches sample r of frame q's hop through tap r + j * H of the transposed
        # convolution. Grouping the taps that way makes a hop one product of the window's frames,
        # (C * (context + 1)) -> (C * H), instead of a full transposed convolution of the window
        # of which only one hop would be kept.
        frames_reaching = self.context + 1
        taps = F.pad(take(model.upsample.weight), (0, frames_reaching * self.hop - model.upsamp_window))
        by_frame = taps.view(self.n_channels, self.n_channels, frames_reaching, self.hop)  # [c, d, j, r]
        self.up_matrix = by_frame.permute(0, 2, 1, 3).reshape(self.n_channels * frames_reaching, -1).contiguous()
        self.up_bias = take(model.upsample.bias)
        self.cond_weight, self.cond_bias = take(model.cond_layers.conv.weight), take(model.cond_layers.conv.bias)
        self.device, self.dtype = device, dtype

    def start(self, batch: int) -> torch.Tensor:
        """The frames "before the start": zeros, as the one-shot transposed convolution implies."""
        return torch.zeros(batch, self.n_channels, self.context, device=self.device, dtype=self.dtype)

    def as_frames(self, frames, name: str = "mel") -> torch.Tensor:
        """``frames`` ``(batch, C, frames)`` on this conditioner's device and dtype, or an error naming ``name``."""
        check_frames(frames, self.n_channels, name)
        # A NaN frame's hops of conditioning would be NaN, and the samples generated from them garbage.
        check_finite(name, frames)
        return frames.to(device=self.device, dtype=self.dtype)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Conditioning for the last ``n`` of ``frames`` ``(batch, C, context + n)``: ``(2R, batch, L, n * H)``.

        The first ``context`` frames are the ones before (from :meth:`start` or the previous call).
        """
        batch, n = frames.shape[0], frames.shape[2] - self.context
        if n < 0:
            raise ValueError(f"frames: expected at least the {self.context} frames of context before the new ones, "
                             f"got {frames.shape[2]}")
        acts = torch.empty(batch, self.cond_weight.shape[0], n * self.hop, device=self.device, dtype=self.dtype)
        for q in range(n):
            newest_first = frames[:, :, q:q + self.context + 1].flip(2).reshape(batch, -1)  # [c, j]
            own_hop = (newest_first @ self.up_matrix).view(batch, self.n_channels, self.hop) + self.up_bias[:, None]
            acts[:, :, q * self.hop:(q + 1) * self.hop] = F.conv1d(own_hop, self.cond_weight, self.cond_bias)
        # (batch, L * 2R, samples) is layer-major, as the training model lays it out.
        return acts.view(batch, self.n_layers, 2 * self.n_residual, -1).permute(2, 0, 1, 3)
