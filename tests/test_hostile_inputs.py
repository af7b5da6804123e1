"""Malformed and hostile input to the library and its file readers: each kind is refused with an
error naming what is wrong, in bounded time and memory, and valid input of unusual form is accepted.

Each test is one kind from issue 20; the fixes sit where the input is first read.
"""
import json
import os
import stat
import struct
import time

import numpy as np
import pytest
import torch

from nvwavenet import NVWaveNet
from nvwavenet.audio import AudioConfig, read_wav, resample
from nvwavenet.checkpoint import load_training_state, read_safetensors, save_model, save_training_state
from nvwavenet.mel import MelConfig
from nvwavenet.model import WaveNet
from nvwavenet.state import load_state, save_state
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args
from nvwavenet.vocoder import Vocoder

SMALL = dict(n_in_channels=16, n_layers=2, max_dilation=2, n_residual_channels=4, n_skip_channels=8,
             n_out_channels=16, n_cond_channels=6, upsamp_window=16, upsamp_stride=8)
MEL = MelConfig(sample_rate=8000, n_fft=32, hop_length=8, win_length=32, n_mels=6, fmin=0.0, fmax=4000.0)


@pytest.fixture(scope="module")
def net():
    return NVWaveNet(**random_nv_wavenet_args(4, 8, 16, 2, 2))


def _wav_with_header(path, rate, data=b"\0" * 64, data_size=None):
    """A 16-bit mono WAV whose header says ``rate`` and ``data_size`` whatever the data is."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
            + struct.pack("<I", len(data) if data_size is None else data_size) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + body)


def test_crafted_wav_headers_are_refused_in_bounded_work(tmp_path):
    path = tmp_path / "crafted.wav"
    for rate in (2**31 - 1, 10**6):  # the first made resampling allocate hundreds of GiB
        _wav_with_header(path, rate)
        started = time.perf_counter()
        with pytest.raises(ValueError, match=f"crafted.wav: sample rate {rate} Hz in its header, expected 1 to 768000"):
            read_wav(path, 16000)
        assert time.perf_counter() - started < 5
    # A data size of 4 GiB over 64 bytes of data: what the file holds is read, no more.
    _wav_with_header(path, 16000, data_size=0xFFFFFFFF)
    with pytest.warns(Warning, match="Reached EOF prematurely"):
        audio, rate = read_wav(path, 16000)
    assert audio.shape == (32,) and rate == 16000
    with pytest.raises(ValueError, match="orig_rate: expected an integer <= 768000, got 2147483647"):
        resample(np.zeros(10, np.float32), 2**31 - 1, 16000)
    # A rate sharing no factor with the target: a filter of 15 million taps, seconds for 32 samples.
    _wav_with_header(path, 767999)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="crafted.wav: orig_rate: 767999 Hz to 16000 Hz is the ratio 16000/767999"):
        read_wav(path, 16000)
    assert time.perf_counter() - started < 5


def test_absurd_sizes_in_configs_are_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match="n_fft: expected an integer <= 65536, got 1073741824"):
        MelConfig(n_fft=2**30, win_length=1024)
    with pytest.raises(ValueError, match="n_mels: expected an integer <= 512"):
        MelConfig.from_dict({**MEL.to_dict(), "n_mels": 10**9})
    with pytest.raises(ValueError, match="quantization_channels: expected an integer <= 65536"):
        AudioConfig(8000, 2**40)
    with pytest.raises(ValueError, match="n_residual_channels: expected an integer <= 65536"):
        WaveNet(**{**SMALL, "n_residual_channels": 10**12})
    with pytest.raises(ValueError, match=r"dilated, residual and skip layers \(n_layers x n_residual_channels.*"
                                         r"more than the 268435456"):
        WaveNet(**{**SMALL, "n_layers": 4096, "n_residual_channels": 4096})
    with pytest.raises(ValueError, match="max_dilation: expected at most 2\\^20"):
        WaveNet(**{**SMALL, "max_dilation": 2**40})
    # A checkpoint's config.json with such a size, and one nested deeper than the parser recurses.
    path = save_model(tmp_path / "ckpt", WaveNet(**SMALL), AudioConfig(8000, 16, MEL))
    config = json.loads((path / "config.json").read_text())
    config["audio"]["mel"]["win_length"] = 2**40
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: audio: win_length: expected an integer <= 65536"):
        Vocoder.from_checkpoint(path)
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="config.json: not valid JSON for nvwavenet \\(nested too deeply\\)"):
        Vocoder.from_checkpoint(path)
    (tmp_path / "nv.json").write_text('{"wavenet_config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="config: .*nv.json is not valid JSON for nvwavenet"):
        Vocoder.from_nv_wavenet({}, tmp_path / "nv.json")


def _training_checkpoint(path):
    model = WaveNet(**SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 6, 4), torch.randint(0, 16, (1, 24))).sum().backward()
    optimizer.step()
    save_model(path, model, AudioConfig(8000, 16, MEL), step=1)
    save_training_state(path, optimizer, 1, {"losses": [1.0], "seed": 0})
    return model


def test_damaged_or_mismatched_resume_files_name_the_file(tmp_path):
    path = tmp_path / "ckpt"
    model = _training_checkpoint(path)
    good = json.loads((path / "training.json").read_text())

    def resume(training=None, into=model):
        if training is not None:
            (path / "training.json").write_text(json.dumps(training))
        return load_training_state(path, torch.optim.AdamW(into.parameters()), ("losses", "seed"))

    assert resume()["losses"] == [1.0]
    groups = good["optimizer"]["param_groups"]
    damaged = {
        "no seed": {k: v for k, v in good.items() if k != "seed"},  # was a KeyError in training.py
        "expected a JSON object": [1, 2],
        "expected 'optimizer' to hold param_groups": {**good, "optimizer": {"param_groups": 3, "scalars": {}}},
        r"parameter groups of \[\d+, \d+\] parameters": {**good, "optimizer": {
            **good["optimizer"], "param_groups": groups + groups}},  # "different number of parameter groups"
        "optimizer entry 'x.step' is not": {**good, "optimizer": {  # "invalid literal for int()"
            **good["optimizer"], "scalars": {"x.step": 1}}},
    }
    for message, training in damaged.items():
        with pytest.raises(ValueError, match=f"ckpt/training.json: expected nvwavenet's training state for this run: "
                                             f"{message}"):
            resume(training)
    resume(good)
    other = WaveNet(**{**SMALL, "n_residual_channels": 8})
    with pytest.raises(ValueError, match=r"training.json: .*optimizer entry '2.exp_avg' has shape \(16, 6, 1\), "
                                         r"its parameter \(32, 6, 1\)"):
        resume(into=other)
    (path / "training.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{}")
    with pytest.raises(ValueError, match="training.safetensors: not a readable safetensors file"):
        resume()


def test_generation_state_near_the_int64_maximum_or_damaged(net, tmp_path):
    cond = random_cond_input(4, 1, 2, 3)
    state = net.init_state(1)
    state["position"].fill_(2**63 - 2)  # + 3 samples overflows: a memory error in the CPU engine under ASan
    with pytest.raises(ValueError, match=r"state\['position'\]: expected a step count in \[0, 2\^63 - 1 - 3\]"):
        net.infer(cond, state=state)
    state["position"].fill_(-1)
    with pytest.raises(ValueError, match=r"state\['position'\]"):
        net.infer(cond, state=state)
    state = net.init_state(1)
    state["queues"][0, 1, 2] = float("nan")  # passed in memory, it generated
    with pytest.raises(ValueError, match=r"state\['queues'\]: expected finite values, got 1 NaN"):
        net.infer(cond, state=state)
    save_state(net.init_state(1), tmp_path / "state.safetensors")
    data = (tmp_path / "state.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="path: .*cut.safetensors: not a readable safetensors file"):
        load_state(tmp_path / "cut.safetensors")


def test_unallocatable_outputs_of_expanded_input_are_refused_before_any_work(net):
    started = time.perf_counter()
    long_cond = random_cond_input(4, 1, 2, 1).expand(-1, -1, -1, 10**12)
    with pytest.raises(ValueError, match="cond_input: the outputs and state for 1 streams of 1000000000000 samples would take"):
        net.infer(long_cond)
    many_cond = random_cond_input(4, 1, 2, 1).expand(-1, 10**10, -1, -1)
    with pytest.raises(ValueError, match="cond_input: the outputs and state for 10000000000 streams of 1 samples"):
        net.infer(many_cond)
    with pytest.raises(ValueError, match="batch_size: a state for 10000000000 streams would take"):
        net.init_state(10**10)
    vocoder = Vocoder(WaveNet(**SMALL).eval(), AudioConfig(8000, 16, MEL))
    with pytest.raises(ValueError, match="mel: the audio of 1000000000000 frames would take"):
        vocoder(torch.zeros(6, 1).expand(6, 10**12))
    assert time.perf_counter() - started < 10


def test_checkpoint_tensors_of_the_wrong_dtype_or_overlapping_are_refused(tmp_path):
    path = save_model(tmp_path / "ckpt", WaveNet(**SMALL), AudioConfig(8000, 16, MEL))
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])

    def rewrite(new_header):
        text = json.dumps(new_header).encode()
        text += b" " * (-len(text) % 8)
        weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_size:])

    rewrite({**header, "embed.weight": {**header["embed.weight"], "dtype": "I32"}})  # float bits read as ints
    with pytest.raises(ValueError, match=r"model.safetensors: .*wrong dtypes embed.weight torch.int32 \(expected "
                                         r"torch.float32\)"):
        Vocoder.from_checkpoint(path)
    first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
    begin, end = header[second]["data_offsets"]
    overlapping = {**header, second: {**header[second], "data_offsets": [begin - 4, end - 4]}}
    rewrite(overlapping)
    with pytest.raises(ValueError, match=f"model.safetensors: not a readable safetensors file \\(tensor '{second}': "
                                         f"data_offsets .* overlap"):
        read_safetensors(weights)
    rewrite(header)
    Vocoder.from_checkpoint(path)  # the untouched header still loads


def test_numpy_arrays_and_integers_are_accepted(net, tmp_path):
    args = random_nv_wavenet_args(4, 8, 16, 2, 2)
    as_numpy = {k: (np.stack([t.numpy() for t in v]) if isinstance(v, list)
                    else v.numpy().astype(">f4") if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    as_numpy.update(max_dilation=np.int64(2), use_embed_tanh=np.bool_(True))
    from_numpy = NVWaveNet(**as_numpy)
    cond = random_cond_input(4, 1, 2, 20)
    u = torch.rand(1, 20)
    assert torch.equal(from_numpy.infer(cond, selectors=u), NVWaveNet(**args).infer(cond, selectors=u))
    # A big-endian mel (numpy.save on such a machine, or from a '>f4' array) vocodes as it is.
    vocoder = Vocoder(WaveNet(**SMALL).eval(), AudioConfig(8000, 16, MEL))
    mel = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    assert torch.equal(vocoder(mel.astype(">f4")), vocoder(mel))


def test_two_arguments_that_disagree_are_both_named():
    args = random_nv_wavenet_args(4, 8, 16, 2, 2)
    with pytest.raises(ValueError, match=r"embedding_prev: expected shape \(16, 5\) .*: embedding_prev and "
                                         r"embedding_curr disagree"):
        NVWaveNet(**{**args, "embedding_curr": torch.zeros(16, 5)})
    with pytest.raises(ValueError, match=r"res_weights\[0\]: .*res_weights\[0\] and embedding_curr disagree"):
        NVWaveNet(**{**args, "embedding_prev": torch.zeros(16, 5), "embedding_curr": torch.zeros(16, 5)})


def test_save_state_to_a_missing_folder_or_onto_a_folder(net, tmp_path):
    with pytest.raises(FileNotFoundError, match="path: cannot write .*missing/state.safetensors: its folder does not"):
        save_state(net.init_state(1), tmp_path / "missing" / "state.safetensors")
    with pytest.raises(IsADirectoryError, match="path: .* is a folder, expected a file name"):
        save_state(net.init_state(1), tmp_path)


def test_safetensors_files_get_the_permissions_of_the_json_beside_them(net, tmp_path):
    previous = os.umask(0o022)
    try:
        path = _training_checkpoint(tmp_path / "ckpt") and tmp_path / "ckpt"
        save_state(net.init_state(1), tmp_path / "state.safetensors")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*path.iterdir(), tmp_path / "state.safetensors"]}
    assert set(modes.values()) == {0o644}, modes


def test_stream_follows_the_shape_rule_of_one_shot_vocoding():
    vocoder = Vocoder(WaveNet(**SMALL).eval(), AudioConfig(8000, 16, MEL))
    mel = torch.randn(6, 5)
    pieces = list(vocoder.stream([mel[:, :2], mel[:, 2:]]))
    assert [p.shape for p in pieces] == [(16,), (24,)]
    assert torch.equal(torch.cat(pieces), vocoder(mel))
    batched = list(vocoder.stream([mel[None, :, :2]]))
    assert batched[0].shape == (1, 16)


def test_big_endian_npy_mels_vocode_from_the_command_line(tmp_path):
    from nvwavenet.cli import main

    checkpoint = save_model(tmp_path / "ckpt", WaveNet(**SMALL).eval(), AudioConfig(8000, 16, MEL))
    mel = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    written = {}
    for order in ("<f4", ">f4"):
        folder = tmp_path / order[0].replace("<", "little").replace(">", "big")
        folder.mkdir()
        np.save(folder / "utterance.npy", mel.astype(order))
        assert main(["vocode", str(folder / "utterance.npy"), "--checkpoint", str(checkpoint), "--out",
                     str(folder / "out"), "--quiet"]) == 0
        written[order] = [p.read_bytes() for p in sorted((folder / "out").rglob("*.wav"))]
    assert written["<f4"] and written[">f4"] == written["<f4"]
