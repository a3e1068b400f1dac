"""Everything a training run needs to continue exactly: one TrainState, saved and restored as a whole.

A checkpoint is `{'format': 'aasm', 'iteration', 'model', 'equilibrium', 'optimizer', 'scaler', 'best_val',
'val_history', 'rng', 'config', 'model_settings', 'training_data'}` (see utils/checkpoint.py,
models/settings.py). Nothing non-finite is ever saved, and
`--resume auto` takes the newest periodic checkpoint that loads and is finite.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import secrets
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils import distributed
from utils.checkpoint import OWN_FORMAT, checkpoint_iteration, checkpoint_run, periodic_checkpoints, prune_checkpoints, read_checkpoint, save_checkpoint, set_aside
from utils.errors import CheckpointError, UserError
from utils.files import remove_stale_temporaries
from utils.run import setup_logging
from utils.run_folder import (acquire_lock, config_to_dict, read_run_record, release_lock, run_dir, write_run_config,
                              write_run_record)

log = logging.getLogger(__name__)
train_log = logging.getLogger("train")  # the lines of train.log the run folder's set-up writes

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


# No weight of a healthy run comes near this (the demo's largest stays below 100); an SGD run that
# diverged without reaching inf holds weights of 1e20 and more, which validate at chance.
DIVERGED_WEIGHT = 1e6
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # batch norm's buffers, not weights


def diverged_weight(named: dict[str, torch.Tensor]) -> tuple[str, float] | None:
    """(name, largest |value|) of the largest model weight beyond DIVERGED_WEIGHT, else None (finite tensors;
    the equilibrium's counters grow with the run and are no weights)."""
    weights = {k: v for k, v in named.items() if k.startswith("model.") and v.is_floating_point() and v.numel()
               and not k.endswith(STATISTICS)}
    if not weights:
        return None
    largest = torch.stack([v.detach().abs().max().float() for v in weights.values()])
    index = int(largest.argmax())
    value = float(largest[index])
    return (list(weights)[index], value) if value > DIVERGED_WEIGHT else None


def state_problem(named: dict[str, torch.Tensor]) -> str | None:
    """Why a model's tensors must not be saved or resumed from: non-finite or diverged values; else None."""
    bad = non_finite_tensors(named)
    if bad:
        return f"non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    diverged = diverged_weight(named)
    if diverged:
        return f"diverged: |{diverged[0]}| reaches {diverged[1]:.3g} (beyond {DIVERGED_WEIGHT:.0e})"
    return None


class NonFiniteState(UserError):
    """The weights went NaN/inf or diverged: refusing to save them over a good checkpoint."""


@dataclass
class TrainState:
    model: nn.Module
    equilibrium: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    iteration: int = 0  # the last finished iteration
    best_val: float = -1.0
    history: list[float] = field(default_factory=list)
    run_id: str | None = None  # the run (or branch) this state belongs to, stored in its checkpoints
    # What the checkpoint records of its model and data: {"model_settings": ..., "training_data": ...}
    provenance: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the model and the equilibrium, by checkpoint name."""
        return {**{f"model.{k}": v for k, v in self.model.state_dict().items()},
                **{f"equilibrium.{k}": v for k, v in self.equilibrium.state_dict().items()}}

    def checkpoint(self, rng: list[dict], cfg) -> dict:
        return {"format": OWN_FORMAT, "iteration": self.iteration, "model": self.model.state_dict(),
                "equilibrium": self.equilibrium.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "best_val": self.best_val, "val_history": self.history,
                "rng": rng, "config": config_to_dict(cfg), **self.provenance, "run": self.run_id}

    def save(self, path: str, rng: list[dict], cfg) -> None:
        """Write the checkpoint atomically, unless a parameter or buffer is NaN/inf or the weights diverged."""
        problem = state_problem(self.tensors())
        if problem:
            raise NonFiniteState(f"not saving {path} after iteration {self.iteration}: {problem}; stopping "
                                 "(lower training.lr, or resume from an earlier checkpoint)")
        save_checkpoint(self.checkpoint(rng, cfg), path)

    def restore(self, path: str, rank: int, device: torch.device,
                load_weights: Callable[[nn.Module, str, nn.Module], dict]) -> dict:
        """Load a checkpoint written by train.py into this state (its weights through `load_weights`,
        models.layouts.load_checkpoint); returns the raw checkpoint."""
        try:
            checkpoint = load_weights(self.model, path, self.equilibrium)
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
    """None when `path` is a finite, not diverged checkpoint of ours, else why it cannot be resumed from."""
    if os.path.getsize(path) == 0:
        return "empty file"
    try:
        checkpoint = read_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as e:
        return f"unreadable ({str(e).removeprefix(f'{path}: ')})"
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != OWN_FORMAT:
        return "not a checkpoint written by train.py"
    named = {**{f"model.{k}": v for k, v in checkpoint.get("model", {}).items()},
             **{f"equilibrium.{k}": v for k, v in (checkpoint.get("equilibrium") or {}).items()}}
    return state_problem({k: v for k, v in named.items() if isinstance(v, torch.Tensor)})


def resume_candidates(run_dir: str) -> list[str]:
    """The periodic checkpoints `--resume auto` tries, in order: newest first those of the latest run (the one
    that wrote the run record) and those of no known run, then the checkpoint that run branched from, then
    other runs' newest first."""
    found = list(reversed(periodic_checkpoints(run_dir)))
    record = read_run_record(run_dir)
    if not record:
        return found
    latest = [path for path in found if checkpoint_run(path) in (record["run"], None)]
    origin = (record.get("parent") or {}).get("path")
    origin = [origin] if origin in found and origin not in latest else []
    return latest + origin + [path for path in found if path not in latest + origin]


def resumable_checkpoint(run_dir: str) -> str | None:
    """The first of `resume_candidates` that loads and is finite; the others are named in the log."""
    return resumable_and_rejected(run_dir)[0]


def resumable_and_rejected(run_dir: str) -> tuple[str | None, list[str]]:
    """(the checkpoint `--resume auto` continues or None, the files it skipped on the way, each named in the log)."""
    rejected = []
    for path in resume_candidates(run_dir):
        problem = why_not_resumable(path)
        if problem is None:
            return path, rejected
        log.warning("--resume auto: skipping %s: %s", path, problem)
        rejected.append(path)
    return None, rejected


class OtherRunInFolder(UserError):
    """A fresh run was started in a folder that holds another run's checkpoints."""


BEST_NAME = "checkpoint_best.pth.tar"


def begin_run(cfg, folder: str, resumed: str | None, checkpoint: dict | None, branching: list[str],
              resume_requested: bool) -> str:
    """This run's id, once its checkpoint and pretrained files have loaded (rank 0); config.yaml and the run
    record written.

    A fresh run gets a new id and refuses a folder holding checkpoints unless a resume was asked for. A resumed
    run continues the checkpoint's id when the checkpoint is the newest of its run in the folder and nothing but
    max_iter and the data folders changed (`branching`, from config.resume.check_resume_config, is empty);
    otherwise it is a branch with a new id, its parent recorded.
    """
    if resumed is None:
        found = [os.path.basename(p) for p in periodic_checkpoints(folder) + [os.path.join(folder, BEST_NAME)]
                 if os.path.isfile(p)]
        if found and not resume_requested:
            shown = ", ".join(found[:5]) + (f", ... ({len(found)} in all)" if len(found) > 5 else "")
            raise OtherRunInFolder(f"{folder} holds the checkpoints of an earlier run ({shown}); continue it with "
                                   "--resume auto, or give this run another exp_name")
        run_id, parent = secrets.token_hex(4), None
    else:
        line, iteration = checkpoint.get("run"), checkpoint["iteration"]
        newer = [p for p in periodic_checkpoints(folder) if checkpoint_iteration(p) > iteration
                 and checkpoint_run(p) == line]
        if line is None or newer or branching:
            run_id = secrets.token_hex(4)
            parent = {"run": line, "iteration": iteration, "path": os.path.abspath(resumed)}
            why = (f"newer checkpoints of run {line} exist: {', '.join(os.path.basename(p) for p in newer)}"
                   if newer else f"changed {', '.join(branching)}" if branching else "the checkpoint names no run")
            log.info("branch %s from %s (iteration %d): %s", run_id, resumed, iteration, why)
        else:
            record = read_run_record(folder) or {}
            run_id, parent = line, record.get("parent") if record.get("run") == line else None
    write_run_config(config_to_dict(cfg), folder)
    write_run_record(folder, run_id, parent)
    return run_id


# ---------------------------------------------------------------------------
# The run folder and its checkpoints (called on every rank: they hold collectives)
# ---------------------------------------------------------------------------
def resolve_resume(resume: str | None, folder: str) -> tuple[str | None, dict | None]:
    """The checkpoint to continue from ('auto': the newest good one of the run folder's latest run; the files it
    rejects are moved aside as *.rejected); returns (path, the config it was trained with)."""
    if resume == "auto":
        resume, rejected = resumable_and_rejected(folder)
        for path in rejected:
            set_aside(path, path + ".rejected")
        if resume is None:
            train_log.info("--resume auto: no usable checkpoint in %s, starting fresh", folder)
            return None, None
    if not resume:
        return None, None
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume: checkpoint file not found: {resume}")
    try:
        saved = read_checkpoint(resume)
    except CheckpointError as e:
        raise CheckpointError(f"{resume}: cannot be resumed: {str(e).removeprefix(f'{resume}: ')}") from None
    return resume, saved.get("config") if isinstance(saved, dict) else None


def open_run_folder(cfg, resume: str | None, ctx: distributed.Context) -> tuple:
    """Rank 0 locks the run folder, cleans it and picks the checkpoint; all ranks learn it.

    Returns (folder, lock, checkpoint path or None, the config that checkpoint was trained with or None)."""
    folder = run_dir(cfg)
    lock = distributed.on_main(acquire_lock, ctx, folder)
    try:
        setup_logging(folder, ctx.is_main)

        def on_main() -> tuple[str | None, dict | None]:
            remove_stale_temporaries(folder)
            return resolve_resume(resume or cfg.training.resume, folder)

        return (folder, lock, *distributed.on_main(on_main, ctx))
    except BaseException:
        if ctx.is_main:
            release_lock(lock)
        raise


def save(state: TrainState, path: str, cfg, ctx: distributed.Context, device: torch.device) -> None:
    """Every rank contributes its RNG state; rank 0 writes (and its failure stops every rank)."""
    rng = gathered_rng(ctx, device)
    distributed.on_main(state.save, ctx, path, rng, cfg)


def save_periodic(state: TrainState, folder: str, cfg, ctx: distributed.Context, device: torch.device) -> str:
    """checkpoint_<iteration>, then pruning of this run's older ones."""
    path = os.path.join(folder, f"checkpoint_{state.iteration}.pth.tar")
    if ctx.is_main:
        keep_other_runs_file(path, state.run_id)
    save(state, path, cfg, ctx, device)
    if ctx.is_main:
        prune_checkpoints(folder, cfg.training.keep_last, state.run_id, lambda p: why_not_resumable(p) is None)
    return path


def keep_other_runs_file(path: str, run_id: str) -> None:
    """Another run's (or branch's) checkpoint at `path` is kept apart as <name>.<its run>.pth.tar, never overwritten."""
    if os.path.isfile(path) and (other := checkpoint_run(path)) != run_id:
        set_aside(path, f"{path.removesuffix('.pth.tar')}.{other or 'earlier'}.pth.tar")
