"""NV-WaveNet's own files load unchanged, and vocode to what NV-WaveNet's pipeline gives.

``nv_wavenet_configs/`` holds NV-WaveNet's ``pytorch/config.json`` byte for byte as three of its
commits wrote it (github.com/NVIDIA/nv-wavenet): 03f6957 (master: no ``mel_fmin``/``mel_fmax``),
1ce14dc (``"dropout"`` in ``wavenet_config``) and 4161b14 (``mel_fmin`` 0.0, ``mel_fmax`` -1).

The references here are NV-WaveNet's and Tacotron 2's code written out small: ``TacotronSTFT``'s
mel as of the tacotron2 commit NV-WaveNet pins (064629c: ``stft.py``'s Fourier-basis convolution,
librosa 0.6's ``filters.mel``, log of the clamped magnitude) and NV-WaveNet's ``wavenet.py`` (its
module layout, ``get_cond_input``, ``export_weights``). Its CUDA wrapper computes SPEC section 1
with curand's uniform numbers; given the same numbers, :mod:`nvwavenet.reference` is that
computation, so the vocoder's samples are compared with the reference run on NV-WaveNet's own
conditioning and exported weights.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F

from nvwavenet import reference
from nvwavenet.audio import mu_law_decode
from nvwavenet.network import WaveNetWeights
from nvwavenet.sampling import distance_to_cdf_boundary, draw_selectors
from nvwavenet.vocoder import Vocoder

CONFIGS = sorted((Path(__file__).parent / "nv_wavenet_configs").glob("*.json"))


class _Conv(torch.nn.Module):
    """wavenet.py's ``Conv``: what matters here is the ``.conv`` its state dict keys go through."""

    def __init__(self, in_channels, out_channels, kernel_size=1, dilation=1, bias=True):
        super().__init__()
        self.conv = torch.nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)


class NvWaveNet(torch.nn.Module):
    """NV-WaveNet's ``wavenet.WaveNet``: its constructor, modules, ``get_cond_input`` and ``export_weights``."""

    def __init__(self, n_in_channels, n_layers, max_dilation, n_residual_channels, n_skip_channels,
                 n_out_channels, n_cond_channels, upsamp_window, upsamp_stride, dropout=None):
        super().__init__()
        R = n_residual_channels
        self.upsample = torch.nn.ConvTranspose1d(n_cond_channels, n_cond_channels, upsamp_window, upsamp_stride)
        self.n_layers, self.max_dilation, self.n_residual_channels = n_layers, max_dilation, R
        self.n_out_channels = n_out_channels
        self.cond_layers = _Conv(n_cond_channels, 2 * R * n_layers)
        self.dilate_layers, self.res_layers, self.skip_layers = (torch.nn.ModuleList() for _ in range(3))
        self.embed = torch.nn.Embedding(n_in_channels, R)
        self.conv_out = _Conv(n_skip_channels, n_out_channels, bias=False)
        self.conv_end = _Conv(n_out_channels, n_out_channels, bias=False)
        loop_factor = math.floor(math.log2(max_dilation)) + 1
        for i in range(n_layers):
            self.dilate_layers.append(_Conv(R, 2 * R, kernel_size=2, dilation=2 ** (i % loop_factor)))
            if i < n_layers - 1:
                self.res_layers.append(_Conv(R, R))
            self.skip_layers.append(_Conv(R, n_skip_channels))
        if dropout is not None:  # the versions whose config.json has "dropout"
            self.dropout = torch.nn.Dropout(dropout)

    def get_cond_input(self, features):
        cond_input = self.upsample(features)
        time_cutoff = self.upsample.kernel_size[0] - self.upsample.stride[0]
        cond_input = cond_input[:, :, :-time_cutoff]
        cond_input = self.cond_layers.conv(cond_input)
        cond_input = cond_input.view(cond_input.size(0), self.n_layers, -1, cond_input.size(2))
        return cond_input.permute(2, 0, 1, 3)

    def export_weights(self):
        def layers(modules, what):
            return [getattr(m.conv, what).data for m in modules]
        return {"embedding_prev": torch.zeros(self.n_out_channels, self.n_residual_channels),
                "embedding_curr": self.embed.weight.data, "conv_out_weight": self.conv_out.conv.weight.data,
                "conv_end_weight": self.conv_end.conv.weight.data,
                "dilate_weights": layers(self.dilate_layers, "weight"),
                "dilate_biases": layers(self.dilate_layers, "bias"), "max_dilation": self.max_dilation,
                "res_weights": layers(self.res_layers, "weight"), "res_biases": layers(self.res_layers, "bias"),
                "skip_weights": layers(self.skip_layers, "weight"), "skip_biases": layers(self.skip_layers, "bias"),
                "use_embed_tanh": False}


def _librosa_hz_to_mel(frequencies):
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = frequencies / f_sp
    log_t = frequencies >= min_log_hz
    mels[log_t] = min_log_hz / f_sp + np.log(frequencies[log_t] / min_log_hz) / logstep
    return mels


def _librosa_mel_to_hz(mels):
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    freqs = f_sp * mels
    log_t = mels >= min_log_hz / f_sp
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_hz / f_sp))
    return freqs


def librosa_mel(sr, n_fft, n_mels, fmin, fmax):
    """librosa 0.6's ``filters.mel`` (Slaney scale, ``norm=1``), as TacotronSTFT calls it."""
    fmax = float(sr) / 2 if fmax is None else fmax
    weights = np.zeros((n_mels, 1 + n_fft // 2))
    fftfreqs = np.linspace(0, float(sr) / 2, 1 + n_fft // 2, endpoint=True)
    mel_f = _librosa_mel_to_hz(np.linspace(_librosa_hz_to_mel(np.array([fmin], float))[0],
                                           _librosa_hz_to_mel(np.array([fmax], float))[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]


def tacotron_stft_mel(audio, data_config):
    """The mel NV-WaveNet's ``mel2samp_onehot.py`` computes for ``audio`` (1-D, in [-1, 1]):
    ``TacotronSTFT(filter_length, hop_length, win_length, sampling_rate[, mel_fmin, mel_fmax])``
    with the version's own handling of the band (absent: the class's defaults; -1: None)."""
    filter_length, hop_length = data_config["filter_length"], data_config["hop_length"]
    win_length, sr = data_config["win_length"], data_config["sampling_rate"]
    fmin, fmax = data_config.get("mel_fmin", 0.0), data_config.get("mel_fmax")
    fmax = None if fmax == -1 else fmax
    # stft.py: the real and imaginary rows of the DFT, windowed, as a strided convolution.
    fourier_basis = np.fft.fft(np.eye(filter_length))
    cutoff = int(filter_length / 2 + 1)
    fourier_basis = np.vstack([np.real(fourier_basis[:cutoff, :]), np.imag(fourier_basis[:cutoff, :])])
    forward_basis = torch.FloatTensor(fourier_basis[:, None, :])
    fft_window = scipy.signal.get_window("hann", win_length, fftbins=True)
    lpad = (filter_length - win_length) // 2  # librosa.util.pad_center
    fft_window = torch.from_numpy(np.pad(fft_window, (lpad, filter_length - win_length - lpad))).float()
    forward_basis *= fft_window
    x = F.pad(audio.view(1, 1, -1).unsqueeze(1), (filter_length // 2, filter_length // 2, 0, 0), mode="reflect")
    forward_transform = F.conv1d(x.squeeze(1), forward_basis, stride=hop_length, padding=0)
    magnitude = torch.sqrt(forward_transform[:, :cutoff] ** 2 + forward_transform[:, cutoff:] ** 2)
    mel_basis = torch.from_numpy(librosa_mel(sr, filter_length, 80, fmin, fmax)).float()
    return torch.log(torch.clamp(torch.matmul(mel_basis, magnitude), min=1e-5))[0]


def _speech_like(sample_rate, seconds, seed):
    """Int16 audio read as NV-WaveNet reads it (``/ 32768``): two partials and noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    audio = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.1 * torch.sin(2 * math.pi * 3100 * t)
    audio = audio + 0.05 * torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (torch.round(audio * 32767) / 32768).float()


def _load(config_path):
    """NV-WaveNet's module for ``config_path`` and the vocoder of it, from train.py's checkpoint dict."""
    config = json.loads(config_path.read_text())
    torch.manual_seed(0)
    module = NvWaveNet(**config["wavenet_config"]).eval()
    # What train.py's save_checkpoint writes, as torch.load gives it back.
    checkpoint = {"model": module, "optimizer": {}, "learning_rate": 1e-3, "iteration": 1000}
    return config, module, Vocoder.from_nv_wavenet(checkpoint, config_path)


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.stem)
def test_nv_wavenet_files_give_nv_wavenet_mels_and_conditioning(config_path):
    config, module, vocoder = _load(config_path)
    audio = _speech_like(config["data_config"]["sampling_rate"], 0.25, seed=1)
    expected_mel = tacotron_stft_mel(audio, config["data_config"])
    mel = vocoder.mel_spectrogram(audio)
    assert mel.shape == expected_mel.shape
    assert float((mel - expected_mel).abs().max()) < 1e-4  # measured: 2.1e-5 at most

    frames = expected_mel[None, :, 10:14]  # mels as NV-WaveNet's pipeline makes them
    with torch.no_grad():
        ours = vocoder.conditioner(torch.cat([vocoder.conditioner.start(1), frames], dim=2))
        torch.testing.assert_close(ours, module.get_cond_input(frames), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # the float64 reference: about 20 s on a busy 2-core machine
def test_nv_wavenet_samples_for_the_same_selectors():
    config, module, vocoder = _load(CONFIGS[0])
    audio = _speech_like(config["data_config"]["sampling_rate"], 0.25, seed=2)
    frames = tacotron_stft_mel(audio, config["data_config"])[:, 10:12]
    with torch.no_grad():
        cond = module.get_cond_input(frames[None])
    seed = 5
    u = draw_selectors(1, cond.shape[3], torch.Generator().manual_seed(seed), torch.device("cpu"))
    weights = WaveNetWeights.from_nv_wavenet_args(**module.export_weights())
    expected_classes, logits = reference.incremental(weights, cond.double(), u, return_logits=True)
    expected_audio = mu_law_decode(expected_classes[0], config["wavenet_config"]["n_out_channels"])
    vocoded = vocoder(frames, seed=seed)
    assert vocoded.shape == expected_audio.shape
    # Float32 against float64: a sample may flip only where u_t lies on a CDF boundary, and free
    # running then diverges; up to there the samples are NV-WaveNet's.
    differ = (vocoded != expected_audio).nonzero()
    if len(differ):
        first = int(differ[0])
        assert float(distance_to_cdf_boundary(logits[0, :, first], u[0, first])) < 1e-4, first


def test_train_py_checkpoints_and_what_to_do_with_pickled_ones(tmp_path):
    config_path = CONFIGS[0]
    wavenet_config = json.loads(config_path.read_text())["wavenet_config"]
    module = NvWaveNet(**wavenet_config)
    torch.save({"model": module.state_dict(), "iteration": 3}, tmp_path / "state_in_checkpoint.pt")
    from_file = Vocoder.from_nv_wavenet(tmp_path / "state_in_checkpoint.pt", config_path)
    in_memory = Vocoder.from_nv_wavenet({"model": module, "iteration": 3}, config_path)
    mel = torch.randn(80, 2)
    assert torch.equal(from_file(mel), in_memory(mel))
    # train.py pickles the module itself, which nvwavenet does not unpickle: the message says how
    # to extract its state dict.
    torch.save({"model": torch.nn.Linear(2, 2), "iteration": 3}, tmp_path / "wavenet_1000")
    with pytest.raises(ValueError, match=r"wavenet_1000 is not a plain state dict.*torch.save\(torch.load\("
                                         r"'.*wavenet_1000'.*\['model'\].state_dict\(\), 'wavenet_state.pt'\)"):
        Vocoder.from_nv_wavenet(tmp_path / "wavenet_1000", config_path)
    with pytest.raises(ValueError, match=r"'model' is a str, not the WaveNet module.*state_dict\(\)"):
        Vocoder.from_nv_wavenet({"model": "wavenet", "iteration": 3}, config_path)


def test_missing_and_damaged_data_config_keys(tmp_path):
    config = json.loads(CONFIGS[0].read_text())
    module = NvWaveNet(**config["wavenet_config"])
    del config["data_config"]["hop_length"]
    with pytest.raises(ValueError, match="config: data_config lacks 'hop_length'"):
        Vocoder.from_nv_wavenet(module.state_dict(), config)
