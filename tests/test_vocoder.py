"""Vocoder: mel in, audio out; streamed equals one-shot; checkpoints and NV-WaveNet weights load."""
import json
import os

import pytest
import torch

from nvwavenet.audio import AudioConfig
from nvwavenet.checkpoint import save_model
from nvwavenet.mel import MelConfig
from nvwavenet.model import WaveNet
from nvwavenet.vocoder import Vocoder

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=32, win_length=256, n_mels=10, fmin=0.0, fmax=4000.0)
WAVENET_CONFIG = dict(n_in_channels=64, n_layers=4, max_dilation=4, n_residual_channels=8, n_skip_channels=16,
                      n_out_channels=64, n_cond_channels=10, upsamp_window=96, upsamp_stride=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WaveNet(**WAVENET_CONFIG).eval()


@pytest.fixture(scope="module")
def vocoder(model):
    return Vocoder(model, AudioConfig(8000, 64, MEL))


def test_mel_to_audio(vocoder):
    mel = torch.randn(10, 25)
    audio = vocoder(mel)
    assert audio.shape == (25 * 32,) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1 and audio.std() > 0
    batched = vocoder(torch.randn(3, 10, 7))
    assert batched.shape == (3, 7 * 32)


def test_same_seed_same_audio_and_seed_matters(vocoder):
    mel = torch.randn(10, 12)
    assert torch.equal(vocoder(mel, seed=3), vocoder(mel, seed=3))
    assert not torch.equal(vocoder(mel, seed=3), vocoder(mel, seed=4))


@pytest.mark.parametrize("chunks", [[1] * 20, [3, 5, 7, 5], [19, 1], [20], [2, 0, 18]])
def test_streamed_equals_one_shot(vocoder, chunks):
    mel = torch.randn(2, 10, 20)
    one_shot = vocoder(mel, seed=5)
    pieces, start = [], 0
    for size in chunks:
        pieces.append(mel[:, :, start:start + size])
        start += size
    streamed = list(vocoder.stream(pieces, seed=5))
    assert [p.shape[1] for p in streamed] == [32 * size for size in chunks]
    assert torch.equal(torch.cat(streamed, dim=1), one_shot)


def test_the_same_audio_whatever_the_threads_and_the_batch(model, vocoder):
    """A stream's audio depends on its mel and seed only: not on PyTorch's thread count (which split
    the conditioning's sums differently before it moved to compiled code), the conditioner's or the
    engine's threads, or the streams beside it in a batch."""
    mel = torch.randn(10, 15)
    expected = vocoder(mel, seed=9)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, os.cpu_count()):
            torch.set_num_threads(threads)
            other = Vocoder(model, AudioConfig(8000, 64, MEL))
            other.conditioner.num_threads = threads
            other.net.num_threads = threads
            assert torch.equal(other(mel, seed=9), expected), threads
    finally:
        torch.set_num_threads(before)
    # The batch: the stream's conditioning is the same third in a batch of four as alone (the
    # engine's part is tests/test_cpu_engine.py's; selectors are drawn per stream by the scheduler).
    batch = torch.stack([torch.randn(10, 15), torch.randn(10, 15), mel, torch.randn(10, 15)])
    window = torch.cat([vocoder.conditioner.start(4), batch], dim=2)
    alone = torch.cat([vocoder.conditioner.start(1), mel[None]], dim=2)
    assert torch.equal(vocoder.conditioner(window)[:, 2:3], vocoder.conditioner(alone))


def test_audio_round_trip_through_the_front_end(vocoder):
    audio = torch.sin(torch.arange(4000) * 2 * torch.pi * 440 / 8000) * 0.5
    mel = vocoder.mel_spectrogram(audio)
    assert mel.shape == (10, 1 + 4000 // 32)
    assert vocoder(mel).shape == (mel.shape[1] * 32,)


def test_checkpoint_round_trip(model, vocoder, tmp_path):
    save_model(tmp_path / "ckpt", model, AudioConfig(8000, 64, MEL))
    loaded = Vocoder.from_checkpoint(tmp_path / "ckpt")
    mel = torch.randn(10, 9)
    assert torch.equal(loaded(mel), vocoder(mel))


def test_damaged_checkpoints_are_errors_naming_the_file(model, tmp_path):
    """Each was a KeyError, TypeError, SafetensorError or FileExistsError: tracebacks in the CLI."""
    audio_config = AudioConfig(8000, 64, MEL)
    cases = {"no_audio": (lambda c: c.pop("audio"), "config.json: expected 'audio' settings"),
             "extra_setting": (lambda c: c["model"].update(n_channels=3), "config.json: model: not a valid WaveNet"),
             "rate_as_text": (lambda c: c["audio"].update(sample_rate="8000"), "config.json: audio: sample_rate"),
             # torch's message took a line per tensor: as many lines from the CLI.
             "wider": (lambda c: c["model"].update(n_skip_channels=32), r"model.safetensors: the weights do not "
                       r"match .* wrong shapes conv_out.conv.weight \(64, 16, 1\) \(expected \(64, 32, 1\)\)")}
    for name, (change, message) in cases.items():
        path = save_model(tmp_path / name, model, audio_config)
        config = json.loads((path / "config.json").read_text())
        change(config)
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"{name}/{message}") as caught:
            Vocoder.from_checkpoint(path)
        assert "\n" not in str(caught.value)
    path = save_model(tmp_path / "cut", model, audio_config)
    (path / "model.safetensors").write_bytes(bytes(7))
    with pytest.raises(ValueError, match="cut/model.safetensors: not a readable safetensors file"):
        Vocoder.from_checkpoint(path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="path: .*a_file is a file, expected a checkpoint directory"):
        save_model(tmp_path / "a_file", model, audio_config)


def _nv_wavenet_config():
    return {"wavenet_config": WAVENET_CONFIG,
            "data_config": {"sampling_rate": 8000, "filter_length": 256, "hop_length": 32, "win_length": 256,
                            "mel_fmin": 0.0, "mel_fmax": 4000.0, "mu_quantization": 64, "segment_length": 1000}}


@pytest.mark.parametrize("form", ["dict", "pt", "safetensors"])
def test_nv_wavenet_state_dicts_load(model, vocoder, tmp_path, form):
    state = model.state_dict()
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_nv_wavenet_config()))
    if form == "pt":
        torch.save(state, tmp_path / "wavenet.pt")
        state = tmp_path / "wavenet.pt"
    elif form == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "wavenet.safetensors"))
        state = tmp_path / "wavenet.safetensors"
    imported = Vocoder.from_nv_wavenet(state, config_path)
    mel = torch.randn(10, 6)
    assert torch.equal(imported(mel), vocoder(mel))


def test_nv_wavenet_mismatches_are_listed(model, tmp_path):
    state = dict(model.state_dict())
    del state["res_layers.2.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["embed.weight"] = torch.zeros(32, 8)
    with pytest.raises(ValueError, match=r"missing \['res_layers.2.conv.weight'\].*unexpected \['extra.weight'\]"
                                         r".*embed.weight \(32, 8\) \(expected \(64, 8\)\)"):
        Vocoder.from_nv_wavenet(state, _nv_wavenet_config())
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickle"):
        Vocoder.from_nv_wavenet(tmp_path / "pickled.pt", _nv_wavenet_config())
    with pytest.raises(ValueError, match="config"):
        Vocoder.from_nv_wavenet(model.state_dict(), {"wavenet_config": WAVENET_CONFIG})



def test_nv_wavenet_files_that_are_not_what_they_should_be(model, tmp_path):
    # These were a JSONDecodeError naming no file, a TypeError from WaveNet.__init__ or float(), and a
    # SafetensorError (no ValueError: a traceback in the CLI).
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config: .*config.json is not valid JSON"):
        Vocoder.from_nv_wavenet(model.state_dict(), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config: no file at"):
        Vocoder.from_nv_wavenet(model.state_dict(), tmp_path / "missing.json")
    config = _nv_wavenet_config()
    with pytest.raises(ValueError, match="config: wavenet_config does not fit WaveNet's arguments.*'n_channels'"):
        Vocoder.from_nv_wavenet(model.state_dict(), {**config, "wavenet_config": {**WAVENET_CONFIG, "n_channels": 3}})
    text_fmax = {**config, "data_config": {**config["data_config"], "mel_fmax": "8k"}}
    with pytest.raises(ValueError, match="config: data_config: fmax: expected a number, got '8k'"):
        Vocoder.from_nv_wavenet(model.state_dict(), text_fmax)
    (tmp_path / "wavenet.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="state_dict: .*wavenet.safetensors: not a readable safetensors file"):
        Vocoder.from_nv_wavenet(tmp_path / "wavenet.safetensors", config)


def test_user_errors_are_named(model, vocoder):
    with pytest.raises(ValueError, match="mel.*10 mel bands"):
        vocoder(torch.randn(12, 5))
    with pytest.raises(ValueError, match="mel chunk 1.*batch"):
        list(vocoder.stream([torch.randn(2, 10, 3), torch.randn(3, 10, 3)]))
    # NaN or infinite mels were vocoded into garbage audio without an error.
    mel = torch.randn(10, 3)
    mel[4, 2] = float("inf")
    with pytest.raises(ValueError, match="mel: expected finite values, got 1 NaN or infinite of 30"):
        vocoder(mel)
    with pytest.raises(ValueError, match="audio_config.*mel bands"):
        Vocoder(model, AudioConfig(8000, 64, MelConfig(sample_rate=8000, n_fft=256, hop_length=32, win_length=256,
                                                       n_mels=11, fmax=4000.0)))
    with pytest.raises(ValueError, match="audio_config.*mu-law"):
        Vocoder(model, AudioConfig(8000, 256, MEL))
    with pytest.raises(ValueError, match="dtype"):
        Vocoder(model, AudioConfig(8000, 64, MEL), dtype="float8")
    with pytest.raises(ValueError, match="implementation"):
        Vocoder(model, AudioConfig(8000, 64, MEL), implementation="fastest")
    # Refused only at the first call by the engine; torch's own messages name nothing.
    with pytest.raises(TypeError, match="implementation: expected an nvwavenet.Impl or its name, got 3"):
        Vocoder(model, AudioConfig(8000, 64, MEL), implementation=3)
    with pytest.raises(ValueError, match="device: expected a torch device.*'gpu'"):
        Vocoder(model, AudioConfig(8000, 64, MEL), device="gpu")
    with pytest.raises(ValueError, match="seed: expected an integer"):
        vocoder(torch.randn(10, 2), seed=1.5)
    with pytest.raises(ValueError, match="seed: expected an integer"):
        vocoder(torch.randn(10, 2), seed=2**70)
    with pytest.raises(TypeError, match="mel: expected a float tensor or array, got str"):
        vocoder("mel.npy")
    # Integer PCM was cast to float unscaled (values up to 32767) and went through the front end.
    with pytest.raises(TypeError, match="audio: expected a float tensor, got torch.int16"):
        vocoder.mel_spectrogram(torch.zeros(400, dtype=torch.int16))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device.*CUDA"):
            Vocoder(model, AudioConfig(8000, 64, MEL), device="cuda")


def test_streaming_memory_does_not_grow_with_length():
    """Peak memory of streaming 6 s and 60 s of audio (separate processes, benchmarks/streaming.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nvwavenet

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "streaming.py"
    env = {**os.environ, "PYTHONPATH": str(Path(nvwavenet.__file__).resolve().parents[1])}
    peaks = []
    for minutes in (0.1, 1.0):
        result = subprocess.run([sys.executable, str(script), "--memory-child", str(minutes), "--device", "cpu",
                                 "--memory-layers", "3", "--memory-max-dilation", "2", "--memory-residual", "8",
                                 "--memory-skip", "16"], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["samples"] == int(minutes * 60 * 24000 / 300) * 300
        peaks.append(report["peak_rss_mb"])
    assert peaks[1] < 1.10 * peaks[0], peaks
