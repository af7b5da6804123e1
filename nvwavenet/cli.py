"""The ``nvwavenet`` command line (also ``python -m nvwavenet``).

A user's mistake (a missing file, a wrong sample rate, a checkpoint of another configuration,
CUDA asked for without a GPU) ends with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .engines import build_info
from .validation import check_finite, check_folder, check_int

# OSError: a missing file or folder, a file where a folder is wanted, no permission, a full disk;
# each names its path.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)
EXIT_USER_ERROR = 2


def _device(name: str) -> torch.device:
    """``name`` as a device this machine has, or a ValueError a user can act on."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}")
    return device


def cmd_info(args) -> int:
    info = build_info()
    print(f"nvwavenet {info['version']}")
    print(f"  compiled module: {'loaded' if info['extension'] else 'missing: ' + info.get('error', '')}")
    print(f"  CUDA kernels:    {'compiled for sm_' + ', sm_'.join(map(str, info['cuda_archs'])) if info['cuda'] else 'not compiled'}")
    if info["cuda"]:
        print(f"  sizes (R, S, A): {', '.join(str(s) for s in info['sizes'])}")
        print(f"  precisions:      {', '.join(info['precisions'])}")
    for key in sorted(set(info) - {"version", "extension", "cuda", "cuda_archs", "sizes", "precisions", "error"}):
        print(f"  {key + ':':<16} {info[key]}")
    print(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda or 'none'}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"  cuda:{index} {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                  f"{props.multi_processor_count} SMs")
    else:
        print("  no CUDA GPU visible: CPU engine only")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    # A length of 0, a negative one or NaN failed inside numpy ("zero-size array to reduction operation").
    if not 0 < args.seconds < math.inf:
        raise ValueError(f"--seconds: expected a positive number of seconds, got {args.seconds}")
    check_folder("--out", args.out, "a folder for the demo's files")
    settings = demo.DemoSettings(steps=args.steps, seconds=args.seconds)
    report = demo.run(args.out, settings, log=print)
    print()
    print(report)
    return 0


def cmd_bench(args) -> int:
    from . import bench
    return bench.main(["--device", str(_device(args.device))] if args.device else [])


def _load_vocoder(args):
    from .vocoder import Vocoder

    device = _device(args.device)
    if args.nv_wavenet_config:
        return Vocoder.from_nv_wavenet(args.checkpoint, args.nv_wavenet_config, device=device, dtype=args.dtype,
                                       implementation=args.impl)
    return Vocoder.from_checkpoint(args.checkpoint, device=device, dtype=args.dtype, implementation=args.impl)


def _input_mel(vocoder, path: Path) -> torch.Tensor:
    """A mel ``(n_mels, frames)`` from a ``.npy`` of mel frames or a ``.wav`` through the front end."""
    from .audio import read_wav

    if path.is_dir():
        raise IsADirectoryError(f"{path}: a directory, expected a .npy mel spectrogram or a .wav file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:  # numpy's own messages do not name the file
            raise ValueError(f"{path}: not a readable .npy array ({error})") from error
        # Integers, booleans and complex numbers would be cast to float frames without a word.
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: expected float mel frames, got dtype {array.dtype}")
        mel = torch.from_numpy(array.astype(np.float32))  # native float32 whatever the file's byte order
        if mel.dim() != 2 or mel.shape[0] != vocoder.audio_config.mel.n_mels or mel.shape[1] == 0:
            raise ValueError(f"{path}: expected a mel of shape ({vocoder.audio_config.mel.n_mels} bands, "
                             f"frames >= 1), got {tuple(mel.shape)}")
        check_finite(str(path), mel)
        return mel
    if path.suffix.lower() == ".wav":
        # Resampled and mixed to mono as training reads its WAVs, so any WAV can be re-synthesised.
        audio, _ = read_wav(path, vocoder.sample_rate)
        try:
            return vocoder.mel_spectrogram(torch.from_numpy(audio)).cpu()
        except ValueError as error:  # too short for the front end: the message names its audio, not the file
            raise ValueError(f"{path}: {error}") from error
    raise ValueError(f"{path}: expected a .npy mel spectrogram or a .wav file")


def cmd_vocode(args) -> int:
    from .audio import write_wav

    check_int("--batch-size", args.batch_size)  # else range() fails, or with a negative size writes nothing
    inputs = [Path(p) for p in args.inputs]
    single_file = len(inputs) == 1 and args.out.suffix.lower() == ".wav"
    targets = [args.out] if single_file else [args.out / f"{path.stem}.wav" for path in inputs]
    written_by = {}
    for path, target in zip(inputs, targets):  # the second would overwrite the first
        if target in written_by:
            raise ValueError(f"{written_by[target]} and {path}: both would be written to {target}; "
                             "vocode inputs with the same name into different --out folders")
        written_by[target] = path
    if single_file and args.out.is_dir():
        raise IsADirectoryError(f"--out: {args.out} is a folder, expected a .wav file to write")
    elif not single_file:
        check_folder("--out", args.out, "a folder for the outputs (or a .wav file for a single input)")
    vocoder = _load_vocoder(args)
    mels = [_input_mel(vocoder, path) for path in inputs]
    # Created once every input has been read: a mistake in one leaves no empty folder behind.
    (args.out.parent if single_file else args.out).mkdir(parents=True, exist_ok=True)
    silence = float(np.log(vocoder.audio_config.mel.clamp_min))
    for first in range(0, len(mels), args.batch_size):
        group = mels[first:first + args.batch_size]
        longest = max(mel.shape[1] for mel in group)
        # Streams of one batch run the same number of steps: pad with silent frames, trim after.
        batch = torch.stack([torch.nn.functional.pad(mel, (0, longest - mel.shape[1]), value=silence)
                             for mel in group])
        audio = vocoder(batch, seed=args.seed + first, progress=not args.quiet).cpu()
        for offset, mel in enumerate(group):
            path, target = inputs[first + offset], targets[first + offset]
            write_wav(target, audio[offset, :mel.shape[1] * vocoder.hop_length].numpy(), vocoder.sample_rate)
            if not args.quiet:
                seconds = mel.shape[1] * vocoder.hop_length / vocoder.sample_rate
                print(f"{path} -> {target} ({seconds:.2f} s at {vocoder.sample_rate} Hz)")
    return 0


def cmd_train(args) -> int:
    from .data import TrainingWindows, WavFolder
    from .mel import MelConfig
    from .model import WaveNet
    from .training import TrainConfig, train

    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of WAV files")
    check_folder("--out", args.out, "a folder for the checkpoint")
    device = str(_device(args.device))
    rate = args.sample_rate
    mel = MelConfig(sample_rate=rate, n_fft=args.n_fft, hop_length=args.hop, win_length=args.n_fft,
                    n_mels=args.n_mels, fmin=0.0, fmax=min(8000.0, rate / 2))
    # The vocoder cannot use a model whose upsampling window (n_fft) is shorter than its stride (the
    # hop): samples between windows would get no conditioning. Refused before training one.
    if args.hop > args.n_fft:
        raise ValueError(f"--hop: expected at most --n-fft ({args.n_fft}), got {args.hop}")
    torch.manual_seed(args.seed)
    model = WaveNet(n_in_channels=args.classes, n_layers=args.layers, max_dilation=args.max_dilation,
                    n_residual_channels=args.residual, n_skip_channels=args.skip, n_out_channels=args.classes,
                    n_cond_channels=args.n_mels, upsamp_window=args.n_fft, upsamp_stride=args.hop)
    windows = TrainingWindows(WavFolder(root, rate), rate, model, targets_per_window=args.window_hops * args.hop,
                              mel=mel)
    result = train(model, windows, TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        checkpoint_dir=str(args.out), checkpoint_every=args.checkpoint_every, device=device,
        progress=not args.quiet), resume=args.resume)
    print(result)
    print(f"checkpoint: {args.out}")
    return 0


def cmd_analyze(args) -> int:
    from .checkpoint import CONFIG_FILE, load_model
    from .model import WaveNet

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or checkpoint")
    if (path / CONFIG_FILE).is_file():
        from .analysis import analyze_model

        model, audio_config = load_model(path)
        if not isinstance(model, WaveNet):
            raise ValueError(f"{path}: holds a {type(model).__name__}; model analysis covers WaveNet checkpoints")
        print(analyze_model(model, audio_config.sample_rate))
        return 0
    from .analysis import analyze_dataset, plot_dataset
    from .data import WavFolder

    if args.plots:
        check_folder("--plots", args.plots, "a folder for the plots")
    folder = WavFolder(path, args.sample_rate)  # refuses a folder without .wav files
    analysis = analyze_dataset(folder, sample_rate=args.sample_rate)
    print(analysis)
    if args.plots:
        for name, written in plot_dataset(analysis, args.plots).items():
            print(f"{name}: {written}")
    return 0


def _add_engine_options(parser) -> None:
    from .inference import Impl

    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--impl", default="auto", choices=[i.name.lower() for i in Impl],
                        help="CUDA kernel variant (default: auto, the fastest that fits)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="weight precision (the CPU engine keeps its matrices in it and computes in float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvwavenet", description="Fast autoregressive WaveNet inference.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train, vocode and compare every engine in about a minute, no data needed",
        description="Synthesise a harmonic tone with a gliding pitch, fit a small conditioned WaveNet to it on the "
                    "CPU, vocode its mel frames with every engine on this machine (float64 reference, CPU engine, "
                    "each CUDA variant), check that they agree, and write WAVs, a PNG and a report with samples/s, "
                    "real-time factor and the log-mel distance to the original (next to an untrained model's).")
    demo.add_argument("--out", type=Path, default=Path("nvwavenet-demo"), help="output folder (default: nvwavenet-demo/)")
    from .demo import DemoSettings
    defaults = DemoSettings()
    demo.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps (default: {defaults.steps})")
    demo.add_argument("--seconds", type=float, default=defaults.seconds,
                      help=f"length of the signal (default: {defaults.seconds:g})")
    demo.set_defaults(run=cmd_demo)

    info = commands.add_parser("info", help="what was built, which GPUs are visible",
                               description="Build facts (CUDA kernels, architectures, sizes, precisions, "
                                           "the CPU engine's instruction set) and the visible GPUs.")
    info.set_defaults(run=cmd_info)

    vocode = commands.add_parser(
        "vocode", help="mel spectrograms (.npy) or WAVs to WAV audio",
        description="Vocode mel spectrograms ((n_mels, frames) .npy files, or .wav files through the model's own "
                    "mel front end, resampled to its rate and mixed to mono) with a trained checkpoint. Several inputs are "
                    "batched together; the WAVs written are at the checkpoint's sample rate.")
    vocode.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy mel spectrograms or .wav files")
    vocode.add_argument("--checkpoint", required=True,
                        help="an nvwavenet checkpoint folder, or with --nv-wavenet-config an NV-WaveNet state dict")
    vocode.add_argument("--nv-wavenet-config", help="NV-WaveNet's config.json, to load --checkpoint as its state dict")
    vocode.add_argument("--out", type=Path, default=Path("vocoded"),
                        help="output folder, or a .wav file for a single input (default: vocoded/)")
    vocode.add_argument("--batch-size", type=int, default=8, help="inputs vocoded together (default: 8)")
    vocode.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    vocode.add_argument("--quiet", action="store_true", help="no progress bar or per-file lines")
    _add_engine_options(vocode)
    vocode.set_defaults(run=cmd_vocode)

    train = commands.add_parser(
        "train", help="train a conditioned WaveNet on a folder of WAVs",
        description="Train a Deep Voice WaveNet conditioned on log-mel spectrograms of the WAV files under DATA; "
                    "checkpoints (safetensors + JSON) go to --out. Runs under torchrun for data parallelism.")
    train.add_argument("data", metavar="DATA", help="folder of .wav files (searched recursively)")
    train.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    train.add_argument("--sample-rate", type=int, default=22050, help="Hz; other rates are resampled (default 22050)")
    train.add_argument("--steps", type=int, default=10000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    train.add_argument("--layers", type=int, default=16)
    train.add_argument("--max-dilation", type=int, default=128)
    train.add_argument("--residual", type=int, default=64, help="R, residual channels")
    train.add_argument("--skip", type=int, default=256, help="S, skip channels")
    train.add_argument("--classes", type=int, default=256, help="A, mu-law classes")
    train.add_argument("--n-mels", type=int, default=80)
    train.add_argument("--n-fft", type=int, default=1024, help="STFT size, also the upsampling window")
    train.add_argument("--hop", type=int, default=256, help="STFT hop, also the upsampling stride")
    train.add_argument("--window-hops", type=int, default=16, help="loss targets per training window, in hops")
    train.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0: at the end)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    analyze = commands.add_parser(
        "analyze", help="analyse a dataset folder or a checkpoint",
        description="A folder of WAVs: lengths, rates, amplitude, clipping, silence, mu-law class histogram, "
                    "correlation length and a suggested n_layers/max_dilation. A checkpoint: parameters, depth, "
                    "receptive field, weight bytes and multiply-adds per sample.")
    analyze.add_argument("path", metavar="PATH", help="a folder of .wav files, or a checkpoint folder")
    analyze.add_argument("--sample-rate", type=int, help="analyse at this rate (default: the most common)")
    analyze.add_argument("--plots", type=Path, help="write PNG plots (histogram, autocorrelation, waveform) here")
    analyze.set_defaults(run=cmd_analyze)

    bench = commands.add_parser("bench", help="the quick benchmark (under a minute)",
                                description="Samples/s and real-time factor of every engine on this machine "
                                            "against the eager PyTorch loop, R64/S256/A256 L=20, batch 1 and 16. "
                                            "The full suite is benchmarks/throughput.py.")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"nvwavenet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nvwavenet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
