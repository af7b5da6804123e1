"""``nvwavenet demo``: the whole product in a few minutes on a CPU, with nothing to download.

1. Synthesise a voiced-like signal: a harmonic tone whose pitch glides and whose loudness swells.
2. Fit a small conditioned WaveNet to it on the CPU (log-mel conditioning, mu-law classes).
3. Vocode its mel frames back to audio with every engine on this machine (the float64 reference,
   the CPU engine, each CUDA variant and precision when there is a GPU), check that they agree
   (SPEC section 4: teacher-forced logits and classes against the reference), and time them.
4. Write the WAVs, a PNG of the original and generated waveforms and spectrograms, and a report
   with samples/s, the real-time factor and the log-mel distance to the original, next to the
   distance an untrained model of the same size gives.
5. Keep the trained model as a checkpoint and the original's mel frames as a ``.npy``, so that
   ``nvwavenet vocode`` (the report prints the command) and ``nvwavenet serve`` can use them.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from . import bench, engines, reference
from .audio import AudioConfig, write_wav
from .checkpoint import save_model
from .conditioning import FrameConditioner
from .data import Clip, TrainingWindows
from .inference import Impl
from .mel import MelConfig, MelSpectrogram
from .model import WaveNet
from .testing import compare_with_reference
from .training import TrainConfig, train
from .vocoder import Vocoder

__all__ = ["DemoSettings", "synthesize", "run"]


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's signal, model and training. R/S/A is a size the CUDA kernels are built for."""

    sample_rate: int = 8000
    seconds: float = 2.0
    steps: int = 1200
    batch_size: int = 4
    learning_rate: float = 3e-3
    n_layers: int = 7
    max_dilation: int = 64
    n_residual: int = 32
    n_skip: int = 128
    n_classes: int = 256
    hop: int = 64
    n_mels: int = 40
    reference_seconds: float = 0.25  # the float64 reference is slow: it vocodes an excerpt
    seed: int = 0

    def mel(self) -> MelConfig:
        return MelConfig(sample_rate=self.sample_rate, n_fft=4 * self.hop, hop_length=self.hop,
                         win_length=4 * self.hop, n_mels=self.n_mels, fmin=40.0, fmax=self.sample_rate / 2)

    def audio(self) -> AudioConfig:
        """How the model sees audio: the rate, A mu-law classes and the mel front end."""
        return AudioConfig(self.sample_rate, self.n_classes, self.mel())

    def model(self, seed: int) -> WaveNet:
        torch.manual_seed(seed)
        return WaveNet(n_in_channels=self.n_classes, n_layers=self.n_layers, max_dilation=self.max_dilation,
                       n_residual_channels=self.n_residual, n_skip_channels=self.n_skip,
                       n_out_channels=self.n_classes, n_cond_channels=self.n_mels, upsamp_window=4 * self.hop,
                       upsamp_stride=self.hop)


def synthesize(seconds: float, sample_rate: int) -> np.ndarray:
    """A harmonic tone (four partials) whose pitch glides between 140 and 260 Hz and whose
    loudness swells, float32 in [-0.5, 0.5]: voice-like, and easy to recognise on a spectrogram."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 200.0 + 60.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    tone = sum(weight * np.sin(k * phase) for k, weight in ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.15)))
    loudness = 0.75 + 0.25 * np.sin(2 * np.pi * 0.8 * t)
    return (0.5 * tone / np.abs(tone).max() * loudness).astype(np.float32)


def log_mel_distance(front_end: MelSpectrogram, audio: torch.Tensor, original_mel: torch.Tensor) -> float:
    """Mean absolute difference of log-mel magnitudes (natural log) over the frames both cover,
    the first and last frame left out (their STFT windows reach past the audio)."""
    mel = front_end(audio.cpu().float())
    frames = min(mel.shape[1], original_mel.shape[1]) - 1
    return float((mel[:, 1:frames] - original_mel[:, 1:frames]).abs().mean())


@dataclasses.dataclass
class EngineResult:
    name: str
    samples_per_second: float
    logits_rel_l2: float | None = None
    boundary_mismatches: int | None = None
    positions: int | None = None
    wav: Path | None = None
    audio: torch.Tensor | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class DemoReport:
    settings: DemoSettings
    train_seconds: float
    final_loss: float
    distance_trained: float
    distance_untrained: float
    engines: list[EngineResult]
    files: dict[str, Path]
    environment: dict

    def table(self) -> str:
        header = ["engine", "samples/s", f"real-time factor at {self.settings.sample_rate / 1000:g} kHz",
                  "teacher-forced logits vs reference", "classes differing (near a CDF boundary)"]
        rows = []
        for e in self.engines:
            agreement = "-" if e.logits_rel_l2 is None else f"{e.logits_rel_l2:.2e} relative L2"
            mismatches = "-" if e.boundary_mismatches is None else f"{e.boundary_mismatches} of {e.positions}"
            rows.append([e.name, f"{e.samples_per_second:,.0f}",
                         f"{e.samples_per_second / self.settings.sample_rate:.2f}", agreement, mismatches])
        return bench.text_table(header, rows)

    def vocode_command(self) -> str:
        """The command that vocodes the saved mel with the saved checkpoint."""
        return (f"nvwavenet vocode {self.files['mel']} --checkpoint {self.files['checkpoint']} "
                f"--out {self.files['mel'].parent / 'vocoded'}")

    def __str__(self) -> str:
        s = self.settings
        return "\n".join([
            f"nvwavenet demo, {self.environment['date']}, {self.environment['device']}, torch {self.environment['torch']}",
            f"signal: {s.seconds:g} s harmonic tone at {s.sample_rate} Hz, pitch gliding 140-260 Hz",
            f"model: R{s.n_residual}/S{s.n_skip}/A{s.n_classes}, {s.n_layers} layers, max dilation {s.max_dilation}, "
            f"{s.n_mels} mel bands, hop {s.hop}",
            f"training: {s.steps} steps in {self.train_seconds:.1f} s, final loss {self.final_loss:.3f}",
            f"log-mel distance to the original: trained {self.distance_trained:.3f}, "
            f"untrained {self.distance_untrained:.3f} (lower is closer)",
            "",
            self.table(),
            "",
            *[f"{name}: {path}" for name, path in self.files.items()],
            "",
            "vocode the mel again with the trained checkpoint (or any (n_mels, frames) float32 .npy of its mel "
            "settings; a .wav works too):",
            f"  {self.vocode_command()}",
        ])


def _time(run) -> tuple[object, float]:
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


def cpu_label() -> str:
    """What runs a CPU vocoder: the compiled engine, or the reference when it is missing."""
    return "cpu engine" if engines.has_extension() else "cpu reference"


def _engine_results(settings, model, mel, out_dir, log) -> list[EngineResult]:
    """Vocode with every engine on this machine, check each against the reference, time each."""
    audio_config = settings.audio()
    excerpt_frames = max(1, int(settings.reference_seconds * settings.sample_rate) // settings.hop)
    results = []

    cpu = Vocoder(model, audio_config)
    conditioner = FrameConditioner(model)
    with torch.no_grad():
        excerpt_cond = conditioner(torch.cat([conditioner.start(1), mel[None, :, :excerpt_frames]], dim=2))
    u = torch.rand(1, excerpt_cond.shape[3], generator=torch.Generator().manual_seed(settings.seed))
    _, seconds = _time(lambda: reference.incremental(cpu.net.weights, excerpt_cond.double(), u))
    results.append(EngineResult("reference (float64, PyTorch)", excerpt_cond.shape[3] / seconds))
    log(f"  reference: {results[-1].samples_per_second:,.0f} samples/s on a {settings.reference_seconds:g} s excerpt")

    # Without the compiled module (NVWAVENET_ALLOW_REFERENCE=1) the CPU path is the reference: said so.
    candidates = [(f"{cpu_label()} (float32)", torch.device("cpu"), Impl.AUTO, torch.float32)]
    if torch.cuda.is_available():
        for name, dtype in bench.engines_for(torch.device("cuda")):
            candidates.append((f"cuda {name.split('-')[1]} ({str(dtype).replace('torch.', '')})",
                            torch.device("cuda"), Impl[name.split("-")[1].upper()], dtype))
    for name, device, impl, dtype in candidates:
        vocoder = cpu if device.type == "cpu" else Vocoder(model, audio_config, device=device, dtype=dtype,
                                                           implementation=impl)
        cond = excerpt_cond.to(device, torch.float16 if dtype != torch.float32 else torch.float32)
        try:
            agreement = compare_with_reference(vocoder.net, cond, impl, seed=settings.seed)
        except ValueError as error:  # this variant cannot run this configuration on this GPU
            log(f"  {name}: skipped ({error})")
            continue
        vocoder(mel[:, :2])  # warm-up: weight packing, kernel load
        bench.synchronize(device)
        audio, seconds = _time(lambda: vocoder(mel, seed=settings.seed).cpu())
        slug = name.split(" (")[0].replace(" ", "-") + ("" if dtype == torch.float32 else "-" + str(dtype)[6:])
        wav = out_dir / f"generated-{slug}.wav"
        write_wav(wav, audio.numpy(), settings.sample_rate)
        results.append(EngineResult(name, audio.numel() / seconds, agreement["logits_rel_l2"],
                                    agreement["boundary_mismatches"], agreement["positions"], wav, audio))
        log(f"  {name}: {results[-1].samples_per_second:,.0f} samples/s, agrees with the reference "
            f"(logits {agreement['logits_rel_l2']:.1e} relative L2)")
    return results


def _plot(path: Path, sample_rate: int, signals: dict[str, np.ndarray], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(signals), figsize=(4.6 * len(signals), 6.2), squeeze=False)
    excerpt = slice(int(0.5 * sample_rate), int(0.54 * sample_rate))
    # One dB scale for every spectrogram, 80 dB down from the original's loudest bin.
    loudest = 10 * np.log10(plt.mlab.specgram(next(iter(signals.values())), NFFT=256, Fs=sample_rate,
                                              noverlap=192)[0].max())
    for column, (name, audio) in enumerate(signals.items()):
        t = np.arange(len(audio))[excerpt] / sample_rate * 1000
        axes[0][column].plot(t, audio[excerpt], linewidth=1)
        axes[0][column].set(title=name, xlabel="ms", ylim=(-1, 1))
        axes[1][column].specgram(audio, NFFT=256, Fs=sample_rate, noverlap=192, cmap="magma",
                                 vmin=loudest - 80, vmax=loudest)
        axes[1][column].set(xlabel="s", ylabel="Hz", ylim=(0, min(2000, sample_rate / 2)))
    axes[0][0].set_ylabel("amplitude (40 ms excerpt)")
    figure.suptitle(bench.caption(title, 140), fontsize=9)
    bench.save_figure(figure, path, dpi=110)


def run(out_dir, settings: DemoSettings | None = None, log=print) -> DemoReport:
    """Run the demo, writing its files into ``out_dir``; returns the report."""
    engines.require_compiled("the demo")  # before the training, not after it
    settings = settings or DemoSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    audio = synthesize(settings.seconds, settings.sample_rate)
    files = {"original": out_dir / "original.wav"}
    write_wav(files["original"], audio, settings.sample_rate)

    mel_config = settings.mel()
    model = settings.model(settings.seed)
    windows = TrainingWindows([Clip(audio, settings.sample_rate, "demo tone")], settings.sample_rate, model,
                              targets_per_window=8 * settings.hop, mel=mel_config)
    log(f"training R{settings.n_residual}/S{settings.n_skip}/A{settings.n_classes}, {settings.n_layers} layers "
        f"on {settings.seconds:g} s of audio, {settings.steps} steps")
    result, train_seconds = _time(lambda: train(model, windows, TrainConfig(
        steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        seed=settings.seed)))
    model.eval()
    files["checkpoint"] = save_model(out_dir / "checkpoint", model, settings.audio(), step=settings.steps)

    front_end = MelSpectrogram(mel_config)
    with torch.no_grad():
        original_mel = front_end(torch.from_numpy(audio))
    files["mel"] = out_dir / "original-mel.npy"
    np.save(files["mel"], original_mel.numpy())
    log("vocoding the original's mel frames with every engine")
    results = _engine_results(settings, model, original_mel, out_dir, log)
    cpu_engine = next(e for e in results if e.audio is not None)
    generated, files["generated"] = cpu_engine.audio, cpu_engine.wav

    untrained = Vocoder(settings.model(settings.seed), settings.audio())
    untrained_audio = untrained(original_mel, seed=settings.seed)
    files["untrained"] = out_dir / "untrained.wav"
    write_wav(files["untrained"], untrained_audio.numpy(), settings.sample_rate)
    with torch.no_grad():
        distance_trained = log_mel_distance(front_end, generated, original_mel)
        distance_untrained = log_mel_distance(front_end, untrained_audio, original_mel)

    environment = bench.environment(bench.default_device())
    files["plot"] = out_dir / "demo.png"
    report = DemoReport(settings, train_seconds, result.losses[-1], distance_trained, distance_untrained, results,
                        files, environment)
    _plot(files["plot"], settings.sample_rate,
          {"original": audio, f"generated (trained, {cpu_label()})": generated.numpy(),
           "untrained model": untrained_audio.numpy()},
          f"nvwavenet demo, {environment['date']}: log-mel distance to the original {distance_trained:.2f} "
          f"(trained) vs {distance_untrained:.2f} (untrained); training {train_seconds:.0f} s")
    files["report"] = out_dir / "report.txt"
    files["report"].write_text(str(report) + "\n")
    return report
