"""The ``nvwavenet`` command line (also ``python -m nvwavenet``).

A user's mistake (a missing file, a wrong sample rate, a checkpoint of another configuration,
CUDA asked for without a GPU) ends with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .engines import build_info, require_compiled
from .validation import check_folder

# OSError: a missing file or folder, a file where a folder is wanted, no permission, a full disk;
# each names its path.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)
EXIT_USER_ERROR = 2
# The commands that run the compiled engines (vocode --server excepted: the server runs them). Without
# the compiled module they stop at once with its diagnosis (nvwavenet.build_check).
ENGINE_COMMANDS = ("demo", "vocode", "serve", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose mistakes end, as every other user error, in one line and exit code 2
    naming the option first (argparse prints the whole usage before it, which buries the line that
    says what was wrong)."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message.removeprefix('argument ')} "
                                   f"(see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show: flags, options without a
    default, and helps that say it themselves."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _finite_float(text: str) -> float:
    """argparse type: a float that is a number (inf and nan are refused before any work)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


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
    if info["extension"]:
        print("  compiled module: loaded")
    else:
        print(f"  compiled module: {'shadowed' if info['shadowed'] else 'missing'}: {info['error']}")
    print(f"  CUDA kernels:    {'compiled for sm_' + ', sm_'.join(map(str, info['cuda_archs'])) if info['cuda'] else 'not compiled'}")
    if info["cuda"]:
        print(f"  sizes (R, S, A): {', '.join(str(s) for s in info['sizes'])}")
        print(f"  precisions:      {', '.join(info['precisions'])}")
    for key in sorted(set(info) - {"version", "extension", "cuda", "cuda_archs", "sizes", "precisions", "error", "shadowed"}):
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
    return Vocoder.from_checkpoint(args.checkpoint, device=device, dtype=args.dtype, implementation=args.impl,
                                   name="--checkpoint")


def _input_mel(path: Path, n_mels: int, sample_rate: int, front_end) -> torch.Tensor:
    """A mel ``(n_mels, frames)`` from a ``.npy`` of mel frames or a ``.wav`` through ``front_end``
    (the model's mel spectrogram of float audio at ``sample_rate``), for a local vocoder and for
    ``--server`` alike."""
    from .audio import read_wav
    from .mel import load_mel_npy

    if path.is_dir():
        raise IsADirectoryError(f"{path}: a directory, expected a .npy mel spectrogram or a .wav file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return load_mel_npy(path, n_mels, str(path))
    if path.suffix.lower() == ".wav":
        # Resampled and mixed to mono as training reads its WAVs, so any WAV can be re-synthesised.
        audio, _ = read_wav(path, sample_rate)
        try:
            return front_end(torch.from_numpy(audio)).cpu()
        except ValueError as error:  # too short for the front end: the message names its audio, not the file
            raise ValueError(f"{path}: {error}") from error
    raise ValueError(f"{path}: expected a .npy mel spectrogram or a .wav file")


def cmd_vocode(args) -> int:
    from .audio import write_wav

    inputs = [Path(p) for p in args.inputs]
    single_file = args.out.suffix.lower() == ".wav"
    if single_file and len(inputs) > 1:  # it was made a folder named out/two.wav
        raise ValueError(f"--out: {args.out} names a .wav file, but {len(inputs)} inputs need a folder (one WAV per "
                         "input, named after it); give a folder, or a single input")
    targets = [args.out] if single_file else [args.out / f"{path.stem}.wav" for path in inputs]
    written_by = {}
    sources = {path.resolve() for path in inputs}
    for path, target in zip(inputs, targets):  # the second would overwrite the first
        if target.resolve() in sources:  # a WAV vocoded into its own folder replaced the recording
            raise ValueError(f"--out: the output of {path} would overwrite the input {target}; give another --out")
        if target in written_by:
            raise ValueError(f"{written_by[target]} and {path}: both would be written to {target}; "
                             "vocode inputs with the same name into different --out folders")
        written_by[target] = path
    if single_file and args.out.is_dir():
        raise IsADirectoryError(f"--out: {args.out} is a folder, expected a .wav file to write")
    elif not single_file:
        check_folder("--out", args.out, "a folder for the outputs (a path ending in .wav for a single input)")
    if args.server:
        from .client import Client, vocode_files
        from .server import read_token

        client = Client(args.server, token=read_token(args.token_file) if args.token_file else None)
        model = client.model_info()
        mels = [_input_mel(path, model["n_mels"], model["sample_rate"], client.mel_spectrogram) for path in inputs]
        (args.out.parent if single_file else args.out).mkdir(parents=True, exist_ok=True)
        return vocode_files(client, inputs, targets, mels, seed=args.seed, log=None if args.quiet else print)
    if not args.checkpoint:
        raise ValueError("--checkpoint: required unless --server is given")
    if args.token_file:
        raise ValueError("--token-file: a server's token, for --server only")
    vocoder = _load_vocoder(args)
    mels = [_input_mel(path, vocoder.audio_config.mel.n_mels, vocoder.sample_rate, vocoder.mel_spectrogram)
            for path in inputs]
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


# The options that make the model and its data order, their defaults, and where a checkpoint keeps
# them: `train --resume` takes them from there, so a user need not repeat them.
_TRAIN_DEFAULTS = {"sample_rate": 22050, "batch_size": 8, "layers": 16, "max_dilation": 128, "residual": 64,
                   "skip": 256, "classes": 256, "n_mels": 80, "n_fft": 1024, "hop": 256, "window_hops": 16,
                   "seed": 0, "lr": 1e-3}


def _checkpoint_settings(out: Path) -> tuple[dict, int]:
    """The train options the checkpoint in ``out`` was made with (by ``args`` name) and its step."""
    from .checkpoint import read_config, read_training_settings

    config = read_config(out, name="--out")
    model, audio, training = config["model"], config["audio"], read_training_settings(out)
    run = training.get("config") if isinstance(training.get("config"), dict) else {}
    settings = {"sample_rate": audio.get("sample_rate"), "layers": model.get("n_layers"),
                "max_dilation": model.get("max_dilation"), "residual": model.get("n_residual_channels"),
                "skip": model.get("n_skip_channels"), "classes": model.get("n_in_channels"),
                "n_mels": model.get("n_cond_channels"), "n_fft": model.get("upsamp_window"),
                "hop": model.get("upsamp_stride"), "batch_size": training.get("batch_size"),
                "seed": training.get("seed"), "lr": run.get("learning_rate")}
    if "targets_per_window" in training and settings["hop"]:  # not in checkpoints of older versions
        settings["window_hops"] = training["targets_per_window"] // settings["hop"]
    return {name: value for name, value in settings.items() if value is not None}, training["step"]


def _train_settings(args) -> dict:
    """The train options of this run: those given, else (with ``--resume``) the checkpoint's, else the
    defaults. A given option that contradicts the checkpoint is refused: it would be another model."""
    from .checkpoint import CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE

    given = {name: getattr(args, name) for name in _TRAIN_DEFAULTS if getattr(args, name) is not None}
    existing = [name for name in (CONFIG_FILE, MODEL_FILE, TRAINING_FILE, OPTIMIZER_FILE) if (args.out / name).exists()]
    if not args.resume:
        if existing and not args.overwrite:  # a trained model was replaced by a new one, exit 0
            raise FileExistsError(f"--out: {args.out} holds a checkpoint already ({', '.join(existing)}); add --resume "
                                  "to continue its training, --overwrite to replace it, or give another --out")
        return {**_TRAIN_DEFAULTS, **given}
    if not existing:  # training started from step 0 without a word
        raise FileNotFoundError(f"--resume: no checkpoint in {args.out} to continue; leave --resume out to start a "
                                "new training there")
    saved, step = _checkpoint_settings(args.out)
    for name, value in given.items():
        # The learning rate is this run's to choose; everything else makes the model or the data order.
        if name != "lr" and name in saved and saved[name] != value:
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} {value}: the checkpoint in {args.out} was trained with {option} "
                             f"{saved[name]}; leave {option} out to take it from the checkpoint")
    if args.steps <= step:
        raise ValueError(f"--steps {args.steps}: the checkpoint in {args.out} is at step {step} already; --steps "
                         "counts all steps, those before the resume included")
    return {**_TRAIN_DEFAULTS, **saved, **given}


def cmd_train(args) -> int:
    from .checkpoint import load_model
    from .data import TrainingWindows, WavFolder
    from .mel import MelConfig
    from .model import WaveNet
    from .training import TrainConfig, train

    check_folder("--out", args.out, "a folder for the checkpoint")
    settings = _train_settings(args)
    device = str(_device(args.device))
    rate, hop, n_fft = settings["sample_rate"], settings["hop"], settings["n_fft"]
    if args.resume:
        model, audio_config = load_model(args.out, name="--out")  # its weights: loaded again by train()
        mel = audio_config.mel
    else:
        # The vocoder cannot use a model whose upsampling window (n_fft) is shorter than its stride
        # (the hop): samples between windows would get no conditioning. Refused before training one.
        if hop > n_fft:
            raise ValueError(f"--hop: expected at most --n-fft ({n_fft}), got {hop}")
        mel = MelConfig(sample_rate=rate, n_fft=n_fft, hop_length=hop, win_length=n_fft,
                        n_mels=settings["n_mels"], fmin=0.0, fmax=min(8000.0, rate / 2))
        torch.manual_seed(settings["seed"])
        model = WaveNet(n_in_channels=settings["classes"], n_layers=settings["layers"],
                        max_dilation=settings["max_dilation"], n_residual_channels=settings["residual"],
                        n_skip_channels=settings["skip"], n_out_channels=settings["classes"],
                        n_cond_channels=settings["n_mels"], upsamp_window=n_fft, upsamp_stride=hop)
    windows = TrainingWindows(WavFolder(args.data, rate, name="DATA"), rate, model,
                              targets_per_window=settings["window_hops"] * hop, mel=mel)
    result = train(model, windows, TrainConfig(
        steps=args.steps, batch_size=settings["batch_size"], learning_rate=settings["lr"], seed=settings["seed"],
        checkpoint_dir=str(args.out), checkpoint_every=args.checkpoint_every, device=device,
        progress=not args.quiet), resume=args.resume)
    print(result)
    return 0


def cmd_analyze(args) -> int:
    from .checkpoint import CONFIG_FILE, load_model
    from .model import WaveNet

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or checkpoint")
    if (path / CONFIG_FILE).is_file():
        from .analysis import analyze_model

        model, audio_config = load_model(path, name="PATH")
        if not isinstance(model, WaveNet):
            raise ValueError(f"{path}: holds a {type(model).__name__}; model analysis covers WaveNet checkpoints")
        print(analyze_model(model, audio_config.sample_rate))
        return 0
    from .analysis import analyze_dataset, plot_dataset
    from .data import WavFolder

    if args.plots:
        check_folder("--plots", args.plots, "a folder for the plots")
    folder = WavFolder(path, args.sample_rate, name="PATH")  # refuses a folder without .wav files
    analysis = analyze_dataset(folder, sample_rate=args.sample_rate)
    print(analysis)
    if args.plots:
        for name, written in plot_dataset(analysis, args.plots).items():
            print(f"{name}: {written}")
    return 0


def cmd_serve(args) -> int:
    from .server import ServeSettings, read_token, serve

    for name in ("shutdown_grace", "header_timeout", "body_timeout", "send_timeout", "idle_timeout"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a number of seconds >= 0, got {getattr(args, name)}")
    settings = ServeSettings(
        max_streams=args.max_streams, chunk_frames=args.chunk_frames, max_pending_frames=args.max_pending_frames,
        max_ready_chunks=args.max_ready_chunks, max_request_frames=args.max_request_frames, admit=args.admit,
        capacity=args.capacity, max_connections=args.max_connections, max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout, send_timeout=args.send_timeout,
        idle_timeout=args.idle_timeout, shutdown_grace=args.shutdown_grace, allow_origins=tuple(args.allow_origin),
        docs=args.docs)
    token = read_token(args.token_file) if args.token_file else None
    return serve(_load_vocoder(args), settings, host=args.host, port=args.port, token=token,
                 ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, checkpoint=args.checkpoint)


def _integer(minimum: int):
    """argparse type: an integer >= ``minimum`` (a negative batch size wrote nothing; 0 steps failed
    deep inside, naming the library's argument rather than the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value
    return parse


def _add_engine_options(parser) -> None:
    from .inference import Impl

    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--impl", default="auto", choices=[i.name.lower() for i in Impl],
                        help="CUDA kernel variant; auto: the fastest that fits")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="weight precision (the CPU engine keeps its matrices in it and computes in float32)")


def _add_train_options(train) -> None:
    train.add_argument("data", metavar="DATA", help="folder of .wav files (searched recursively)")
    train.add_argument("--out", type=Path, required=True,
                       help="checkpoint folder; one that holds a checkpoint needs --resume or --overwrite")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the training of the checkpoint in --out, with its model, sample rate, mel "
                            "settings, batch size and seed (options that contradict them are refused)")
    again.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --out with a new model")
    train.add_argument("--steps", type=_integer(1), default=10000,
                       help="total training steps; with --resume, those before it count")

    def option(name, kind, help):
        default = _TRAIN_DEFAULTS[name.lstrip("-").replace("-", "_")]
        train.add_argument(name, type=kind, default=None,
                           help=f"{help} (default: {default:g}; with --resume: the checkpoint's)")

    option("--sample-rate", _integer(1), "Hz; WAVs at other rates are resampled")
    option("--batch-size", _integer(1), "training windows per step, over all processes")
    option("--lr", _positive_float, "AdamW learning rate")
    option("--layers", _integer(1), "dilated layers (n_layers)")
    option("--max-dilation", _integer(1), "dilations cycle 1, 2, 4, ... up to this power of two")
    option("--residual", _integer(1), "R, residual channels")
    option("--skip", _integer(1), "S, skip channels")
    option("--classes", _integer(2), "A, mu-law classes")
    option("--n-mels", _integer(1), "mel bands of the conditioning")
    option("--n-fft", _integer(1), "STFT size, also the upsampling window")
    option("--hop", _integer(1), "STFT hop, also the upsampling stride")
    option("--window-hops", _integer(1), "loss targets per training window, in hops")
    option("--seed", _integer(0), "seed of the initial weights and the data order")
    train.add_argument("--checkpoint-every", type=_integer(0), default=1000,
                       help="steps between checkpoints; 0: only at the end")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nvwavenet", description="Fast autoregressive WaveNet inference.",
                     epilog="New here? 'nvwavenet demo' shows every part in a few minutes on a CPU (--steps shortens it). "
                            "'nvwavenet COMMAND --help' lists a command's options and their defaults.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, **kwargs):
        return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    demo = command(
        "demo", help="train, vocode and compare every engine in a few minutes, no data needed",
        description="Synthesise a harmonic tone with a gliding pitch, fit a small conditioned WaveNet to it on the "
                    "CPU, vocode its mel frames with every engine on this machine (float64 reference, CPU engine, "
                    "each CUDA variant), check that they agree, and write WAVs, a PNG and a report with samples/s, "
                    "real-time factor and the log-mel distance to the original (next to an untrained model's), and keep the "
                    "trained checkpoint and the tone's mel .npy to vocode again. It took 1.4 minutes on an idle "
                    "2-core machine and 5.6 on a busy one, almost all of it training.")
    demo.add_argument("--out", type=Path, default=Path("nvwavenet-demo"), help="output folder")
    from .demo import DemoSettings
    defaults = DemoSettings()
    demo.add_argument("--steps", type=_integer(1), default=defaults.steps, help="training steps")
    demo.add_argument("--seconds", type=_positive_float, default=defaults.seconds, help="length of the signal")
    demo.set_defaults(run=cmd_demo)

    info = command("info", help="what was built, which GPUs are visible",
                   description="Build facts (CUDA kernels, architectures, sizes, precisions, the CPU engine's "
                               "instruction set) and the visible GPUs.")
    info.set_defaults(run=cmd_info)

    vocode = command(
        "vocode", help="mel spectrograms (.npy) or WAVs to WAV audio",
        description="Vocode mel spectrograms ((n_mels, frames) .npy files, or .wav files through the model's own "
                    "mel front end, resampled to its rate and mixed to mono) with a trained checkpoint. Several inputs "
                    "are batched together; the WAVs written are at the checkpoint's sample rate.")
    vocode.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy mel spectrograms or .wav files")
    vocode.add_argument("--checkpoint",
                        help="an nvwavenet checkpoint folder, or with --nv-wavenet-config an NV-WaveNet state dict")
    vocode.add_argument("--server", metavar="URL",
                        help="vocode on a running `nvwavenet serve` at URL instead (the same inputs: a WAV's mel is "
                             "computed here with the server model's front end; input i is vocoded with seed + i, "
                             "as locally with --batch-size 1)")
    vocode.add_argument("--token-file", help="with --server: a file holding the server's bearer token")
    vocode.add_argument("--nv-wavenet-config", help="NV-WaveNet's config.json, to load --checkpoint as its state dict")
    vocode.add_argument("--out", type=Path, default=Path("vocoded"),
                        help="output folder, one WAV per input named after it; with a single input also a path "
                             "ending in .wav")
    vocode.add_argument("--batch-size", type=_integer(1), default=8, help="inputs vocoded together")
    vocode.add_argument("--seed", type=_integer(0), default=0, help="seed of the sampling")
    vocode.add_argument("--quiet", action="store_true", help="no progress bar or per-file lines")
    _add_engine_options(vocode)
    vocode.set_defaults(run=cmd_vocode)

    train = command(
        "train", help="train a conditioned WaveNet on a folder of WAVs",
        description="Train a Deep Voice WaveNet conditioned on log-mel spectrograms of the WAV files under DATA; "
                    "checkpoints (safetensors + JSON) go to --out. Runs under torchrun for data parallelism.")
    _add_train_options(train)
    train.set_defaults(run=cmd_train)

    analyze = command(
        "analyze", help="analyse a dataset folder or a checkpoint",
        description="A folder of WAVs: lengths, rates, amplitude, clipping, silence, mu-law class histogram, "
                    "correlation length, pitch and a suggested n_layers/max_dilation. A checkpoint: parameters, depth, "
                    "receptive field, weight bytes and multiply-adds per sample.")
    analyze.add_argument("path", metavar="PATH", help="a folder of .wav files, or a checkpoint folder")
    analyze.add_argument("--sample-rate", type=_integer(1), help="analyse at this rate (default: the most common)")
    analyze.add_argument("--plots", type=Path, help="write PNG plots (histogram, autocorrelation, waveform) here")
    analyze.set_defaults(run=cmd_analyze)

    serve = command(
        "serve", help="a streaming vocoder server (WebSocket, HTTP, Prometheus metrics)",
        description="Serve CHECKPOINT over HTTP and WebSocket (protocol and close codes: nvwavenet.server). Every "
                    "connected stream is batched into one engine call per turn; each stream's audio equals the "
                    "vocoder's for its mel and seed alone. SIGTERM or SIGINT shuts down gracefully.")
    serve.add_argument("checkpoint", metavar="CHECKPOINT", help="an nvwavenet checkpoint folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_integer(0), default=8000, help="port; 0 picks a free one")
    limits = serve.add_argument_group("streams and admission")
    limits.add_argument("--max-streams", type=_integer(1), default=64, help="stream slots (streams served at once)")
    limits.add_argument("--admit", choices=["realtime", "all"], default="realtime",
                        help="realtime: take a new stream only while every admitted one is served in real time "
                             "(the capacity); all: up to --max-streams, each slower as more join")
    limits.add_argument("--capacity", type=_integer(1),
                        help="streams served in real time at once (from a saved benchmark); default: measured at "
                             "startup for the model on its device (a few seconds)")
    limits.add_argument("--chunk-frames", type=_integer(1), default=4, help="mel frames per engine call at most")
    limits.add_argument("--max-pending-frames", type=_integer(1), default=256,
                        help="mel frames queued per stream (also the largest WebSocket message)")
    limits.add_argument("--max-ready-chunks", type=_integer(1), default=4,
                        help="audio chunks generated per stream and not yet sent")
    limits.add_argument("--max-request-frames", type=_integer(1), default=20000,
                        help="mel frames of one POST /v1/vocode (its body is at most 8 * n_mels * this + 4096 bytes)")
    connections = serve.add_argument_group("connections and timeouts (seconds; 0: none)")
    connections.add_argument("--max-connections", type=_integer(1), default=512,
                             help="open connections at most; more are answered 503 and closed")
    connections.add_argument("--max-header-bytes", type=_integer(1), default=16384,
                             help="a request's line and headers at most (more: 400)")
    connections.add_argument("--header-timeout", type=_finite_float, default=10.0,
                             help="for a connection to send a request's line and headers")
    connections.add_argument("--body-timeout", type=_finite_float, default=30.0,
                             help="for a POST body to arrive, once its slot is granted")
    connections.add_argument("--send-timeout", type=_finite_float, default=30.0,
                             help="for a streaming client to read the audio sent")
    connections.add_argument("--idle-timeout", type=_finite_float, default=60.0,
                             help="for a streaming client to send its next message")
    connections.add_argument("--shutdown-grace", type=_finite_float, default=10.0,
                             help="for open streams to finish after SIGTERM")
    security = serve.add_argument_group("security (threat model: README, Serving)")
    security.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                          help="a browser origin (https://app.example) whose pages may use the server; repeatable. "
                               "Requests from other origins get 403; requests without Origin (not from a browser) "
                               "are served")
    security.add_argument("--token-file", help="a file holding a bearer token (16+ characters) that every request "
                                               "but /healthz must send (Authorization: Bearer TOKEN; else 401)")
    security.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve https:// and wss://")
    security.add_argument("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile")
    security.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json")
    _add_engine_options(serve)
    serve.set_defaults(run=cmd_serve, nv_wavenet_config=None)

    bench = command("bench", help="the quick benchmark (under a minute)",
                    description="Samples/s and real-time factor of every engine on this machine "
                                "against the eager PyTorch loop, R64/S256/A256 L=20, batch 1 and 16. "
                                "The full suite is benchmarks/throughput.py.")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.set_defaults(run=cmd_bench)
    return parser


@contextlib.contextmanager
def _conversions_said_once(command: str):
    """Say on one stderr line that input audio was mixed to mono or resampled, the first time it is
    (a run over a folder would say it for every file); other warnings are shown as usual."""
    from .audio import AudioConversionWarning

    said = False
    with warnings.catch_warnings():
        warnings.simplefilter("always", AudioConversionWarning)
        show = warnings.showwarning

        def show_once(message, category, *args, **kwargs):
            nonlocal said
            if not issubclass(category, AudioConversionWarning):
                show(message, category, *args, **kwargs)
            elif not said:
                said = True
                print(f"nvwavenet {command}: note: {message} (said once; other inputs may be converted too)",
                      file=sys.stderr)

        warnings.showwarning = show_once
        yield


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a mistake argparse has reported: a code, not an exception
        return exit.code
    try:
        if args.command in ENGINE_COMMANDS and not getattr(args, "server", None):
            require_compiled(f"nvwavenet {args.command}")  # before any work, not after a demo's training
        with _conversions_said_once(args.command):
            return args.run(args)
    except USER_ERRORS as error:
        print(f"nvwavenet {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:  # from training, it says which step was saved
        from .training import TrainingInterrupted

        resume = ("; run the same command with --resume to continue from it"
                  if isinstance(interrupt, TrainingInterrupted) and interrupt.saved_step is not None else "")
        print(f"nvwavenet {args.command}: {interrupt or 'interrupted'}{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
