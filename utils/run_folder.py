"""The run folder: one training run at a time (a lock file), a config.yaml never replaced silently, and the
run record naming the run (or branch) that started last."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

import yaml

from utils.errors import UserError
from utils.files import WriteError, atomic_write

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


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def acquire_lock(folder: str) -> str:
    """Create `<folder>/train.lock` holding this process' pid and host; a stale lock is taken over.

    Refuses (RunFolderBusy) while the process named in the lock is alive on this host; a lock from
    another host cannot be checked and is refused too.
    """
    path = os.path.join(folder, LOCK_NAME)
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(2):
        try:
            os.makedirs(folder, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is None:  # vanished or half-written: try once more
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            pid, host = owner
            if host != socket.gethostname() or process_alive(pid):
                raise RunFolderBusy(f"{folder} is in use by another training run (pid {pid} on {host}, lock "
                                    f"{path}); wait for it to finish, or use another exp_name") from None
            log.warning("taking over the lock %s of pid %d, which is no longer running", path, pid)
            os.unlink(path)
            continue
        except OSError as e:  # a read-only or full disk, no permission: said before any work is done
            raise WriteError(f"cannot write in the run folder {folder}: {e.strerror or e}") from None
        with os.fdopen(descriptor, "w") as f:
            f.write(mine)
        return path
    raise RunFolderBusy(f"could not take the lock {path}; another run may be starting in {folder}")


def _read_owner(path: str) -> tuple[int, str] | None:
    try:
        with open(path) as f:
            pid, host = f.read().split()
        return int(pid), host
    except (FileNotFoundError, ValueError):
        return None


def release_lock(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
