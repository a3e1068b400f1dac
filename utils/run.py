"""Run plumbing of training: logging set-up, seeding, the stop signals and the watch for non-finite losses."""
from __future__ import annotations

import logging
import os
import random
import signal

import numpy as np
import torch

from utils.errors import UserError


def setup_logging(folder: str | None, is_main: bool) -> None:
    """Log to the terminal, and on the main process to <folder>/train.log."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main and folder is not None:
        handlers.append(logging.FileHandler(os.path.join(folder, "train.log")))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)


def log_to_file(log: logging.Logger, message: str, source: str) -> None:
    """An error line for train.log only: the program prints it to the terminal itself when it exits."""
    record = log.makeRecord(log.name, logging.ERROR, source, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def progress_line(iteration: int, first: int, last: int, elapsed: float) -> str:
    """Throughput since the run (or resume) started, elapsed time and the time left to iteration `last`."""
    rate = (iteration - first + 1) / max(elapsed, 1e-9)
    return (f"{rate:.2f} it/s, elapsed {duration(elapsed)}, "
            f"remaining {duration(max(last - iteration, 0) / rate)}")


class NonFiniteLoss(UserError):
    pass


class FiniteWatch:
    """Marks non-finite loss terms on the device every iteration; the host only looks in `check()`.

    Reading a GPU value waits for the GPU, so it happens at log, validation and save iterations only;
    a NaN is still never saved (TrainState.save checks the weights themselves).
    """

    def __init__(self):
        self.names: list[str] = []
        self.bad: torch.Tensor | None = None  # per term: non-finite at some iteration
        self.first: torch.Tensor | None = None  # per term: first such iteration (0 = none)

    def update(self, terms: dict[str, torch.Tensor], iteration: int) -> None:
        bad = ~torch.isfinite(torch.stack([t.detach().float() for t in terms.values()]))
        if self.bad is None:
            self.names, self.bad, self.first = list(terms), bad, torch.where(bad, iteration, 0)
        else:
            self.first = torch.where(bad & ~self.bad, iteration, self.first)
            self.bad = self.bad | bad

    def check(self) -> None:
        if self.bad is None or not bool(self.bad.any()):
            return
        flags, first = self.bad.tolist(), self.first.tolist()
        iteration = min(f for f, b in zip(first, flags) if b)
        bad = [name for name, b, f in zip(self.names, flags, first) if b and f == iteration]
        raise NonFiniteLoss(f"non-finite loss at iteration {iteration}: term(s) {', '.join(bad)}; "
                            "stopping without saving this state")


class Interrupted(Exception):
    """SIGINT/SIGTERM: the last finished iteration is saved; the message says how to continue."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a request the loop answers between iterations; a second one acts at once."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
