"""The one lock of a job's folder (a training run's folder, data.prepare's dataset.lmdb_dir): a kernel flock on a
file that names its holder (`pid host`), so a busy lock says who holds it and a killed holder's lock is free again."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from typing import Callable, NamedTuple

from utils.errors import UserError

log = logging.getLogger(__name__)

_HELD: dict[str, object] = {}  # lock path -> the open file whose flock this process holds


class Holder(NamedTuple):
    """Who a lock file names: pid (None when unreadable) and host (None in a file written without one)."""
    pid: int | None
    host: str | None


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


def _holder(text: str) -> Holder:
    parts = text.split()
    try:
        return Holder(int(parts[0]), parts[1] if len(parts) > 1 else None)
    except (IndexError, ValueError):
        return Holder(None, None)


def acquire(path: str, busy: Callable[[Holder], UserError]) -> str:
    """Take the lock `path` for this process (until `release`), writing `pid host` into it; `busy(holder)` is
    raised while another process holds it.

    Held means: the flock is taken (the kernel drops it when the holder dies, even by SIGKILL), or the file
    names a live process of this host, or another host (neither takes a flock here: an older version, a shared
    disk). A file left by a dead holder is taken over with a warning naming its pid.
    """
    me = socket.gethostname()
    while True:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        lock = open(path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = _holder(lock.read())
            lock.close()
            raise busy(holder) from None
        except BaseException:
            lock.close()
            raise
        # A release unlinks the file under its flock: a lock taken on the unlinked file is no lock, try again.
        try:
            same = os.path.samestat(os.fstat(lock.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        lock.close()
    try:
        lock.seek(0)
        holder = _holder(lock.read())
        if holder.pid is not None and holder.pid != os.getpid():
            if (holder.host or me) != me or process_alive(holder.pid):
                raise busy(holder)
            log.warning("taking over the lock %s of pid %d, which is no longer running", path, holder.pid)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {me}\n")
        lock.flush()
    except BaseException:
        lock.close()
        raise
    _HELD[path] = lock
    return path


def release(path: str) -> None:
    """Remove the lock file and drop the flock (a lock this process does not hold is left alone)."""
    lock = _HELD.pop(path, None)
    if lock is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # while still flocked: no other process can have taken it meanwhile
    lock.close()


@contextlib.contextmanager
def held(path: str, busy: Callable[[Holder], UserError]):
    """`acquire` for the duration of a with-block."""
    acquire(path, busy)
    try:
        yield path
    finally:
        release(path)
