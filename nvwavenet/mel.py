"""The mel-spectrogram front end that conditions the vocoder, in PyTorch.

The defaults are Tacotron 2's (sample rate 22050 Hz, n_fft 1024, hop 256, window 1024, 80 bands
from 0 to 8000 Hz, ``log(clamp(x, 1e-5))`` of the magnitude), so mels from a Tacotron 2 style TTS
model condition a vocoder trained on this front end:

- STFT: periodic Hann window of ``win_length`` centred in ``n_fft``, the signal reflect-padded by
  ``n_fft // 2`` on each side (``center=True``), magnitude (not power) of each bin;
- mel filterbank: Slaney's mel scale (linear below 1 kHz, logarithmic above) and Slaney's area
  normalisation (each triangle scaled by ``2 / bandwidth``), as librosa's default ``filters.mel``;
- log compression: natural log of the mel magnitudes clamped below at ``clamp_min``.

Alignment with the training model: ``T`` samples give ``1 + T // hop_length`` frames, and frame
``k`` describes the audio centred on sample ``k * hop_length``. ``nvwavenet.model.WaveNet``
upsamples with a transposed convolution of stride ``upsamp_stride`` (which must equal
``hop_length``) and width ``upsamp_window``, so frame ``k`` conditions samples
``[k * hop, k * hop + upsamp_window)``; the ``1 + T // hop`` frames upsample to
``(T // hop) * hop + upsamp_window`` positions, at least ``T`` when ``upsamp_window >= hop``.
The vocoder generates one hop per frame, so ``F`` frames give ``F * hop`` samples: the ``T`` they
were computed from and up to one hop more. :class:`nvwavenet.data.TrainingWindows` cuts training
windows so that their conditioning equals, sample for sample, that of the whole clip.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers

import numpy as np
import torch
from torch import nn

from .validation import MAX_SAMPLE_RATE, check_fields, check_finite, check_int

__all__ = ["MelConfig", "MelSpectrogram", "mel_filterbank", "hz_to_mel", "mel_to_hz", "load_mel_npy", "read_npy_header"]

# Slaney's mel scale: linear (200/3 Hz per mel) up to 1 kHz, then logarithmic, 27 mels per
# factor 6.4 in frequency.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz):
    """Slaney mel of frequencies ``hz`` (array or float)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    logarithmic = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mel):
    """Frequencies in Hz of Slaney mels ``mel``, the inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    logarithmic = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, logarithmic, linear)


def _check_band(fmin, fmax, sample_rate: int) -> None:
    """Raise unless ``0 <= fmin < fmax <= sample_rate / 2`` (NaN fails too): an empty or inverted
    band divides by zero widths and gives NaN filters."""
    nyquist = sample_rate / 2
    if not fmax <= nyquist:
        raise ValueError(f"fmax: expected at most the Nyquist frequency ({nyquist} Hz), got {fmax}")
    if not 0 <= fmin < fmax:
        raise ValueError(f"fmin: expected 0 <= fmin < fmax ({fmax} Hz), got {fmin}")


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular filters, float64 ``(n_mels, n_fft // 2 + 1)``.

    Band ``i`` rises from edge ``i`` to edge ``i + 1`` and falls to edge ``i + 2`` of
    ``n_mels + 2`` edges equally spaced in mel between ``fmin`` and ``fmax``.
    """
    for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("n_mels", n_mels)):
        check_int(name, value)
    _check_band(fmin, fmax, sample_rate)
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    distance = edges[:, None] - bins[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Parameters of :class:`MelSpectrogram`; the defaults are Tacotron 2's.

    ``fmax=None`` means the Nyquist frequency.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    clamp_min: float = 1e-5

    def __post_init__(self):
        # Bounds far above any speech front end, checked before the filterbank (n_mels x n_fft / 2)
        # and window are allocated from sizes a config file gave.
        maxima = {"sample_rate": MAX_SAMPLE_RATE, "n_fft": 2**16, "hop_length": 2**16, "win_length": 2**16,
                  "n_mels": 512}
        for name, maximum in maxima.items():
            check_int(name, getattr(self, name), maximum=maximum)
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length: expected at most n_fft ({self.n_fft}), got {self.win_length}")
        # Hand-edited JSON gives strings, which would fail below in a comparison naming nothing.
        for name in ("fmin", "fmax", "clamp_min"):
            value = getattr(self, name)
            if not (name == "fmax" and value is None) and (isinstance(value, bool)
                                                           or not isinstance(value, numbers.Real)):
                raise TypeError(f"{name}: expected a number, got {value!r}")
        _check_band(self.fmin, self.sample_rate / 2 if self.fmax is None else self.fmax, self.sample_rate)
        # log(inf) would make every mel inf; mels are float32, and torch.clamp fails on a floor
        # beyond its range without naming clamp_min.
        if not 0 < self.clamp_min <= torch.finfo(torch.float32).max:
            raise ValueError(f"clamp_min: expected a positive floor for the log within float32's range, "
                             f"got {self.clamp_min}")

    @classmethod
    def tacotron2(cls) -> MelConfig:
        """Tacotron 2 / NV-WaveNet's front end: 22050 Hz, n_fft 1024, hop 256, 80 bands to 8 kHz."""
        return cls()

    def num_frames(self, num_samples: int) -> int:
        """Frames that ``num_samples`` samples give (``center=True``)."""
        return 1 + check_int("num_samples", num_samples, 0, types=(int, np.integer)) // self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> MelConfig:
        check_fields("mel config", values, cls)
        return cls(**values)


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram: float audio ``(samples,)`` or ``(batch, samples)`` in [-1, 1] ->
    ``(n_mels, frames)`` or ``(batch, n_mels, frames)``, ``frames = 1 + samples // hop_length``.
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = MelConfig() if config is None else config
        if not isinstance(self.config, MelConfig):
            raise TypeError(f"config: expected a MelConfig, got {type(self.config).__name__}")
        c = self.config
        fmax = c.sample_rate / 2 if c.fmax is None else c.fmax
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=True), persistent=False)
        self.register_buffer("filterbank", torch.from_numpy(
            mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.fmin, fmax)).float(), persistent=False)
        # |STFT| <= sum(window) for audio in [-1, 1], so no mel exceeds this: a floor at or above it
        # makes every mel the floor. (A band holding no FFT bin gives 0, and every mel the floor
        # whatever clamp_min is.)
        largest = float(self.filterbank.sum(dim=1).max()) * float(self.window.sum())
        if largest > 0 and not c.clamp_min < largest:
            raise ValueError(f"clamp_min: expected a floor below {largest:.4g}, the largest mel magnitude audio in "
                             f"[-1, 1] reaches with this config, got {c.clamp_min!r}")

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
            raise TypeError(f"audio: expected a float tensor, got "
                            f"{audio.dtype if isinstance(audio, torch.Tensor) else type(audio).__name__}")
        if audio.dim() not in (1, 2) or (audio.dim() == 2 and audio.shape[0] == 0):
            raise ValueError(f"audio: expected shape (samples,) or (batch >= 1, samples), got {tuple(audio.shape)}")
        check_finite("audio", audio)  # NaN or infinite samples would give NaN or infinite mels
        c = self.config
        # Reflect padding needs more samples than the padding itself.
        if audio.shape[-1] <= c.n_fft // 2:
            raise ValueError(f"audio: expected more than n_fft // 2 = {c.n_fft // 2} samples, "
                             f"got {audio.shape[-1]}")
        spectrum = torch.stft(audio.float(), c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                              window=self.window, center=True, pad_mode="reflect", return_complex=True)
        mel = torch.matmul(self.filterbank, spectrum.abs())
        return torch.log(torch.clamp(mel, min=float(c.clamp_min)))  # an int floor beyond int64 fails in clamp


def read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` header declares, ``f`` left at the start of the data; a
    ValueError for a format version other than those ``np.save`` writes for numeric arrays."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
    return shape, dtype


def _check_npy_header(f, n_mels: int, name: str) -> None:
    """Refuse, from the header alone, a ``.npy`` whose array is not float mel frames or is larger
    than the file: numpy allocates the shape a header declares before reading (a 40-byte file that
    declares (80, 10^15) raised MemoryError)."""
    shape, dtype = read_npy_header(f)
    # Integers, booleans and complex numbers would be cast to float frames without a word.
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name}: expected float mel frames, got dtype {dtype}")
    if len(shape) != 2 or shape[0] != n_mels or shape[1] == 0:
        raise ValueError(f"{name}: expected a mel of shape ({n_mels} bands, frames >= 1), got {shape}")
    declared = math.prod(shape) * dtype.itemsize
    position = f.tell()
    available = f.seek(0, 2) - position
    if declared > available:
        raise ValueError(f"{name}: its .npy header declares shape {shape} of {dtype} ({declared} bytes), "
                         f"the file holds {available} bytes of data")


def load_mel_npy(source, n_mels: int, name: str) -> torch.Tensor:
    """A mel ``(n_mels, frames >= 1)`` from a ``.npy`` file or seekable file object: float32 in
    native byte order, finite. Every refusal is a ValueError that starts with ``name`` (what the
    user gave), and the header is checked against the file's size before anything is allocated."""
    try:
        with contextlib.ExitStack() as stack:
            f = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
            start = f.tell()
            _check_npy_header(f, n_mels, name)
            f.seek(start)
            array = np.load(f, allow_pickle=False)
    except (OSError, EOFError) as error:  # numpy's own messages do not name the source
        raise ValueError(f"{name}: not a readable .npy array ({error})") from error
    except ValueError as error:
        if str(error).startswith(f"{name}: "):
            raise
        raise ValueError(f"{name}: not a readable .npy array ({error})") from error
    mel = torch.from_numpy(array.astype(np.float32))  # native float32 whatever the source's byte order
    check_finite(name, mel)
    return mel
