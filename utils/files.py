"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
from typing import IO, Iterator

from utils.errors import UserError

log = logging.getLogger(__name__)

TEMPORARY_PREFIX = ".tmp_"


class WriteError(UserError, OSError):
    """A file could not be written (full disk, no permission...); the message names the path."""


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    On any failure the temporary file is removed, `path` keeps its previous content, and an OSError
    (e.g. "No space left on device") becomes a WriteError naming `path`. The file gets the usual
    permissions (0666 less the umask), like any file the user creates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f"{TEMPORARY_PREFIX}{os.path.basename(path)}.{secrets.token_hex(4)}")
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _sync_folder(folder)  # make the rename itself durable
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        cause = os_error_in(e)
        if cause is not None and not isinstance(e, UserError):
            raise WriteError(f"could not write {path}: {cause.strerror or cause}") from e
        raise


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError an exception is or was raised from (torch.save's RuntimeError chains the disk's ENOSPC)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _sync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files an interrupted write left in `folder` (a killed process cannot)."""
    stale = glob.glob(os.path.join(glob.escape(folder), TEMPORARY_PREFIX + "*"))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.warning("removed %s, left by an interrupted write", path)
    return stale
