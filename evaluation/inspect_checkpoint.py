"""The method state a checkpoint holds: which layout, saved when, and what its Instance Equilibrium looks like.

    python test.py --inspect FILE [--json] [--output FILE.json]

Reads the authors' released `checkpoint_best.pth.tar` (IE under `eqm.`, models/layouts.py) or one of ours
(`equilibrium`, utils/checkpoint.py) through utils.checkpoint.safe_load: tensors and plain data, never code.
The verdict says which convention the IE weights follow (docs/method.md#open-readings-of-the-release):
all exactly 1 (never refreshed, or IE off), mean 1 (the predecessor's, `ie_normalization: mean`), sum 1
(`sum`), not finite (the release's 0/0 first refresh) or raw normal densities (the release's, `none`).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import torch

from config import renamed
from models.layouts import released_equilibrium, released_layout, strip_data_parallel
from utils.checkpoint import OWN_FORMAT, read_checkpoint
from utils.errors import CheckpointError, UserError
from utils.files import atomic_write

# The training keys that choose the method's reading (docs/method.md), shown for our own checkpoints.
SWITCHES = ("objective", "bcr_enabled", "bcr_weight", "bcr_start_iter", "bcr_gradient", "bcr_row_average",
            "bcr_regauge_margin", "ie_enabled", "ie_start_iter", "ie_refresh_iter", "ie_shift", "ie_normalization",
            "ie_application", "loss_impl")
BUFFERS = ("correct_counts", "comparison_counts", "identity_weights")
# How close a mean (or sum) must be to 1 to count as normalised: float32 rounding over up to ~1e4 identities.
NORMALISED_TOLERANCE = 1e-4


@dataclass
class MethodState:
    """What `inspect` found; fractions as fractions, weights' statistics over the finite weights."""

    path: str
    layout: str
    iteration: int | None
    iteration_note: str
    identities: int
    counted_identities: int  # N_k > 0: seen since the last refresh
    correct_total: float  # Σ R_k
    comparison_total: float  # Σ N_k
    weights: dict[str, float] = field(default_factory=dict)  # min, median, mean, max, sum, above_one
    non_finite_weights: int = 0
    verdict: str = ""
    convention: str = ""  # ones | mean | sum | none | non_finite
    switches: dict[str, Any] | None = None


def verdict_of(weights: torch.Tensor) -> tuple[str, str]:
    """(convention, sentence) for a vector of IE weights."""
    finite = weights[torch.isfinite(weights)].double()
    if finite.numel() < weights.numel():
        return "non_finite", (f"{weights.numel() - finite.numel()} of {weights.numel()} weights are not finite: the "
                              "release's first refresh divides its never-filled counters, 0/0")
    if bool((finite == 1).all()):
        return "ones", "all exactly 1: never refreshed, or IE off"
    mean, total = finite.mean().item(), finite.sum().item()
    if abs(mean - 1) <= NORMALISED_TOLERANCE:
        return "mean", "mean 1: normalised as the predecessor does (ie_normalization: mean)"
    if abs(total - 1) <= NORMALISED_TOLERANCE:
        return "sum", "sum 1: normalised to sum 1 (ie_normalization: sum)"
    return "none", (f"not normalised (mean {mean:.4g}): raw normal densities, as the release computes them "
                    "(ie_normalization: none)")


def weight_statistics(weights: torch.Tensor) -> dict[str, float]:
    finite = weights[torch.isfinite(weights)].double()
    if finite.numel() == 0:
        return {}
    return {"min": finite.min().item(), "median": finite.quantile(0.5).item(), "mean": finite.mean().item(),
            "max": finite.max().item(), "sum": finite.sum().item(), "above_one": (finite > 1).double().mean().item()}


def _own_state(checkpoint: dict, path: str) -> tuple[dict, int | None, str, dict | None]:
    equilibrium = checkpoint.get("equilibrium")
    if not isinstance(equilibrium, dict) or not equilibrium:
        raise CheckpointError(f"{path}: this project's checkpoint holds no IE state ('equilibrium')")
    config = checkpoint.get("config")
    training = renamed(config, path, warn=False).get("training", {}) if isinstance(config, dict) else {}
    switches = {k: training[k] for k in SWITCHES if k in training} if training else None
    iteration = checkpoint.get("iteration")
    return strip_data_parallel(equilibrium)[0], iteration, "iterations finished (this project counts from 1)", switches


def _released_state(checkpoint: dict, path: str) -> tuple[dict, str, int | None, str]:
    state_dict, layout = released_layout(checkpoint, path)
    equilibrium = released_equilibrium(state_dict, path)
    if not equilibrium:
        raise CheckpointError(f"{path}: {layout} holds no IE state (no 'eqm.' keys)")
    # The release saves {'start_it', 'stage', 'state_dict', 'optimizer'}: start_it is its own counter, from 0.
    start = checkpoint.get("start_it") if "state_dict" in checkpoint else None
    iteration = int(start) if isinstance(start, (int, float)) or torch.is_tensor(start) else None
    note = "start_it, the release's counter (from 0)" if iteration is not None else "not recorded in a bare state_dict"
    return equilibrium, layout, iteration, note


def inspect(path: str) -> MethodState:
    """The method state of the checkpoint at `path`; one-line errors naming the file for anything else."""
    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") == OWN_FORMAT:
        layout = "this project's checkpoint"
        equilibrium, iteration, note, switches = _own_state(checkpoint, path)
    else:
        equilibrium, layout, iteration, note = _released_state(checkpoint, path)
        switches = None
    missing = [name for name in BUFFERS if not torch.is_tensor(equilibrium.get(name))]
    if missing:
        raise CheckpointError(f"{path}: the IE state lacks {', '.join(missing)}")
    correct, comparisons, weights = (equilibrium[name].detach().double().flatten() for name in BUFFERS)
    convention, verdict = verdict_of(weights)
    return MethodState(path=path, layout=layout, iteration=iteration, iteration_note=note,
                       identities=weights.numel(), counted_identities=int((comparisons > 0).sum()),
                       correct_total=correct.sum().item(), comparison_total=comparisons.sum().item(),
                       weights=weight_statistics(weights),
                       non_finite_weights=int((~torch.isfinite(weights)).sum()), verdict=verdict,
                       convention=convention, switches=switches)


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _yaml(value: Any) -> str:
    """A config value as --opts takes it."""
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def report(state: MethodState) -> str:
    """The printed report, one fact a line."""
    iteration = f"{'unknown' if state.iteration is None else state.iteration} ({state.iteration_note})"
    w = state.weights
    lines = [f"checkpoint: {state.path}", f"layout: {state.layout}", f"iteration: {iteration}",
             f"IE counters since the last refresh: R = {_number(state.correct_total)}, "
             f"N = {_number(state.comparison_total)}, over {state.counted_identities} of {state.identities} "
             "identities"]
    if w:
        lines.append(f"IE weights: {state.identities} identities, min {_number(w['min'])}, median "
                     f"{_number(w['median'])}, mean {_number(w['mean'])}, max {_number(w['max'])}, "
                     f"{100 * w['above_one']:.1f}% above 1"
                     + (f" ({state.non_finite_weights} not finite, left out)" if state.non_finite_weights else ""))
    else:
        lines.append(f"IE weights: {state.identities} identities, none finite")
    lines.append(f"verdict: {state.verdict}")
    if state.switches is not None:
        shown = " ".join(f"training.{k}={_yaml(v)}" for k, v in state.switches.items())
        lines.append(f"trained with: {shown or '(no training keys recorded)'}")
    return "\n".join(lines)


def run(path: str, output: str | None = None, as_json: bool = False, stream: IO[str] | None = None) -> MethodState:
    """`test.py --inspect`: print the report (or, with `as_json`, the JSON) and write the JSON to `output`."""
    if output and os.path.exists(output) and os.path.samefile(output, path):
        raise UserError(f"--output {output}: is the checkpoint being inspected and would be overwritten; name another file")
    state = inspect(path)
    numbers = json.dumps(asdict(state), indent=2)
    print(numbers if as_json else report(state), file=stream or sys.stdout)
    if output:
        with atomic_write(output) as f:
            f.write(numbers + "\n")
    return state
