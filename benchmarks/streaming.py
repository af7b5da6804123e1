"""Streaming vocoding: time to first audio, throughput next to one-shot, memory against length.

A vocoder at 24 kHz (hop 300, 80 mel bands) with an R64/S256/A256, L=20, max-dilation-512
network (random weights: speed does not depend on training):

- time to first audio: a fresh stream gets one 50 ms chunk of mel frames (4 frames); the time until
  its audio comes back (conditioning and generation), median over repeats;
- throughput: the same audio vocoded in 50 ms chunks through ``Vocoder.stream`` and in one call;
- memory: peak memory of streaming 1 and 10 minutes (separate processes, random mel frames made
  chunk by chunk, audio discarded): resident set size on the CPU, PyTorch's peak allocation on a
  GPU. A smaller network (``--memory-layers``) keeps 10 minutes affordable; memory per stream
  does not depend on the utterance's length either way.

    python benchmarks/streaming.py [--device cuda] [--dtype float16]
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nvwavenet import bench
from nvwavenet.audio import AudioConfig
from nvwavenet.mel import MelConfig
from nvwavenet.model import WaveNet
from nvwavenet.vocoder import Vocoder

HERE = Path(__file__).resolve().parent
RATE, HOP, MELS = 24000, 300, 80
CHUNK_FRAMES = 4  # 4 hops of 300 samples: 50 ms at 24 kHz


def make_model(n_residual: int, n_skip: int, n_layers: int, max_dilation: int) -> tuple[WaveNet, AudioConfig]:
    """A randomly initialised vocoder model at 24 kHz, hop 300, 80 mels, and its audio configuration."""
    torch.manual_seed(0)
    model = WaveNet(n_in_channels=256, n_layers=n_layers, max_dilation=max_dilation, n_residual_channels=n_residual,
                    n_skip_channels=n_skip, n_out_channels=256, n_cond_channels=MELS, upsamp_window=4 * HOP,
                    upsamp_stride=HOP).eval()
    mel = MelConfig(sample_rate=RATE, n_fft=4 * HOP, hop_length=HOP, win_length=4 * HOP, n_mels=MELS,
                    fmin=0.0, fmax=8000.0)
    return model, AudioConfig(RATE, 256, mel)


def make_vocoder(n_residual: int, n_skip: int, n_layers: int, max_dilation: int, device, dtype) -> Vocoder:
    return Vocoder(*make_model(n_residual, n_skip, n_layers, max_dilation), device=device, dtype=dtype)


def mel_chunks(total_frames: int, chunk_frames: int, seed: int = 0):
    """Random log-mel frames, made chunk by chunk (never the whole utterance at once)."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, total_frames, chunk_frames):
        yield torch.randn(MELS, min(chunk_frames, total_frames - start), generator=generator) - 5.0


def first_audio_seconds(vocoder: Vocoder, repeats: int) -> float:
    times = []
    for repeat in range(repeats + 1):  # the first run warms up
        chunk = next(mel_chunks(CHUNK_FRAMES, CHUNK_FRAMES, seed=repeat))
        bench.synchronize(vocoder.device)
        start = time.perf_counter()
        audio = next(vocoder.stream([chunk]))
        bench.synchronize(vocoder.device)
        times.append(time.perf_counter() - start)
        assert audio.shape[-1] == CHUNK_FRAMES * HOP
    return statistics.median(times[1:])


def throughput(vocoder: Vocoder, seconds: float, repeats: int) -> tuple[float, float]:
    """(streamed, one-shot) samples/s for ``seconds`` of audio, medians over ``repeats`` runs of each,
    taken in turns so that both see the same load on the machine."""
    frames = int(seconds * RATE / HOP)
    mel = torch.cat(list(mel_chunks(frames, CHUNK_FRAMES)), dim=1)
    list(vocoder.stream(mel_chunks(2 * CHUNK_FRAMES, CHUNK_FRAMES)))  # warm-up

    def rate(generate) -> float:
        bench.synchronize(vocoder.device)
        start = time.perf_counter()
        samples = generate()
        bench.synchronize(vocoder.device)
        return samples / (time.perf_counter() - start)

    streamed, one_shot = [], []
    for _ in range(repeats):
        streamed.append(rate(lambda: sum(chunk.shape[-1] for chunk in
                                         vocoder.stream(torch.split(mel, CHUNK_FRAMES, dim=1)))))
        one_shot.append(rate(lambda: vocoder(mel).shape[-1]))
    return statistics.median(streamed), statistics.median(one_shot)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries the RSS a process had
    before exec() into it, so a child would report its parent's footprint."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def memory_child(args) -> None:
    """Stream ``args.memory_child`` minutes and print peak memory as JSON (run in its own process)."""
    device = torch.device(args.device)
    vocoder = make_vocoder(args.memory_residual, args.memory_skip, args.memory_layers, args.memory_max_dilation,
                           device, args.dtype)
    frames = int(args.memory_child * 60 * RATE / HOP)
    checksum, samples = 0.0, 0
    for audio in vocoder.stream(mel_chunks(frames, RATE // HOP)):  # one-second chunks
        checksum += float(audio.sum())
        samples += audio.shape[-1]
    print(json.dumps({"minutes": args.memory_child, "samples": samples, "checksum": checksum,
                      "peak_rss_mb": peak_rss_mb(),
                      "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None}))


def measure_memory(args, minutes: float) -> dict:
    command = [sys.executable, __file__, "--memory-child", str(minutes), *args.child_args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"the {minutes:g}-minute memory run failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=str(bench.default_device()))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio for the throughput comparison")
    parser.add_argument("--repeats", type=int, default=7, help="time-to-first-audio repeats (median)")
    parser.add_argument("--throughput-repeats", type=int, default=3,
                        help="streamed and one-shot runs of --seconds audio each (median)")
    parser.add_argument("--minutes", type=float, nargs=2, default=[1.0, 10.0], help="utterance lengths compared")
    parser.add_argument("--memory-layers", type=int, default=8)
    parser.add_argument("--memory-max-dilation", type=int, default=128)
    parser.add_argument("--memory-residual", type=int, default=32)
    parser.add_argument("--memory-skip", type=int, default=128)
    parser.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    args.child_args = ["--device", args.device, "--dtype", args.dtype,
                       "--memory-layers", str(args.memory_layers), "--memory-max-dilation", str(args.memory_max_dilation),
                       "--memory-residual", str(args.memory_residual), "--memory-skip", str(args.memory_skip)]
    if args.memory_child is not None:
        memory_child(args)
        return 0

    device = torch.device(args.device)
    env = bench.environment(device)
    command = "python benchmarks/streaming.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    vocoder = make_vocoder(64, 256, 20, 512, device, args.dtype)
    latency = first_audio_seconds(vocoder, args.repeats)
    streamed, one_shot = throughput(vocoder, args.seconds, args.throughput_repeats)
    short, long = (measure_memory(args, minutes) for minutes in args.minutes)
    memory_key = "peak_cuda_mb" if device.type == "cuda" else "peak_rss_mb"
    growth = long[memory_key] / short[memory_key] - 1

    rows = [
        ["time to first audio, 50 ms chunk", f"{latency * 1000:.1f} ms"],
        [f"streamed (50 ms chunks), median of {args.throughput_repeats}",
         f"{streamed:,.0f} samples/s, {streamed / RATE:.2f}x real time"],
        [f"one-shot, median of {args.throughput_repeats}", f"{one_shot:,.0f} samples/s, {one_shot / RATE:.2f}x real time"],
        [f"peak memory, {args.minutes[0]:g} min", f"{short[memory_key]:,.1f} MiB"],
        [f"peak memory, {args.minutes[1]:g} min", f"{long[memory_key]:,.1f} MiB ({growth:+.1%})"],
    ]
    description = (f"Vocoder at {RATE} Hz, hop {HOP}, {MELS} mels; R64/S256/A256 L=20 max dilation 512 for "
                   f"latency and throughput, R{args.memory_residual}/S{args.memory_skip}/A256 "
                   f"L={args.memory_layers} for memory ({'PyTorch peak allocation' if device.type == 'cuda' else 'peak RSS'}); "
                   f"{args.device}, {args.dtype}.")
    print(description)
    print(bench.text_table(["measure", "value"], rows))
    bench.write_results(args.results, {
        f"streaming-{device.type}": f"## Streaming, {device.type.upper()}\n\n{description}\n"
                                    f"{bench.environment_line(env, command)}\n\n"
                                    f"{bench.markdown_table(['measure', 'value'], rows)}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
