"""Training: the AR(2) and sine examples, checkpoints, exact resume, and DDP on two gloo processes."""
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from _ddp_worker import build_case
from nvwavenet import Impl, NVWaveNet, mu_law_decode
from nvwavenet.audio import AudioConfig
from nvwavenet.checkpoint import load_model, load_weights, read_config, save_model
from nvwavenet.data import TrainingWindows, ar2_process, conditioning_frames, sine
from nvwavenet.model import CausalConvRegressor, WaveNet
from nvwavenet import build_check, training
from nvwavenet.training import TrainConfig, batch_indices, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are too small to gain from intra-op threads, and on a loaded 2-core machine
    spinning OpenMP threads have slowed them down more than tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_wavenet(seed=0):
    torch.manual_seed(seed)
    return WaveNet(n_in_channels=256, n_layers=6, max_dilation=8, n_residual_channels=16, n_skip_channels=32,
                   n_out_channels=256, n_cond_channels=1, upsamp_window=16, upsamp_stride=8)


def test_ar2_example_recovers_the_coefficients():
    """A single kernel-2 causal conv trained with MSE on an AR(2) series finds a and b."""
    a, b, c = -0.4, 0.5, 0.2
    series = ar2_process(a, b, 20_000, c=c, seed=1)
    model = CausalConvRegressor(kernel_size=2)
    windows = TrainingWindows([series], 1, model, targets_per_window=254)
    result = train(model, windows, TrainConfig(steps=300, batch_size=16, learning_rate=0.05, weight_decay=0.0,
                                               progress=False))
    a_hat, b_hat = model.lag_weights().tolist()
    print(f"AR(2): a = {a_hat:.4f} (true {a}), b = {b_hat:.4f} (true {b}), c = {model.conv.bias.item():.4f} "
          f"(true {c}), final MSE {result.losses[-1]:.4f} (noise variance 1)")
    assert abs(a_hat - a) < 0.05 and abs(b_hat - b) < 0.05
    assert abs(np.mean(result.losses[-20:]) - 1.0) < 0.1  # what is left is the unit-variance noise


def test_sine_example_generates_its_tone():
    """A small WaveNet overfits a 500 Hz tone at 8 kHz; NVWaveNet's samples peak at 500 Hz."""
    model = tiny_wavenet()
    windows = TrainingWindows([sine(500, 8000, 8000)], 8000, model, targets_per_window=256)
    result = train(model, windows, TrainConfig(steps=200, batch_size=8, learning_rate=3e-3, progress=False))
    assert result.losses[-1] < 0.1 < 5 < result.losses[0]

    n = 2048
    _, frames, _ = conditioning_frames(n, model.upsamp_stride, model.upsamp_window)
    with torch.no_grad():  # unconditioned: the conditioning of all-zero features
        cond = model.get_cond_input(torch.zeros(1, 1, frames), n)
    samples = NVWaveNet(**model.export_weights()).infer(cond, Impl.AUTO, generator=torch.Generator().manual_seed(0))
    audio = mu_law_decode(samples[0]).numpy()
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(n)))
    peak = np.fft.rfftfreq(n, 1 / 8000)[spectrum.argmax()]
    print(f"sine: final loss {result.losses[-1]:.4f}, spectral peak of {n} generated samples at {peak:.2f} Hz "
          f"(bin {8000 / n:.2f} Hz)")
    assert abs(peak - 500) <= 8000 / n


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in training._MALLOC_SETTINGS),
                    reason="the kept heap is glibc's, and only where the environment does not tune malloc itself")
def _typical_step_faults(keep_heap: bool) -> tuple[list[float], float]:
    """Losses of 10 training steps and the median page faults of steps 3 to 9."""
    faults_at_step = []
    loss_sum = training._masked_loss_sum

    def counting(*args, **kwargs):
        faults_at_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return loss_sum(*args, **kwargs)

    training._masked_loss_sum = counting
    if not keep_heap:
        training._heap_keeps_freed_memory = lambda device: contextlib.nullcontext()
    torch.manual_seed(0)
    model = WaveNet(n_in_channels=256, n_layers=2, max_dilation=2, n_residual_channels=8, n_skip_channels=16,
                    n_out_channels=256, n_cond_channels=1, upsamp_window=16, upsamp_stride=8)
    windows = TrainingWindows([sine(300, 8000, 8 * 4100)], 8000, model, targets_per_window=4096)
    losses = train(model, windows, TrainConfig(steps=10, batch_size=8, progress=False)).losses
    per_step = [after - before for before, after in zip(faults_at_step, faults_at_step[1:])]
    return losses, statistics.median(per_step[2:])


def test_cpu_steps_after_the_first_reuse_the_memory_they_free():
    """glibc maps every block over 32 MiB (here the logits and their gradient, 34 MB each) afresh
    and unmaps it at free; without the kept heap every step faulted all of them in again.

    The typical step is compared (the median from the third on): the kept heap still grows by a
    block now and then while its layout settles (up to 16k faults in one step in some runs). Each
    run has a fresh process: a heap that the tests before it fragmented faults more (8k in a
    typical step after the whole suite, against 0-4 alone)."""
    def run(keep_heap):
        script = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                  f"from test_training import _typical_step_faults; "
                  f"print(json.dumps(_typical_step_faults({keep_heap})))")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                                env=build_check.python_env())
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.splitlines()[-1])

    kept_losses, kept_faults = run(True)
    mapped_losses, mapped_faults = run(False)
    print(f"page faults in a typical step: {kept_faults} with the kept heap, {mapped_faults} without")
    assert kept_losses == mapped_losses
    assert kept_faults * 10 < mapped_faults


def test_resume_continues_exactly(tmp_path, monkeypatch):
    clips = [sine(440, 8000, 3000), sine(700, 8000, 2500, amplitude=0.3)]

    def run(directory, steps, resume, seed):
        model = tiny_wavenet(seed)
        windows = TrainingWindows(clips, 8000, model, targets_per_window=256)
        config = TrainConfig(steps=steps, batch_size=4, learning_rate=3e-3, seed=7, checkpoint_dir=str(directory),
                             checkpoint_every=2, progress=False)
        return model, train(model, windows, config, resume=resume)

    whole_model, whole = run(tmp_path / "whole", 6, False, seed=0)
    run(tmp_path / "part", 3, False, seed=0)
    assert json.loads((tmp_path / "part" / "training.json").read_text())["step"] == 3
    # Loading must never unpickle: fail loudly if anything calls torch.load.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called while resuming"))
    resumed_model, resumed = run(tmp_path / "part", 6, True, seed=123)  # other initial weights: overwritten
    assert resumed.losses == whole.losses and len(whole.losses) == 6
    for name, value in whole_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name

    loaded, audio_config = load_model(tmp_path / "part")
    assert isinstance(loaded, WaveNet) and not loaded.training
    assert audio_config == AudioConfig(8000, 256, None)
    assert read_config(tmp_path / "part")["step"] == 6
    for name, value in whole_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == [
        "config.json", "model.safetensors", "training.json", "training.safetensors"]

    with pytest.raises(ValueError, match="seed: the checkpoint's run used 7, got 8"):
        model = tiny_wavenet()
        train(model, TrainingWindows(clips, 8000, model, targets_per_window=256),
              TrainConfig(steps=8, batch_size=4, seed=8, checkpoint_dir=str(tmp_path / "part"), progress=False),
              resume=True)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nvwavenet checkpoint"):
        load_model(tmp_path)
    model = CausalConvRegressor(3)
    save_model(tmp_path / "reg", model, AudioConfig(100, None))
    loaded, config = load_model(tmp_path / "reg")
    assert isinstance(loaded, CausalConvRegressor) and loaded.kernel_size == 3 and config.quantization_channels is None
    with pytest.raises(ValueError, match="model: the checkpoint .* holds a CausalConvRegressor"):
        load_weights(tmp_path / "reg", CausalConvRegressor(2))
    config_path = tmp_path / "reg" / "config.json"
    values = json.loads(config_path.read_text())
    values["model"]["kernel_size"] = 4  # the weights are for kernel 3
    config_path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="the weights do not match the configuration"):
        load_model(tmp_path / "reg")
    config_path.write_text(json.dumps({**values, "format": "something else"}))
    with pytest.raises(ValueError, match="not an nvwavenet checkpoint"):
        load_model(tmp_path / "reg")
    with pytest.raises(TypeError, match="model: expected one of"):
        save_model(tmp_path / "x", torch.nn.Linear(1, 1), AudioConfig(100))


def test_training_rejects_bad_settings():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
    model = tiny_wavenet()
    windows = TrainingWindows([sine(500, 8000, 1000)], 8000, model, targets_per_window=256)
    with pytest.raises(ValueError, match="batch_size: 8 is more than the dataset's 4 windows"):
        train(model, windows, TrainConfig(steps=1, batch_size=8, progress=False))
    with pytest.raises(ValueError, match="dataset: cut for a WaveNet model, got a CausalConvRegressor"):
        train(CausalConvRegressor(), windows, TrainConfig(steps=1, batch_size=2, progress=False))


def test_batches_split_across_ranks_and_epochs():
    whole = batch_indices(10, 4, seed=1, step=0)
    assert batch_indices(10, 4, 1, 0, rank=0, world_size=2) + batch_indices(10, 4, 1, 0, rank=1, world_size=2) \
        == whole[0::2] + whole[1::2]
    epoch = [i for step in range(2) for i in batch_indices(10, 4, 1, step)]
    assert len(set(epoch)) == 8  # two batches per epoch, no repeats within it
    assert batch_indices(10, 4, 1, 2) != whole  # the next epoch is reshuffled


@pytest.mark.slow
def test_distributed_data_parallel_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on the PATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "_ddp_worker.py"),
                    str(tmp_path / "ddp")], check=True, env=env, timeout=240, cwd=tmp_path)
    distributed = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert distributed["world_size"] == 2

    model, windows, config = build_case(str(tmp_path / "single"))
    single = train(model, windows, config)
    np.testing.assert_allclose(distributed["losses"], single.losses, rtol=1e-5)
    ddp_weights = safetensors.torch.load_file(tmp_path / "ddp" / "model.safetensors")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5)


def _files(directory):
    return {p.name: p.read_bytes() for p in Path(directory).iterdir()}


def test_a_non_finite_loss_stops_training_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    clips = [sine(440, 8000, 3000)]

    def run(steps, learning_rate, resume):
        model = tiny_wavenet()
        windows = TrainingWindows(clips, 8000, model, targets_per_window=256)
        return train(model, windows, TrainConfig(steps=steps, batch_size=2, learning_rate=learning_rate,
                                                 checkpoint_dir=str(tmp_path), checkpoint_every=2, progress=False),
                     resume=resume)

    run(2, 1e-3, False)
    good = _files(tmp_path)
    # A finite but absurd rate makes the weights huge at step 3, the loss NaN at step 4: before, the NaN
    # weights were saved over the checkpoint at step 4.
    with pytest.raises(RuntimeError, match=f"step 4: the loss is nan; training stopped \\({tmp_path} keeps "
                                           "the checkpoint of step 2\\)"):
        run(6, 1e30, True)
    assert _files(tmp_path) == good
    # Weights made infinite by an update whose loss was finite are not saved either.
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: [
        p.data.fill_(float("inf")) for group in self.param_groups for p in group["params"]])
    with pytest.raises(RuntimeError, match="step 3: the weights are no longer finite"):
        run(3, 1e-3, True)  # saved at the end, after step 3
    assert _files(tmp_path) == good


def test_non_finite_settings_are_refused():
    for field in ("learning_rate", "weight_decay", "grad_clip"):
        for value in (float("inf"), float("nan")):
            with pytest.raises(ValueError, match=f"{field}: expected a finite"):
                TrainConfig(**{field: value})


def test_an_interruption_says_what_was_saved(interrupt_training):
    interrupt_training(3)
    model = tiny_wavenet()
    windows = TrainingWindows([sine(440, 8000, 3000)], 8000, model, targets_per_window=256)
    with pytest.raises(training.TrainingInterrupted, match="^interrupted after 2 steps; nothing was saved$") as info:
        train(model, windows, TrainConfig(steps=5, batch_size=2, progress=False))
    assert info.value.steps_done == 2 and info.value.saved_step is None
