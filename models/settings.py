"""The settings a model was built with, as a checkpoint of ours records them, and the model built from them.

Every checkpoint train.py writes holds `model_settings` (the config's `models` section and the
dataset.sample_rate / image_size its inputs were made at) and `training_data` (data/provenance.py).
test.py and evaluation/matcher.py build the encoders from the checkpoint's settings; the config's settings are
used only for the keys the user asks for explicitly (test.py's --model-from-config: all of them; --opts
models.*=...: those keys). Checkpoints that record no settings (the authors', face.evoLVe, voxceleb_trainer,
ours from before) are built from the config as before.
"""
from __future__ import annotations

import copy
import logging
from typing import Iterable

from easydict import EasyDict

from config import setting
from models import VoiceFaceModel, build_model
from models.layouts import load_checkpoint
from utils.checkpoint import OWN_FORMAT, read_checkpoint
from utils.run_folder import config_to_dict
from utils.errors import CheckpointError

log = logging.getLogger(__name__)

# What decides the model's tensors and the inputs it was trained on.
SETTING_KEYS = ("models.embedding_dim", "models.face.units", "models.face.widths", "models.face.se",
                "models.face.head_hidden", "models.voice.layers", "models.voice.filters", "models.voice.n_mels",
                "models.voice.head_hidden", "dataset.sample_rate", "dataset.image_size")
# These change no tensor's shape: the weights load, the inputs differ from the training's.
INPUT_KEYS = ("dataset.sample_rate", "dataset.image_size")


def model_settings(cfg: EasyDict) -> dict:
    """What a checkpoint records of the config its model was built with."""
    return {"models": config_to_dict(cfg.models),
            "dataset": {"sample_rate": cfg.dataset.sample_rate, "image_size": cfg.dataset.image_size}}


def saved_settings(checkpoint: dict) -> dict | None:
    """A checkpoint's record of its model settings: `model_settings`, else (ours from before) the config it
    stores; None for other projects' layouts and for checkpoints that record neither."""
    if checkpoint.get("format") != OWN_FORMAT:
        return None
    saved = checkpoint.get("model_settings") or checkpoint.get("config")
    return saved if isinstance(saved, dict) and isinstance(saved.get("models"), dict) else None


def explicit_settings(opts: Iterable[str] = (), model_from_config: bool = False) -> list[str]:
    """The setting keys the user asked to take from the config: all with `model_from_config`, else those
    that --opts key=value overrides name."""
    if model_from_config:
        return list(SETTING_KEYS)
    named = [opt.split("=", 1)[0].strip() for opt in opts]
    return [key for key in SETTING_KEYS if covers(named, key)]


def covers(explicit: Iterable[str], key: str) -> bool:
    """Whether a setting key is among (or below) the keys the user set explicitly."""
    return any(key == e or key.startswith(e + ".") for e in explicit)


def _details(differences: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{k} (checkpoint {saved!r}, config {given!r})" for k, saved, given in differences)


def reconciled(cfg: EasyDict, saved: dict | None, path: str, explicit: Iterable[str] = ()) -> EasyDict:
    """The config with the checkpoint's model settings, except where `explicit` asks for the config's.

    The config's value of a key that shapes the weights, asked for explicitly, is a CheckpointError naming
    the keys and both values (those weights cannot be loaded); of an input key, a warning.
    """
    if saved is None:
        return cfg
    explicit = list(explicit)
    differences = [(k, setting(saved, k), setting(cfg, k)) for k in SETTING_KEYS
                   if setting(saved, k) is not None and setting(saved, k) != setting(cfg, k)]
    kept = [d for d in differences if covers(explicit, d[0])]
    refused = [d for d in kept if d[0] not in INPUT_KEYS]
    if refused:
        raise CheckpointError(f"{path}: the checkpoint's model differs from the one asked for in {_details(refused)}; "
                              "without the explicit model settings (--model-from-config, --opts models.*) the "
                              "encoders are built from the checkpoint's own")
    if kept:
        log.warning("%s: using the config's %s; the checkpoint's model was trained with the other values",
                    path, _details(kept))
    taken = [d for d in differences if d not in kept]
    if not taken:
        return cfg
    log.warning("%s: building the encoders from the checkpoint's settings, not the config's: %s", path,
                _details(taken))
    cfg = copy.deepcopy(cfg)
    for key, value, _ in taken:
        *parents, last = key.split(".")
        section = cfg
        for part in parents:
            section = section[part]
        section[last] = copy.deepcopy(value)
    return cfg


def first_line(error: BaseException) -> str:
    """An exception's message on one line (a KeyError's str() is the repr of its argument)."""
    message = str(error.args[0]) if error.args else type(error).__name__
    lines = message.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def build_from_checkpoint(cfg: EasyDict, path: str, explicit: Iterable[str] = ()
                          ) -> tuple[VoiceFaceModel, EasyDict, dict]:
    """(model with the checkpoint's weights, config it was built from, the file's content): the checkpoint's model
    settings where it records them (see `reconciled`). A checkpoint that does not fit the model is a one-line
    CheckpointError."""
    saved = None
    try:
        checkpoint = read_checkpoint(path)
        saved = saved_settings(checkpoint)
        cfg = reconciled(cfg, saved, path, explicit)
        model = build_model(cfg.models, cfg.dataset.sample_rate)
        load_checkpoint(model, path, checkpoint=checkpoint)
    except (KeyError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        source = ("the checkpoint's recorded settings" if saved is not None else
                  "the config's models.* (the checkpoint records no model settings: set them to its architecture)")
        raise CheckpointError(f"{first_line(e)}; the model was built from {source}") from None
    return model, cfg, checkpoint
