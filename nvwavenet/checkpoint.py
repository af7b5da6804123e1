"""Checkpoints: safetensors for tensors, JSON for everything else, so loading never runs pickled code.

A checkpoint is a directory:

- ``config.json``: ``{"format": "nvwavenet-checkpoint", "version": 1, "model_type": "WaveNet",
  "model": model.config(), "audio": AudioConfig.to_dict(), "step": N}``;
- ``model.safetensors``: the model's ``state_dict``.

These two alone are a complete model: :func:`load_model` returns it with its
:class:`~nvwavenet.audio.AudioConfig` (sample rate, mu-law classes, mel front end). A training
checkpoint adds the optimizer, so that training resumes exactly where it stopped:

- ``training.json``: step, the losses so far, the training settings, the optimizer's
  hyperparameters;
- ``training.safetensors``: the optimizer's per-parameter tensors (AdamW's moments and step counts).

Each file records the step it was written at; :func:`load_training_state` refuses files of
different steps (a save that was interrupted) instead of resuming from a mixture.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from .audio import AudioConfig
from .model import CausalConvRegressor, WaveNet
from .validation import check_folder

__all__ = ["save_model", "load_model", "load_weights", "save_training_state", "load_training_state", "read_config",
           "read_training_settings", "state_mismatch"]

FORMAT = "nvwavenet-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.json"
OPTIMIZER_FILE = "training.safetensors"

_MODEL_TYPES = {cls.__name__: cls for cls in (WaveNet, CausalConvRegressor)}


def _replace_json(path: Path, values: dict) -> None:
    # Written beside and renamed over, so a reader never sees a half-written file.
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(temporary, path)


def _replace_tensors(path: Path, tensors: dict, step: int) -> None:
    temporary = path.with_name(path.name + ".partial")
    safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                os.fspath(temporary), metadata={"step": str(step)})
    os.replace(temporary, path)


def _read_json(path: Path):
    """The JSON in ``path``, or a ValueError naming the file (a damaged or hand-edited one)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _read_step_and_tensors(path: Path, *, with_tensors: bool) -> tuple[int, dict]:
    """The step in a safetensors file's metadata and (``with_tensors``) its tensors, or a
    ValueError naming the file: one cut short by an interrupted save, or without the step that
    nvwavenet writes."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt") as f:
            return int(f.metadata()["step"]), {key: f.get_tensor(key) for key in f.keys()} if with_tensors else {}
    except (SafetensorError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable nvwavenet safetensors file ({error!r})") from error


def _make_directory(path: Path) -> None:
    check_folder("path", path, "a checkpoint directory")
    path.mkdir(parents=True, exist_ok=True)


def state_mismatch(model: nn.Module, state: dict) -> str:
    """What keeps ``state`` from loading into ``model``, on one line ("" when nothing does): names
    missing and unexpected, and wrong shapes. (torch's own message takes a line per tensor.)"""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
             "wrong shapes " + ", ".join(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                                         for k in wrong) if wrong else ""]
    return "; ".join(p for p in parts if p)


def _model_type(model: nn.Module) -> str:
    for name, cls in _MODEL_TYPES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"model: expected one of {sorted(_MODEL_TYPES)}, got {type(model).__name__}")


def save_model(path, model: nn.Module, audio_config: AudioConfig, *, step: int = 0) -> Path:
    """Write ``model`` and its audio configuration as a checkpoint directory ``path``."""
    if not isinstance(audio_config, AudioConfig):
        raise TypeError(f"audio_config: expected a nvwavenet.audio.AudioConfig, got {type(audio_config).__name__}")
    path = Path(path)
    model_type = _model_type(model)
    _make_directory(path)
    _replace_tensors(path / MODEL_FILE, model.state_dict(), step)
    _replace_json(path / CONFIG_FILE, {"format": FORMAT, "version": VERSION, "model_type": model_type,
                                       "model": model.config(), "audio": audio_config.to_dict(), "step": step})
    return path


def read_config(path, *, name: str = "path") -> dict:
    """The checkpoint's ``config.json``, checked to be an nvwavenet checkpoint of a known version.
    ``name`` is how the caller's user knows ``path`` (e.g. a command-line option)."""
    path = Path(path)
    config_path, model_path = path / CONFIG_FILE, path / MODEL_FILE
    if not config_path.is_file() or not model_path.is_file():
        raise FileNotFoundError(f"{name}: no nvwavenet checkpoint at {path} (expected {CONFIG_FILE} and "
                                f"{MODEL_FILE} in that directory)")
    config = _read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not an nvwavenet checkpoint config (format {FORMAT!r} expected)")
    if config.get("version") != VERSION:
        raise ValueError(f"{config_path}: checkpoint version {config.get('version')!r}, this nvwavenet reads {VERSION}")
    if config.get("model_type") not in _MODEL_TYPES:
        raise ValueError(f"{config_path}: unknown model_type {config.get('model_type')!r}, "
                         f"expected one of {sorted(_MODEL_TYPES)}")
    for key in ("model", "audio"):  # else a KeyError or AttributeError when loading
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{config_path}: expected {key!r} settings (a JSON object), "
                             f"got {type(config.get(key)).__name__ if key in config else 'none'}")
    return config


def load_weights(path, model: nn.Module) -> AudioConfig:
    """Load the weights of checkpoint ``path`` into ``model``, which must have the checkpoint's
    type and configuration; returns the checkpoint's :class:`~nvwavenet.audio.AudioConfig`."""
    return _load_weights(path, model, read_config(path))


def _load_weights(path, model: nn.Module, config: dict) -> AudioConfig:
    """:func:`load_weights` with ``path``'s config already read (by :func:`read_config`)."""
    if _model_type(model) != config["model_type"] or model.config() != config["model"]:
        raise ValueError(f"model: the checkpoint at {path} holds a {config['model_type']} {config['model']}, "
                         f"not this {type(model).__name__} {model.config()}")
    try:
        audio_config = AudioConfig.from_dict(config["audio"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{Path(path) / CONFIG_FILE}: audio: {error}") from error
    weights_path = Path(path) / MODEL_FILE
    try:
        state = safetensors.torch.load_file(os.fspath(weights_path))
    except SafetensorError as error:  # no ValueError: a traceback in the CLI
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error}); "
                         "was a save interrupted?") from error
    mismatch = state_mismatch(model, state)
    if mismatch:
        raise ValueError(f"{weights_path}: the weights do not match the configuration in {CONFIG_FILE}: {mismatch}")
    model.load_state_dict(state, strict=True)
    return audio_config


def load_model(path, device="cpu", *, name: str = "path") -> tuple[nn.Module, AudioConfig]:
    """The model saved in checkpoint directory ``path`` (in eval mode on ``device``) and its
    :class:`~nvwavenet.audio.AudioConfig` (sample rate, mu-law classes, mel front end); errors
    about ``path`` itself call it ``name``."""
    config = read_config(path, name=name)
    try:
        model = _MODEL_TYPES[config["model_type"]](**config["model"])
    except (TypeError, ValueError) as error:  # settings missing, unknown or out of range
        raise ValueError(f"{Path(path) / CONFIG_FILE}: model: not a valid {config['model_type']} "
                         f"configuration ({error})") from error
    audio_config = _load_weights(path, model, config)
    return model.to(device).eval(), audio_config


def save_training_state(path, optimizer: torch.optim.Optimizer, step: int, extra: dict) -> None:
    """Write the optimizer and the JSON-serialisable ``extra`` (losses, settings) for ``step``."""
    path = Path(path)
    _make_directory(path)
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    _replace_tensors(path / OPTIMIZER_FILE, tensors, step)
    _replace_json(path / TRAINING_FILE, {"step": step, "optimizer": {
        "param_groups": state["param_groups"], "scalars": scalars}, **extra})


def load_training_state(path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore ``optimizer`` from checkpoint ``path``; returns ``training.json`` (step, extras)."""
    path = Path(path)
    training_path, optimizer_path = path / TRAINING_FILE, path / OPTIMIZER_FILE
    if not training_path.is_file() or not optimizer_path.is_file():
        raise FileNotFoundError(f"path: {path} holds no training state ({TRAINING_FILE}, {OPTIMIZER_FILE})")
    training = _read_json(training_path)
    if not (isinstance(training, dict) and "step" in training and isinstance(training.get("optimizer"), dict)
            and {"param_groups", "scalars"} <= training["optimizer"].keys()):
        raise ValueError(f"{training_path}: expected nvwavenet's training state (the step, the optimizer's "
                         "param_groups and scalars)")
    step = training["step"]
    optimizer_step, tensors = _read_step_and_tensors(optimizer_path, with_tensors=True)
    model_step, _ = _read_step_and_tensors(path / MODEL_FILE, with_tensors=False)
    if not step == optimizer_step == model_step:
        raise RuntimeError(f"{path}: inconsistent checkpoint (model step {model_step}, optimizer step "
                           f"{optimizer_step}, training step {step}); was a save interrupted?")
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(training["optimizer"]["scalars"].items()):
        param_id, name = key.split(".", 1)
        per_param.setdefault(int(param_id), {})[name] = value
    # JSON has no tuples; torch optimizers keep hyperparameters such as Adam's betas as tuples.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
              for group in training["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    return training


def read_training_settings(path) -> dict:
    """``training.json`` of checkpoint ``path`` (step, losses, the settings of the run) without
    restoring an optimizer: what a command line needs to continue the run with the same settings."""
    training_path = Path(path) / TRAINING_FILE
    if not training_path.is_file():
        raise FileNotFoundError(f"{path}: holds a model but no training state ({TRAINING_FILE}) to resume from")
    training = _read_json(training_path)
    if not isinstance(training, dict) or not isinstance(training.get("step"), int):
        raise ValueError(f"{training_path}: expected nvwavenet's training state (a JSON object with the step)")
    return training
