"""Mu-law, WAV files, resampling and the mel front end."""
import math
import struct
import warnings

import numpy as np
import pytest
import scipy.io.wavfile
import torch

import nvwavenet
from nvwavenet.audio import AudioConfig, AudioConversionWarning, mu_law_decode, mu_law_encode, read_wav, resample, write_wav
from nvwavenet.mel import MelConfig, MelSpectrogram, hz_to_mel, mel_filterbank, mel_to_hz


# ---------------------------------------------------------------- mu-law

def test_mu_law_is_exported_from_the_package():
    assert nvwavenet.mu_law_encode is mu_law_encode
    assert nvwavenet.mu_law_decode is mu_law_decode


def test_mu_law_known_values():
    x = np.array([-5.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    # 0.5: f = ln(128.5) / ln(256) = 0.875706..., (f + 1) / 2 * 255 + 0.5 = 239.65 -> 239.
    np.testing.assert_array_equal(mu_law_encode(x), [0, 0, 128, 239, 255, 255])
    # Classes map back onto the mu-law grid: 0 -> -1, 255 -> 1, 128 -> (256^(1/255) - 1) / 255.
    decoded = mu_law_decode(np.array([0, 128, 255]))
    np.testing.assert_allclose(decoded, [-1.0, (256 ** (1 / 255) - 1) / 255, 1.0], rtol=1e-6)
    assert mu_law_encode(np.array([0.0]), quantization_channels=2).tolist() == [1]


def test_mu_law_round_trip():
    for channels in (2, 16, 256, 65536):
        classes = np.arange(channels)
        np.testing.assert_array_equal(mu_law_encode(mu_law_decode(classes, channels), channels), classes)
    x = np.linspace(-1, 1, 100_001)

    def compand(v):
        return np.sign(v) * np.log1p(255 * np.abs(v)) / np.log1p(255)

    # Classes round in the companded domain: the decoded value is within half a step (1/255) there.
    assert np.abs(compand(mu_law_decode(mu_law_encode(x))) - compand(x)).max() <= 1 / 255 + 1e-6


def test_mu_law_same_kind_out_as_in():
    a = np.linspace(-1, 1, 11, dtype=np.float32).reshape(1, 11)
    t = torch.from_numpy(a[0].copy())
    q = mu_law_encode(t)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int64 and q.shape == t.shape
    back = mu_law_decode(q)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    qa = mu_law_encode(a)
    assert isinstance(qa, np.ndarray) and qa.dtype == np.int64 and qa.shape == (1, 11)
    np.testing.assert_array_equal(qa[0], q.numpy())
    assert isinstance(mu_law_decode(qa), np.ndarray) and mu_law_decode(qa).dtype == np.float32
    # float16 input gives the classes of its float64 value.
    np.testing.assert_array_equal(mu_law_encode(t.half()).numpy(), mu_law_encode(t.half().double()).numpy())


def test_mu_law_bad_input():
    with pytest.raises(ValueError, match="quantization_channels"):
        mu_law_encode(np.zeros(3), quantization_channels=1)
    with pytest.raises(TypeError, match="x: expected floating-point"):
        mu_law_encode(np.zeros(3, dtype=np.int16))
    with pytest.raises(ValueError, match=r"q: expected classes in \[0, 255\]"):
        mu_law_decode(np.array([0, 256]))



def test_mu_law_refuses_values_that_are_no_audio_or_no_class():
    # NaN became class -2^63 (and infinities were clipped as if they were audio).
    for x in (np.array([0.1, np.nan]), torch.tensor([0.1, float("inf")])):
        with pytest.raises(ValueError, match="x: expected finite values, got 1 NaN or infinite of 2"):
            mu_law_encode(x)
    # Float classes that are not whole numbers decoded to values between the classes.
    for q in (np.array([3.0, 1.5]), torch.tensor([float("nan"), 2.0])):
        with pytest.raises(ValueError, match="q: expected whole-number classes, got 1 values that are not"):
            mu_law_decode(q)
    np.testing.assert_array_equal(mu_law_decode(np.array([0.0, 255.0])), [-1.0, 1.0])


# ---------------------------------------------------------------- WAV files and resampling

def test_wav_round_trip_int16_int32_float(tmp_path):
    x = (0.9 * np.sin(np.linspace(0, 20, 1000))).astype(np.float32)
    for fmt, tolerance in (("int16", 0.5 / 32768), ("int32", 1e-7), ("float32", 0.0)):
        path = tmp_path / f"{fmt}.wav"
        write_wav(path, x, 16000, sample_format=fmt)
        audio, rate = read_wav(path)
        assert rate == 16000 and audio.dtype == np.float32 and audio.shape == x.shape
        np.testing.assert_allclose(audio, x, atol=tolerance)
    write_wav(tmp_path / "t.wav", torch.from_numpy(x), 16000)  # tensors are accepted too
    np.testing.assert_allclose(read_wav(tmp_path / "t.wav")[0], x, atol=0.5 / 32768)


def test_wav_reads_uint8_and_full_scale_int16(tmp_path):
    scipy.io.wavfile.write(tmp_path / "u8.wav", 8000, np.array([0, 128, 255], dtype=np.uint8))
    np.testing.assert_allclose(read_wav(tmp_path / "u8.wav")[0], [-1.0, 0.0, 127 / 128])
    scipy.io.wavfile.write(tmp_path / "i16.wav", 8000, np.array([-32768, 0, 16384], dtype=np.int16))
    np.testing.assert_allclose(read_wav(tmp_path / "i16.wav")[0], [-1.0, 0.0, 0.5])
    write_wav(tmp_path / "loud.wav", np.array([2.0, -2.0]), 8000)  # clipped to full scale
    np.testing.assert_allclose(read_wav(tmp_path / "loud.wav")[0], [32767 / 32768, -1.0])


def test_wav_channels(tmp_path):
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)]).astype(np.float32)
    write_wav(tmp_path / "stereo.wav", stereo, 8000, sample_format="float32")
    with pytest.warns(AudioConversionWarning, match="^WAV input converted: 2 channels mixed to mono$"):
        audio, _ = read_wav(tmp_path / "stereo.wav")
    np.testing.assert_allclose(audio, np.full(100, 0.125))
    with pytest.warns(AudioConversionWarning, match="mixed to mono and 8000 Hz resampled to 16000 Hz$"):
        read_wav(tmp_path / "stereo.wav", 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say when nothing was converted
        write_wav(tmp_path / "mono.wav", np.zeros(100, np.float32), 8000)
        read_wav(tmp_path / "mono.wav", 8000)
    with pytest.raises(ValueError, match="expected a mono WAV, got 2 channels"):
        read_wav(tmp_path / "stereo.wav", mix_to_mono=False)


def test_wav_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="junk.wav: not a readable WAV"):
        read_wav(tmp_path / "junk.wav")
    write_wav(tmp_path / "a.wav", np.zeros(100), 16000)
    with pytest.raises(ValueError, match=r"sample rate 16000 Hz, expected 22050 Hz \(sample_rate\)"):
        read_wav(tmp_path / "a.wav", 22050, resample_to_rate=False)
    with pytest.raises(ValueError, match="sample_format"):
        write_wav(tmp_path / "b.wav", np.zeros(10), 8000, sample_format="int8")
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(tmp_path / "b.wav", np.zeros(10), 0)
    with pytest.raises(ValueError, match="audio: expected shape"):
        write_wav(tmp_path / "b.wav", np.zeros((1, 2, 3)), 8000)



def test_write_wav_refuses_what_it_would_write_as_garbage(tmp_path):
    # NaN was written as 0 (int16) or NaN (float32), with no more than a RuntimeWarning.
    for fmt in ("int16", "float32"):
        with pytest.raises(ValueError, match="audio: expected finite values, got 1 NaN or infinite of 3"):
            write_wav(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2]), 8000, sample_format=fmt)
    # (samples, channels) audio was written as 16000 channels of 2 samples, or failed in struct.
    for shape in ((16000, 2), (70000, 3), (0, 5)):
        with pytest.raises(ValueError, match=r"audio: expected \(channels, samples\) with 1 to 65535 channels"):
            write_wav(tmp_path / "t.wav", np.zeros(shape), 8000)
    with pytest.raises(ValueError, match="sample_rate: .* more bytes per second than a WAV header holds"):
        write_wav(tmp_path / "fast.wav", np.zeros(10), 2**31)
    assert not any(tmp_path.iterdir())


def _wav_header(channels=1, rate=8000, bits=16, samples=10) -> bytes:
    """A PCM WAV whose header fields are taken as given, however wrong."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    data = bytes(samples * 2)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def test_damaged_wavs_are_named(tmp_path):
    """Headers scipy cannot make sense of, and float samples that are not numbers, are ValueErrors
    naming the file (scipy's own are a struct.error or a ZeroDivisionError, or no error at all)."""
    cases = {"no_channels.wav": (_wav_header(channels=0), "0 channels"),
             "no_bits.wav": (_wav_header(bits=0), "0-bit"),
             "cut.wav": (_wav_header()[:40], "cut short"),
             "rate0.wav": (_wav_header(rate=0), "sample rate 0 Hz")}
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: .*{reason}"):
            read_wav(tmp_path / name)
    scipy.io.wavfile.write(tmp_path / "nan.wav", 8000, np.array([0.1, np.nan, np.inf, 0.2], dtype=np.float32))
    with pytest.raises(ValueError, match="nan.wav: expected finite values, got 2 NaN or infinite of 4"):
        read_wav(tmp_path / "nan.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(IsADirectoryError, match="folder.wav: a directory"):
        read_wav(tmp_path / "folder.wav")
    with pytest.raises(TypeError, match="path: expected a WAV file path"):
        read_wav(None)
    write_wav(tmp_path / "ok.wav", np.zeros(10), 8000)
    with pytest.raises(ValueError, match="sample_rate: expected an integer >= 1, got 8000.5"):
        read_wav(tmp_path / "ok.wav", 8000.5)

def test_resampling_keeps_a_tone(tmp_path):
    t16 = np.arange(16000) / 16000
    write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t16), 16000, sample_format="float32")
    audio, rate = read_wav(tmp_path / "tone.wav", 8000)
    assert rate == 8000 and len(audio) == 8000
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000)
    # Away from the edges (where the polyphase filter sees zeros) the tone is unchanged.
    np.testing.assert_allclose(audio[200:-200], expected[200:-200], atol=2e-3)
    up = resample(torch.from_numpy(audio), 8000, 22050)
    assert isinstance(up, torch.Tensor) and up.shape == (22050,)
    with pytest.raises(ValueError, match="target_rate"):
        resample(audio, 8000, 0)


def test_resample_refuses_audio_it_would_turn_into_garbage():
    # int16 PCM came back unscaled, complex without its imaginary part, NaN spread over the filter;
    # a string or a scalar failed with "tuple index out of range".
    with pytest.raises(TypeError, match="audio: expected floating-point audio, got dtype int16"):
        resample(np.zeros(10, dtype=np.int16), 8000, 16000)
    with pytest.raises(TypeError, match="audio: expected floating-point audio, got dtype complex128"):
        resample(np.zeros(10, dtype=complex), 8000, 16000)
    with pytest.raises(ValueError, match="audio: expected finite values, got 1 NaN or infinite of 10"):
        resample(torch.tensor([0.1] * 9 + [float("nan")]), 8000, 16000)
    with pytest.raises(ValueError, match="audio: expected samples along the last axis"):
        resample(np.float32(0.5), 8000, 16000)

def test_audio_config_round_trip_and_checks():
    config = AudioConfig(22050, 256, MelConfig())
    assert AudioConfig.from_dict(config.to_dict()) == config
    assert AudioConfig.from_dict(AudioConfig(100, None).to_dict()) == AudioConfig(100, None)
    with pytest.raises(ValueError, match="mel: its sample_rate"):
        AudioConfig(16000, 256, MelConfig())
    with pytest.raises(ValueError, match="sample_rate"):
        AudioConfig(0)
    with pytest.raises(TypeError, match="mel: expected a nvwavenet.mel.MelConfig or None, got dict"):
        AudioConfig(22050, 256, MelConfig().to_dict())


# ---------------------------------------------------------------- mel front end

def test_slaney_mel_scale_known_values():
    # Linear below 1 kHz (200/3 Hz per mel): 1 kHz is mel 15; above, 27 mels per factor 6.4.
    np.testing.assert_allclose(hz_to_mel([0.0, 200 / 3, 1000.0, 6400.0]), [0.0, 1.0, 15.0, 42.0])
    f = np.array([0.0, 440.0, 999.0, 1000.0, 4321.0, 8000.0, 11025.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


def _direct_filterbank(rate, n_fft, n_mels, fmin, fmax):
    """Each band as a triangle through its three edge frequencies, area-normalised (Slaney)."""
    bins = np.arange(n_fft // 2 + 1) * rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bank = np.zeros((n_mels, len(bins)))
    for band in range(n_mels):
        left, centre, right = edges[band:band + 3]
        bank[band] = np.interp(bins, [left, centre, right], [0.0, 2 / (right - left), 0.0], left=0, right=0)
    return bank


def _direct_log_mel(x, c: MelConfig):
    """The Tacotron 2 front end in plain numpy: reflect pad, Hann frames, |rfft|, bands, log."""
    padded = np.pad(x.astype(np.float64), c.n_fft // 2, mode="reflect")
    window = np.zeros(c.n_fft)
    start = (c.n_fft - c.win_length) // 2
    window[start:start + c.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.win_length) / c.win_length)
    frames = np.stack([padded[i:i + c.n_fft] for i in range(0, len(padded) - c.n_fft + 1, c.hop_length)])
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T
    bank = _direct_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.fmin, c.fmax or c.sample_rate / 2)
    return np.log(np.maximum(bank @ magnitude, c.clamp_min))


def test_filterbank_matches_direct_triangles():
    for rate, n_fft, n_mels, fmin, fmax in ((22050, 1024, 80, 0.0, 8000.0), (16000, 512, 40, 60.0, 7600.0)):
        np.testing.assert_allclose(mel_filterbank(rate, n_fft, n_mels, fmin, fmax),
                                   _direct_filterbank(rate, n_fft, n_mels, fmin, fmax), atol=1e-12)


def test_mel_against_direct_numpy():
    rng = np.random.default_rng(0)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(5000) / 22050) + 0.05 * rng.standard_normal(5000))
    mel = MelSpectrogram()  # Tacotron 2 defaults
    assert mel.config == MelConfig.tacotron2() == MelConfig(22050, 1024, 256, 1024, 80, 0.0, 8000.0, 1e-5)
    out = mel(torch.from_numpy(x).float())
    assert out.shape == (80, 1 + 5000 // 256) == (80, mel.config.num_frames(5000))
    np.testing.assert_allclose(out.numpy(), _direct_log_mel(x, mel.config), atol=2e-4)
    # A shorter window than n_fft, a batch, and the silence floor.
    config = MelConfig(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_mels=40, fmax=None)
    batch = torch.from_numpy(np.stack([x[:3000], np.zeros(3000)])).float()
    out = MelSpectrogram(config)(batch)
    assert out.shape == (2, 40, 1 + 3000 // 160)
    np.testing.assert_allclose(out[0].numpy(), _direct_log_mel(x[:3000], config), atol=2e-4)
    assert torch.all(out[1] == math.log(1e-5))


def test_mel_bad_input():
    mel = MelSpectrogram()
    with pytest.raises(ValueError, match="more than n_fft // 2 = 512 samples"):
        mel(torch.zeros(300))
    with pytest.raises(ValueError, match="audio: expected shape"):
        mel(torch.zeros(1, 1, 3000))
    with pytest.raises(TypeError, match="audio: expected a float tensor"):
        mel(np.zeros(3000))
    # NaN samples gave NaN mels; an empty batch failed inside torch.stft.
    with pytest.raises(ValueError, match="audio: expected finite values, got 1 NaN or infinite of 3000"):
        mel(torch.cat([torch.zeros(2999), torch.tensor([float("nan")])]))
    with pytest.raises(ValueError, match=r"audio: expected shape .*\(batch >= 1, samples\), got \(0, 3000\)"):
        mel(torch.zeros(0, 3000))
    with pytest.raises(ValueError, match="win_length"):
        MelConfig(win_length=2048)
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(sample_rate=8000)  # fmax 8000 is above the 4000 Hz Nyquist
    with pytest.raises(ValueError, match="n_mels"):
        MelConfig(n_mels=0)
    with pytest.raises(ValueError, match=r"unknown fields \['hop'\]"):
        MelConfig.from_dict({"hop": 256})
    assert MelConfig.from_dict(MelConfig().to_dict()) == MelConfig()


def test_configs_read_back_from_json_are_checked_by_name():
    # Strings failed in a comparison naming nothing, NaN fmax blamed fmin, an infinite log floor made
    # every mel inf, a non-dict or a missing sample_rate was an AttributeError or KeyError.
    with pytest.raises(TypeError, match="fmax: expected a number, got '8000'"):
        MelConfig(fmax="8000")
    with pytest.raises(ValueError, match="fmax: expected at most the Nyquist frequency .* got nan"):
        MelConfig(fmax=float("nan"))
    with pytest.raises(ValueError, match="clamp_min: expected a positive floor for the log within float32"):
        MelConfig(clamp_min=float("inf"))
    with pytest.raises(TypeError, match="mel config: expected a dict of fields, got list"):
        MelConfig.from_dict([1])
    with pytest.raises(TypeError, match="audio config: expected a dict of fields, got int"):
        AudioConfig.from_dict(5)
    with pytest.raises(ValueError, match="audio config: expected a sample_rate field"):
        AudioConfig.from_dict({"quantization_channels": 256})
    with pytest.raises(ValueError, match=r"audio config: unknown fields \['rate'\]"):
        AudioConfig.from_dict({"sample_rate": 8000, "rate": 8000})
    # fmin == fmax gave a filterbank of NaN; a negative count of samples gave 0 frames.
    with pytest.raises(ValueError, match="fmin: expected 0 <= fmin < fmax"):
        mel_filterbank(8000, 256, 10, 100.0, 100.0)
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 0, got -5"):
        MelConfig().num_frames(-5)
