"""Other projects' checkpoint layouts loaded into our encoders: the authors' released checkpoint, the public
pretrained backbones, and our own format's weights.

Our own format (utils/checkpoint.py) holds the modules' state_dicts as they are. Every file is read by
utils.checkpoint.safe_load: tensors, numbers, strings, lists, tuples and dicts only.

The release stores `{'start_it', 'stage', 'state_dict', 'optimizer'}`; its state_dict names the face
network `vNet`, the voice network `aNet`, the input normalisation `normalize` and the equilibrium `eqm`.
The tables below map those names onto ours; they are the only place the release's names appear.
Keys the release stores but the method never uses are skipped and named in the log; any other key
that maps to nothing, and any of our keys that nothing maps to, is an error naming the file.

Every file is read in whatever layout it comes in (one log line names the layout found): keys with the
`module.` prefix of DataParallel / DDP; the release's state_dict with or without its `start_it` wrapper;
voxceleb_trainer's `__S__.*` / `__L__.*` model, bare or in `{'model_state_dict', ...}` or `{'model': ...}`,
or plain ResNetSE34L keys; torch 1.x files in the legacy serialization with tensors saved on a GPU.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from config import DEFAULTS
from models.face import InputNormalization
from utils.checkpoint import OWN_FORMAT, read_checkpoint
from utils.errors import CheckpointError
from utils.train_state import UNREADABLE, reason

log = logging.getLogger(__name__)

# (pattern matched at the start of a key, replacement): the first match renames the key.
Rule = tuple[str, str]

FACE_BACKBONE: tuple[Rule, ...] = (
    (r"input_layer\.0\.", "stem.conv."),
    (r"input_layer\.1\.", "stem.bn."),
    (r"input_layer\.2\.", "stem.prelu."),
    (r"body\.(\d+)\.res_layer\.0\.", r"body.\1.residual.bn_in."),
    (r"body\.(\d+)\.res_layer\.1\.", r"body.\1.residual.conv1."),
    (r"body\.(\d+)\.res_layer\.2\.", r"body.\1.residual.prelu."),
    (r"body\.(\d+)\.res_layer\.3\.", r"body.\1.residual.conv2."),
    (r"body\.(\d+)\.res_layer\.4\.", r"body.\1.residual.bn_out."),
    (r"body\.(\d+)\.res_layer\.5\.fc1\.", r"body.\1.residual.se.reduce."),
    (r"body\.(\d+)\.res_layer\.5\.fc2\.", r"body.\1.residual.se.expand."),
    (r"body\.(\d+)\.shortcut_layer\.0\.", r"body.\1.shortcut.conv."),
    (r"body\.(\d+)\.shortcut_layer\.1\.", r"body.\1.shortcut.bn."),
)
VOICE_BACKBONE: tuple[Rule, ...] = (
    (r"torchfb\.", "front_end.mel."),
    (r"conv1\.", "stem.conv."),
    (r"bn1\.", "stem.bn."),
    (r"layer(\d)\.(\d+)\.se\.fc\.0\.", r"body.stage\1.\2.se.reduce."),
    (r"layer(\d)\.(\d+)\.se\.fc\.2\.", r"body.stage\1.\2.se.expand."),
    (r"layer(\d)\.(\d+)\.downsample\.0\.", r"body.stage\1.\2.shortcut.conv."),
    (r"layer(\d)\.(\d+)\.downsample\.1\.", r"body.stage\1.\2.shortcut.bn."),
    (r"layer(\d)\.", r"body.stage\1."),
    (r"sap_linear\.", "pooling.projection."),
    (r"attention$", "pooling.context"),
)
HEAD: tuple[Rule, ...] = ((r"0\.", "hidden."), (r"2\.", "output."))
EQUILIBRIUM: tuple[Rule, ...] = (
    (r"corr_num$", "correct_counts"),
    (r"compare_sum$", "comparison_counts"),
    (r"weight$", "identity_weights"),
)
EVERYTHING = ""  # an `unused` pattern that matches every key of its section


@dataclass(frozen=True)
class Section:
    """Keys starting with `source` in a file become `target` + the renamed rest, unless `unused` matches."""

    source: str
    target: str
    rules: tuple[Rule, ...] = ()
    unused: str | None = None


FACE_SECTION = Section("vNet.model.", "face_encoder.", FACE_BACKBONE, unused=r"output_layer\.")
VOICE_SECTION = Section("aNet.model.", "voice_encoder.", VOICE_BACKBONE, unused=r"fc\.")
RELEASED_MODEL = (
    FACE_SECTION,
    Section("vNet.fc.", "face_encoder.head.", HEAD),
    VOICE_SECTION,
    Section("aNet.fc.", "voice_encoder.head.", HEAD),
    # Two top-level copies of the IE counters that nothing reads.
    Section("corr_num", "", unused=EVERYTHING),
    Section("compare_sum", "", unused=EVERYTHING),
)
RELEASED_NORMALIZATION = {"normalize.conv.weight": InputNormalization.scale,
                          "normalize.conv.bias": InputNormalization.shift}
RELEASED_EQUILIBRIUM = Section("eqm.", "", EQUILIBRIUM)
PRETRAINED_FACE = (Section("", "face_encoder.", FACE_BACKBONE, unused=r"output_layer\."),)
PRETRAINED_VOICE = (
    Section("__S__.", "voice_encoder.", VOICE_BACKBONE, unused=r"fc\."),
    Section("__L__.", "", unused=EVERYTHING),  # the training loss's own parameters
)
# The converted file the release loads strictly into its own ResNetSE34L: no `__S__.`, no `__L__`.
PLAIN_VOICE = (Section("", "voice_encoder.", VOICE_BACKBONE, unused=r"fc\."),)

DATA_PARALLEL_PREFIX = "module."
# Containers a state_dict comes in: voxceleb_trainer's saveParameters, and the alternative its loader accepts.
VOICE_WRAPPERS = ("model_state_dict", "model")
OWN_LAYOUTS = ("this project's checkpoint {'format': 'aasm', 'model', ...}",
               "the release's {'start_it', 'stage', 'state_dict', 'optimizer'}",
               "the release's bare state_dict (vNet.*, aNet.*, normalize.*, eqm.*)")
FACE_LAYOUTS = ("face.evoLVe IR backbone (input_layer.*, body.*, output_layer.*)",)
VOICE_LAYOUTS = ("voxceleb_trainer SpeakerNet (__S__.*, __L__.*)",
                 "the same in {'model_state_dict', 'optimizer_state_dict', ...} or {'model': ...}",
                 "plain ResNetSE34L keys (conv1.*, layer1.*, ..., sap_linear.*, attention)")
DATA_PARALLEL_NOTE = "any of them with the 'module.' prefix of DataParallel / DDP on every key"


class CheckpointLayoutError(CheckpointError):
    """A checkpoint file in none of the layouts this project reads."""


def _layout_error(path: str, found: list, accepted: tuple[str, ...], shown: int = 5) -> CheckpointLayoutError:
    keys = ", ".join(map(str, found[:shown])) + (f", ... ({len(found)} in all)" if len(found) > shown else "")
    return CheckpointLayoutError(f"{path}: none of the accepted checkpoint layouts: {'; '.join(accepted)}; "
                                 f"{DATA_PARALLEL_NOTE}; keys found: {keys or 'none'}")


def strip_data_parallel(state_dict: dict) -> tuple[dict, bool]:
    """Drop the `module.` prefix when every key has it (a model saved under DataParallel / DDP)."""
    if state_dict and all(isinstance(k, str) and k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}, True
    return state_dict, False


def _with_prefix_note(layout: str, stripped: bool) -> str:
    return layout + (", 'module.' prefix stripped" if stripped else "")


def _translate(state_dict: dict[str, torch.Tensor], sections: tuple[Section, ...], path: str,
               accepted: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a file's keys into ours; returns (renamed entries, skipped unused keys). Unmapped keys raise:
    a layout error naming `accepted` when no key maps at all."""
    renamed, unused, unknown = {}, [], []
    for key, value in state_dict.items():
        section = next((s for s in sections if key.startswith(s.source)), None)
        rest = key[len(section.source):] if section else key
        if section and section.unused is not None and re.match(section.unused, rest):
            unused.append(key)
            continue
        for pattern, replacement in section.rules if section else ():
            new, hits = re.subn("^" + pattern, replacement, rest)
            if hits:
                renamed[section.target + new] = value
                break
        else:
            unknown.append(key)
    if unknown and not renamed and accepted:
        raise _layout_error(path, list(state_dict), accepted)
    if unknown:
        raise KeyError(f"{path}: unexpected keys that map to nothing in the model: {_names(unknown)}")
    return renamed, unused


def _names(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _fit(value: torch.Tensor, target: torch.Tensor, key: str, path: str) -> torch.Tensor:
    """The file's tensor in our shape: a 1×1 conv weight (face.evoLVe's SE) may serve a Linear weight."""
    if value.shape == target.shape:
        return value
    if value.dim() == 4 and value.shape[2:] == (1, 1) and value.shape[:2] == target.shape:
        return value.reshape(target.shape)
    raise ValueError(f"{path}: '{key}' has shape {tuple(value.shape)}, the model built from the config "
                     f"expects {tuple(target.shape)} (do models.* in the config match the checkpoint?)")


def _load_entries(module: nn.Module, entries: dict[str, torch.Tensor], required: list[str], path: str) -> None:
    """Load `entries` into `module`: every key of `required` must be there and every entry must exist."""
    own = module.state_dict()
    missing = [k for k in required if k not in entries]
    extra = [k for k in entries if k not in own]
    problems = []
    if missing:
        problems.append(f"the model's keys are missing from the checkpoint: {_names(missing)}")
    if extra:
        problems.append(f"the checkpoint has keys the model built from the config lacks: {_names(extra)}")
    if problems:
        raise KeyError(f"{path}: " + "; ".join(problems))
    module.load_state_dict({k: _fit(v, own[k], k, path) for k, v in entries.items()}, strict=False)


def _load_released(model: nn.Module, state_dict: dict[str, torch.Tensor], equilibrium: nn.Module | None,
                   path: str) -> None:
    normalization = {k: state_dict.pop(k, None) for k in RELEASED_NORMALIZATION}
    for key, expected in RELEASED_NORMALIZATION.items():
        if normalization[key] is None:
            raise KeyError(f"{path}: the model's keys are missing from the checkpoint: {key}")
        # Ours is fixed, not loaded: the file must hold the same constant.
        if not torch.allclose(normalization[key], torch.full_like(normalization[key], expected)):
            raise ValueError(f"{path}: '{key}' is not the fixed (x − 127.5)/127.5 input normalisation")
    released_counters = [k for k in state_dict if k.startswith(RELEASED_EQUILIBRIUM.source)]
    counters = released_equilibrium(state_dict, path)
    for key in released_counters:
        del state_dict[key]
    weights, unused = _translate(state_dict, RELEASED_MODEL, path)
    _load_entries(model, weights, list(model.state_dict()), path)
    if equilibrium is None:
        unused += released_counters
    else:
        _load_equilibrium(equilibrium, counters, path)
        if not torch.isfinite(equilibrium.identity_weights).all():
            # The release never fills its counters, so its first refresh leaves every weight NaN.
            log.warning("%s: non-finite identity weights (the release's 0/0 refresh): reset to 1", path)
            equilibrium.identity_weights.copy_(torch.where(torch.isfinite(equilibrium.identity_weights),
                                                           equilibrium.identity_weights, 1.0))
    log.info("%s: skipped %d keys the method does not use: %s", path, len(unused), ", ".join(unused))


def released_equilibrium(state_dict: dict, path: str) -> dict[str, torch.Tensor]:
    """The IE state under `eqm.` of a released state_dict, by our buffer names (empty when it holds none)."""
    counters = {k: v for k, v in state_dict.items() if str(k).startswith(RELEASED_EQUILIBRIUM.source)}
    return _translate(counters, (RELEASED_EQUILIBRIUM,), path)[0]


def released_layout(checkpoint: dict, path: str) -> tuple[dict, str]:
    """A released file's state_dict (its `start_it` wrapper and `module.` prefix removed) and the layout's name;
    a layout error naming the file when it is not one."""
    wrapped = isinstance(checkpoint.get("state_dict"), dict) and "start_it" in checkpoint
    state_dict, stripped = strip_data_parallel(checkpoint["state_dict"] if wrapped else checkpoint)
    if not any(str(k).startswith((FACE_SECTION.source, VOICE_SECTION.source)) for k in state_dict):
        raise _layout_error(path, list(state_dict), OWN_LAYOUTS)
    layout = "the release's checkpoint" if wrapped else "the release's bare state_dict"
    return state_dict, _with_prefix_note(layout, stripped)


def _load_equilibrium(equilibrium: nn.Module, entries: dict[str, torch.Tensor], path: str) -> None:
    own = equilibrium.state_dict()
    for key, value in entries.items():
        if key in own and value.shape != own[key].shape:
            raise ValueError(f"{path}: '{key}' holds {tuple(value.shape)[0]} training identities, the "
                             f"equilibrium was built for {tuple(own[key].shape)[0]}")
    _load_entries(equilibrium, entries, list(own), path)


def load_checkpoint(model: nn.Module, path: str, equilibrium: nn.Module | None = None,
                    checkpoint: dict | None = None) -> dict:
    """Restore `model` (and `equilibrium`, when given) from our checkpoint or the released one.

    `checkpoint`: the file's content when the caller has read it already (read_checkpoint). Returns the raw
    checkpoint dict (optimizer, iteration, RNG states... are the caller's business).
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    if checkpoint.get("format") == OWN_FORMAT:
        weights, stripped = strip_data_parallel(checkpoint["model"])
        layout = _with_prefix_note("this project's checkpoint", stripped)
        _load_entries(model, weights, list(model.state_dict()), path)
        if equilibrium is not None:
            if checkpoint.get("equilibrium") is None:
                raise KeyError(f"{path}: holds no 'equilibrium' state to restore")
            _load_equilibrium(equilibrium, strip_data_parallel(checkpoint["equilibrium"])[0], path)
    else:
        state_dict, layout = released_layout(checkpoint, path)
        _load_released(model, dict(state_dict), equilibrium, path)
    log.info("%s: loaded; layout: %s", path, layout)
    return checkpoint


def _load_pretrained(model: nn.Module, path: str, state_dict: dict, sections: tuple[Section, ...],
                     accepted: tuple[str, ...], layout: str, encoder: str) -> None:
    weights, unused = _translate(state_dict, sections, path, accepted)
    required = [k for k in model.state_dict() if k.startswith(encoder + ".") and not k.startswith(encoder + ".head.")]
    _load_entries(model, weights, required, path)
    log.info("%s: %s backbone loaded (%d tensors); layout: %s; skipped %d unused keys: %s", path, encoder,
             len(weights), layout, len(unused), ", ".join(unused))


def _state_dict_file(path: str, config_key: str, accepted: tuple[str, ...]) -> dict:
    state_dict = read_checkpoint(path, config_key)
    if not isinstance(state_dict, dict):
        raise CheckpointLayoutError(f"{path}: {config_key} must be a state_dict file, got a "
                                    f"{type(state_dict).__name__}; accepted layouts: {'; '.join(accepted)}")
    return state_dict


def load_pretrained_face(model: nn.Module, path: str) -> None:
    """Face backbone (stem + body) from a face.evoLVe IR checkpoint (`input_layer.*`, `body.*`, `output_layer.*`)."""
    state_dict, stripped = strip_data_parallel(_state_dict_file(path, "models.face.pretrained", FACE_LAYOUTS))
    _load_pretrained(model, path, state_dict, PRETRAINED_FACE, FACE_LAYOUTS,
                     _with_prefix_note("face.evoLVe backbone", stripped), "face_encoder")


def load_pretrained_voice(model: nn.Module, path: str) -> None:
    """Voice backbone from any voxceleb_trainer model file (`__S__.*`, `__L__.*` ignored; bare, in
    `{'model_state_dict', ...}` or `{'model': ...}`) or plain ResNetSE34L keys."""
    state_dict = _state_dict_file(path, "models.voice.pretrained", VOICE_LAYOUTS)
    wrapper = next((k for k in VOICE_WRAPPERS if isinstance(state_dict.get(k), dict)), None)
    state_dict, stripped = strip_data_parallel(state_dict[wrapper] if wrapper else state_dict)
    speaker_net = any(str(k).startswith(PRETRAINED_VOICE[0].source) for k in state_dict)
    layout = "voxceleb_trainer SpeakerNet" if speaker_net else "plain ResNetSE34L keys"
    layout += f" in {{'{wrapper}': ...}}" if wrapper else ""
    _load_pretrained(model, path, state_dict, PRETRAINED_VOICE if speaker_net else PLAIN_VOICE, VOICE_LAYOUTS,
                     _with_prefix_note(layout, stripped), "voice_encoder")


def paper_sized(cfg_models) -> bool:
    paper = DEFAULTS["models"]
    return all(cfg_models[m][k] == paper[m][k] for m, k in
               (("face", "units"), ("face", "widths"), ("voice", "layers"), ("voice", "filters")))


def load_backbones(model: torch.nn.Module, cfg_models) -> None:
    """The pretrained backbones the config names; a warning when the paper's encoders start from scratch."""
    loaders = {"face": load_pretrained_face, "voice": load_pretrained_voice}
    for name, load in loaders.items():
        path = cfg_models[name].pretrained
        if not path:
            continue
        try:
            load(model, path)
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
        except UNREADABLE as e:
            raise CheckpointError(f"{path} (models.{name}.pretrained): cannot be read: {reason(e)}") from None
    missing = [f"models.{name}.pretrained" for name in loaders if not cfg_models[name].pretrained]
    if missing and paper_sized(cfg_models):
        log.warning("%s null: those backbones start from random weights (the paper starts from pretrained "
                    "ones, README, Reproduce the paper, step 1)", " and ".join(missing))
