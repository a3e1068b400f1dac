"""Train the voice and face encoders with AaSM, BCR and Instance Equilibrium.

    python train.py --cfg config/cfg.yaml [--opts training.lr=0.02 ...] [--resume auto|PATH]
    python train.py --cfg config/ablation/synthetic_aasm.yaml --seeds 0 1 2   # <run>/seed<k>/ each
    torchrun --nproc_per_node 4 train.py --cfg config/cfg.yaml
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import random
import time

import numpy as np
import torch
from easydict import EasyDict
from tensorboardX import SummaryWriter
from tqdm import tqdm

from data.datasets import TrainDataset, as_float, train_loader
from data.prepare import is_prepared, prepare
from losses import InstanceEquilibrium, should_refresh, total_loss
from losses.diagnostics import TrainingDiagnostics
from models import build_model
from utils import distributed
from utils.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_pretrained_face,
    load_pretrained_voice,
    prune_checkpoints,
    save_checkpoint,
)
from utils.config import config_to_dict, load_config, run_dir, save_config
from utils.evaluation import validate

log = logging.getLogger("train")


def learning_rate(iteration: int, cfg_training) -> float:
    """Step schedule: lr × gamma for every step iteration already reached."""
    drops = sum(iteration >= step for step in cfg_training.lr_steps)
    return cfg_training.lr * cfg_training.lr_gamma ** drops


def wrap_encoders(model: torch.nn.Module, ctx: distributed.Context, device: torch.device) -> torch.nn.Module:
    """PairEncoder, under DDP with batch norm synchronised over the global batch when distributed."""
    encoders = PairEncoder(model)
    if not ctx.enabled:
        return encoders
    if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on CPU (gloo) each rank normalises its own rows
        encoders = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoders)
    return torch.nn.parallel.DistributedDataParallel(encoders, device_ids=[device.index] if device.type == "cuda" else None)


def loss_and_update_equilibrium(embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor,
                                equilibrium: InstanceEquilibrium, iteration: int, cfg_training) -> tuple:
    """The iteration's loss on the global batch, with Instance Equilibrium's bookkeeping around it.

    Refreshes the identity weights first when due (so the new weights already serve this iteration),
    then computes the loss, then adds the cross pair's ranking counts. Returns (loss, terms, refreshed).
    """
    refreshed = should_refresh(iteration, cfg_training)
    if refreshed:
        equilibrium.refresh()
    loss, terms, correct = total_loss(*embeddings, equilibrium.weights_of(labels), iteration, cfg_training)
    equilibrium.accumulate(labels, correct, labels.shape[0] - 1)
    return loss, terms, refreshed


def forward_loss(encoders: torch.nn.Module, batch: tuple, equilibrium: InstanceEquilibrium, iteration: int, cfg,
                 ctx: distributed.Context, device: torch.device, amp_dtype: torch.dtype | None = None):
    """Loss, logged terms and whether the IE weights were refreshed, on this rank's share of the global batch."""
    faces, voice, voice_aux = (as_float(x, device) for x in batch[:3])
    labels = batch[3].to(device, non_blocking=True)
    face, face_aux = faces[:, 0], faces[:, 1]
    if cfg.training.channels_last and device.type == "cuda":
        face, face_aux = (x.contiguous(memory_format=torch.channels_last) for x in (face, face_aux))
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        embeddings = encoders(face, face_aux, voice, voice_aux)
    # Each rank's loss is the global one and its gradient reaches every rank's rows, so DDP's average
    # over ranks is the single-process gradient of the global batch. Every rank also sees the whole
    # gathered batch, so the equilibrium counters and weights agree on all ranks.
    embeddings = tuple(distributed.gather_with_grad(e.float(), ctx) for e in embeddings)
    return loss_and_update_equilibrium(embeddings, distributed.gather(labels, ctx), equilibrium, iteration,
                                       cfg.training)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """Every random stream, as tensors and plain values (checkpoints load with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                   "has_gauss": has_gauss, "gauss": gauss}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_logging(folder: str, is_main: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main:
        handlers.append(logging.FileHandler(os.path.join(folder, "train.log")))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)


class PairEncoder(torch.nn.Module):
    """Both images and both clips of a batch through the encoders in one forward (what DDP wraps)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, face, face_aux, voice, voice_aux) -> tuple[torch.Tensor, ...]:
        m = self.model
        return m.encode_face(face), m.encode_face(face_aux), m.encode_voice(voice), m.encode_voice(voice_aux)


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(terms: dict[str, torch.Tensor], iteration: int) -> None:
    """Stop on NaN/inf, naming the iteration and the first offending loss term."""
    values = torch.stack([t.detach().float() for t in terms.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [name for name, v in zip(terms, values.tolist()) if not math.isfinite(v)]
    raise NonFiniteLoss(f"non-finite loss at iteration {iteration}: term(s) {', '.join(bad)}; "
                        "stopping without saving this state")


def plateaued(history: list[float], patience: int) -> bool:
    """The release's stopping rule: the last `patience` validation accuracies never increase."""
    if patience <= 0 or len(history) < patience:
        return False
    tail = history[-patience:]
    return all(b <= a for a, b in zip(tail, tail[1:]))


def train(cfg, resume: str | None = None) -> dict:
    """Run training as the config says; returns the final training state summary."""
    ctx = distributed.setup(distributed.device_of(cfg.device).type)
    device = distributed.device_of(cfg.device, ctx)
    folder = run_dir(cfg)
    if ctx.is_main:
        os.makedirs(folder, exist_ok=True)
        save_config(cfg, os.path.join(folder, "config.yaml"))
    distributed.barrier(ctx)
    setup_logging(folder, ctx.is_main)
    seed_everything(cfg.seed + ctx.rank, cfg.training.deterministic)

    if ctx.is_main and not is_prepared(cfg):
        log.info("data not prepared yet: running data.prepare")
        prepare(cfg)
    distributed.barrier(ctx)

    tcfg = cfg.training
    if tcfg.batch_size % ctx.world_size:
        raise ValueError(f"training.batch_size={tcfg.batch_size} is not divisible by the "
                         f"{ctx.world_size} processes")
    dataset = TrainDataset(cfg)
    model = build_model(cfg.models).to(device)
    if cfg.models.face.pretrained:
        load_pretrained_face(model, cfg.models.face.pretrained)
    if cfg.models.voice.pretrained:
        load_pretrained_voice(model, cfg.models.voice.pretrained)
    use_cuda = device.type == "cuda"
    if tcfg.channels_last and use_cuda:
        model = model.to(memory_format=torch.channels_last)
    equilibrium = InstanceEquilibrium(len(dataset)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum,
                                weight_decay=tcfg.weight_decay)

    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tcfg.amp]
    if not use_cuda:
        amp_dtype = None  # mixed precision is a CUDA feature here; the CPU runs float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start, best_val, history = 1, -1.0, []
    resume = resume or tcfg.resume
    if resume == "auto":
        resume = latest_checkpoint(folder)
        if resume is None:
            log.info("--resume auto: no checkpoint in %s, starting fresh", folder)
    if resume:
        state = load_checkpoint(model, resume, equilibrium)
        if state.get("format") != "aasm":
            raise ValueError(f"{resume}: only checkpoints written by train.py can be resumed")
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run that saved it had no fp16 scaler
            scaler.load_state_dict(state["scaler"])
        start, best_val, history = state["iteration"] + 1, state["best_val"], state["val_history"]
        set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
        log.info("resumed from %s at iteration %d", resume, start)

    encoders = wrap_encoders(model, ctx, device)

    loader = train_loader(cfg, dataset, start_iteration=start, rank=ctx.rank, world_size=ctx.world_size)
    writer = SummaryWriter(os.path.join(folder, "tensorboard")) if ctx.is_main else None
    diagnostics = TrainingDiagnostics(encoders, tcfg, writer) if tcfg.diagnostics and ctx.is_main else None

    def checkpoint_state(iteration: int) -> dict:
        return {"format": "aasm", "iteration": iteration, "model": model.state_dict(),
                "equilibrium": equilibrium.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "best_val": best_val, "val_history": history, "rng": gathered_rng(ctx),
                "config": config_to_dict(cfg)}

    model.train()
    last_iteration = tcfg.max_iter if tcfg.plateau_patience <= 0 else None
    bar = tqdm(total=tcfg.max_iter, initial=start - 1, disable=not ctx.is_main, desc="train", dynamic_ncols=True)
    iteration = start
    t0 = time.time()
    for batch in loader:
        if last_iteration is not None and iteration > last_iteration:
            break
        lr = learning_rate(iteration, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, terms, refreshed = forward_loss(encoders, batch, equilibrium, iteration, cfg, ctx, device, amp_dtype)
        check_finite({"loss": loss, **terms}, iteration)
        if writer is not None and refreshed:
            writer.add_histogram("equilibrium/weights", equilibrium.identity_weights.cpu().numpy(), iteration)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        if ctx.is_main and (iteration % tcfg.log_iter == 0 or iteration == start):
            for name, value in terms.items():
                writer.add_scalar(f"loss/{name}", float(value), iteration)
            writer.add_scalar("loss/total", float(loss.detach()), iteration)
            writer.add_scalar("lr", lr, iteration)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.0e}")
        if diagnostics is not None:  # this rank's rows only
            if refreshed:
                diagnostics.record_weights(iteration, equilibrium.identity_weights)
            if iteration % tcfg.log_iter == 0 or iteration == start:
                diagnostics.record(iteration, equilibrium.weights_of(batch[3].to(device)))

        reached_end = last_iteration is not None and iteration == last_iteration
        if iteration >= tcfg.val_start and (iteration - tcfg.val_start) % tcfg.val_iter == 0 or reached_end:
            accuracy = validate(model, cfg, device) if ctx.is_main else 0.0
            accuracy = distributed.broadcast_object(accuracy, ctx)
            history.append(accuracy)
            is_best = accuracy > best_val
            best_val = max(best_val, accuracy)
            if ctx.is_main:
                writer.add_scalar("val/match_v2f_2", accuracy, iteration)
                log.info("iteration %d: validation 1:2 v2f matching %.2f%% (best %.2f%%)",
                         iteration, 100 * accuracy, 100 * best_val)
                if is_best:
                    save_checkpoint(checkpoint_state(iteration), os.path.join(folder, "checkpoint_best.pth.tar"))
            if last_iteration is None and iteration >= tcfg.max_iter and plateaued(history, tcfg.plateau_patience):
                last_iteration = iteration
        if iteration == 1 or iteration % tcfg.save_iter == 0 or iteration == last_iteration:
            state = checkpoint_state(iteration)
            if ctx.is_main:
                save_checkpoint(state, os.path.join(folder, f"checkpoint_{iteration}.pth.tar"))
                prune_checkpoints(folder, tcfg.keep_last)
        bar.update(1)
        if iteration == last_iteration:
            break
        iteration += 1

    bar.close()
    elapsed = time.time() - t0
    if ctx.is_main:
        log.info("finished %d iterations in %.1f s; best validation 1:2 v2f matching %.2f%%",
                 iteration - start + 1, elapsed, 100 * best_val)
        if diagnostics is not None:
            log.info(diagnostics.summary())
        writer.close()
    distributed.cleanup(ctx)
    return {"iteration": iteration, "best_val": best_val, "seconds": elapsed, "run_dir": folder}


def gathered_rng(ctx: distributed.Context) -> list[dict]:
    """Every rank's RNG state (rank order), so a resumed run continues each stream."""
    state = rng_state()
    if not ctx.enabled:
        return [state]
    states = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config, e.g. config/cfg.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides: key.subkey=value ...")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for the newest")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="train one run per seed, one after another, in <output_dir>/<exp_name>/seed<k>/")
    args = parser.parse_args()
    cfg = load_config(args.cfg, args.opts)
    for seed_cfg in seed_configs(cfg, args.seeds):
        train(seed_cfg, resume=args.resume)


def seed_configs(cfg, seeds: list[int] | None) -> list:
    """The config itself without seeds, else one copy per seed whose run folder is <run>/seed<k>."""
    if seeds is None:
        return [cfg]
    return [EasyDict({**copy.deepcopy(cfg), "seed": seed, "exp_name": f"{cfg.exp_name}/seed{seed}"}) for seed in seeds]


if __name__ == "__main__":
    main()
