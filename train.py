"""Train the voice and face encoders with AaSM, BCR and Instance Equilibrium.

`python train.py --help` shows the command lines; Ctrl-C or SIGTERM saves the last finished iteration and exits,
`--resume auto` continues it.
"""
from __future__ import annotations

import argparse
import sys

from config import OPTS_HELP

EXAMPLES = """examples:
  python train.py --cfg config/synthetic.yaml                 # the CPU demo on the embedded corpus
  python train.py --cfg config/cfg.yaml --opts training.batch_size=32 training.lr=0.016
  python train.py --cfg config/cfg.yaml --resume auto         # continue an interrupted run
  python train.py --cfg config/ablation/synthetic_aasm.yaml --seeds 0 1 2
  torchrun --nproc_per_node 4 train.py --cfg config/cfg.yaml  # run `python -m data.prepare` first

writes <output_dir>/<exp_name>/ (experiments/<exp_name>/ by default): config.yaml, run.json, train.log,
tensorboard/, checkpoint_<iteration>.pth.tar, checkpoint_best.pth.tar; with --seeds, one such
folder per seed in <output_dir>/<exp_name>/seed<k>/. Ctrl-C or SIGTERM saves the last finished
iteration and prints the command that continues it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config, e.g. config/cfg.yaml or config/synthetic.yaml")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=OPTS_HELP)
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue from this checkpoint, or 'auto': the run folder's newest usable one")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="K",
                        help="train one run per seed, one after another, in <output_dir>/<exp_name>/seed<k>/")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer before the imports below (seconds of torch)

# The training's imports, after the command line is known to be valid (flake8: E402 by design).
import contextlib
import logging
import os
import signal
import time

import torch
from tensorboardX import SummaryWriter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from config import ConfigError, load_config, require, seed_configs
from config.resume import check_resume_config
from data.datasets import TrainDataset, as_float, train_loader
from data.prepare import prepare_if_needed
from data.provenance import training_data
from evaluation.extraction import validate
from losses import create_loss
from losses.diagnostics import TrainingDiagnostics
from models import build_model
from models.layouts import load_backbones, load_checkpoint
from models.pair_encoder import PairEncoder
from models.settings import model_settings
from utils import distributed
from utils.errors import UserError
from utils.cpu import keep_cpu_kernels
from utils.run import (FiniteWatch, Interrupted, StopSignals, log_iteration, log_to_file, override_keys, resume_command,
                       seed_everything)
from utils.run_folder import release_lock
from utils.train_state import TrainState, begin_run, keep_other_runs_file, open_run_folder, save, save_periodic

log = logging.getLogger("train")

NOT_A_LOSS_TERM = ("rank_accuracy",)  # logged beside the terms, never a reason to stop


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------
def learning_rate(iteration: int, cfg_training) -> float:
    """Step schedule: lr × gamma for every step iteration already reached."""
    drops = sum(iteration >= step for step in cfg_training.lr_steps)
    return cfg_training.lr * cfg_training.lr_gamma ** drops


def plateaued(history: list[float], patience: int) -> bool:
    """The release's stopping rule: the last `patience` validation accuracies never increase."""
    if patience <= 0 or len(history) < patience:
        return False
    tail = history[-patience:]
    return all(b <= a for a, b in zip(tail, tail[1:]))


# ---------------------------------------------------------------------------
# Data, model, loss and optimizer
# ---------------------------------------------------------------------------
def build_state(cfg, identities: int, device: torch.device) -> TrainState:
    """The model (backbones loaded), the loss with its IE buffers, SGD and the fp16 scaler."""
    model = build_model(cfg.models, cfg.dataset.sample_rate)
    load_backbones(model, cfg.models)
    model = model.to(device)
    cfg_training = cfg.training
    if cfg_training.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg_training.lr, momentum=cfg_training.momentum,
                                weight_decay=cfg_training.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg_training.amp == "fp16")
    loss_fn = create_loss(cfg_training, identities).to(device)
    return TrainState(model, loss_fn, optimizer, scaler, provenance=provenance(cfg))


def provenance(cfg) -> dict:
    """What every checkpoint records of the model it holds and the data it was trained on."""
    return {"model_settings": model_settings(cfg), "training_data": training_data(cfg)}


def cpu_computes_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it emulates it, 6.7x slower
    than float32 per demo iteration (docs/benchmarks.md)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def amp_dtype_of(cfg_training, device: torch.device) -> torch.dtype | None:
    """The encoders' autocast dtype for training.amp: bf16 or fp16 on CUDA; on the CPU bf16 where it runs natively."""
    amp = cfg_training.amp
    if amp == "off":
        return None
    if device.type == "cuda":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if amp == "bf16" and cpu_computes_bf16():
        return torch.bfloat16
    needs = "CUDA" if amp == "fp16" else "CUDA or a CPU with native bf16 (AVX512-BF16 or AMX)"
    log.warning("training.amp: %s needs %s; the encoders train in float32", amp, needs)
    return None


def embed(encoders: torch.nn.Module, batch: tuple, cfg, device: torch.device,
          amp_dtype: torch.dtype | None = None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(face, face′, voice, voice′) embeddings and the labels of this rank's share of the global batch."""
    faces, voice, voice_aux = (as_float(x, device) for x in batch[:3])
    labels = batch[3].to(device, non_blocking=True)
    face, face_aux = faces[:, 0], faces[:, 1]
    if cfg.training.channels_last and device.type == "cuda":
        face, face_aux = (x.contiguous(memory_format=torch.channels_last) for x in (face, face_aux))
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        return encoders(face, face_aux, voice, voice_aux), labels


def optimizer_step(state: TrainState, loss: torch.Tensor, skipped_steps: torch.Tensor | None) -> None:
    """Backward and SGD step; with fp16, a step the scaler skips (inf gradients) is counted on the device."""
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if skipped_steps is None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
        return
    # The scale shrinks exactly when the step was skipped. scale(1) is the scale as a device tensor, so
    # comparing needs no host sync (GradScaler.get_scale() would wait for the GPU every iteration).
    one = torch.ones((), device=loss.device)
    scale = state.scaler.scale(one)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    skipped_steps += state.scaler.scale(one) < scale


# ---------------------------------------------------------------------------
# Logging and validation
# ---------------------------------------------------------------------------
def validate_and_keep_best(state: TrainState, folder: str, cfg, ctx: distributed.Context, device: torch.device,
                           writer) -> None:
    accuracy = distributed.on_main(validate, ctx, state.model, cfg, device)
    state.history.append(accuracy)
    is_best = accuracy > state.best_val
    state.best_val = max(state.best_val, accuracy)
    if ctx.is_main:
        writer.add_scalar("val/match_v2f_2", accuracy, state.iteration)
        log.info("iteration %d: validation 1:2 v2f matching %.2f%% (best %.2f%%)", state.iteration,
                 100 * accuracy, 100 * state.best_val)
    if is_best:
        best = os.path.join(folder, "checkpoint_best.pth.tar")
        if ctx.is_main:
            keep_other_runs_file(best, state.run_id)
        save(state, best, cfg, ctx, device)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def train(cfg, resume: str | None = None, overridden: set[str] = frozenset()) -> dict:
    """Run training as the config says; returns the final training state summary.

    `overridden`: config keys set explicitly (--opts); only those may differ from a resumed checkpoint's.
    """
    ctx = distributed.setup(cfg.device, cfg.training.timeout_minutes)
    lock = None
    try:
        distributed.register_process(ctx)
        if cfg.training.batch_size % ctx.world_size:
            raise ConfigError(f"training.batch_size={cfg.training.batch_size} is not divisible by the "
                              f"{ctx.world_size} processes")
        device = distributed.device_of(cfg.device, ctx)
        requested = bool(resume or cfg.training.resume)
        folder, lock, resume, trained_with = open_run_folder(cfg, resume, ctx)
        branching = check_resume_config(trained_with, cfg, overridden, resume)
        keep_cpu_kernels()
        seed_everything(cfg.seed + ctx.rank, cfg.training.deterministic)
        prepare_if_needed(cfg, ctx)
        return run(cfg, folder, resume, ctx, device, branching, requested)
    except Interrupted:  # every rank stops alike after a signal: nobody failed
        raise
    except Exception as e:
        failure = distributed.stop_after_failure(e, ctx)
        if isinstance(failure, UserError):
            log_to_file(log, f"error: {failure}", __file__)
        if failure is e:
            raise
        raise failure from None
    finally:
        if lock is not None and ctx.is_main:
            release_lock(lock)
        distributed.cleanup(ctx)


def run(cfg, folder: str, resume: str | None, ctx: distributed.Context, device: torch.device,
        branching: list[str] = (), resume_requested: bool = False) -> dict:
    """The training loop, from the state the setup built to max_iter (or the plateau, or a signal).

    The run folder's config.yaml and run record are written only once every file the run starts from loaded."""
    cfg_training = cfg.training
    dataset = TrainDataset(cfg)
    state = build_state(cfg, len(dataset), device)
    checkpoint = state.restore(resume, ctx.rank, device, load_checkpoint) if resume else None
    state.run_id = distributed.on_main(begin_run, ctx, cfg, folder, resume, checkpoint, list(branching),
                                       resume_requested)
    if resume:
        log.info("resumed from %s at iteration %d", resume, state.iteration + 1)
    if ctx.is_main:
        log.info("run %s in %s: iterations %d to %s", state.run_id, folder, state.iteration + 1,
                 cfg_training.max_iter if cfg_training.plateau_patience <= 0 else "the plateau")
    encoders = distributed.wrap_module(PairEncoder(state.model, cfg_training.compile), ctx, device)
    amp_dtype = amp_dtype_of(cfg_training, device)
    skipped_steps = torch.zeros((), dtype=torch.long, device=device) if state.scaler.is_enabled() else None
    start = state.iteration + 1
    batches = iter(train_loader(cfg, dataset, start_iteration=start, rank=ctx.rank, world_size=ctx.world_size))
    writer = SummaryWriter(os.path.join(folder, "tensorboard")) if ctx.is_main else None
    loss_fn = state.equilibrium  # the method's loss, owning the IE buffers
    diagnostics = TrainingDiagnostics(loss_fn, writer, cfg_training.diagnostics) if ctx.is_main else None
    bar = tqdm(total=cfg_training.max_iter, initial=start - 1, disable=not ctx.is_main, desc="train",
               dynamic_ncols=True)
    last = cfg_training.max_iter if cfg_training.plateau_patience <= 0 else None  # None: decided by the plateau rule
    watch = FiniteWatch()
    interrupted = False
    state.model.train()
    t0 = time.time()
    # log lines above the bar, not through it; the loader's workers stopped however the loop ends
    with StopSignals() as signals, bar, logging_redirect_tqdm(), contextlib.closing(batches):
        for iteration in range(start, last + 1 if last is not None else sys.maxsize):
            try:
                batch = next(batches)
            except Exception:
                if signals.signum is None:  # a worker stopped by the same Ctrl-C is no error of its own
                    raise
                interrupted = True
                break
            lr = learning_rate(iteration, cfg_training)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            embeddings, labels = embed(encoders, batch, cfg, device, amp_dtype)
            loss, terms, refreshed = loss_fn(*distributed.gather_batch(embeddings, labels, ctx), iteration)
            watch.update({"loss": loss, **{k: v for k, v in terms.items() if k not in NOT_A_LOSS_TERM}}, iteration)
            if ctx.is_main and loss_fn.bcr_in_total(iteration) and iteration == cfg_training.bcr_start_iter:
                log.info("iteration %d: BCR switches on (training.bcr_start_iter): from here the total loss "
                         "includes λ·BCR = %g × BCR, so the logged loss jumps by that term", iteration,
                         cfg_training.bcr_weight)
            optimizer_step(state, loss, skipped_steps)
            state.iteration = iteration
            bar.update(1)

            since_val_start = iteration - cfg_training.val_start
            validating = since_val_start >= 0 and since_val_start % cfg_training.val_iter == 0
            end = iteration == last
            saving = iteration == 1 or iteration % cfg_training.save_iter == 0
            logging_now = iteration % cfg_training.log_iter == 0 or iteration == start
            if logging_now or validating or end or saving:
                watch.check()  # the loss is identical on every rank, so every rank stops alike
                if logging_now and ctx.is_main:
                    log_iteration(writer, bar, iteration, loss, terms, lr, skipped_steps, cfg_training, start,
                                  time.time() - t0)
            if validating or end:
                validate_and_keep_best(state, folder, cfg, ctx, device, writer)
                if last is None and iteration >= cfg_training.max_iter and \
                        plateaued(state.history, cfg_training.plateau_patience):
                    last, end = iteration, True
            if saving or end:
                save_periodic(state, folder, cfg, ctx, device)
            if diagnostics is not None:  # rank 0's rows only
                if refreshed:
                    diagnostics.record_refresh(iteration, embeddings, loss_fn.weights_of(labels))
                if logging_now:
                    diagnostics.record(iteration, embeddings, loss_fn.weights_of(labels))
            if end:
                break
            # Every rank must agree before stopping: multi-process runs ask at the synchronised iterations only.
            if (not ctx.enabled or logging_now or validating or saving) and \
                    distributed.any_rank(signals.signum is not None, ctx, device):
                interrupted = True
                break
    if interrupted:
        watch.check()
        path = save_periodic(state, folder, cfg, ctx, device)
        signum = signals.signum or signal.SIGTERM
        raise Interrupted(f"{signal.Signals(signum).name}: stopped after iteration {state.iteration}, saved "
                          f"{path}; continue with: {resume_command()}", signum)
    elapsed = time.time() - t0
    if ctx.is_main:
        log.info("finished %d iterations in %.1f s; best validation 1:2 v2f matching %.2f%%",
                 state.iteration - start + 1, elapsed, 100 * state.best_val)
        if diagnostics is not None:
            log.info(diagnostics.summary())
        writer.close()
    return {"iteration": state.iteration, "best_val": state.best_val, "seconds": elapsed, "run_dir": folder}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.opts)
        require(cfg, "dataset.list_dir", "dataset.lmdb_dir")
        distributed.check_device(cfg.device)
        for seed_cfg in seed_configs(cfg, args.seeds):
            train(seed_cfg, resume=args.resume, overridden=override_keys(args.opts))
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
