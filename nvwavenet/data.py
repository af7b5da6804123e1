"""Training data: audio sources (WAV folders, synthetic signals) and receptive-field-aware windows.

Windows and the loss mask
-------------------------
A model whose prediction at position ``t`` depends on the ``H`` samples before it (``H`` is the
model's ``receptive_field``: for :class:`~nvwavenet.model.WaveNet`, ``logits[..., t]`` reads
``x_0[t - H + 1 .. t]`` and ``x_0[t]`` embeds sample ``t - 1``, so it reaches samples
``t - H .. t - 1``) is trained on windows cut from long clips:

- window ``k`` of a clip covers samples ``[k T, k T + T + H)``: consecutive windows overlap by
  exactly ``H`` samples, and ``T`` (``targets_per_window``) new samples are predicted per window;
- in a window that does not start at the beginning of the clip, positions ``t < H`` are masked out
  of the loss: their receptive field reaches before the window start, where the model sees its
  start-of-sequence input (zero padding, and for WaveNet the class ``A // 2`` at position 0)
  instead of the clip's real past. The prediction at ``t >= H`` depends only on window samples
  ``t - H .. t - 1`` and is exactly the one the model makes on the whole clip;
- the first window (``k = 0``) keeps every position: at the start of a clip the model sees what the
  inference engines see at the start of generation.

So every sample of a clip is a loss target exactly once, and always with its true context. The last
window is padded at the end (the padding masked) so that all windows have the same length.

Conditioning
------------
With a mel front end, frame ``f`` conditions samples ``[f hop, f hop + upsamp_window)`` of the
clip (:mod:`nvwavenet.mel`). A window starting at ``s`` (a multiple of ``hop``) therefore gets
the ``ceil(upsamp_window / hop) - 1`` frames before it too, zeros where they would lie before the
clip (a zero frame adds nothing to the transposed convolution, exactly as no frame does), and
passes ``cond_offset`` to the model so that its conditioning equals the whole clip's.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.signal
import torch

from .audio import AudioConfig, mu_law_encode, read_wav
from .mel import MelConfig, MelSpectrogram, mel_filterbank
from .model import CausalConvRegressor, WaveNet
from .validation import check_finite, check_int

__all__ = ["Clip", "WavFolder", "sine", "chirp", "ar2_process", "Window", "chunk_windows", "loss_mask",
           "conditioning_frames", "TrainingWindows"]


@dataclasses.dataclass(frozen=True)
class Clip:
    """Mono float32 audio with its sample rate and a name (the file path for WAVs)."""

    audio: np.ndarray
    sample_rate: int
    name: str = ""

    def __post_init__(self):
        _check_count("sample_rate", self.sample_rate)  # else duration divides by 0, resampling names orig_rate

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


class WavFolder(Sequence):
    """The ``.wav`` files under ``root`` (recursively, sorted by path), read on access as :class:`Clip`.

    ``sample_rate=None`` keeps each file's own rate; otherwise files at another rate are resampled
    (``resample_to_rate=True``) or rejected with a ``ValueError``. Several channels are averaged
    (``mix_to_mono=True``) or rejected. Errors about ``root`` itself call it ``name`` (how the
    caller's user knows it, e.g. a command-line argument).
    """

    def __init__(self, root, sample_rate: int | None = None, *, resample_to_rate: bool = True,
                 mix_to_mono: bool = True, name: str = "root"):
        if sample_rate is not None:  # else refused only when a file is read, as resample's target_rate
            _check_count("sample_rate", sample_rate)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{name}: {root} is not a directory")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
        if not self.paths:
            raise ValueError(f"{name}: no .wav files under {root}")
        self.root = root
        self.sample_rate = sample_rate
        self.resample_to_rate = resample_to_rate
        self.mix_to_mono = mix_to_mono

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path = self.paths[index]
        audio, rate = read_wav(path, self.sample_rate, resample_to_rate=self.resample_to_rate,
                               mix_to_mono=self.mix_to_mono)
        return Clip(audio, rate, os.fspath(path))


def _check_count(name: str, value, minimum: int = 1) -> int:
    """Counts and rates here may also be numpy integers (read from arrays)."""
    return check_int(name, value, minimum, types=(int, np.integer))


def _check_frequency(name: str, frequency: float, sample_rate: int) -> None:
    if not 0 <= frequency < sample_rate / 2:
        raise ValueError(f"{name}: expected a frequency in [0, {sample_rate / 2}) Hz (below Nyquist), "
                         f"got {frequency}")


def sine(frequency: float, sample_rate: int, num_samples: int, *, amplitude: float = 0.5,
         phase: float = 0.0) -> np.ndarray:
    """``amplitude * sin(2 pi frequency t + phase)``, float32."""
    sample_rate = _check_count("sample_rate", sample_rate)
    _check_frequency("frequency", frequency, sample_rate)
    t = np.arange(_check_count("num_samples", num_samples)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t + phase)).astype(np.float32)


def chirp(f0: float, f1: float, sample_rate: int, num_samples: int, *, amplitude: float = 0.5,
          method: str = "linear") -> np.ndarray:
    """A sweep from ``f0`` to ``f1`` Hz over ``num_samples`` (``method`` as in ``scipy.signal.chirp``)."""
    sample_rate = _check_count("sample_rate", sample_rate)
    _check_frequency("f0", f0, sample_rate)
    _check_frequency("f1", f1, sample_rate)
    num_samples = _check_count("num_samples", num_samples, 2)
    t = np.arange(num_samples) / sample_rate
    return (amplitude * scipy.signal.chirp(t, f0, t[-1], f1, method=method)).astype(np.float32)


def ar2_process(a: float, b: float, num_samples: int, *, c: float = 0.0, noise_std: float = 1.0,
                x0: float = 0.0, x1: float = 0.0, seed: int = 0) -> np.ndarray:
    """``X_t = c + a X_{t-1} + b X_{t-2} + e_t``, ``e_t ~ N(0, noise_std^2)``, from ``X_0 = x0``,
    ``X_1 = x1``; float32. ``b = 0`` gives an AR(1) process.

    It is stationary when ``|b| < 1`` and ``b +- a < 1``; otherwise it grows without bound.
    """
    num_samples = _check_count("num_samples", num_samples, 2)
    if not noise_std >= 0:  # numpy's own message is "scale < 0"
        raise ValueError(f"noise_std: expected a standard deviation >= 0, got {noise_std}")
    noise = np.random.default_rng(seed).normal(0.0, noise_std, num_samples)
    x = np.empty(num_samples)
    x[0], x[1] = x0, x1
    for t in range(2, num_samples):
        x[t] = c + a * x[t - 1] + b * x[t - 2] + noise[t]
    return x.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Window:
    """Samples ``[start, stop)`` of a clip; positions ``first_target .. stop - start - 1`` of the
    window are loss targets (see the module docstring)."""

    start: int
    stop: int
    first_target: int


def chunk_windows(num_samples: int, targets_per_window: int, receptive_field: int) -> list[Window]:
    """Windows of ``targets_per_window + receptive_field`` samples, overlapping by
    ``receptive_field``, whose targets cover ``[0, num_samples)`` exactly once."""
    num_samples = _check_count("num_samples", num_samples)
    step = _check_count("targets_per_window", targets_per_window)
    history = _check_count("receptive_field", receptive_field)
    length = step + history
    # Window k's targets end at (k + 1) * step + history; enough windows to reach num_samples.
    count = max(1, math.ceil((num_samples - history) / step))
    return [Window(start=k * step, stop=min(k * step + length, num_samples), first_target=0 if k == 0 else history)
            for k in range(count)]


def loss_mask(window: Window, window_length: int) -> torch.Tensor:
    """Bool ``(window_length,)``: True at the window's loss targets, False at masked positions and
    at the padding after ``stop``."""
    mask = torch.zeros(_check_count("window_length", window_length, 0), dtype=torch.bool)
    mask[window.first_target:window.stop - window.start] = True
    return mask


def conditioning_frames(num_samples: int, hop: int, upsamp_window: int) -> tuple[int, int, int]:
    """``(frames_before, num_frames, cond_offset)`` for a window of ``num_samples`` that starts at
    a frame boundary (a multiple of ``hop``).

    ``frames_before`` earlier frames overlap the window start through the upsampler, the window
    takes ``num_frames`` frames from the first of those, and its first sample is upsampled position
    ``cond_offset``.
    """
    num_samples = _check_count("num_samples", num_samples)
    hop = _check_count("hop", hop)
    upsamp_window = _check_count("upsamp_window", upsamp_window)
    frames_before = math.ceil(upsamp_window / hop) - 1
    cond_offset = frames_before * hop
    # Every frame that starts inside the window conditions it; and the frames must upsample to at
    # least cond_offset + num_samples positions (more frames than that when upsamp_window < hop).
    num_frames = max(frames_before + (num_samples - 1) // hop + 1,
                     1 + math.ceil((cond_offset + num_samples - upsamp_window) / hop))
    return frames_before, num_frames, cond_offset


def check_clip_audio(audio, name: str) -> np.ndarray:
    """``audio`` (array or tensor) as float32 samples, or a ValueError naming ``name`` unless it is
    1-D, float, not empty and finite (NaN would reach the loss, or the analysis, as garbage)."""
    audio = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{name}: expected 1-D float audio, got shape {audio.shape} dtype {audio.dtype}")
    if not audio.size:
        raise ValueError(f"{name}: empty audio")
    check_finite(name, audio)
    return audio.astype(np.float32)


def _clip_audio(clip, index: int, sample_rate: int) -> tuple[np.ndarray, str]:
    if isinstance(clip, Clip):
        if clip.sample_rate != sample_rate:
            raise ValueError(f"clips[{index}] ({clip.name}): sample rate {clip.sample_rate} Hz, "
                             f"expected {sample_rate} Hz (sample_rate)")
        audio, name = clip.audio, clip.name or f"clips[{index}]"
    else:
        audio, name = clip, f"clips[{index}]"
    return check_clip_audio(audio, name), name


class TrainingWindows(torch.utils.data.Dataset):
    """Equal-length training windows cut from ``clips`` for ``model`` (see the module docstring).

    ``clips``: a sequence of 1-D float arrays/tensors or :class:`Clip` s (e.g. a :class:`WavFolder`)
    at ``sample_rate``. What an item holds follows from ``model``:

    - :class:`~nvwavenet.model.WaveNet`: ``samples`` (int64 mu-law classes, ``model.n_in_channels``
      of them), ``mask`` (bool) and ``features`` (float ``(n_cond_channels, frames)``: the clip's
      log-mel frames when ``mel`` is given, zeros for an unconditioned model); pass
      :attr:`cond_offset` to the model's forward.
    - :class:`~nvwavenet.model.CausalConvRegressor`: ``samples`` (float, the raw values) and ``mask``.

    All clips are loaded (and their mels computed) once, here.
    """

    def __init__(self, clips, sample_rate: int, model, *, targets_per_window: int, mel: MelConfig | None = None):
        self.sample_rate = _check_count("sample_rate", sample_rate)
        self.targets_per_window = _check_count("targets_per_window", targets_per_window)
        if isinstance(model, WaveNet):
            quantization_channels = model.n_in_channels
        elif isinstance(model, CausalConvRegressor):
            quantization_channels = None
        else:
            raise TypeError(f"model: expected a nvwavenet.model.WaveNet or CausalConvRegressor, "
                            f"got {type(model).__name__}")
        self.receptive_field = model.receptive_field
        self.window_length = self.targets_per_window + self.receptive_field
        self.audio_config = AudioConfig(self.sample_rate, quantization_channels, mel)
        if mel is not None:
            self._check_mel(mel, model)
        if isinstance(model, WaveNet):
            self.frames_before, self.num_frames, self.cond_offset = conditioning_frames(
                self.window_length, model.upsamp_stride, model.upsamp_window)
            self.n_cond_channels = model.n_cond_channels
        front_end = None if mel is None else MelSpectrogram(mel)

        self.clip_samples, self.clip_features, self.clip_names, self.windows = [], [], [], []
        for index, clip in enumerate(clips):
            audio, name = _clip_audio(clip, index, self.sample_rate)
            if quantization_channels is None:
                self.clip_samples.append(torch.from_numpy(audio))
            else:
                self.clip_samples.append(torch.from_numpy(mu_law_encode(audio, quantization_channels)))
            if front_end is not None:
                if len(audio) <= mel.n_fft // 2:
                    raise ValueError(f"{name}: {len(audio)} samples, too short for the mel front end "
                                     f"(more than n_fft // 2 = {mel.n_fft // 2} needed)")
                with torch.no_grad():
                    self.clip_features.append(front_end(torch.from_numpy(audio)))
            self.clip_names.append(name)
            self.windows.extend((len(self.clip_names) - 1, w) for w in
                                chunk_windows(len(audio), self.targets_per_window, self.receptive_field))
        if not self.windows:
            raise ValueError("clips: expected at least one clip, got none")

    def _check_mel(self, mel: MelConfig, model) -> None:
        # The AudioConfig made before has checked that mel is a MelConfig at this sample rate.
        if not isinstance(model, WaveNet):
            raise ValueError("mel: only a WaveNet takes conditioning; pass mel=None for a regression model")
        model.check_front_end(mel)
        # A band narrower than the spacing of the FFT's bins catches none of them: its channel stays at
        # log(clamp_min) whatever the audio. Training still works (the model learns to ignore it), so
        # this is a warning, as librosa and torchaudio give for such filterbanks.
        fmax = mel.sample_rate / 2 if mel.fmax is None else mel.fmax
        empty = int(np.count_nonzero(mel_filterbank(mel.sample_rate, mel.n_fft, mel.n_mels, mel.fmin, fmax)
                                     .max(axis=1) == 0))
        if empty:
            warnings.warn(f"mel: {empty} of its {mel.n_mels} bands fall between the FFT's bins (n_fft {mel.n_fft}: "
                          f"{mel.sample_rate / mel.n_fft:g} Hz apart) and stay silent; a larger n_fft or fewer "
                          "n_mels would use them", stacklevel=2)
        if self.targets_per_window % mel.hop_length:
            raise ValueError(f"targets_per_window: expected a multiple of the hop length {mel.hop_length} "
                             f"(windows start on frame boundaries), got {self.targets_per_window}")

    @property
    def is_regression(self) -> bool:
        return self.audio_config.quantization_channels is None

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        clip, window = self.windows[index]
        real = self.clip_samples[clip][window.start:window.stop]
        samples = torch.full((self.window_length,), 0.0 if self.is_regression else
                             self.audio_config.quantization_channels // 2, dtype=real.dtype)
        samples[:len(real)] = real
        item = {"samples": samples, "mask": loss_mask(window, self.window_length)}
        if not self.is_regression:
            item["features"] = self._features(clip, window.start)
        return item

    def _features(self, clip: int, start: int) -> torch.Tensor:
        features = torch.zeros(self.n_cond_channels, self.num_frames)
        if self.clip_features:
            mel = self.clip_features[clip]
            first = start // self.audio_config.mel.hop_length - self.frames_before
            lo, hi = max(first, 0), min(first + self.num_frames, mel.shape[1])
            if hi > lo:
                features[:, lo - first:hi - first] = mel[:, lo:hi]
        return features
