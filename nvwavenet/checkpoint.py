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
from collections import Counter
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from .audio import AudioConfig
from .model import CausalConvRegressor, WaveNet
from .validation import check_folder

__all__ = ["save_model", "load_model", "load_weights", "save_training_state", "load_training_state", "read_config",
           "read_training_settings", "state_mismatch", "read_json", "read_safetensors", "write_safetensors"]

FORMAT = "nvwavenet-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.json"
OPTIMIZER_FILE = "training.safetensors"

_MODEL_TYPES = {cls.__name__: cls for cls in (WaveNet, CausalConvRegressor)}


# Bounds on what a reader takes in before looking at it: the largest JSON nvwavenet writes (a
# training.json of a million steps' losses) is tens of MB; safetensors' own header limit is 100 MB.
MAX_JSON_BYTES = 256 * 2**20
MAX_SAFETENSORS_HEADER = 100 * 2**20
# safetensors dtype names and their sizes in bytes.
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _replace_json(path: Path, values: dict) -> None:
    # Written beside and renamed over, so a reader never sees a half-written file.
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(temporary, path)


def write_safetensors(path, tensors: dict, metadata: dict | None = None, name: str = "path") -> None:
    """Write ``tensors`` to ``path`` as safetensors, or an OSError naming ``name`` and the path.

    Written through ``open()``, as the JSON beside it is, so the file gets the user's umask
    (safetensors' own ``save_file`` creates files 0600).
    """
    data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except IsADirectoryError:
        raise IsADirectoryError(f"{name}: {path} is a folder, expected a file name to write") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: cannot write {path}: its folder does not exist") from None
    except OSError as error:
        raise OSError(f"{name}: cannot write {path} ({error.strerror or error})") from None


def _replace_tensors(path: Path, tensors: dict, step: int) -> None:
    temporary = path.with_name(path.name + ".partial")
    write_safetensors(temporary, tensors, {"step": str(step)})
    os.replace(temporary, path)


def read_json(path: Path, name: str | None = None):
    """The JSON in ``path``, or a ValueError naming the file (and ``name``, the argument that gave
    it): damaged, hand-edited, larger than any nvwavenet writes, or nested deeper than Python's
    parser recurses."""
    prefix = f"{name}: {path} is" if name else f"{path}:"
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{prefix} not valid JSON for nvwavenet ({path.stat().st_size} bytes, "
                         f"more than the {MAX_JSON_BYTES} a config holds)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{prefix} not valid JSON ({error})") from error
    except RecursionError:
        raise ValueError(f"{prefix} not valid JSON for nvwavenet (nested too deeply)") from None


def _no_duplicate_keys(pairs):
    values = dict(pairs)
    if len(values) != len(pairs):
        raise ValueError(f"duplicate keys {sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)}")
    return values


def _safetensors_layout_error(path: Path) -> str | None:
    """What is wrong with the header of safetensors file ``path``, or None: every tensor's bytes
    must be its shape's worth, and the tensors must tile the data without overlapping (two
    tensors on the same bytes, or a dtype that does not fit them, load silently otherwise in
    some safetensors versions)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        header_bytes = int.from_bytes(head, "little")
        if header_bytes > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"its header claims {header_bytes} bytes, the file holds {size - 8}"
        try:
            header = json.loads(f.read(header_bytes), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            return f"its header is not valid JSON ({error})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = 1
            for extent in info["shape"]:
                count *= extent if isinstance(extent, int) and extent >= 0 else -1
            itemsize = _DTYPE_SIZES[info["dtype"]]
        except (TypeError, KeyError, ValueError):
            return f"tensor {key!r}: no valid dtype, shape and data_offsets in the header"
        if not (isinstance(begin, int) and isinstance(end, int)) or count < 0 or end - begin != count * itemsize:
            return (f"tensor {key!r}: data_offsets {info['data_offsets']} do not hold {info['dtype']} of shape "
                    f"{info['shape']}")
        spans.append((begin, end, key))
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            return f"tensor {key!r}: data_offsets [{begin}, {end}] overlap or leave a gap (expected start {position})"
        position = end
    if position != size - 8 - header_bytes:
        return f"the tensors take {position} bytes of data, the file holds {size - 8 - header_bytes}"
    return None


def read_safetensors(path, name: str | None = None) -> dict:
    """The tensors of safetensors file ``path``, or a ValueError naming the file (and ``name``):
    cut short by an interrupted save, damaged, or with a header whose tensors overlap."""
    path = Path(path)
    prefix = f"{name}: {path}" if name else f"{path}"
    if path.is_dir():
        raise IsADirectoryError(f"{prefix} is a folder, expected a safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"{prefix}: no such file")
    problem = _safetensors_layout_error(path)
    if problem is None:
        try:
            tensors = safetensors.torch.load_file(os.fspath(path))
        except SafetensorError as error:  # no ValueError: a traceback in the CLI
            problem = str(error)
        else:
            # A header whose length is not padded to 8 bytes (other writers than safetensors' own)
            # leaves tensors at unaligned addresses, which the engines refuse to read in place:
            # those are copied.
            return {key: value.clone() if value.data_ptr() % value.element_size() else value
                    for key, value in tensors.items()}
    raise ValueError(f"{prefix}: not a readable safetensors file ({problem})")


def _read_step_and_tensors(path: Path, *, with_tensors: bool) -> tuple[int, dict]:
    """The step in a safetensors file's metadata and (``with_tensors``) its tensors, or a
    ValueError naming the file: one cut short by an interrupted save, or without the step that
    nvwavenet writes."""
    tensors = read_safetensors(path) if with_tensors else {}
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt") as f:
            return int(f.metadata()["step"]), tensors
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
    # Integer bits taken for weights (a header that says I32 over float data) load as values of 1e9.
    wrong_kind = sorted(k for k in set(expected) & set(state)
                        if expected[k].is_floating_point() != state[k].is_floating_point())
    parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
             "wrong shapes " + ", ".join(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                                         for k in wrong) if wrong else "",
             "wrong dtypes " + ", ".join(f"{k} {state[k].dtype} (expected {expected[k].dtype})"
                                         for k in wrong_kind) if wrong_kind else ""]
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
    config = read_json(config_path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not an nvwavenet checkpoint config (format {FORMAT!r} expected)")
    # bool is an int in Python: true == 1 would read as version 1.
    if type(config.get("version")) is not int or config["version"] != VERSION:
        raise ValueError(f"{config_path}: checkpoint version {config.get('version')!r}, this nvwavenet reads {VERSION}")
    # A JSON list or object is unhashable: `in` would raise a TypeError naming nothing.
    if not isinstance(config.get("model_type"), str) or config["model_type"] not in _MODEL_TYPES:
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
    # A field missing from the file takes AudioConfig's or MelConfig's default, which the model may
    # not fit: blamed on the file here, not on whoever later pairs the two.
    if isinstance(model, WaveNet):
        model.check_audio_config(audio_config, f"{Path(path) / CONFIG_FILE}: audio")
    weights_path = Path(path) / MODEL_FILE
    state = read_safetensors(weights_path)
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


def load_training_state(path, optimizer: torch.optim.Optimizer, expected: tuple[str, ...] = ()) -> dict:
    """Restore ``optimizer`` from checkpoint ``path``; returns ``training.json`` (step, extras),
    which must hold the ``expected`` extras.

    A damaged or mismatched file is one ValueError naming it and what is wrong, before the
    optimizer changes (torch's own messages name neither, and some are KeyErrors).
    """
    path = Path(path)
    training_path, optimizer_path = path / TRAINING_FILE, path / OPTIMIZER_FILE
    if not training_path.is_file() or not optimizer_path.is_file():
        raise FileNotFoundError(f"path: {path} holds no training state ({TRAINING_FILE}, {OPTIMIZER_FILE})")
    training = read_json(training_path)

    def damaged(what: str) -> ValueError:
        return ValueError(f"{training_path}: expected nvwavenet's training state for this run: {what}")

    if not isinstance(training, dict):
        raise damaged(f"expected a JSON object, got {type(training).__name__}")
    missing = sorted({"step", "optimizer", *expected} - training.keys())
    if missing:
        raise damaged(f"no {', '.join(missing)}")
    saved = training["optimizer"]
    if not (isinstance(saved, dict) and isinstance(saved.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved["param_groups"])
            and isinstance(saved.get("scalars"), dict)):
        raise damaged("expected 'optimizer' to hold param_groups (each with its params) and scalars")
    step = training["step"]
    optimizer_step, tensors = _read_step_and_tensors(optimizer_path, with_tensors=True)
    model_step, _ = _read_step_and_tensors(path / MODEL_FILE, with_tensors=False)
    if not step == optimizer_step == model_step:
        raise RuntimeError(f"{path}: inconsistent checkpoint (model step {model_step}, optimizer step "
                           f"{optimizer_step}, training step {step!r}); was a save interrupted?")
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(saved["scalars"].items()):
        param_id, _, name = key.partition(".")
        if not (param_id.isdigit() and name):
            raise damaged(f"optimizer entry {key!r} is not '<parameter index>.<name>'")
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise damaged(f"optimizer entry {key!r} holds NaN or infinite values")
        per_param.setdefault(int(param_id), {})[name] = value
    # JSON has no tuples; torch optimizers keep hyperparameters such as Adam's betas as tuples.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
              for group in saved["param_groups"]]
    current = optimizer.param_groups
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise damaged(f"parameter groups of {[len(g['params']) for g in groups]} parameters, this model's "
                      f"optimizer has {[len(g['params']) for g in current]}")
    # Per-parameter tensors of another model's shapes would fail only inside the first step.
    for saved_group, group in zip(groups, current):
        for param_id, parameter in zip(saved_group["params"], group["params"]):
            for name, value in per_param.get(param_id, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != parameter.shape:
                    raise damaged(f"optimizer entry '{param_id}.{name}' has shape {tuple(value.shape)}, "
                                  f"its parameter {tuple(parameter.shape)}")
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
        raise damaged(f"the optimizer refuses it ({error!r})") from error
    return training


def read_training_settings(path) -> dict:
    """``training.json`` of checkpoint ``path`` (step, losses, the settings of the run) without
    restoring an optimizer: what a command line needs to continue the run with the same settings."""
    training_path = Path(path) / TRAINING_FILE
    if not training_path.is_file():
        raise FileNotFoundError(f"{path}: holds a model but no training state ({TRAINING_FILE}) to resume from")
    training = read_json(training_path)
    if not isinstance(training, dict) or not isinstance(training.get("step"), int):
        raise ValueError(f"{training_path}: expected nvwavenet's training state (a JSON object with the step)")
    return training
