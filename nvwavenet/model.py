"""The training model: a convolutional WaveNet whose export is exactly what the engines compute.

Constructor arguments and submodule names follow NV-WaveNet's training model (``upsample``,
``cond_layers.conv``, ``dilate_layers.N.conv``, ``res_layers.N.conv``, ``skip_layers.N.conv``,
``embed``, ``conv_out.conv``, ``conv_end.conv``), so its state dicts load as they are.

One thing differs on purpose: alignment. NV-WaveNet's training forward predicts sample ``t`` from
the network output at ``t - 1``, which saw conditioning ``t - 1``, while its inference uses
conditioning ``t``. Here the input is shifted instead of the output: position ``t`` embeds sample
``t - 1`` (``A // 2`` before the start, as in inference) and adds conditioning ``t``, so the
teacher-forced inference step equals this forward at every position (SPEC section 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .network import layer_dilations, receptive_field
from .validation import check_int

__all__ = ["WaveNet", "CausalConvRegressor"]


class Conv(nn.Module):
    """A 1-D convolution, causal (left-padded) when asked, under NV-WaveNet's ``.conv`` name."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 bias: bool = True, w_init_gain: str = "linear", is_causal: bool = False):
        super().__init__()
        self.is_causal = is_causal
        self.left_pad = dilation * (kernel_size - 1) if is_causal else 0
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias,
                              padding=0 if is_causal else dilation * (kernel_size - 1) // 2)
        nn.init.xavier_uniform_(self.conv.weight, gain=nn.init.calculate_gain(w_init_gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.left_pad, 0)) if self.left_pad else x)


def check_frames(frames, n_channels: int, name: str = "features") -> None:
    """Raise unless ``frames`` is a float tensor ``(batch, n_channels, frames)`` of mel frames."""
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor (batch, {n_channels} mel bands, frames), "
                        f"got {type(frames).__name__ if not isinstance(frames, torch.Tensor) else frames.dtype}")
    if frames.dim() != 3 or frames.shape[1] != n_channels:
        raise ValueError(f"{name}: expected shape (batch, {n_channels} mel bands, frames), got {tuple(frames.shape)}")


# Bounds on sizes that config files give, checked before anything is allocated: each size, and
# the parameter count (2^28 float32 parameters are 1 GiB; NV-WaveNet's own config has 5.6 million).
MAX_SIZE = 65536
MAX_PARAMETERS = 2**28


def _check_parameter_count(n_in_channels, n_layers, n_residual, n_skip, n_out, n_cond, upsamp_window) -> None:
    R, L = n_residual, n_layers
    counts = {"upsample (n_cond_channels^2 x upsamp_window)": n_cond * n_cond * upsamp_window,
              "cond_layers (n_cond_channels x 2 n_residual_channels x n_layers)": n_cond * 2 * R * L,
              "dilated, residual and skip layers (n_layers x n_residual_channels x (5 n_residual_channels "
              "+ n_skip_channels))": L * R * (5 * R + n_skip),
              "embedding and output (n_in_channels, n_out_channels, n_skip_channels)":
                  n_in_channels * R + n_skip * n_out + n_out * n_out}
    if sum(counts.values()) > MAX_PARAMETERS:
        largest = max(counts, key=counts.get)
        raise ValueError(f"{largest}: {counts[largest]} parameters ({sum(counts.values())} in all), more than the "
                         f"{MAX_PARAMETERS} (1 GiB of float32) that nvwavenet builds")


class WaveNet(nn.Module):
    """Deep Voice WaveNet for training, with NV-WaveNet's constructor arguments.

    ``n_in_channels``/``n_out_channels`` are the audio classes A (equal, for export), the residual
    and skip widths are R and S, and mel frames of ``n_cond_channels`` are upsampled by a
    ``ConvTranspose1d(upsamp_window, upsamp_stride)`` and mapped by a 1x1 conv to ``2R * L``
    conditioning channels (layer-major).
    """

    def __init__(self, n_in_channels: int, n_layers: int, max_dilation: int, n_residual_channels: int,
                 n_skip_channels: int, n_out_channels: int, n_cond_channels: int, upsamp_window: int,
                 upsamp_stride: int):
        super().__init__()
        for name, value in [("n_in_channels", n_in_channels), ("n_layers", n_layers),
                            ("n_residual_channels", n_residual_channels), ("n_skip_channels", n_skip_channels),
                            ("n_out_channels", n_out_channels), ("n_cond_channels", n_cond_channels),
                            ("upsamp_window", upsamp_window), ("upsamp_stride", upsamp_stride)]:
            check_int(name, value, maximum=MAX_SIZE)
        _check_parameter_count(n_in_channels, n_layers, n_residual_channels, n_skip_channels, n_out_channels,
                               n_cond_channels, upsamp_window)
        self.dilations = layer_dilations(n_layers, max_dilation)
        self.n_in_channels = n_in_channels
        self.n_layers = n_layers
        self.max_dilation = max_dilation
        self.n_residual_channels = n_residual_channels
        self.n_skip_channels = n_skip_channels
        self.n_out_channels = n_out_channels
        self.n_cond_channels = n_cond_channels
        self.upsamp_window = upsamp_window
        self.upsamp_stride = upsamp_stride
        R = n_residual_channels

        self.upsample = nn.ConvTranspose1d(n_cond_channels, n_cond_channels, upsamp_window, upsamp_stride)
        self.cond_layers = Conv(n_cond_channels, 2 * R * n_layers, w_init_gain="tanh")
        self.embed = nn.Embedding(n_in_channels, R)
        # Each class has its own embedding row, so a row is trained only when its amplitude occurs.
        # Starting the rows as a cosine basis over the class index gives neighbouring (mu-law)
        # amplitudes similar embeddings from the start: what is learned for one amplitude carries
        # over to its neighbours. Measured on the demo (three seeds, 1200 steps): log-mel distance
        # of free-running output 4.76 against 4.93 with PyTorch's N(0, 1) rows.
        with torch.no_grad():
            classes = torch.arange(n_in_channels, dtype=torch.float32)[:, None] + 0.5
            channels = torch.arange(R, dtype=torch.float32)[None, :]
            self.embed.weight.copy_(torch.cos(torch.pi * classes * channels / n_in_channels))
        self.dilate_layers = nn.ModuleList(
            Conv(R, 2 * R, kernel_size=2, dilation=d, w_init_gain="tanh", is_causal=True) for d in self.dilations)
        # The last layer's residual output would never be used.
        self.res_layers = nn.ModuleList(Conv(R, R, w_init_gain="linear") for _ in range(n_layers - 1))
        self.skip_layers = nn.ModuleList(Conv(R, n_skip_channels, w_init_gain="relu") for _ in range(n_layers))
        self.conv_out = Conv(n_skip_channels, n_out_channels, bias=False, w_init_gain="relu")
        self.conv_end = Conv(n_out_channels, n_out_channels, bias=False, w_init_gain="linear")

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.n_layers, self.max_dilation)

    def config(self) -> dict:
        """The constructor arguments, e.g. to save beside the weights."""
        return {name: getattr(self, name) for name in (
            "n_in_channels", "n_layers", "max_dilation", "n_residual_channels", "n_skip_channels",
            "n_out_channels", "n_cond_channels", "upsamp_window", "upsamp_stride")}

    def upsampled_length(self, n_frames: int) -> int:
        """Conditioning samples that ``n_frames`` mel frames upsample to."""
        return (n_frames - 1) * self.upsamp_stride + self.upsamp_window

    def check_front_end(self, mel, name: str = "mel") -> None:
        """Raise unless the mel front end ``mel`` (a MelConfig) fits this model's conditioning:
        one band per conditioning channel, and one frame per hop of ``upsamp_stride`` samples."""
        if mel.n_mels != self.n_cond_channels:
            raise ValueError(f"{name}: n_mels {mel.n_mels} (mel bands), but the model takes n_cond_channels="
                             f"{self.n_cond_channels}")
        if mel.hop_length != self.upsamp_stride:
            raise ValueError(f"{name}: hop_length {mel.hop_length} must equal the model's upsamp_stride "
                             f"{self.upsamp_stride}, so that one frame conditions one hop of samples")

    def check_audio_config(self, audio_config, name: str = "audio_config") -> None:
        """Raise unless ``audio_config`` (an AudioConfig) fits this model: one mu-law class per output
        channel, and a mel front end (when it has one) that fits :meth:`check_front_end`."""
        if audio_config.quantization_channels != self.n_out_channels:
            raise ValueError(f"{name}: quantization_channels {audio_config.quantization_channels} (mu-law classes), "
                             f"but the model has n_out_channels={self.n_out_channels}")
        if audio_config.mel is not None:
            self.check_front_end(audio_config.mel, f"{name}: mel")

    def _cond_acts(self, features: torch.Tensor, num_samples: int | None, cond_offset: int = 0) -> torch.Tensor:
        """Conditioning (batch, L, 2R, samples) from mel frames (batch, n_cond_channels, frames).

        The upsampled positions ``cond_offset`` onwards condition the samples: a training window
        passes the frames before it too, so that its conditioning equals the whole clip's.
        """
        check_frames(features, self.n_cond_channels)
        check_int("cond_offset", cond_offset, 0)
        upsampled = self.upsample(features)
        if num_samples is not None:
            if upsampled.shape[2] < cond_offset + num_samples:
                raise ValueError(
                    f"features: {features.shape[2]} frames upsample to {upsampled.shape[2]} samples, "
                    f"fewer than cond_offset {cond_offset} + the {num_samples} samples to predict")
            upsampled = upsampled[:, :, cond_offset:cond_offset + num_samples]
        acts = self.cond_layers(upsampled)
        return acts.view(acts.shape[0], self.n_layers, 2 * self.n_residual_channels, acts.shape[2])

    def get_cond_input(self, features: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """The conditioning that ``NVWaveNet.infer`` takes: ``(2R, batch, L, samples)``.

        ``samples`` is every upsampled position unless ``num_samples`` cuts it shorter.
        """
        return self._cond_acts(features, num_samples).permute(2, 0, 1, 3)

    def forward(self, features: torch.Tensor, samples: torch.Tensor, *, cond_offset: int = 0) -> torch.Tensor:
        """Logits ``(batch, A, T)``; ``logits[..., t]`` predicts ``samples[..., t]`` from
        ``samples[..., :t]`` and the conditioning at ``t`` (upsampled position ``cond_offset + t``).

        ``logits[..., t]`` reaches back to ``samples[..., t - receptive_field]``: position ``t``
        embeds sample ``t - 1``, and the dilated stack sees ``receptive_field`` positions.
        """
        if not isinstance(samples, torch.Tensor) or samples.dim() != 2:
            raise ValueError(f"samples: expected integer classes of shape (batch, T), got "
                             f"{tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__}")
        cond = self._cond_acts(features, samples.shape[1], cond_offset)  # checks features first
        if samples.shape[0] != features.shape[0]:
            raise ValueError(f"samples: expected the batch of features ({features.shape[0]}), got {samples.shape[0]}")
        start = torch.full_like(samples[:, :1], self.n_in_channels // 2)
        previous = torch.cat([start, samples[:, :-1]], dim=1).long()
        x = self.embed(previous).transpose(1, 2)
        R = self.n_residual_channels
        skip = 0
        for layer, dilate in enumerate(self.dilate_layers):
            pre = dilate(x) + cond[:, layer]
            h = torch.tanh(pre[:, :R]) * torch.sigmoid(pre[:, R:])
            if layer < self.n_layers - 1:
                x = x + self.res_layers[layer](h)
            skip = skip + self.skip_layers[layer](h)
        return self.conv_end(F.relu(self.conv_out(F.relu(skip))))

    def export_weights(self) -> dict:
        """Keyword arguments for ``NVWaveNet(**weights)`` that compute exactly this model.

        The model embeds only the previous sample, so ``embedding_prev`` is zero and there is no
        tanh after the embedding.
        """
        if self.n_in_channels != self.n_out_channels:
            raise ValueError(f"n_in_channels ({self.n_in_channels}) and n_out_channels "
                             f"({self.n_out_channels}) must be equal to export: the engines feed "
                             "each drawn class back through the embedding")
        def weights_of(modules):
            return [m.conv.weight.detach().clone() for m in modules]

        def biases_of(modules):
            return [m.conv.bias.detach().clone() for m in modules]

        return {
            "embedding_prev": torch.zeros_like(self.embed.weight.detach()),
            "embedding_curr": self.embed.weight.detach().clone(),
            "conv_out_weight": self.conv_out.conv.weight.detach().clone(),
            "conv_end_weight": self.conv_end.conv.weight.detach().clone(),
            "dilate_weights": weights_of(self.dilate_layers),
            "dilate_biases": biases_of(self.dilate_layers),
            "max_dilation": self.max_dilation,
            "res_weights": weights_of(self.res_layers),
            "res_biases": biases_of(self.res_layers),
            "skip_weights": weights_of(self.skip_layers),
            "skip_biases": biases_of(self.skip_layers),
            "use_embed_tanh": False,
        }


class CausalConvRegressor(nn.Module):
    """One causal convolution predicting a scalar signal from its past: the regression model.

    ``forward(samples)`` maps float ``(batch, T)`` to predictions ``(batch, T)``, where
    ``prediction[..., t] = bias + sum_k w_k samples[..., t - k]`` for lags ``k = 1 .. kernel_size``
    (zeros before the start). With ``kernel_size=2`` this is exactly an AR(2) model
    ``X_t = c + a X_{t-1} + b X_{t-2}``: :meth:`lag_weights` gives ``(a, b)`` and the bias ``c``.
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        check_int("kernel_size", kernel_size, maximum=MAX_SIZE)
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size)

    @property
    def receptive_field(self) -> int:
        """Past samples one prediction depends on."""
        return self.kernel_size

    def config(self) -> dict:
        return {"kernel_size": self.kernel_size}

    def lag_weights(self) -> torch.Tensor:
        """``w_k`` for lags ``k = 1 .. kernel_size`` (the conv's taps in reverse order)."""
        return self.conv.weight.detach()[0, 0].flip(0)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        if not isinstance(samples, torch.Tensor) or not samples.is_floating_point() or samples.dim() != 2:
            raise ValueError(f"samples: expected a float tensor (batch, T), got "
                             f"{tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__}")
        # Left-pad by kernel_size and drop the last sample: output t then sees samples t-k .. t-1.
        padded = F.pad(samples[:, :-1], (self.kernel_size, 0)).unsqueeze(1)
        return self.conv(padded).squeeze(1)
