"""Run plumbing of training: logging set-up, seeding, the stop signals and the watch for non-finite losses."""
from __future__ import annotations

import logging
import os
import random
import signal
import sys

import numpy as np
import torch

from utils import distributed
from utils.errors import UserError

log = logging.getLogger("train")


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


def loss_terms_line(total: float, values: dict[str, float], iteration: int, cfg_training) -> str:
    """`loss 9.5 = AaSM cross 3.1 + face 3.2 + voice 3.2 (BCR 0.41, ...)`: the total and the terms it sums."""
    if cfg_training.objective == "infonce":
        return (f"loss {total:.4f} = InfoNCE cross {values['infonce_cross']:.4f} + face {values['infonce_face']:.4f} "
                f"+ voice {values['infonce_voice']:.4f}")
    line = (f"loss {total:.4f} = AaSM cross {values['aasm_cross']:.4f} + face {values['aasm_face']:.4f} "
            f"+ voice {values['aasm_voice']:.4f}")
    if cfg_training.bcr_enabled and iteration >= cfg_training.bcr_start_iter:
        return line + f" + λ {cfg_training.bcr_weight:g} × BCR {values['regauge']:.4f}"
    note = (f"added from iteration {cfg_training.bcr_start_iter}" if cfg_training.bcr_enabled
            else "not added: training.bcr_enabled false")
    return line + f" (BCR {values['regauge']:.4f}, {note})"


def log_iteration(writer, bar, iteration: int, loss: torch.Tensor, terms: dict, lr: float,
                  skipped_steps: torch.Tensor | None, cfg_training, first: int, elapsed: float) -> None:
    """tensorboard scalars, the progress bar and one train.log line (README, Training)."""
    values = {name: float(value) for name, value in terms.items()}
    total = float(loss.detach())
    for name, value in values.items():
        writer.add_scalar(f"loss/{name}", value, iteration)
    writer.add_scalar("loss/total", total, iteration)
    writer.add_scalar("lr", lr, iteration)
    skipped = ""
    if skipped_steps is not None:
        writer.add_scalar("amp/skipped_steps", int(skipped_steps), iteration)
        skipped = f", fp16 steps skipped {int(skipped_steps)}"
    bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.0e}")
    log.info("iteration %d/%d: lr %.4g, %s, rank accuracy %.3f%s; %s", iteration, cfg_training.max_iter, lr,
             loss_terms_line(total, values, iteration, cfg_training), values["rank_accuracy"], skipped,
             progress_line(iteration, first, cfg_training.max_iter, elapsed))


def resume_command() -> str:
    """This process' own command line with `--resume auto` (what continues the run)."""
    args = list(sys.argv)
    if "--resume" in args:
        del args[args.index("--resume"):args.index("--resume") + 2]
    launcher = "torchrun ... " if distributed.launched() else "python "
    return launcher + " ".join(args + ["--resume", "auto"])


def override_keys(opts: list[str]) -> set[str]:
    """The config keys named in --opts (key=value ...)."""
    return {opt.split("=", 1)[0].strip() for opt in opts}
