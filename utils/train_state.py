"""Everything a training run needs to continue exactly: one TrainState, saved and restored as a whole.

A checkpoint is `{'format': 'aasm', 'iteration', 'model', 'equilibrium', 'optimizer', 'scaler', 'best_val',
'val_history', 'rng', 'config', 'model_settings', 'training_data'}` (see utils/checkpoint.py,
utils/model_settings.py). Nothing non-finite is ever saved, and
`--resume auto` takes the newest periodic checkpoint that loads and is finite.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from data.provenance import training_data
from utils import distributed
from utils.checkpoint import OWN_FORMAT, load_checkpoint, periodic_checkpoints, save_checkpoint
from utils.config import config_to_dict
from utils.errors import CheckpointError, UserError
from utils.model_settings import model_settings, setting

log = logging.getLogger(__name__)

# What torch.load raises on an empty, truncated or random-bytes file, or one holding code.
UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, OSError)


def rng_state(device: torch.device | None = None) -> dict:
    """Every random stream of this process (its own GPU's only), as checkpoint-safe values."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                   "has_gauss": has_gauss, "gauss": gauss}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def non_finite_tensors(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (one host sync for all of them)."""
    floats = {k: v for k, v in named.items() if v.is_floating_point()}
    if not floats:
        return []
    finite = torch.stack([v.isfinite().all() for v in floats.values()]).tolist()
    return [name for name, ok in zip(floats, finite) if not ok]


class NonFiniteState(UserError):
    """The weights went NaN/inf: refusing to save them over a good checkpoint."""


@dataclass
class TrainState:
    model: nn.Module
    equilibrium: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iteration: int = 0  # the last finished iteration
    best_val: float = -1.0
    history: list[float] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the model and the equilibrium, by checkpoint name."""
        return {**{f"model.{k}": v for k, v in self.model.state_dict().items()},
                **{f"equilibrium.{k}": v for k, v in self.equilibrium.state_dict().items()}}

    def checkpoint(self, rng: list[dict], cfg) -> dict:
        return {"format": OWN_FORMAT, "iteration": self.iteration, "model": self.model.state_dict(),
                "equilibrium": self.equilibrium.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "best_val": self.best_val, "val_history": self.history,
                "rng": rng, "config": config_to_dict(cfg), "model_settings": model_settings(cfg),
                "training_data": training_data(cfg)}

    def save(self, path: str, rng: list[dict], cfg) -> None:
        """Write the checkpoint atomically, unless a parameter or buffer is NaN/inf."""
        bad = non_finite_tensors(self.tensors())
        if bad:
            raise NonFiniteState(f"not saving {path} after iteration {self.iteration}: non-finite values in "
                                 f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        save_checkpoint(self.checkpoint(rng, cfg), path)

    def restore(self, path: str, rank: int, device: torch.device) -> dict:
        """Load a checkpoint written by train.py into this state; returns the raw checkpoint."""
        try:
            checkpoint = load_checkpoint(self.model, path, self.equilibrium)
        except FileNotFoundError as e:
            raise CheckpointError(f"--resume: {e}") from None
        except UNREADABLE as e:
            raise CheckpointError(f"{path}: cannot be resumed: {reason(e)}") from None
        if checkpoint.get("format") != OWN_FORMAT:
            raise CheckpointError(f"{path}: only checkpoints written by train.py can be resumed")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"]:  # empty when the run that saved it had no fp16 scaler
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration, self.best_val = checkpoint["iteration"], checkpoint["best_val"]
        self.history = list(checkpoint["val_history"])
        # A run on more processes than the saved one continues the last saved stream on the extra ranks.
        set_rng_state(checkpoint["rng"][min(rank, len(checkpoint["rng"]) - 1)], device)
        return checkpoint


def gathered_rng(ctx: distributed.Context, device: torch.device) -> list[dict]:
    """Every rank's RNG state in rank order (a collective: every rank calls it before rank 0 saves)."""
    state = rng_state(device)
    if not ctx.enabled:
        return [state]
    states = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def reason(error: BaseException) -> str:
    """The first line of an exception's message (torch's load errors run over many lines)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def why_not_resumable(path: str) -> str | None:
    """None when `path` is a finite checkpoint of ours, else why it cannot be resumed from."""
    if os.path.getsize(path) == 0:
        return "empty file"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        return f"unreadable ({reason(e)})"
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != OWN_FORMAT:
        return "not a checkpoint written by train.py"
    named = {**{f"model.{k}": v for k, v in checkpoint.get("model", {}).items()},
             **{f"equilibrium.{k}": v for k, v in (checkpoint.get("equilibrium") or {}).items()}}
    bad = non_finite_tensors({k: v for k, v in named.items() if isinstance(v, torch.Tensor)})
    return f"non-finite values in {', '.join(bad[:3])}" if bad else None


def resumable_checkpoint(run_dir: str) -> str | None:
    """The newest periodic checkpoint of `run_dir` that loads and is finite; the others are named in the log."""
    for path in reversed(periodic_checkpoints(run_dir)):
        problem = why_not_resumable(path)
        if problem is None:
            return path
        log.warning("--resume auto: skipping %s: %s", path, problem)
    return None


# Keys that change what resuming continues: the model, the global batch and the schedule.
RESUME_KEYS = ("seed", "models.embedding_dim", "models.face.units", "models.face.widths", "models.face.se",
               "models.face.head_hidden", "models.voice.layers", "models.voice.filters", "models.voice.n_mels",
               "models.voice.head_hidden", "training.batch_size", "training.max_iter", "training.lr",
               "training.lr_steps", "training.lr_gamma", "training.momentum", "training.weight_decay",
               "training.crop_seconds", "training.regauge_iter", "training.warm_up", "training.weight_update_iter",
               "training.weighted_enabled", "training.H", "training.temp", "training.m_u", "training.m_l")


def check_resume_config(saved: dict | None, cfg, overridden: set[str], path: str) -> None:
    """Refuse to resume with a model, batch or schedule other than the checkpoint's, unless set with --opts."""
    if not saved:
        return
    current = config_to_dict(cfg)
    changed = [k for k in RESUME_KEYS if setting(saved, k) != setting(current, k)]
    changed_silently = [k for k in changed if k not in overridden]
    if changed_silently:
        details = ", ".join(f"{k} (checkpoint {setting(saved, k)!r}, config {setting(current, k)!r})"
                            for k in changed_silently)
        raise CheckpointError(f"{path}: the config differs from the checkpoint's in {details}; resume with the "
                              "checkpoint's values, or set the new ones explicitly with --opts")
    if changed:
        log.warning("resuming %s with changed %s (set with --opts)", path, ", ".join(changed))
