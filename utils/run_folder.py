"""The run folder: one training run at a time (a lock file), a config.yaml never replaced silently, and the
run record naming the run (or branch) that started last."""
from __future__ import annotations

import json
import logging
import os
import time

import yaml

from utils import lock
from utils.errors import UserError
from utils.files import WriteError, atomic_write
from utils.lock import Holder

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
CONFIG_NAME = "config.yaml"
RECORD_NAME = "run.json"


def run_dir(cfg) -> str:
    """Folder of a run: checkpoints, logs, tensorboard events, results."""
    return os.path.join(cfg.output_dir, cfg.exp_name)


def config_to_dict(cfg: dict) -> dict:
    """Plain nested dict of a config (for config.yaml and the checkpoints' record)."""
    return {k: config_to_dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, (list, tuple)) else v)
            for k, v in cfg.items()}


class RunFolderBusy(UserError):
    """Another live training run holds the run folder's lock."""


def acquire_lock(folder: str) -> str:
    """Take `<folder>/train.lock` (utils/lock.py) until release_lock; a dead run's lock is taken over.

    Refuses (RunFolderBusy, naming the pid and host) while another live process holds it.
    """
    path = os.path.join(folder, LOCK_NAME)

    def busy(holder: Holder) -> RunFolderBusy:
        return RunFolderBusy(f"{folder} is in use by another training run (pid {holder.pid or 'unknown'} on "
                             f"{holder.host or 'this host'}, lock {path}); wait for it to finish, or use another "
                             "exp_name")

    try:
        return lock.acquire(path, busy)
    except OSError as e:  # a read-only or full disk, no permission: said before any work is done
        raise WriteError(f"cannot write in the run folder {folder}: {e.strerror or e}") from None


def release_lock(path: str) -> None:
    lock.release(path)


def write_run_config(new: dict, folder: str) -> None:
    """Write the config `new` (plain data) as `<folder>/config.yaml`; a different one already there is kept as
    config.<time>.yaml first."""
    path = os.path.join(folder, CONFIG_NAME)
    if os.path.exists(path):
        with open(path) as f:
            old = yaml.safe_load(f)
        if old == new:
            return
        kept = os.path.join(folder, f"config.{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        os.replace(path, kept)
        log.warning("%s differs from this run's config (%s); the old one is kept as %s", path,
                    ", ".join(_changed_keys(old, new)) or "layout", kept)
    with atomic_write(path) as f:
        yaml.safe_dump(new, f, sort_keys=False)


def read_run_record(folder: str) -> dict | None:
    """`<folder>/run.json`: {'run': id, 'parent': {'run', 'iteration', 'path'} or None, 'started'}, or None."""
    path = os.path.join(folder, RECORD_NAME)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable run record, ignored (%s)", path, e)
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run"), str) else None


def write_run_record(folder: str, run_id: str, parent: dict | None) -> None:
    with atomic_write(os.path.join(folder, RECORD_NAME)) as f:
        json.dump({"run": run_id, "parent": parent, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f, indent=1)


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix.rstrip(".")] if old != new else []
    keys = list(old) + [k for k in new if k not in old]
    return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
