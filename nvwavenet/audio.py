"""Audio in and out: mu-law companding, WAV files, resampling.

Every function takes both ``torch.Tensor`` and ``numpy.ndarray`` input where that makes sense and
returns the same kind it was given, so training code (tensors) and analysis code (arrays) share it.
Audio is float in [-1, 1]; mu-law classes are integers in [0, quantization_channels).
"""
from __future__ import annotations

import dataclasses
import math
import os
import struct
import warnings
from fractions import Fraction

import numpy as np
import scipy.io.wavfile
import scipy.signal
import torch

from .mel import MelConfig
from .validation import MAX_SAMPLE_RATE, check_fields, check_finite, check_int

__all__ = ["AudioConfig", "AudioConversionWarning", "mu_law_encode", "mu_law_decode", "read_wav", "write_wav",
           "resample", "to_pcm"]


class AudioConversionWarning(UserWarning):
    """:func:`read_wav` mixed channels to mono or resampled: the audio is not what the file holds.
    The message names no file, so Python's default filter says it once per kind of conversion."""


def _check_channels(quantization_channels) -> int:
    return check_int("quantization_channels", quantization_channels, 2)


def mu_law_encode(x, quantization_channels: int = 256):
    """Mu-law classes of audio ``x`` (finite floats, nominally in [-1, 1]; values outside are clipped).

    ``mu = Q - 1``, ``f = sign(x) log1p(mu |x|) / log1p(mu)``, class ``floor((f + 1) / 2 * mu + 0.5)``.
    A tensor gives an int64 tensor, an array an int64 array, of ``x``'s shape.
    """
    mu = _check_channels(quantization_channels) - 1
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"x: expected floating-point audio, got dtype {x.dtype}")
        check_finite("x", x)  # NaN would become class -2^63
        # float64 so that the class boundaries do not move with the input precision.
        x = x.to(torch.float64).clamp(-1.0, 1.0)
        f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
        return torch.floor((f + 1) / 2 * mu + 0.5).to(torch.int64)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x: expected floating-point audio, got dtype {x.dtype}")
    check_finite("x", x)
    x = np.clip(x.astype(np.float64), -1.0, 1.0)
    f = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    return np.floor((f + 1) / 2 * mu + 0.5).astype(np.int64)


def mu_law_decode(q, quantization_channels: int = 256):
    """Audio (float32 in [-1, 1]) of mu-law classes ``q``, the inverse of :func:`mu_law_encode`.

    A tensor gives a float32 tensor, an array a float32 array. Classes outside
    [0, quantization_channels) raise ``ValueError``.
    """
    channels = _check_channels(quantization_channels)
    mu = channels - 1
    is_tensor = isinstance(q, torch.Tensor)
    q64 = q.detach().cpu().numpy() if is_tensor else np.asarray(q)
    if not (np.issubdtype(q64.dtype, np.integer) or np.issubdtype(q64.dtype, np.floating)):
        raise TypeError(f"q: expected integer mu-law classes, got dtype {q64.dtype}")
    # Float classes are taken when they are whole numbers; 1.5 (or NaN) is no class.
    fractional = q64[q64 != np.round(q64)] if np.issubdtype(q64.dtype, np.floating) else q64[:0]
    if fractional.size:
        raise ValueError(f"q: expected whole-number classes, got {fractional.size} values that are not, "
                         f"such as {fractional.flat[0]}")
    if q64.size and (q64.min() < 0 or q64.max() > mu):
        raise ValueError(f"q: expected classes in [0, {mu}], got values in [{q64.min()}, {q64.max()}]")
    f = 2 * q64.astype(np.float64) / mu - 1
    x = (np.sign(f) * np.expm1(np.abs(f) * math.log1p(mu)) / mu).astype(np.float32)
    return torch.from_numpy(x).to(q.device) if is_tensor else x


# The largest term of the reduced ratio between two rates that resample() takes (see there).
MAX_RATIO_TERM = 2**16


def resample(audio, orig_rate: int, target_rate: int):
    """``audio`` (last axis is time) from ``orig_rate`` to ``target_rate`` Hz, polyphase filtered.

    Tensors in, tensors out (float32); arrays in, float32 arrays out.
    """
    for name, rate in (("orig_rate", orig_rate), ("target_rate", target_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
            raise ValueError(f"{name}: expected a positive integer sample rate in Hz, got {rate!r}")
        # The polyphase filter has 20 taps per step of the reduced ratio: bounded by the rates.
        check_int(name, rate, types=(int, np.integer), maximum=MAX_SAMPLE_RATE)
    is_tensor = isinstance(audio, torch.Tensor)
    array = audio.detach().cpu().numpy() if is_tensor else np.asarray(audio)
    # Integer PCM would come back unscaled as if it were float audio, complex without its
    # imaginary part, and NaN would spread over the filter's length.
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"audio: expected floating-point audio, got dtype {array.dtype}")
    if array.ndim < 1:
        raise ValueError(f"audio: expected samples along the last axis, got a scalar of shape {array.shape}")
    check_finite("audio", array)
    if orig_rate != target_rate:
        ratio = Fraction(int(target_rate), int(orig_rate))
        # resample_poly designs 20 taps per step of the larger term: rates with no common factor
        # (767999 Hz to 22050 Hz) would take 15 million taps and seconds even for a few samples.
        # Every pair of standard rates (8 kHz to 768 kHz) reduces to terms of at most 10240.
        if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
            raise ValueError(f"orig_rate: {orig_rate} Hz to {target_rate} Hz is the ratio {ratio}, whose resampling "
                             f"filter would take {20 * max(ratio.numerator, ratio.denominator) + 1} taps; convert "
                             "the audio to a standard rate first")
        array = scipy.signal.resample_poly(array, ratio.numerator, ratio.denominator, axis=-1)
    array = np.ascontiguousarray(array, dtype=np.float32)
    return torch.from_numpy(array) if is_tensor else array


def _to_float(data: np.ndarray, path) -> np.ndarray:
    """PCM of any WAV sample format as float32, integer formats scaled to [-1, 1)."""
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:  # scipy also returns 24-bit PCM here, left-justified
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    raise ValueError(f"{path}: unsupported WAV sample format {data.dtype}")


def read_wav(path, sample_rate: int | None = None, *, resample_to_rate: bool = True,
             mix_to_mono: bool = True) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 audio; returns ``(audio, sample_rate)``.

    - Integer PCM (8, 16, 24, 32 bit) is scaled to [-1, 1); float WAVs are returned as stored.
    - Several channels are averaged when ``mix_to_mono``, else a ``ValueError`` names the count.
    - With ``sample_rate`` given, audio at another rate is resampled to it when
      ``resample_to_rate``, else a ``ValueError`` names both rates.

    Either conversion issues an :class:`AudioConversionWarning`.
    """
    if sample_rate is not None:
        check_int("sample_rate", sample_rate, types=(int, np.integer), maximum=MAX_SAMPLE_RATE)
    # os.path.isfile() would take an int as a file descriptor; None fails deep inside os.stat.
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a WAV file path (str or os.PathLike), got {type(path).__name__}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a directory, expected a WAV file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such WAV file")
    try:
        rate, data = scipy.io.wavfile.read(path)
    except ValueError as error:
        raise ValueError(f"{path}: not a readable WAV file ({error})") from error
    # scipy's own errors for headers it cannot make sense of: struct.error for one cut short,
    # ZeroDivisionError for one declaring 0 channels or 0-bit samples.
    except struct.error as error:
        raise ValueError(f"{path}: not a readable WAV file (its header is cut short)") from error
    except ZeroDivisionError as error:
        raise ValueError(f"{path}: not a readable WAV file (its header gives 0 channels or 0-bit samples)") from error
    # UnboundLocalError when the chunks end (or a chunk size skips past the end) before a data chunk;
    # TypeError when channels, bits and block align make no numpy dtype ('<i21845', '<f1').
    except UnboundLocalError as error:
        raise ValueError(f"{path}: not a readable WAV file (it has no data chunk)") from error
    except TypeError as error:
        raise ValueError(f"{path}: not a readable WAV file (its format gives samples of no readable type: "
                         f"{error})") from error
    # A crafted header's rate of 2^31 - 1 would make resampling allocate hundreds of GiB.
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {rate} Hz in its header, expected 1 to {MAX_SAMPLE_RATE} Hz")
    audio = _to_float(data, path)
    # Float WAVs can hold NaN and infinities (float64 ones also values beyond float32's range).
    check_finite(str(path), audio)
    conversions = []
    if audio.ndim == 2:
        if audio.shape[1] > 1 and not mix_to_mono:
            raise ValueError(f"{path}: expected a mono WAV, got {audio.shape[1]} channels")
        if audio.shape[1] > 1:
            conversions.append(f"{audio.shape[1]} channels mixed to mono")
        audio = audio.mean(axis=1, dtype=np.float32)
    if sample_rate is not None and rate != sample_rate:
        if not resample_to_rate:
            raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (sample_rate)")
        conversions.append(f"{rate} Hz resampled to {sample_rate} Hz")
        try:
            audio, rate = resample(audio, rate, sample_rate), sample_rate
        except ValueError as error:  # a ratio of rates too odd to resample: named by the file
            raise ValueError(f"{path}: {error}") from error
    if conversions:
        warnings.warn(f"WAV input converted: {' and '.join(conversions)}", AudioConversionWarning, stacklevel=2)
    return np.ascontiguousarray(audio), int(rate)


_WAV_FORMATS = {"int16": np.int16, "int32": np.int32, "float32": np.float32}


def write_wav(path, audio, sample_rate: int, *, sample_format: str = "int16") -> None:
    """Write mono (``(samples,)``) or multichannel (``(channels, samples)``) float audio.

    ``sample_format`` is ``"int16"``, ``"int32"`` (scaled by ``2^15`` or ``2^31``, as
    :func:`read_wav` reads them, and clipped to the integer range) or ``"float32"`` (as given).
    """
    if sample_format not in _WAV_FORMATS:
        raise ValueError(f"sample_format: expected one of {sorted(_WAV_FORMATS)}, got {sample_format!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"sample_rate: expected a positive integer in Hz, got {sample_rate!r}")
    array = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"audio: expected float samples in [-1, 1], got dtype {array.dtype}")
    if array.ndim not in (1, 2):
        raise ValueError(f"audio: expected shape (samples,) or (channels, samples), got {array.shape}")
    channels = 1 if array.ndim == 1 else array.shape[0]
    # A header holds 1 to 65535 channels. (samples, channels) audio, scipy's own layout, would
    # otherwise be written as thousands of channels of a few samples each.
    if not 1 <= channels <= 65535 or (array.ndim == 2 and 0 < array.shape[1] < channels):
        raise ValueError(f"audio: expected (channels, samples) with 1 to 65535 channels and no more channels than "
                         f"samples, got shape {array.shape}; for (samples, channels) audio pass audio.T")
    bytes_per_second = int(sample_rate) * channels * np.dtype(_WAV_FORMATS[sample_format]).itemsize
    if bytes_per_second >= 2**32:
        raise ValueError(f"sample_rate: {sample_rate} Hz of {channels} {sample_format} channel(s) is more bytes per "
                         "second than a WAV header holds (2^32 - 1)")
    check_finite("audio", array)  # NaN would be written as 0 (int16, int32) or as NaN (float32)
    scipy.io.wavfile.write(path, int(sample_rate), to_pcm(array.T, sample_format))  # scipy wants (samples, channels)


def to_pcm(audio: np.ndarray, sample_format: str) -> np.ndarray:
    """Float audio as ``sample_format`` samples (see :func:`write_wav`), e.g. for a network stream."""
    if sample_format == "float32":
        return audio.astype(np.float32)
    # The scale read_wav divides by (2^(bits-1)), so that integer PCM round-trips to within
    # half a step; +1.0 itself becomes the largest integer.
    info = np.iinfo(_WAV_FORMATS[sample_format])
    return np.clip(np.round(audio.astype(np.float64) * -float(info.min)), info.min,
                   info.max).astype(_WAV_FORMATS[sample_format])


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """How a model sees audio: its rate, mu-law classes (None for a regression model on raw
    values) and the mel front end that computes its conditioning (None when unconditioned)."""

    sample_rate: int
    quantization_channels: int | None = 256
    mel: MelConfig | None = None

    def __post_init__(self):
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate < 1:
            raise ValueError(f"sample_rate: expected a positive integer in Hz, got {self.sample_rate!r}")
        check_int("sample_rate", self.sample_rate, maximum=MAX_SAMPLE_RATE)
        if self.quantization_channels is not None:
            # 16-bit audio has 65536 levels; more classes than that only inflate the softmax.
            check_int("quantization_channels", self.quantization_channels, 2, maximum=65536)
        if self.mel is not None and not isinstance(self.mel, MelConfig):
            raise TypeError(f"mel: expected a nvwavenet.mel.MelConfig or None, got {type(self.mel).__name__}")
        if self.mel is not None and self.mel.sample_rate != self.sample_rate:
            raise ValueError(f"mel: its sample_rate ({self.mel.sample_rate} Hz) differs from the "
                             f"audio's ({self.sample_rate} Hz)")

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "quantization_channels": self.quantization_channels,
                "mel": None if self.mel is None else self.mel.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> AudioConfig:
        check_fields("audio config", values, cls)
        if "sample_rate" not in values:
            raise ValueError("audio config: expected a sample_rate field, got none")
        mel = values.get("mel")
        return cls(sample_rate=values["sample_rate"], quantization_channels=values.get("quantization_channels"),
                   mel=None if mel is None else MelConfig.from_dict(mel))
