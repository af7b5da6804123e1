"""Audio sources, synthetic signals, windows, the loss mask and conditioning alignment."""
import numpy as np
import pytest
import torch

from nvwavenet.audio import mu_law_encode, write_wav
from nvwavenet.data import (Clip, TrainingWindows, WavFolder, Window, ar2_process, chirp, chunk_windows,
                            conditioning_frames, loss_mask, sine)
from nvwavenet.mel import MelConfig, MelSpectrogram
from nvwavenet.model import CausalConvRegressor, WaveNet

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=8, fmax=4000)


def small_wavenet(upsamp_window=200, n_cond_channels=8, dtype=torch.float64):
    torch.manual_seed(0)
    return WaveNet(n_in_channels=64, n_layers=5, max_dilation=4, n_residual_channels=8, n_skip_channels=16,
                   n_out_channels=64, n_cond_channels=n_cond_channels, upsamp_window=upsamp_window,
                   upsamp_stride=64).to(dtype)


# ---------------------------------------------------------------- synthetic signals

def test_sine_and_chirp():
    x = sine(500, 8000, 8000, amplitude=0.25)
    assert x.dtype == np.float32 and x.shape == (8000,)
    np.testing.assert_allclose(x[:17:4], [0, 0.25, 0, -0.25, 0], atol=1e-6)  # period 16 samples
    assert np.fft.rfft(x).__abs__().argmax() == 500  # 1 Hz bins
    sweep = chirp(100, 3000, 8000, 8000)
    spectrum = np.abs(np.fft.rfft(sweep))
    assert spectrum[150:2950].min() > 0.1 * spectrum.max() and spectrum[3500:].max() < 0.05 * spectrum.max()
    with pytest.raises(ValueError, match="frequency"):
        sine(4000, 8000, 10)
    with pytest.raises(ValueError, match="f1"):
        chirp(100, 5000, 8000, 10)
    with pytest.raises(ValueError, match="num_samples"):
        sine(100, 8000, 0)
    # Counts may come out of numpy arrays; a bool is never a count.
    assert sine(100, np.int64(8000), np.int64(10)).shape == (10,)
    with pytest.raises(ValueError, match="num_samples: expected an integer >= 1, got True"):
        sine(100, 8000, True)


def test_ar2_process_follows_its_recursion():
    a, b, c = -0.4, 0.5, 0.2
    x = ar2_process(a, b, 50_000, c=c, noise_std=0.5, x0=50.0, x1=60.0, seed=3).astype(np.float64)
    assert x[0] == 50 and x[1] == 60
    residual = x[2:] - c - a * x[1:-1] - b * x[:-2]
    assert abs(residual.std() - 0.5) < 0.01 and abs(residual.mean()) < 0.01
    # Stationary mean c / (1 - a - b).
    assert abs(x[1000:].mean() - c / (1 - a - b)) < 0.05
    np.testing.assert_array_equal(ar2_process(a, b, 100, seed=1), ar2_process(a, b, 100, seed=1))


# ---------------------------------------------------------------- WAV folders

def test_wav_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    write_wav(tmp_path / "b.wav", sine(440, 16000, 1600), 16000)
    write_wav(tmp_path / "sub" / "a.WAV", np.stack([sine(440, 8000, 800)] * 2), 8000)
    (tmp_path / "notes.txt").write_text("not audio")
    native = WavFolder(tmp_path)
    assert [p.name for p in native.paths] == ["b.wav", "a.WAV"]  # sorted by path: b.wav < sub/a.WAV
    assert len(native) == 2 and [c.sample_rate for c in native] == [16000, 8000]
    assert isinstance(native[1], Clip) and native[1].audio.shape == (800,) and native[1].duration == 0.1
    assert len(native[0:2]) == 2
    at_8k = WavFolder(tmp_path, sample_rate=8000)
    assert [len(c.audio) for c in at_8k] == [800, 800]
    strict = WavFolder(tmp_path, sample_rate=8000, resample_to_rate=False)
    with pytest.raises(ValueError, match=r"b.wav: sample rate 16000 Hz, expected 8000 Hz"):
        strict[0]
    with pytest.raises(ValueError, match="expected a mono WAV, got 2 channels"):
        WavFolder(tmp_path, mix_to_mono=False)[1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="root: no .wav files"):
        WavFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="root"):
        WavFolder(tmp_path / "nowhere")


# ---------------------------------------------------------------- windows and the loss mask

@pytest.mark.parametrize("num_samples,targets,history", [(1000, 100, 31), (131, 100, 31), (20, 100, 31),
                                                         (1031, 100, 31), (1032, 100, 31), (5, 1, 2)])
def test_windows_overlap_by_the_receptive_field_and_cover_each_sample_once(num_samples, targets, history):
    windows = chunk_windows(num_samples, targets, history)
    length = targets + history
    assert windows[0].start == 0 and windows[0].first_target == 0
    for before, after in zip(windows, windows[1:]):
        assert after.start - before.start == targets
        assert before.start + length - after.start == history  # overlap is exactly the receptive field
        assert after.first_target == history
    covered = np.zeros(num_samples, dtype=int)
    for w in windows:
        mask = loss_mask(w, length)
        assert mask.shape == (length,) and mask.dtype == torch.bool
        positions = torch.nonzero(mask).flatten().numpy()
        covered[w.start + positions] += 1
        assert w.stop <= num_samples and not mask[w.stop - w.start:].any()  # padding is masked
    np.testing.assert_array_equal(covered, 1)  # every sample is a target exactly once


def test_loss_mask_positions():
    mask = loss_mask(Window(start=100, stop=150, first_target=31), 131)
    assert mask[:31].sum() == 0 and mask[31:50].all() and not mask[50:].any()
    assert loss_mask(Window(0, 131, 0), 131).all()


def test_conditioning_frames():
    # Frames start every 64 samples and last 200: 3 earlier frames reach into a window start.
    assert conditioning_frames(651, 64, 200) == (3, 3 + 650 // 64 + 1, 192)
    assert conditioning_frames(100, 64, 64) == (0, 2, 0)
    # A window narrower than the stride leaves gaps: enough frames for the length are still taken.
    before, frames, offset = conditioning_frames(100, 64, 16)
    assert (before, offset) == (0, 0) and (frames - 1) * 64 + 16 >= 100


@pytest.mark.parametrize("use_mel", [True, False])
def test_window_logits_equal_whole_clip_logits_exactly_where_unmasked(use_mel):
    """The mask rule, checked against the model: a window's prediction at t >= receptive_field
    equals the whole clip's, and the last masked position (t = receptive_field - 1) does not."""
    model = small_wavenet(n_cond_channels=MEL.n_mels if use_mel else 1)
    audio = chirp(100, 3000, 8000, 3000)
    windows = TrainingWindows([audio], 8000, model, targets_per_window=640, mel=MEL if use_mel else None)
    rf = model.receptive_field
    assert windows.window_length == 640 + rf and rf == 1 + 1 + 2 + 4 + 1 + 2
    if use_mel:
        features = MelSpectrogram(MEL)(torch.from_numpy(audio)).double()[None]
    else:
        features = torch.zeros(1, 1, MEL.num_frames(3000), dtype=torch.float64)
    with torch.no_grad():
        whole = model(features, torch.from_numpy(mu_law_encode(audio, 64))[None])[0]
    assert len(windows) == 5
    for index in range(len(windows)):
        _, window = windows.windows[index]
        item = windows[index]
        with torch.no_grad():
            logits = model(item["features"][None].double(), item["samples"][None], cond_offset=windows.cond_offset)[0]
        n = window.stop - window.start
        difference = (logits[:, :n] - whole[:, window.start:window.stop]).abs().amax(dim=0)
        targets = torch.nonzero(item["mask"]).flatten()
        assert targets[0] == window.first_target and targets[-1] == n - 1
        assert difference[window.first_target:].max() < 1e-12
        if window.first_target:
            assert window.first_target == rf
            assert difference[rf - 1] > 1e-6  # one position earlier sees the window's start token


def test_regression_windows_hold_raw_values():
    x = ar2_process(0.5, 0.2, 1000)
    windows = TrainingWindows([torch.from_numpy(x)], 1, CausalConvRegressor(2), targets_per_window=98)
    assert windows.is_regression and windows.window_length == 100 and windows.audio_config.quantization_channels is None
    item = windows[1]
    assert set(item) == {"samples", "mask"} and item["samples"].dtype == torch.float32
    np.testing.assert_array_equal(item["samples"].numpy(), x[98:198])
    assert item["mask"][:2].sum() == 0 and item["mask"][2:].all()


def test_training_windows_reject_mismatches():
    model = small_wavenet(n_cond_channels=8)
    audio = sine(300, 8000, 2000)
    with pytest.raises(ValueError, match=r"mel: n_mels 80 \(mel bands\), but the model takes n_cond_channels=8"):
        TrainingWindows([audio], 22050, model, targets_per_window=256, mel=MelConfig())
    with pytest.raises(ValueError, match="hop_length 128 must equal the model's upsamp_stride 64"):
        TrainingWindows([audio], 8000, model, targets_per_window=256,
                        mel=MelConfig(8000, 256, 128, 256, 8, fmax=4000))
    with pytest.raises(ValueError, match="targets_per_window: expected a multiple of the hop length 64"):
        TrainingWindows([audio], 8000, model, targets_per_window=100, mel=MEL)
    with pytest.raises(ValueError, match="mel: its sample_rate"):
        TrainingWindows([audio], 16000, model, targets_per_window=256, mel=MEL)
    with pytest.raises(TypeError, match="mel: expected a nvwavenet.mel.MelConfig or None, got dict"):
        TrainingWindows([audio], 8000, model, targets_per_window=256, mel=MEL.to_dict())
    with pytest.raises(ValueError, match=r"clips\[0\] \(x.wav\): sample rate 16000 Hz, expected 8000 Hz"):
        TrainingWindows([Clip(audio, 16000, "x.wav")], 8000, model, targets_per_window=256, mel=MEL)
    with pytest.raises(ValueError, match="too short for the mel front end"):
        TrainingWindows([audio[:100]], 8000, model, targets_per_window=256, mel=MEL)
    with pytest.raises(ValueError, match=r"clips\[0\]: expected 1-D float audio"):
        TrainingWindows([np.zeros((2, 100))], 8000, model, targets_per_window=256)
    with pytest.raises(TypeError, match="model: expected"):
        TrainingWindows([audio], 8000, torch.nn.Linear(1, 1), targets_per_window=256)
    with pytest.raises(ValueError, match="mel: only a WaveNet"):
        TrainingWindows([audio], 8000, CausalConvRegressor(), targets_per_window=256, mel=MEL)
    with pytest.raises(ValueError, match="clips: expected at least one clip"):
        TrainingWindows([], 8000, model, targets_per_window=256)


def test_training_windows_refuse_data_they_would_train_garbage_on():
    model = small_wavenet(n_cond_channels=8)
    audio = sine(300, 8000, 2000)
    # NaN samples became class -2^63 (an IndexError in the embedding), or NaN losses for a regression.
    broken = audio.copy()
    broken[7] = np.nan
    with pytest.raises(ValueError, match=r"take.wav: expected finite values, got 1 NaN or infinite of 2000"):
        TrainingWindows([Clip(broken, 8000, "take.wav")], 8000, model, targets_per_window=256, mel=MEL)
    with pytest.raises(ValueError, match=r"clips\[0\]: expected finite values"):
        TrainingWindows([broken], 8000, CausalConvRegressor(), targets_per_window=256)
    # 80 bands up to 8 kHz from a 256-point FFT at 22050 Hz: 4 low bands catch no bin and stay silent.
    with pytest.warns(UserWarning, match="mel: 4 of its 80 bands fall between the FFT's bins .*n_fft 256"):
        TrainingWindows([audio], 22050, small_wavenet(n_cond_channels=80), targets_per_window=256,
                        mel=MelConfig(22050, 256, 64, 256, 80))


def test_sizes_and_rates_are_checked_where_they_are_given(tmp_path):
    # Each failed later or elsewhere: ZeroDivisionError, a RuntimeError from torch.zeros, numpy's
    # "scale < 0", or an error naming resample's target_rate when the first file was read.
    with pytest.raises(ValueError, match="hop: expected an integer >= 1, got 0"):
        conditioning_frames(100, 0, 200)
    with pytest.raises(ValueError, match="window_length: expected an integer >= 0, got -1"):
        loss_mask(Window(0, 10, 0), -1)
    with pytest.raises(ValueError, match="noise_std: expected a standard deviation >= 0"):
        ar2_process(0.5, 0.1, 10, noise_std=-1.0)
    with pytest.raises(ValueError, match="sample_rate: expected an integer >= 1, got 0"):
        Clip(np.zeros(10, dtype=np.float32), 0)
    write_wav(tmp_path / "a.wav", np.zeros(10), 8000)
    with pytest.raises(ValueError, match="sample_rate: expected an integer >= 1, got '8000'"):
        WavFolder(tmp_path, "8000")
