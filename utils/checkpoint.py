"""Checkpoints in this project's own format, and the one safe way to read any torch file.

Our format is `{'format': 'aasm', 'iteration', 'model', 'equilibrium', 'optimizer', 'scaler', 'best_val',
'val_history', 'rng', 'config', 'model_settings', 'training_data', 'run'}`, with `model`/`equilibrium` the
modules' own state_dicts (models/settings.py reads what `model_settings` and `training_data` record). Files
are read by `safe_load`, `torch.load(weights_only=True)`: tensors, numbers, strings, lists, tuples and dicts
only. Other projects' layouts (the authors' release, face.evoLVe, voxceleb_trainer) are models/layouts.py's.
"""
from __future__ import annotations

import glob
import logging
import os
import pickle
import re
from typing import Callable

import torch

from utils.errors import CheckpointError, UserError
from utils.files import atomic_write

log = logging.getLogger(__name__)

OWN_FORMAT = "aasm"


def safe_load(path: str, error: type[UserError] = CheckpointError, what: str = "checkpoint",
              unreadable: str | None = None, config_key: str | None = None, mmap: bool = False) -> object:
    """The project's one torch.load: weights_only (tensors and plain data, never code), on the CPU; every way a
    file can fail is one `error` line naming it (and its config key). `unreadable`: what a corrupt file is
    called ("not a readable <what>" unless given)."""
    where = f"{config_key}: " if config_key else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}{what} file not found: {path}")
    if os.path.getsize(path) == 0:
        raise error(f"{where}{path}: empty file (0 bytes), not a {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except PermissionError as e:
        raise error(f"{where}{path}: cannot read: {e.strerror}") from None
    except Exception as e:  # torch's messages name neither the file nor, for pickles, what was refused
        code = re.search(r"GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and code:
            raise error(f"{where}{path}: refused: the file holds code (a pickled reference to "
                        f"{code.group(1)}); a {what} is loaded as tensors and plain data only") from None
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith(boilerplate)]
        detail = f"{type(e).__name__}: {lines[0].split('. ')[0]}" if lines else type(e).__name__
        raise error(f"{where}{path}: truncated or corrupt, {unreadable or 'not a readable ' + what} ({detail})") from None


def read_checkpoint(path: str, config_key: str | None = None) -> dict:
    """A checkpoint file's content (safe_load), which must be a dict."""
    where = f"{config_key}: " if config_key else ""
    checkpoint = safe_load(path, config_key=config_key)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{where}{path}: not a checkpoint (expected a dict, got {type(checkpoint).__name__})")
    return checkpoint


def save_checkpoint(state: dict, path: str) -> None:
    """Write atomically (utils.files.atomic_write): a failed write leaves the previous file intact."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def checkpoint_iteration(path: str) -> int | None:
    """The iteration in a periodic checkpoint's name `checkpoint_<iteration>.pth.tar`, else None."""
    match = re.fullmatch(r"checkpoint_(\d+)\.pth\.tar", os.path.basename(path))
    return int(match.group(1)) if match else None


def periodic_checkpoints(run_dir: str) -> list[str]:
    """The run's `checkpoint_<iteration>.pth.tar` files, oldest iteration first (never `checkpoint_best`)."""
    paths = glob.glob(os.path.join(glob.escape(run_dir), "checkpoint_*.pth.tar"))
    found = [(checkpoint_iteration(path), path) for path in paths]
    return [path for _, path in sorted(item for item in found if item[0] is not None)]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest periodic checkpoint of a run (what `training.resume: auto` resumes from), or None."""
    found = periodic_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_run(path: str) -> str | None:
    """The run (or branch) id a checkpoint of ours records; None for a file without one or that does not load.

    Tensors are mapped, not read: this costs little more than opening the file."""
    try:
        checkpoint = safe_load(path, mmap=True)
    except (CheckpointError, OSError):  # unreadable files belong to no run
        return None
    return checkpoint.get("run") if isinstance(checkpoint, dict) else None


def prune_checkpoints(run_dir: str, keep_last: int, run_id: str | None = None,
                      usable: Callable[[str], bool] = lambda path: True) -> None:
    """Keep the `keep_last` newest periodic checkpoints that are `usable`, delete older ones.

    With `run_id`, only that run's checkpoints are considered: other runs' files and files that do not
    load are never deleted, and a newer file that is not usable never counts among the kept ones.
    keep_last < 1 keeps them all.
    """
    if keep_last < 1:
        return
    kept = 0
    for path in reversed(periodic_checkpoints(run_dir)):
        if run_id is not None and checkpoint_run(path) != run_id:
            continue
        if kept < keep_last:
            kept += usable(path)
            continue
        os.remove(path)
        log.info("removed old checkpoint %s", path)


def set_aside(path: str, kept: str) -> None:
    """Rename `path` to `kept`, a name out of pruning's and `--resume auto`'s reach; logged."""
    os.replace(path, kept)
    log.warning("moved %s aside as %s", path, kept)
