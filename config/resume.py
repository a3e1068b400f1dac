"""Which config keys a resumed run must share with its checkpoint, and which of them may change by request."""
from __future__ import annotations

import logging

from config.loader import renamed, setting
from utils.errors import CheckpointError
from utils.run_folder import config_to_dict

log = logging.getLogger(__name__)

# The data a run trains and validates on: its folders, and its split.
DATA_FOLDERS = ("dataset.audio_data_dir", "dataset.image_data_dir", "dataset.meta_file", "dataset.list_dir",
                "dataset.lmdb_dir")
DATA_KEYS = (*DATA_FOLDERS, "dataset.split_ranges", "dataset.split_file")
# Keys that change what resuming continues: the model, the global batch and the schedule.
RESUME_KEYS = ("seed", "models.embedding_dim", "models.face.units", "models.face.widths", "models.face.se",
               "models.face.head_hidden", "models.voice.layers", "models.voice.filters", "models.voice.n_mels",
               "models.voice.head_hidden", "training.batch_size", "training.max_iter", "training.lr",
               "training.lr_steps", "training.lr_gamma", "training.momentum", "training.weight_decay",
               "training.crop_seconds", "training.bcr_start_iter", "training.ie_start_iter", "training.ie_refresh_iter",
               "training.ie_enabled", "training.bcr_hinge", "training.temperature", "training.bcr_anchor_margin",
               "training.bcr_margin",
               *DATA_KEYS)
# Keys whose change (set with --opts) continues the same run: a longer schedule, the data moved elsewhere.
# Any other change of RESUME_KEYS starts a branch of its own.
CONTINUING_KEYS = ("training.max_iter", *DATA_FOLDERS)


def check_resume_config(saved: dict | None, cfg, overridden: set[str], path: str) -> list[str]:
    """Refuse to resume with a model, batch, schedule or data other than the checkpoint's, unless set with
    --opts; returns the keys changed that way that start a branch (all but CONTINUING_KEYS)."""
    if not saved:
        return []
    saved = renamed(saved, path, warn=False)  # a checkpoint written before the keys got their names
    current = config_to_dict(cfg)
    changed = [k for k in RESUME_KEYS if setting(saved, k) != setting(current, k)]
    changed_silently = [k for k in changed if not any(o == k or o.startswith(k + ".") for o in overridden)]
    if changed_silently:
        details = ", ".join(f"{k} (checkpoint {setting(saved, k)!r}, config {setting(current, k)!r})"
                            for k in changed_silently)
        raise CheckpointError(f"{path}: the config differs from the checkpoint's in {details}; resume with the "
                              "checkpoint's values, or set the new ones explicitly with --opts")
    if changed:
        log.warning("resuming %s with changed %s (set with --opts)", path, ", ".join(changed))
    return [k for k in changed if k not in CONTINUING_KEYS]
