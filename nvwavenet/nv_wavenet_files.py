"""NV-WaveNet's own training files, read as they are: its ``config.json`` and its model's weights.

NV-WaveNet (github.com/NVIDIA/nv-wavenet, ``pytorch/``) trains with ``train.py`` from a
``config.json`` of four sections; only two describe the model:

- ``wavenet_config``: the ``WaveNet`` constructor's arguments, which are nvwavenet's own
  (:class:`nvwavenet.model.WaveNet`). Some versions also wrote ``"dropout"``, a
  ``torch.nn.Dropout`` on the training output that inference never applies.
- ``data_config``: ``Mel2SampOnehot``'s arguments. It builds Tacotron 2's ``TacotronSTFT``
  (the version NV-WaveNet's submodule pins) from ``filter_length``, ``hop_length``, ``win_length``
  and ``sampling_rate`` alone, so the band takes that class's defaults, ``mel_fmin=0.0`` and
  ``mel_fmax=None`` (half the sampling rate), and there are always 80 bands. One version wrote
  ``mel_fmin``/``mel_fmax`` into the file, with ``-1`` for "None".

``train.py`` saves ``{'model': <the pickled WaveNet module>, 'optimizer': ..., 'learning_rate': ...,
'iteration': N}``. nvwavenet never unpickles modules, so a file of that kind is refused with the
one line that extracts its state dict; the dict itself, already loaded, is accepted.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .audio import AudioConfig
from .checkpoint import read_json, read_safetensors, state_mismatch
from .mel import MelConfig
from .model import WaveNet
from .validation import check_finite

__all__ = ["read_nv_wavenet_config", "load_nv_wavenet_state"]

# TacotronSTFT's defaults for what mel2samp_onehot.py does not pass it.
TACOTRON_STFT_DEFAULTS = {"mel_fmin": 0.0, "mel_fmax": None}
# wavenet_config keys of NV-WaveNet versions that only training reads.
_TRAINING_ONLY = ("dropout",)

EXTRACT_STATE_DICT = (
    "From NV-WaveNet's pytorch/ folder (its wavenet.py must be importable to unpickle the model) run: "
    "python -c \"import torch; torch.save(torch.load('CHECKPOINT', map_location='cpu', weights_only=False)"
    "['model'].state_dict(), 'wavenet_state.pt')\" (drop weights_only=False on PyTorch older than 1.13) "
    "and pass wavenet_state.pt")


def read_nv_wavenet_config(config) -> tuple[WaveNet, AudioConfig]:
    """The untrained model and the audio configuration that NV-WaveNet's ``config`` (a path to its
    ``config.json`` or the dict in it) describes."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config: no file at {path}")
        config = read_json(path, "config")
    if not (isinstance(config, dict) and isinstance(config.get("wavenet_config"), dict)
            and isinstance(config.get("data_config"), dict)):
        raise ValueError("config: expected NV-WaveNet's config.json with 'wavenet_config' and 'data_config'")
    arguments = {k: v for k, v in config["wavenet_config"].items() if k not in _TRAINING_ONLY}
    try:
        model = WaveNet(**arguments)
    except (TypeError, ValueError) as error:  # a missing, unknown or out-of-range argument
        raise ValueError(f"config: wavenet_config does not fit WaveNet's arguments ({error})") from None
    data = {**TACOTRON_STFT_DEFAULTS, **config["data_config"]}
    if data["mel_fmax"] == -1:  # how the one version that wrote mel_fmax said "None"
        data["mel_fmax"] = None
    try:
        mel = MelConfig(sample_rate=data["sampling_rate"], n_fft=data["filter_length"],
                        hop_length=data["hop_length"], win_length=data["win_length"],
                        n_mels=model.n_cond_channels, fmin=data["mel_fmin"], fmax=data["mel_fmax"])
        audio_config = AudioConfig(data["sampling_rate"], data["mu_quantization"], mel)
    except KeyError as missing:
        raise ValueError(f"config: data_config lacks {missing}") from None
    except (TypeError, ValueError) as error:  # MelConfig's and AudioConfig's own checks, naming the field
        raise ValueError(f"config: data_config: {error}") from None
    return model, audio_config


def _as_state_dict(state_dict):
    """``state_dict`` itself, or the model's state dict out of a ``train.py`` checkpoint dict."""
    if isinstance(state_dict, dict) and "model" in state_dict and not isinstance(state_dict["model"], torch.Tensor):
        model = state_dict["model"]
        if isinstance(model, dict):
            return model
        if callable(getattr(model, "state_dict", None)):
            return model.state_dict()
        raise ValueError(f"state_dict: a train.py checkpoint whose 'model' is a {type(model).__name__}, not the "
                         f"WaveNet module or its state dict. {EXTRACT_STATE_DICT.replace('CHECKPOINT', 'checkpoint')}")
    return state_dict


def _read_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return read_safetensors(path, "state_dict")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError and others for pickled objects
        raise ValueError(
            f"state_dict: {path} is not a plain state dict ({type(error).__name__}); NV-WaveNet's train.py "
            f"checkpoints pickle the whole model, which nvwavenet does not unpickle. "
            f"{EXTRACT_STATE_DICT.replace('CHECKPOINT', str(path))}") from None


def load_nv_wavenet_state(model: WaveNet, state_dict) -> None:
    """Load NV-WaveNet's weights into ``model``: a state dict, a ``train.py`` checkpoint dict
    (``{'model': ..., 'iteration': ...}``) or a ``.pt``/``.safetensors`` file of either."""
    if isinstance(state_dict, (str, os.PathLike)):
        path = Path(state_dict)
        if not path.is_file():
            raise FileNotFoundError(f"state_dict: no file at {path}")
        state_dict = _read_state_file(path)
    state_dict = _as_state_dict(state_dict)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("state_dict: expected a mapping of parameter names to tensors, or NV-WaveNet's train.py "
                         "checkpoint dict {'model': ..., 'iteration': ...}")
    mismatch = state_mismatch(model, state_dict)
    if mismatch:
        raise ValueError("state_dict: does not match wavenet_config: " + mismatch)
    # Checked here, by key: the network's own check would name the exported argument
    # (conv_out_weight), which is not a name in the user's state dict.
    for key, value in state_dict.items():
        check_finite(f"state_dict[{key!r}]", value)
    model.load_state_dict(state_dict)
