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

In float32 on the CPU (and on CUDA) the sums run in the compiled module (``csrc/conditioning.h``):
every output is one chain of fused multiply-adds over its inputs in input order, computed by one
thread. A stream's conditioning, and so its audio, is then the same whichever streams share the
call, in whatever order, and whatever ``torch.get_num_threads()`` or :attr:`FrameConditioner.num_threads`
is; PyTorch's own products (the path taken for other dtypes, and without the compiled module)
split their sums differently by thread count. A call conditions many streams at once, each with
its own number of new frames (``counts``), so a server makes one call per turn.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import engines
from .model import WaveNet, check_frames
from .validation import check_finite, check_int

__all__ = ["FrameConditioner"]


class FrameConditioner:
    """Conditioning ``(2R, batch, L, H)`` per mel frame, for a trained :class:`WaveNet`."""

    def __init__(self, model: WaveNet, *, device=None, dtype: torch.dtype = torch.float32, num_threads: int = 0):
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
        # Threads of the compiled path (0: every CPU); they change its speed, never its results.
        self.num_threads = check_int("num_threads", num_threads, minimum=0)
        self._compiled = dtype == torch.float32 and engines.has_extension() and (
            device.type == "cpu" or (device.type == "cuda" and hasattr(engines.extension(), "condition_cuda")))
        if self._compiled:
            # The compiled layout (csrc/conditioning.h): upsampling rows d * H + r (channel d, hop
            # sample r) over inputs c * (context + 1) + j (channel c of the frame j back).
            upsampling = by_frame.permute(1, 3, 0, 2).reshape(self.n_channels * self.hop, -1)
            self._up_w = _blocked(upsampling)
            self._up_b = _padded(self.up_bias.repeat_interleave(self.hop))
            self._proj_w = self.cond_weight[:, :, 0].contiguous()
            self._proj_b = self.cond_bias.contiguous()

    def start(self, batch: int) -> torch.Tensor:
        """The frames "before the start": zeros, as the one-shot transposed convolution implies."""
        return torch.zeros(batch, self.n_channels, self.context, device=self.device, dtype=self.dtype)

    def as_frames(self, frames, name: str = "mel") -> torch.Tensor:
        """``frames`` ``(batch, C, frames)`` on this conditioner's device and dtype, or an error naming ``name``."""
        check_frames(frames, self.n_channels, name)
        # A NaN frame's hops of conditioning would be NaN, and the samples generated from them garbage.
        check_finite(name, frames)
        return frames.to(device=self.device, dtype=self.dtype)

    def __call__(self, frames: torch.Tensor, counts: list[int] | None = None, *,
                 buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning for the last ``n`` of ``frames`` ``(batch, C, context + n)``: ``(2R, batch, L, n * H)``.

        The first ``context`` frames are the ones before (from :meth:`start` or the previous call).
        ``counts``: stream ``b``'s new frames are its first ``counts[b] <= n`` after the context;
        only its first ``counts[b] * H`` samples are defined (the compiled path computes only
        those, the PyTorch path all of them from whatever frames follow).

        ``buffer``: a 1-D float32 tensor on this device that the compiled path writes the result
        into when it is large enough (the result is then a view of it, valid until the buffer is
        reused): an engine loop that keeps one saves allocating, and faulting in, the largest
        tensor of each turn (3 MB a frame at R64 L20 hop 300).
        """
        batch, n = frames.shape[0], frames.shape[2] - self.context
        if n < 0:
            raise ValueError(f"frames: expected at least the {self.context} frames of context before the new ones, "
                             f"got {frames.shape[2]}")
        if counts is not None and (len(counts) != batch or any(not 0 <= c <= n for c in counts)):
            raise ValueError(f"counts: expected {batch} frame counts in [0, {n}], got {counts}")
        acts = self._compiled_call(frames, n, counts, buffer) if self._compiled else self._torch_call(frames, n)
        # (batch, L * 2R, samples) is layer-major, as the training model lays it out.
        return acts.view(batch, self.n_layers, 2 * self.n_residual, -1).permute(2, 0, 1, 3)

    def _compiled_call(self, frames: torch.Tensor, n: int, counts: list[int] | None,
                       buffer: torch.Tensor | None) -> torch.Tensor:
        extension = engines.extension()
        batch = frames.shape[0]
        frames = frames.to(device=self.device, dtype=torch.float32)
        shape = (batch, self.cond_weight.shape[0], n * self.hop)
        size = math.prod(shape)
        if (buffer is not None and buffer.dim() == 1 and buffer.dtype == torch.float32
                and buffer.device == self.device and buffer.numel() >= size):
            acts = buffer[:size].view(shape)
        else:
            acts = torch.empty(shape, device=self.device, dtype=torch.float32)
        if acts.numel() == 0:
            return acts
        p, counts = self.compiled_params(frames, n, counts, acts)
        if self.device.type == "cpu":
            extension.condition_cpu(p)
            return acts
        p.stream = torch.cuda.current_stream(self.device).cuda_stream
        workspace = torch.empty(extension.cuda_condition_workspace_bytes(p), dtype=torch.uint8, device=self.device)
        p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
        extension.condition_cuda(p)
        # frames, counts and workspace may be freed now: the caching allocator hands their memory
        # only to work queued after these kernels on this stream.
        return acts

    def compiled_params(self, frames: torch.Tensor, n: int, counts: list[int] | None, acts: torch.Tensor):
        """The compiled call's ``CondParams`` for float32 ``frames`` into ``acts`` ``(batch, 2R * L,
        n * H)``, and the counts tensor it points at (keep it alive until the call has run). The
        host build's test runs conditioning.cu's kernels on the very same arguments."""
        p = engines.extension().CondParams()
        p.batch, p.max_frames, p.channels, p.context, p.hop = frames.shape[0], n, self.n_channels, self.context, self.hop
        p.rows = self.cond_weight.shape[0]
        p.frames = frames.data_ptr()
        p.frames_stride_batch, p.frames_stride_channel, p.frames_stride_time = frames.stride()
        p.up_w, p.up_b = self._up_w.data_ptr(), self._up_b.data_ptr()
        p.proj_w, p.proj_b = self._proj_w.data_ptr(), self._proj_b.data_ptr()
        p.out = acts.data_ptr()
        p.out_stride_batch, p.out_stride_row = acts.stride(0), acts.stride(1)
        p.num_threads = self.num_threads
        if counts is not None:
            counts = torch.tensor(counts, dtype=torch.int32, device=self.device)
            p.counts = counts.data_ptr()
        return p, counts

    def _torch_call(self, frames: torch.Tensor, n: int) -> torch.Tensor:
        batch = frames.shape[0]
        acts = torch.empty(batch, self.cond_weight.shape[0], n * self.hop, device=self.device, dtype=self.dtype)
        for q in range(n):
            newest_first = frames[:, :, q:q + self.context + 1].flip(2).reshape(batch, -1)  # [c, j]
            own_hop = (newest_first @ self.up_matrix).view(batch, self.n_channels, self.hop) + self.up_bias[:, None]
            acts[:, :, q * self.hop:(q + 1) * self.hop] = F.conv1d(own_hop, self.cond_weight, self.cond_bias)
        return acts


def _padded(vector: torch.Tensor) -> torch.Tensor:
    """``vector`` with zeros up to a multiple of 8 (the compiled path's blocks of rows)."""
    return F.pad(vector, (0, -vector.shape[0] % 8)).contiguous()


def _blocked(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (rows, K) in blocks of 8 rows, element (row, k) at ``((row // 8) * K + k) * 8 + row % 8``."""
    rows, k = matrix.shape
    padded = F.pad(matrix, (0, 0, 0, -rows % 8))
    return padded.view(-1, 8, k).transpose(1, 2).contiguous()
