"""Model and dataset analysis, and a model size suggested by the data.

- :func:`analyze_model`: parameters, depth, parameters per layer of depth, receptive field (samples
  and milliseconds), bytes of the weights the engines hold per precision, multiply-adds per
  generated sample.
- :func:`analyze_dataset`: count, lengths, sample rates, amplitude statistics, clipping, silence,
  mu-law class histogram, dominant frequency, autocorrelation and correlation length, the pitch
  periods of voiced frames, and a :class:`ModelSuggestion` (:func:`suggest_model`) whose receptive
  field covers that length and two of the longest pitch periods.
- :func:`plot_dataset`: the PNG figures a person would rather look at than read.

The analyses are dataclasses whose ``str()`` is a readable report.

Correlation length: the lag after which the magnitude of the (length-weighted, mean-removed)
autocorrelation stays below ``1/e`` up to ``max_lag``, linearly interpolated between lags. For a
monotonically decaying autocorrelation this is the first lag where ``|r| < 1/e``: an AR(1) process
with coefficient ``phi`` has ``r(k) = phi^k`` and length ``-1 / ln(phi)``. Taking the *last*
crossing instead of the first makes oscillating signals (voiced speech, tones) count as correlated
as long as their envelope is: the predictor needs to see a pitch period back, not just to the first
zero crossing. A signal still correlated at ``max_lag`` has no length (``None``): "longer than
``max_lag``".

Pitch: the correlation length of a whole dataset is a poor guide for speech. Its pitch changes
from syllable to syllable, so the periodic peaks of the long-term autocorrelation cancel out and 12 s
of speech decorrelate within a third of a millisecond, which suggested a 4-layer model whose
receptive field is far shorter than one pitch period. Yet an autoregressive model continues a
voiced waveform by looking a period back: WaveNet vocoders for speech reach 10 to 300 ms
(NV-WaveNet's 16 layers up to dilation 128: 23 ms at 22.05 kHz). :func:`pitch_periods` finds the
period in each frame short enough to hold one pitch (the short-time autocorrelation's first peak
between 2.5 and 20 ms, i.e. 50 to 400 Hz), and the suggestion covers two of the longest ones.
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.signal
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .audio import mu_law_encode, resample
from .data import Clip, check_clip_audio
from .model import WaveNet
from .network import receptive_field
from .validation import check_finite, check_folder, check_int

__all__ = ["ModelAnalysis", "analyze_model", "DatasetAnalysis", "analyze_dataset", "ModelSuggestion",
           "suggest_model", "autocorrelation", "correlation_length", "pitch_periods", "plot_dataset"]

_PRECISION_BYTES = {"float32": 4, "float16": 2}


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def _ms(samples: float, sample_rate: int | None) -> str:
    return "" if sample_rate is None else f" ({1000 * samples / sample_rate:.2f} ms at {sample_rate} Hz)"


@dataclasses.dataclass
class ModelAnalysis:
    """Figures of one :class:`~nvwavenet.model.WaveNet` (see :func:`analyze_model`)."""

    n_layers: int
    max_dilation: int
    dilations: list[int]
    n_residual_channels: int
    n_skip_channels: int
    n_classes: int
    n_cond_channels: int
    parameters: int
    network_parameters: int
    conditioning_parameters: int
    depth: int
    parameters_per_layer: float
    receptive_field: int
    sample_rate: int | None
    receptive_field_ms: float | None
    weight_bytes: dict[str, int]
    macs_per_sample: int
    conditioning_macs_per_sample: float

    def __str__(self) -> str:
        sizes = ", ".join(f"{name} {_size(count)}" for name, count in self.weight_bytes.items())
        return "\n".join([
            f"WaveNet: {self.n_layers} layers, dilations {self.dilations}",
            f"  channels: residual R={self.n_residual_channels}, skip S={self.n_skip_channels}, "
            f"classes A={self.n_classes}, conditioning {self.n_cond_channels}",
            f"  parameters: {self.parameters:,} ({self.network_parameters:,} in the autoregressive network, "
            f"{self.conditioning_parameters:,} in the upsampler and conditioning layers)",
            f"  depth: {self.depth} layers, {self.parameters_per_layer:,.0f} parameters per layer of depth",
            f"  receptive field: {self.receptive_field} samples{_ms(self.receptive_field, self.sample_rate)}",
            f"  weights the engines hold: {sizes}",
            f"  multiply-adds per generated sample: {self.macs_per_sample:,} in the network "
            f"(incremental algorithm), {self.conditioning_macs_per_sample:,.0f} for the conditioning",
        ])


def analyze_model(model: WaveNet, sample_rate: int | None = None) -> ModelAnalysis:
    """Analyse ``model``; ``sample_rate`` (Hz) adds the receptive field in milliseconds.

    - ``parameters``: all trainable ones; ``network_parameters``: the autoregressive network the
      engines run (embeddings, dilated, residual, skip and output convolutions);
      ``conditioning_parameters``: the upsampler and the conditioning 1x1 convolution.
    - ``depth``: the dilated layers; ``parameters_per_layer`` = ``parameters / depth``.
    - ``weight_bytes``: bytes of the weights ``export_weights()`` hands the engines (the zero
      ``embedding_prev`` included, as the engines store it), per precision.
    - ``macs_per_sample``: multiply-adds to generate one sample with the incremental (queue)
      algorithm: per layer both dilated taps (``2 * 2R * R``), the residual (``R * R``, all but the
      last layer) and skip (``S * R``) 1x1 convolutions, then the output head (``A * S + A * A``).
      ``conditioning_macs_per_sample``: the upsampler (``C * C * window / stride``, with ``C``
      conditioning channels) and the conditioning 1x1 conv (``C * 2R * L``), done once per
      utterance rather than per step.
    """
    if not isinstance(model, WaveNet):
        raise TypeError(f"model: expected a nvwavenet.model.WaveNet, got {type(model).__name__}")
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or sample_rate < 1):
        raise ValueError(f"sample_rate: expected a positive integer in Hz or None, got {sample_rate!r}")
    R, S, A, L = model.n_residual_channels, model.n_skip_channels, model.n_out_channels, model.n_layers
    C = model.n_cond_channels
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conditioning = sum(p.numel() for m in (model.upsample, model.cond_layers) for p in m.parameters())
    exported = model.export_weights()
    engine_values = sum(v.numel() if isinstance(v, torch.Tensor) else sum(t.numel() for t in v)
                        for v in exported.values() if isinstance(v, (torch.Tensor, list)))
    rf = model.receptive_field
    return ModelAnalysis(
        n_layers=L, max_dilation=model.max_dilation, dilations=list(model.dilations), n_residual_channels=R,
        n_skip_channels=S, n_classes=A, n_cond_channels=C, parameters=parameters,
        network_parameters=parameters - conditioning, conditioning_parameters=conditioning, depth=L,
        parameters_per_layer=parameters / L, receptive_field=rf, sample_rate=sample_rate,
        receptive_field_ms=None if sample_rate is None else 1000 * rf / sample_rate,
        weight_bytes={name: engine_values * size for name, size in _PRECISION_BYTES.items()},
        macs_per_sample=L * 2 * 2 * R * R + (L - 1) * R * R + L * S * R + A * S + A * A,
        conditioning_macs_per_sample=C * C * model.upsamp_window / model.upsamp_stride + C * 2 * R * L,
    )


@dataclasses.dataclass
class ModelSuggestion:
    """``n_layers`` and ``max_dilation`` whose receptive field covers ``target`` samples: the
    correlation length or two pitch periods, whichever is longer."""

    n_layers: int
    max_dilation: int
    receptive_field: int
    target: int
    cycles: int
    reasoning: str

    def __str__(self) -> str:
        return (f"suggested model: n_layers={self.n_layers}, max_dilation={self.max_dilation} "
                f"(receptive field {self.receptive_field} samples)\n"
                + textwrap.fill(self.reasoning, width=100, initial_indent="  ", subsequent_indent="  "))


def suggest_model(correlation_length: float | None, sample_rate: int, max_lag: int, *,
                  pitch_period: float | None = None, cycles: int = 2) -> ModelSuggestion:
    """The smallest ``max_dilation`` D (a power of two) for which ``cycles`` repetitions of the
    dilations ``1, 2, ..., D`` (``n_layers = cycles * (log2(D) + 1)``, receptive field
    ``1 + cycles * (2D - 1)``) cover the correlation length (``max_lag`` when that is ``None``)
    and two ``pitch_period`` (samples; None for audio without voiced frames).

    Two cycles is NV-WaveNet's shape (16 layers up to 128); more cycles add depth, and so capacity,
    at the same receptive field.
    """
    check_int("cycles", cycles)
    check_int("sample_rate", sample_rate)
    check_int("max_lag", max_lag)
    for name, value in (("correlation_length", correlation_length), ("pitch_period", pitch_period)):
        if value is not None and not 0 <= value < math.inf:
            raise ValueError(f"{name}: expected a finite number of samples >= 0 or None, got {value}")
    if correlation_length is None:
        target = max_lag
        why = (f"The autocorrelation stays above 1/e up to the longest lag analysed, {max_lag} samples"
               f"{_ms(max_lag, sample_rate)}: the signal is periodic or decorrelates slowly, so the "
               "receptive field should reach at least that far back.")
    else:
        target = max(2, math.ceil(correlation_length))
        why = (f"The autocorrelation envelope falls below 1/e after {correlation_length:.1f} samples"
               f"{_ms(correlation_length, sample_rate)}; samples further back carry little linear "
               "information about the next one, so the receptive field should reach that far.")
    if pitch_period is not None and 2 * pitch_period > target:
        target = math.ceil(2 * pitch_period)
        why += (f" Voiced frames repeat with periods of up to {pitch_period:.0f} samples"
                f"{_ms(pitch_period, sample_rate)}, which the long-term autocorrelation averages away as the "
                "pitch changes; to continue a waveform the model should see two of them, "
                f"{target} samples. (WaveNet vocoders for speech reach 10 to 300 ms; NV-WaveNet's default "
                f"16 layers up to 128 reach {receptive_field(16, 128)} samples.)")
    max_dilation = 1
    while 1 + cycles * (2 * max_dilation - 1) < target:
        max_dilation *= 2
    n_layers = cycles * (int(math.log2(max_dilation)) + 1)
    rf = receptive_field(n_layers, max_dilation)
    reasoning = (f"{why} With {cycles} cycle(s) of dilations 1..D the receptive field is 1 + {cycles} (2D - 1); "
                 f"the smallest power of two D reaching {target} samples is {max_dilation}: "
                 f"n_layers = {n_layers}, max_dilation = {max_dilation}, receptive field {rf} samples"
                 f"{_ms(rf, sample_rate)}. Raise the cycle count for more capacity at the same reach.")
    return ModelSuggestion(n_layers, max_dilation, rf, target, cycles, reasoning)


def autocorrelation(signals: Sequence[np.ndarray], max_lag: int) -> np.ndarray:
    """Length-weighted autocorrelation ``r(0 .. max_lag)`` of the mean-removed signals, ``r(0) = 1``.

    The biased estimator (sums of lagged products over all signals, divided by the summed energy),
    so that ``|r| <= 1``. Zero for a signal with no variance at all.
    """
    products = np.zeros(check_int("max_lag", max_lag) + 1)
    for index, x in enumerate(signals):
        x = np.asarray(x, dtype=np.float64)
        check_finite(f"signals[{index}]", x)
        if not x.size:  # no lagged products to add (and no FFT size for it)
            continue
        x = x - x.mean()
        # Zero-padded FFT: the circular correlation equals the linear one at lags < len(x).
        size = 1 << int(np.ceil(np.log2(2 * len(x))))
        spectrum = np.fft.rfft(x, size)
        lagged = np.fft.irfft(spectrum * np.conj(spectrum), size)[:max_lag + 1]
        products[:len(lagged)] += lagged
    return products / products[0] if products[0] > 0 else products


def correlation_length(acf: np.ndarray) -> float | None:
    """The lag after which ``|acf|`` stays below ``1/e`` (see the module docstring), interpolated
    linearly; ``None`` when it is still above at the last lag, 0 for a signal without variance."""
    above = np.flatnonzero(np.abs(acf) >= 1 / math.e)
    if not above.size:
        return 0.0
    last = int(above[-1])
    if last == len(acf) - 1:
        return None
    high, low = abs(acf[last]), abs(acf[last + 1])
    return last + (high - 1 / math.e) / (high - low)


def pitch_periods(signals: Sequence[np.ndarray], sample_rate: int, *, min_hz: float = 50.0, max_hz: float = 400.0,
                  voicing: float = 0.6, silence_db: float = -40.0) -> np.ndarray:
    """The pitch period (samples) of every frame of ``signals`` that is not silent, NaN for those
    that are not voiced.

    Frames of three periods of ``min_hz``, half overlapping; those whose RMS is below
    ``silence_db`` dBFS are skipped. A frame is voiced when its normalised cross-correlation with
    itself shifted by a lag between the periods of ``max_hz`` and ``min_hz`` reaches ``voicing``
    after having dipped below zero (a period, not the slow decay of low-pass noise); its period is
    the top of the first peak within 90% of that maximum, so that twice the period (as high a peak
    in a periodic frame) is not taken for it.
    """
    check_int("sample_rate", sample_rate)
    if not 0 < min_hz < max_hz < sample_rate / 2:
        raise ValueError(f"min_hz, max_hz: expected 0 < min_hz < max_hz < {sample_rate / 2} (Nyquist), "
                         f"got {min_hz}, {max_hz}")
    shortest, longest = max(1, int(sample_rate / max_hz)), int(math.ceil(sample_rate / min_hz))
    frame = 3 * longest
    size = 1 << int(np.ceil(np.log2(2 * frame)))
    lags = np.arange(longest + 1)
    periods = []
    for x in signals:
        x = np.asarray(x, dtype=np.float64)
        if len(x) < frame:
            continue
        frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::frame // 2]
        frames = frames[np.sqrt(np.mean(frames ** 2, axis=1)) >= 10 ** (silence_db / 20)]
        if not len(frames):
            continue
        frames = frames - frames.mean(axis=1, keepdims=True)
        spectrum = np.fft.rfft(frames, size, axis=1)
        products = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=1)[:, :longest + 1]
        # The energies of the two overlapping parts: x[:frame - k] and x[k:].
        squares = np.cumsum(frames ** 2, axis=1)
        head = squares[:, frame - 1 - lags]
        tail = squares[:, -1:] - np.concatenate([np.zeros((len(frames), 1)), squares[:, lags[1:] - 1]], axis=1)
        r = products / np.sqrt(np.maximum(head * tail, 1e-30))
        dipped = np.minimum.accumulate(r, axis=1) < 0
        candidates = np.where(dipped[:, shortest:], r[:, shortest:], -1.0)
        peak = candidates.max(axis=1)
        # The top of the first peak: between the first lag within 90% of the highest and half as far
        # again (short of the next multiple of the period).
        first = shortest + np.argmax(candidates >= 0.9 * peak[:, None], axis=1)
        near = (lags[shortest:] >= first[:, None]) & (lags[shortest:] < 1.5 * first[:, None])
        top = shortest + np.argmax(np.where(near, candidates, -np.inf), axis=1)
        periods.extend(np.where(peak >= voicing, top, np.nan).tolist())
    return np.asarray(periods, dtype=np.float64)


@dataclasses.dataclass
class DatasetAnalysis:
    """Figures of a set of clips (see :func:`analyze_dataset`)."""

    count: int
    lengths: list[int]
    sample_rates: dict[int, int]
    analysis_rate: int
    peak: float
    rms: float
    mean: float
    clipping_fraction: float
    clip_level: float
    silence_fraction: float
    silence_db: float
    quantization_channels: int
    class_histogram: np.ndarray
    dominant_frequency: float
    autocorrelation: np.ndarray
    max_lag: int
    correlation_length: float | None
    pitch_periods: np.ndarray
    voiced_fraction: float
    pitch_period: float | None
    suggestion: ModelSuggestion
    example: Clip

    @property
    def durations(self) -> list[float]:
        """Clip durations in seconds."""
        return [n / self.analysis_rate for n in self.lengths]

    def __str__(self) -> str:
        lengths = np.array(self.lengths)
        rates = ", ".join(f"{rate} Hz x{n}" for rate, n in sorted(self.sample_rates.items()))
        used = np.count_nonzero(self.class_histogram)
        if self.correlation_length is None:
            corr = f"longer than the {self.max_lag} lags analysed{_ms(self.max_lag, self.analysis_rate)}"
        else:
            corr = f"{self.correlation_length:.1f} samples{_ms(self.correlation_length, self.analysis_rate)}"
        pitch = f"{100 * self.voiced_fraction:.0f}% of the frames that are not silent are voiced"
        if self.pitch_period is not None:
            low, high = np.percentile(self.pitch_periods, [5, 95])
            pitch += (f", periods {low:.0f} to {high:.0f} samples (5th to 95th percentile; "
                      f"{self.analysis_rate / high:.0f} to {self.analysis_rate / low:.0f} Hz)")
        return "\n".join([
            f"dataset: {self.count} clip{'s' if self.count > 1 else ''}, "
            f"{lengths.sum() / self.analysis_rate:.2f} s in all",
            f"  sample rates: {rates} (analysed at {self.analysis_rate} Hz)",
            f"  lengths: min {lengths.min()}, mean {lengths.mean():.0f}, max {lengths.max()} samples "
            f"({lengths.min() / self.analysis_rate:.3f} .. {lengths.max() / self.analysis_rate:.3f} s)",
            f"  amplitude: peak {self.peak:.4f}, RMS {self.rms:.4f} "
            f"({20 * math.log10(max(self.rms, 1e-12)):.1f} dBFS), mean (DC) {self.mean:+.5f}",
            f"  clipping: {100 * self.clipping_fraction:.3f}% of samples at |x| >= {self.clip_level}",
            f"  silence: {100 * self.silence_fraction:.1f}% of 10 ms frames below {self.silence_db:.0f} dBFS",
            f"  mu-law classes: {used} of {self.quantization_channels} used, most frequent "
            f"{int(np.argmax(self.class_histogram))}",
            f"  dominant frequency: {self.dominant_frequency:.1f} Hz",
            f"  correlation length (|autocorrelation| below 1/e): {corr}",
            f"  pitch: {pitch}",
            str(self.suggestion),
        ])


def analyze_dataset(clips: Sequence[Clip], *, sample_rate: int | None = None, max_lag: int | None = None,
                    quantization_channels: int = 256, clip_level: float = 0.999, silence_db: float = -40.0,
                    cycles: int = 2, example_seconds: float = 2.0) -> DatasetAnalysis:
    """Analyse ``clips`` (a :class:`~nvwavenet.data.WavFolder` or a sequence of
    :class:`~nvwavenet.data.Clip`).

    Clips at other rates than ``sample_rate`` (default: the most common rate) are resampled to it
    for everything but the reported rates. ``max_lag`` (default 50 ms, enough for the pitch periods
    of voices) bounds the autocorrelation; ``clip_level`` is the magnitude counted as clipped;
    silence is the fraction of 10 ms frames whose RMS is below ``silence_db`` dBFS; ``cycles``
    goes to :func:`suggest_model`.
    """
    clips = list(clips)
    if not clips:
        raise ValueError("clips: expected at least one clip, got none")
    # Empty, NaN or 2-D clips failed deep inside numpy (or gave NaN figures), naming no clip.
    audio = []
    for index, clip in enumerate(clips):
        if not isinstance(clip, Clip):
            raise TypeError(f"clips[{index}]: expected a nvwavenet.data.Clip, got {type(clip).__name__}")
        audio.append(check_clip_audio(clip.audio, clip.name or f"clips[{index}]"))
    for name, value in (("clip_level", clip_level), ("example_seconds", example_seconds)):
        if not 0 < value < math.inf:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not -math.inf < silence_db < math.inf:
        raise ValueError(f"silence_db: expected a finite level in dBFS, got {silence_db!r}")
    rates = Counter(clip.sample_rate for clip in clips)
    rate = rates.most_common(1)[0][0] if sample_rate is None else check_int("sample_rate", sample_rate)
    signals = [np.asarray(resample(x, clip.sample_rate, rate), dtype=np.float64) for x, clip in zip(audio, clips)]
    max_lag = max(1, rate // 20) if max_lag is None else max_lag
    check_int("max_lag", max_lag)
    everything = np.concatenate(signals)

    frame = max(1, rate // 100)
    frames = silent = 0
    for x in signals:
        usable = len(x) // frame * frame
        if usable:
            rms = np.sqrt(np.mean(x[:usable].reshape(-1, frame) ** 2, axis=1))
            frames += len(rms)
            silent += int(np.count_nonzero(rms < 10 ** (silence_db / 20)))

    # Welch's averaged spectrum per clip, summed over clips weighted by their length.
    nperseg = min(4096, min(len(x) for x in signals))
    freqs = np.fft.rfftfreq(nperseg, 1 / rate)  # the frequencies welch() returns for nperseg
    power = sum(len(x) * scipy.signal.welch(x, rate, nperseg=nperseg)[1] for x in signals)

    acf = autocorrelation(signals, max_lag)
    length = correlation_length(acf)
    frame_periods = pitch_periods(signals, rate, silence_db=silence_db) if rate > 2 * 400 else np.zeros(0)
    periods = frame_periods[~np.isnan(frame_periods)]
    voiced_fraction = len(periods) / len(frame_periods) if len(frame_periods) else 0.0
    # Voiced speech is about half of what is not silence; a stray frame of noise that looks periodic
    # does not make a pitch. The longest periods but one in twenty, so that a few frames read an
    # octave low do not decide.
    pitch_period = float(np.percentile(periods, 95)) if voiced_fraction >= 0.2 else None
    example = signals[0][:max(1, int(example_seconds * rate))]  # the plots need at least one sample
    return DatasetAnalysis(
        count=len(clips), lengths=[len(x) for x in signals], sample_rates=dict(rates), analysis_rate=rate,
        peak=float(np.abs(everything).max()), rms=float(np.sqrt(np.mean(everything ** 2))),
        mean=float(everything.mean()),
        clipping_fraction=float(np.mean(np.abs(everything) >= clip_level)), clip_level=clip_level,
        silence_fraction=silent / frames if frames else 0.0, silence_db=silence_db,
        quantization_channels=quantization_channels,
        class_histogram=np.bincount(mu_law_encode(everything, quantization_channels),
                                    minlength=quantization_channels),
        dominant_frequency=float(freqs[np.argmax(power)]),
        autocorrelation=acf, max_lag=max_lag, correlation_length=length, pitch_periods=periods,
        voiced_fraction=voiced_fraction, pitch_period=pitch_period,
        suggestion=suggest_model(length, rate, max_lag, pitch_period=pitch_period, cycles=cycles),
        example=Clip(example.astype(np.float32), rate, clips[0].name),
    )


def _figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg, without pyplot: no GUI backend, no global figure registry."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_dataset(analysis: DatasetAnalysis, out_dir) -> dict[str, Path]:
    """Write ``class_histogram.png``, ``autocorrelation.png`` and ``waveform.png`` (waveform and
    spectrogram of the first clip's start) into ``out_dir``; returns their paths by name."""
    out_dir = Path(out_dir)
    check_folder("out_dir", out_dir, "a folder for the plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    rate = analysis.analysis_rate

    fig = _figure(8, 4)
    ax = fig.add_subplot()
    ax.bar(np.arange(analysis.quantization_channels), analysis.class_histogram, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel(f"mu-law class (of {analysis.quantization_channels}; silence is {analysis.quantization_channels // 2})")
    ax.set_ylabel("samples")
    ax.set_title("mu-law class histogram")
    paths["class_histogram"] = out_dir / "class_histogram.png"
    fig.savefig(paths["class_histogram"], dpi=100)

    fig = _figure(8, 4)
    ax = fig.add_subplot()
    lags = np.arange(analysis.max_lag + 1)
    ax.plot(lags, analysis.autocorrelation, lw=1, label="autocorrelation")
    for sign in (1, -1):
        ax.axhline(sign / math.e, color="gray", ls=":", lw=1, label="±1/e" if sign > 0 else None)
    if analysis.correlation_length is not None:
        ax.axvline(analysis.correlation_length, color="C3", lw=1.5,
                   label=f"correlation length {analysis.correlation_length:.1f}")
    rf = analysis.suggestion.receptive_field
    ax.axvspan(0, min(rf, analysis.max_lag), color="C2", alpha=0.12, label=f"suggested receptive field {rf}")
    ax.set_xlim(0, analysis.max_lag)
    ax.set_xlabel(f"lag (samples at {rate} Hz)")
    ax.set_ylabel("r(lag)")
    ax.set_title("autocorrelation")
    ax.legend(loc="upper right", fontsize="small")
    paths["autocorrelation"] = out_dir / "autocorrelation.png"
    fig.savefig(paths["autocorrelation"], dpi=100)

    fig = _figure(9, 6)
    wave_ax, spec_ax = fig.subplots(2, 1, sharex=True)
    x = analysis.example.audio
    t = np.arange(len(x)) / rate
    wave_ax.plot(t, x, lw=0.5)
    wave_ax.set_ylim(-1.05, 1.05)
    wave_ax.set_ylabel("amplitude")
    wave_ax.set_title(f"{analysis.example.name or 'first clip'}: waveform and spectrogram")
    nperseg = min(512, len(x))
    f, times, power = scipy.signal.spectrogram(x, rate, nperseg=nperseg, noverlap=nperseg * 3 // 4)
    decibels = 10 * np.log10(power + 1e-20)
    # 80 dB of range: enough for speech, and silence does not stretch the colour scale.
    spec_ax.pcolormesh(times, f, decibels, shading="auto", cmap="magma", vmin=decibels.max() - 80)
    spec_ax.set_xlabel("time (s)")
    spec_ax.set_ylabel("frequency (Hz)")
    paths["waveform"] = out_dir / "waveform.png"
    fig.savefig(paths["waveform"], dpi=100)
    return paths
