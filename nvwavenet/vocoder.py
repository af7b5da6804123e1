"""A drop-in vocoder: mel spectrogram in, waveform out, on the fastest engine of the device.

    vocoder = Vocoder.from_checkpoint("checkpoints/run1", device="cuda", dtype=torch.float16)
    waveform = vocoder(mel)                      # (n_mels, frames) -> (frames * hop,) in [-1, 1]
    for chunk in vocoder.stream(mel_chunks):     # bounded memory, audio as soon as frames arrive
        play(chunk)

Each mel frame yields one hop of samples (:mod:`nvwavenet.conditioning`). One-shot and streamed
vocoding share the per-chunk path: conditioning computed frame by frame, generation resumed
from the streams' rows of a :class:`~nvwavenet.session.Session`, selectors drawn time-major from
one generator. With the same
generator seed they give identical audio, however the frames are chunked (a CPU generator, as
the default one made from ``seed`` is).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator

import torch
from tqdm import tqdm

from .audio import AudioConfig, mu_law_decode
from .checkpoint import load_model
from .conditioning import FrameConditioner
from .inference import Impl, NVWaveNet
from .mel import MelSpectrogram
from .model import WaveNet
from .nv_wavenet_files import load_nv_wavenet_state, read_nv_wavenet_config
from .sampling import draw_selectors
from .session import Session
from .validation import as_tensor, check_allocation

__all__ = ["Vocoder"]

# Frames generated per engine call by one-shot vocoding: bounds the conditioning held at once
# (2R * L * hop floats a frame: about 2.6 MB at R=64, L=20, hop 256, so about 42 MB a call).
FRAMES_PER_CALL = 16
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    return dtype


def _parse_impl(implementation) -> Impl:
    if isinstance(implementation, str):
        try:
            return Impl[implementation.upper()]
        except KeyError:
            raise ValueError(f"implementation: expected one of {', '.join(i.name.lower() for i in Impl)}, "
                             f"got {implementation!r}") from None
    if not isinstance(implementation, Impl):  # else refused only at the first call, by the engine
        raise TypeError(f"implementation: expected an nvwavenet.Impl or its name, got {implementation!r}")
    return implementation


def _seed_generator(seed) -> torch.Generator:
    # manual_seed's own errors ("expected a long, but got float", "Overflow when unpacking long long")
    # do not say which argument.
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= seed < 2**64:
        raise ValueError(f"seed: expected an integer in [-2^63, 2^64), got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


class Vocoder:
    """Mel frames to audio with a trained :class:`~nvwavenet.model.WaveNet`.

    ``dtype`` is the weights' precision, as :class:`~nvwavenet.NVWaveNet` takes it (the CPU engine
    keeps its matrices in it and computes in float32); ``implementation`` the CUDA kernel variant (:class:`~nvwavenet.Impl` or its name).
    """

    def __init__(self, model: WaveNet, audio_config: AudioConfig, *, device="cpu", dtype=torch.float32,
                 implementation=Impl.AUTO):
        if not isinstance(model, WaveNet):
            raise TypeError(f"model: expected a nvwavenet.model.WaveNet, got {type(model).__name__}")
        if not isinstance(audio_config, AudioConfig) or audio_config.mel is None:
            raise ValueError("audio_config: expected an AudioConfig with the mel front end the model was trained on")
        model.check_audio_config(audio_config)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from error
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: CUDA was asked for, but no CUDA GPU is visible to PyTorch")
        self.audio_config = audio_config
        self.implementation = _parse_impl(implementation)
        self.net = NVWaveNet(**model.export_weights(), dtype=_parse_dtype(dtype))
        self.conditioner = FrameConditioner(model, device=self.device)
        self.front_end = MelSpectrogram(audio_config.mel).to(self.device)
        self.config = model.config()

    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype=torch.float32, implementation=Impl.AUTO, *,
                        name: str = "path") -> Vocoder:
        """The vocoder of an nvwavenet checkpoint directory (safetensors weights + JSON config);
        errors about ``path`` itself call it ``name`` (e.g. the command line's ``--checkpoint``)."""
        model, audio_config = load_model(path, "cpu", name=name)
        if not isinstance(model, WaveNet):
            raise ValueError(f"{name}: the checkpoint at {path} holds a {type(model).__name__}, not a WaveNet vocoder")
        return cls(model, audio_config, device=device, dtype=dtype, implementation=implementation)

    @classmethod
    def from_nv_wavenet(cls, state_dict, config, device="cpu", dtype=torch.float32,
                        implementation=Impl.AUTO) -> Vocoder:
        """A vocoder from NV-WaveNet's PyTorch training code, its files read as they are
        (:mod:`nvwavenet.nv_wavenet_files`).

        ``state_dict``: its ``WaveNet`` module's state dict, or ``train.py``'s checkpoint dict
        ``{'model': ..., 'iteration': ...}`` (either as a dict, or a ``.pt``/``.safetensors`` file of
        one); ``config``: its ``config.json`` (path or dict) with ``wavenet_config`` and
        ``data_config``, keys it lacks taking Tacotron 2's ``TacotronSTFT`` defaults. The module
        names are nvwavenet's own, so the weights load unchanged; any mismatch is a ValueError listing it.
        """
        model, audio_config = read_nv_wavenet_config(config)
        load_nv_wavenet_state(model, state_dict)
        return cls(model, audio_config, device=device, dtype=dtype, implementation=implementation)

    @property
    def sample_rate(self) -> int:
        return self.audio_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.audio_config.mel.hop_length

    def mel_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """The model's own front end: float audio ``(samples,)`` or ``(batch, samples)`` to mels."""
        with torch.no_grad():
            # The dtype as given: the front end refuses integer PCM, which a cast would pass unscaled.
            return self.front_end(as_tensor(audio, "audio", "a float tensor or array").to(self.device))

    def _frames(self, mel, name: str) -> torch.Tensor:
        frames = as_tensor(mel, name, "a float tensor or array")
        if frames.dim() == 2:
            frames = frames.unsqueeze(0)
        return self.conditioner.as_frames(frames, name)

    def stream(self, mel_chunks: Iterable, *, generator: torch.Generator | None = None,
               seed: int = 0) -> Iterator[torch.Tensor]:
        """Audio chunk by chunk: each mel chunk ``(n_mels, frames)`` gives ``(frames * hop,)``, and
        ``(batch, n_mels, frames)`` gives ``(batch, frames * hop)``, as :meth:`__call__` does; float
        in [-1, 1] on the vocoder's device.

        Memory holds one chunk, the network's state and a few frames of context, whatever the length.
        """
        generator = generator if generator is not None else _seed_generator(seed)
        session = slots = history = None
        buffer = torch.empty(0, device=self.device)  # each chunk's conditioning, reused once the engine is done
        for index, chunk in enumerate(mel_chunks):
            name = f"mel chunk {index}"
            chunk = as_tensor(chunk, name, "a float tensor or array")
            if chunk.dim() in (2, 3):  # before any work over an expanded (zero-stride) chunk
                self._check_chunk_allocation(chunk, name)
            frames = self._frames(chunk, name)
            if session is None:
                # The streams' generation state: rows of a Session, whose step checks only shapes
                # (the frames' values were checked above, the conditioning and selectors are made here).
                session = Session(self.net, frames.shape[0], device=self.device, dtype=self.net.dtype,
                                  implementation=self.implementation)
                slots = [session.admit() for _ in range(frames.shape[0])]
                history = self.conditioner.start(frames.shape[0])
            elif frames.shape[0] != history.shape[0]:
                raise ValueError(f"mel chunk {index}: batch of {frames.shape[0]} streams, the first chunk had "
                                 f"{history.shape[0]}")
            cond, history = self.condition_chunk(history, frames, buffer=buffer)
            if buffer.numel() < cond.numel():  # for the next chunks, as large as this one
                buffer = torch.empty(cond.numel(), device=self.device)
            selectors = draw_selectors(frames.shape[0], cond.shape[3], generator, self.device)
            _, audio = session.step(slots, cond, selectors, audio=True)
            audio = audio.clone()  # the session's buffer, reused by its next step
            yield audio[0] if chunk.dim() == 2 else audio

    def _check_chunk_allocation(self, chunk: torch.Tensor, name: str) -> None:
        """Refuse a chunk whose conditioning (2R x L float32 values per sample), audio, classes and
        selectors, and new state cannot be allocated: a chunk expanded to 10^9 streams costs nothing
        to make, and would otherwise be worked on until an allocation of terabytes failed."""
        streams, frames = math.prod(chunk.shape[:-2]), chunk.shape[-1]
        per_sample = 4 * (2 * self.net.R * self.net.num_layers + 3)
        per_stream = frames * self.hop_length * per_sample + self.net.receptive_field * self.net.R * 4
        check_allocation(name, streams * per_stream, self.device,
                         f"the conditioning, audio and state of {streams} streams of {frames} frames")

    def condition_chunk(self, history: torch.Tensor, frames: torch.Tensor, *,
                        buffer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditioning of ``frames`` ``(batch, n_mels, n)`` (checked by ``conditioner.as_frames``)
        after ``history``, the frames before them (``conditioner.start`` for a new stream), and the
        history for the next chunk; ``buffer`` as :class:`~nvwavenet.conditioning.FrameConditioner`
        takes it."""
        window = torch.cat([history, frames], dim=2)
        history = window[:, :, window.shape[2] - self.conditioner.context:]
        with torch.no_grad():
            cond = self.conditioner(window, buffer=buffer)
        return self.engine_conditioning(cond), history

    def engine_conditioning(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` in the precision the engine reads: float16 for half-precision weights on CUDA
        (half the bytes the kernels stream), float32 otherwise."""
        if self.net.dtype != torch.float32 and self.device.type == "cuda":
            return cond.to(torch.float16)
        return cond

    def decode(self, classes: torch.Tensor) -> torch.Tensor:
        """Generated mu-law classes as float audio in [-1, 1]."""
        return mu_law_decode(classes, self.audio_config.quantization_channels)

    def __call__(self, mel, *, generator: torch.Generator | None = None, seed: int = 0,
                 progress: bool = False) -> torch.Tensor:
        """The waveform of ``mel`` ``(n_mels, frames)`` -> ``(frames * hop,)``, or batched
        ``(batch, n_mels, frames)`` -> ``(batch, frames * hop)``; float in [-1, 1]."""
        mel = as_tensor(mel, "mel", "a float tensor or array")  # once: its dimensions also say whether one stream was given
        if mel.dim() in (2, 3):  # before any work over an expanded (zero-stride) mel
            check_allocation("mel", math.prod(mel.shape[:-2]) * mel.shape[-1] * self.hop_length * 4, self.device,
                             f"the audio of {mel.shape[-1]} frames")
        frames = self._frames(mel, "mel")
        chunks = list(torch.split(frames, FRAMES_PER_CALL, dim=2))
        pieces = list(tqdm(self.stream(chunks, generator=generator, seed=seed), total=len(chunks),
                           disable=not progress, desc="vocoding", unit="chunk"))
        audio = torch.cat(pieces, dim=1) if pieces else torch.zeros(frames.shape[0], 0, device=self.device)
        return audio[0] if mel.dim() == 2 else audio
