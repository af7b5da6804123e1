"""Model and dataset analysis on models and signals whose answers are known."""
import math

import numpy as np
import pytest
import scipy.signal
import torch
from torch.utils.flop_counter import FlopCounterMode

import nvwavenet
from nvwavenet import NVWaveNet, reference
from nvwavenet.analysis import (analyze_dataset, analyze_model, autocorrelation, correlation_length, pitch_periods,
                                plot_dataset, suggest_model)
from nvwavenet.data import Clip, ar2_process, sine
from nvwavenet.model import WaveNet


def test_receptive_field_per_spec():
    # SPEC section 1: max_dilation=4, L=6 gives dilations 1 2 4 1 2 4, receptive field 1 + 14.
    assert nvwavenet.receptive_field(6, 4) == 15
    assert nvwavenet.receptive_field(16, 128) == 1 + 2 * 255  # NV-WaveNet's default shape
    with pytest.raises(ValueError, match="max_dilation"):
        nvwavenet.receptive_field(4, 3)


def test_model_analysis_counts():
    torch.manual_seed(0)
    model = WaveNet(n_in_channels=32, n_layers=5, max_dilation=4, n_residual_channels=8, n_skip_channels=16,
                    n_out_channels=32, n_cond_channels=3, upsamp_window=8, upsamp_stride=4)
    analysis = analyze_model(model, sample_rate=16000)
    assert analysis.parameters == sum(p.numel() for p in model.parameters())
    assert analysis.depth == 5 and analysis.parameters_per_layer == analysis.parameters / 5
    assert analysis.receptive_field == 11 and analysis.receptive_field_ms == pytest.approx(11 / 16)
    conditioning = sum(p.numel() for p in model.upsample.parameters()) + sum(
        p.numel() for p in model.cond_layers.parameters())
    assert analysis.conditioning_parameters == conditioning
    exported = model.export_weights()
    values = sum(v.numel() if isinstance(v, torch.Tensor) else sum(t.numel() for t in v)
                 for v in exported.values() if not isinstance(v, (int, bool)))
    assert analysis.weight_bytes == {"float32": 4 * values, "float16": 2 * values}

    # Multiply-adds per sample, counted independently: one step of the queue-based reference under
    # torch's counter (the compiled engines do the same products outside torch).
    net = NVWaveNet(**exported)
    with FlopCounterMode(display=False) as counter:
        reference.incremental(net.weights, torch.randn(16, 1, 5, 1), torch.rand(1, 1), dtype=torch.float32)
    assert analysis.macs_per_sample == counter.get_total_flops() // 2

    report = str(analysis)
    assert "receptive field: 11 samples (0.69 ms at 16000 Hz)" in report and "depth: 5 layers" in report
    assert analyze_model(model).receptive_field_ms is None
    with pytest.raises(TypeError, match="model: expected a nvwavenet.model.WaveNet"):
        analyze_model(torch.nn.Linear(2, 2))


def test_correlation_length_of_an_exact_ar1_autocorrelation():
    for phi in (0.5, 0.9, 0.99):
        acf = phi ** np.arange(2000)
        assert correlation_length(acf) == pytest.approx(-1 / math.log(phi), abs=0.1)
    assert correlation_length(np.cos(2 * np.pi * np.arange(100) / 16)) is None  # still correlated at the end
    # Oscillating inside a decaying envelope: the envelope's 1/e time, not the first zero crossing.
    k = np.arange(500)
    assert correlation_length(np.exp(-k / 40) * np.cos(2 * np.pi * k / 16)) == pytest.approx(40, abs=8)


def test_dataset_correlation_length_of_ar1_process():
    """AR(1) with coefficient phi: r(k) = phi^k, so the 1/e lag is -1 / ln(phi) = 19.5 for 0.95."""
    phi = 0.95
    clips = [Clip(ar2_process(phi, 0.0, 100_000, seed=s) / 20, 8000, f"ar1-{s}") for s in range(3)]
    analysis = analyze_dataset(clips, max_lag=200)
    expected = -1 / math.log(phi)
    print(f"AR(1) phi={phi}: correlation length {analysis.correlation_length:.2f}, expected {expected:.2f}")
    assert analysis.correlation_length == pytest.approx(expected, abs=1.0)
    np.testing.assert_allclose(analysis.autocorrelation[:40], phi ** np.arange(40), atol=0.03)
    s = analysis.suggestion
    assert s.receptive_field >= expected and s.target == 20
    assert (s.n_layers, s.max_dilation) == (8, 8)  # two cycles of 1 2 4 8: 31 samples; up to 4 would be 15
    assert "falls below 1/e after 19." in s.reasoning and "n_layers = 8, max_dilation = 8" in s.reasoning


def test_dataset_analysis_of_a_tone_with_silence_and_clipping():
    rate, amplitude = 8000, 0.5
    tone = sine(500, rate, 8000, amplitude=amplitude)
    silence = np.zeros(8000, dtype=np.float32)
    clipped = np.clip(sine(250, rate, 4000, amplitude=2.0), -1, 1)
    clips = [Clip(tone, rate, "tone"), Clip(silence, rate, "silence"), Clip(clipped, rate, "clipped")]
    analysis = analyze_dataset(clips)
    assert analysis.count == 3 and analysis.lengths == [8000, 8000, 4000] and analysis.sample_rates == {8000: 3}
    assert analysis.peak == pytest.approx(1.0)
    assert analysis.clipping_fraction == pytest.approx(np.mean(np.abs(clipped) >= 0.999) * 4000 / 20000)
    assert analysis.silence_fraction == pytest.approx(8000 / 20000)  # 80 frames of 10 ms out of 200
    assert analysis.class_histogram.sum() == 20000 and analysis.class_histogram[128] >= 8000
    assert analysis.dominant_frequency == 250  # the loud clipped tone carries the most power
    assert analysis.max_lag == rate // 20 and analysis.correlation_length is None
    assert analysis.suggestion.receptive_field >= analysis.max_lag
    assert "stays above 1/e up to the longest lag" in analysis.suggestion.reasoning

    single = analyze_dataset([Clip(tone, rate)])
    assert single.rms == pytest.approx(amplitude / math.sqrt(2), rel=1e-3) and single.silence_fraction == 0
    assert abs(single.mean) < 1e-6 and single.clipping_fraction == 0
    assert abs(single.dominant_frequency - 500) <= rate / 4096  # within one Welch bin
    report = str(single)
    for line in ("dataset: 1 clip, 1.00 s", "sample rates: 8000 Hz x1", "dominant frequency: 500.0 Hz",
                 "correlation length (|autocorrelation| below 1/e): longer than the 400 lags", "suggested model"):
        assert line in report


def test_dataset_analysis_resamples_mixed_rates():
    clips = [Clip(sine(440, 16000, 16000), 16000), Clip(sine(440, 8000, 8000), 8000),
             Clip(sine(440, 8000, 4000), 8000)]
    analysis = analyze_dataset(clips)
    assert analysis.analysis_rate == 8000 and analysis.sample_rates == {16000: 1, 8000: 2}
    assert analysis.lengths == [8000, 8000, 4000] and abs(analysis.dominant_frequency - 440) <= 2
    with pytest.raises(TypeError, match=r"clips\[0\]: expected a nvwavenet.data.Clip"):
        analyze_dataset([np.zeros(10)])
    with pytest.raises(ValueError, match="clips: expected at least one clip"):
        analyze_dataset([])


def test_autocorrelation_properties():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(50_000)
    acf = autocorrelation([noise], 10)
    assert acf[0] == 1 and np.abs(acf[1:]).max() < 0.02
    assert correlation_length(acf) < 1
    # Several signals: the pooled estimate equals that of their lagged-product sums.
    a, b = rng.standard_normal(100), rng.standard_normal(300)
    direct = [sum(np.dot(x[:-k or None] - x.mean(), x[k:] - x.mean()) for x in (a, b)) for k in range(5)]
    np.testing.assert_allclose(autocorrelation([a, b], 4), np.array(direct) / direct[0], atol=1e-12)
    assert not autocorrelation([np.ones(10)], 3).any() and correlation_length(np.zeros(4)) == 0.0


def test_suggest_model_is_the_smallest_cover():
    for target in (2, 3, 31, 32, 1000):
        s = suggest_model(float(target), 16000, 4000, cycles=2)
        assert s.receptive_field >= target
        if s.max_dilation > 1:
            assert nvwavenet.receptive_field(2 * int(math.log2(s.max_dilation)), s.max_dilation // 2) < target
    assert suggest_model(10.0, 16000, 4000, cycles=3).n_layers % 3 == 0
    with pytest.raises(ValueError, match="cycles"):
        suggest_model(10.0, 16000, 100, cycles=0)


def voiced_speech(rate, seconds, f0, seed=0):
    """A speech-like signal: a glottal pulse train whose pitch glides from f0[0] to f0[1] and back,
    through three formant resonators, in syllables separated by pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = np.interp(t, [0, seconds / 2, seconds], [f0[0], f0[1], f0[0]])
    x = np.diff(np.floor(np.cumsum(pitch) / rate), prepend=0.0) + 0.01 * rng.standard_normal(len(t))
    for formant, bandwidth in ((700, 80), (1200, 100), (2600, 150)):
        r = np.exp(-np.pi * bandwidth / rate)
        x = scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * formant / rate), r * r], x)
    x *= np.sin(2 * np.pi * 2.5 * t) > -0.3
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def test_speech_gets_a_receptive_field_of_two_pitch_periods():
    """12 s of speech once got n_layers=4, max_dilation=2 (0.3 ms): its long-term autocorrelation
    decays within a millisecond as the pitch keeps changing, though each voiced frame repeats a
    period of 8 to 11 ms here, which the model must see to continue the waveform."""
    rate, f0 = 16000, (90, 130)
    analysis = analyze_dataset([Clip(voiced_speech(rate, 4.0, f0), rate, "speech")])
    assert analysis.correlation_length < rate * 0.005  # what the old suggestion covered, and no more
    low, high = np.percentile(rate / analysis.pitch_periods, [5, 95])  # a frame at a syllable's edge may be off
    assert len(analysis.pitch_periods) > 50 and analysis.voiced_fraction > 0.5
    assert f0[0] * 0.95 < low < f0[0] * 1.1 and f0[1] * 0.9 < high < f0[1] * 1.05
    s = analysis.suggestion
    assert s.target == math.ceil(2 * analysis.pitch_period) and 2 * rate / f0[1] < s.target <= 2 * rate / f0[0] * 1.05
    assert (s.n_layers, s.max_dilation) == (16, 128)  # 511 samples, 32 ms: the smallest cover of two periods
    assert 10 <= 1000 * s.receptive_field / rate <= 300  # within what WaveNet vocoders for speech use
    assert "Voiced frames repeat with periods of up to" in s.reasoning and "pitch:" in str(analysis)
    # Noise has no pitch: the suggestion stays the correlation length's.
    noise = analyze_dataset([Clip(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, rate)])
    assert noise.pitch_period is None and noise.suggestion.target == max(2, math.ceil(noise.correlation_length))
    assert "pitch: 0% of the frames that are not silent are voiced\n" in str(noise)


def test_pitch_periods_of_tones_and_their_octaves():
    """A harmonic tone's period, not twice it (as high a peak of the autocorrelation)."""
    rate = 16000
    t = np.arange(rate) / rate
    for f0 in (60.0, 110.0, 380.0):
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
        periods = pitch_periods([0.3 * tone], rate)
        assert len(periods) > 10 and np.all(np.abs(periods - rate / f0) <= 1), (f0, np.unique(periods))
    assert len(pitch_periods([np.zeros(rate)], rate)) == 0  # silence is skipped
    noise = pitch_periods([np.random.default_rng(0).standard_normal(rate) * 0.1], rate)
    assert len(noise) > 10 and np.isnan(noise).all()
    with pytest.raises(ValueError, match="min_hz, max_hz"):
        pitch_periods([t], rate, min_hz=500, max_hz=400)


def test_plots_are_written(tmp_path):
    rate = 8000
    t = np.arange(2 * rate) / rate
    speechlike = (0.4 * np.sin(2 * np.pi * (200 + 100 * t) * t) * np.exp(-((t % 0.5) - 0.25) ** 2 / 0.01))
    clips = [Clip(speechlike.astype(np.float32), rate, "sweep.wav"),
             Clip(ar2_process(0.95, 0.0, rate, seed=0) / 20, rate, "ar1.wav")]
    analysis = analyze_dataset(clips)
    paths = plot_dataset(analysis, tmp_path / "plots")
    assert sorted(paths) == ["autocorrelation", "class_histogram", "waveform"]
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_dataset_analysis_refuses_clips_and_settings_it_would_fail_on_or_misreport():
    tone = sine(440, 8000, 800)
    # An empty clip was a ZeroDivisionError in numpy's rfftfreq ('nvwavenet analyze' traceback), NaN
    # a "'list' argument must have no negative elements", infinities a report of inf peak and RMS.
    with pytest.raises(ValueError, match="silent.wav: empty audio"):
        analyze_dataset([Clip(tone, 8000, "a.wav"), Clip(np.zeros(0, np.float32), 8000, "silent.wav")])
    with pytest.raises(ValueError, match="loud.wav: expected finite values, got 800 NaN or infinite of 800"):
        analyze_dataset([Clip(np.full(800, np.inf, np.float32), 8000, "loud.wav")])
    with pytest.raises(ValueError, match=r"clips\[0\]: expected 1-D float audio, got shape \(2, 400\)"):
        analyze_dataset([Clip(tone.reshape(2, 400), 8000)])
    # sample_rate was reported as resample's target_rate; a negative example length made the plots fail.
    with pytest.raises(ValueError, match="sample_rate: expected an integer >= 1, got 0"):
        analyze_dataset([Clip(tone, 8000)], sample_rate=0)
    with pytest.raises(ValueError, match="example_seconds: expected a positive number"):
        analyze_dataset([Clip(tone, 8000)], example_seconds=-1.0)
    # ZeroDivisionError, OverflowError and IndexError before.
    with pytest.raises(ValueError, match="sample_rate: expected an integer >= 1, got 0"):
        suggest_model(10.0, 0, 100)
    with pytest.raises(ValueError, match="correlation_length: expected a finite number"):
        suggest_model(math.inf, 8000, 100)
    with pytest.raises(ValueError, match="max_lag: expected an integer >= 1, got -1"):
        autocorrelation([tone], -1)
    np.testing.assert_array_equal(autocorrelation([tone, np.zeros(0)], 5), autocorrelation([tone], 5))


def test_plots_into_a_file_name_the_folder(tmp_path):
    (tmp_path / "plots").write_text("")
    analysis = analyze_dataset([Clip(sine(440, 8000, 800), 8000)])
    with pytest.raises(NotADirectoryError, match="out_dir: .*plots is a file, expected a folder"):
        plot_dataset(analysis, tmp_path / "plots")
