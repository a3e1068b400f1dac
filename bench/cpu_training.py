"""The CPU demo's training step under the settings the field tries on CPU, side by side in one run.

    python bench/cpu_training.py [--iterations 40] [--rounds 4] [--variants baseline channels_last ...]
    python bench/cpu_training.py --front-end      # the voice front end's power, both ways
    python bench/cpu_training.py --kernel-cache   # oneDNN's kernel caches at their default and enlarged

config/synthetic.yaml's encoders, batch and input sizes (64 px faces, 1-2 s crops), the demo's loss with
IE at an iteration after re-gauging, through train.py's own pieces (build_state, embed,
optimizer_step), on the same pre-made batches for every variant (the loader is not timed: it runs in its
own workers). Variants run in interleaved rounds so that a loaded machine slows them alike; each starts
from the same weights, and its loss trajectory is compared with the baseline's (rounding alone moves the
first steps by about 1e-6; once it flips a BCR hinge the losses part by up to 1e-1). Prints s/iteration,
the ratio to the baseline and the largest loss difference, and the 3000-iteration demo's training time
this rate implies, its first step (compilation, for `compiled`) included (validations and checkpoints not).
Every variant runs with the kernel caches train.py sets (utils/run.py).

--front-end times models/voice.py's log-mel front end (the power as re² + im²) against torchaudio's own
(|X| then squared) on the demo's crops, and prints their largest difference.

--kernel-cache runs the step in child processes, alternately with oneDNN's kernel caches at their default and at
train.py's size (they are read once per process), on batches whose crop lengths are new every iteration as in
training: the first half of the batches fills the caches, the second is timed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import threading
import time

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

from device_check import iteration_after_regauge, one_step, synthetic_batch  # noqa: E402
from config import load_config  # noqa: E402
from data.datasets import as_float  # noqa: E402
from models.voice import LogMelFrontEnd  # noqa: E402
from train import amp_dtype_of, build_state  # noqa: E402
from utils.cpu import keep_cpu_kernels  # noqa: E402

SYNTHETIC = os.path.join(os.path.dirname(BENCH), "config", "synthetic.yaml")


@contextlib.contextmanager
def flag(setter, value):
    """Set a global torch switch for one variant's round, then restore it."""
    previous = setter(value)
    try:
        yield
    finally:
        setter(previous)


def mkldnn(enabled: bool) -> bool:
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    return previous


def threads(count: int) -> int:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    return previous


def prepared(state, variant: str):
    """The variant's model (and how its batches are laid out)."""
    if variant == "channels_last":  # the face encoder only: torch 2.14's oneDNN crashes (SIGSEGV) in the backward
        # of the voice encoder's 1x1 stride-2 shortcut in channels_last when its output width is odd
        state.model.face_encoder.to(memory_format=torch.channels_last)
    if variant == "compiled":  # inductor, the face encoder only: its input size is fixed, the voice crops vary
        # (torch 2.14's inductor fails on the voice encoder with dynamic shapes: "cannot determine truth value
        # of Relational")
        state.model.face_encoder.compile()
    return state


def context(variant: str):
    if variant == "no_mkldnn":
        return flag(mkldnn, False)
    if variant in ("one_thread", "encoder_threads"):
        return flag(threads, 1)
    return contextlib.nullcontext()


def layout(batch: tuple, variant: str) -> tuple:
    if variant != "channels_last":
        return batch
    faces = batch[0]
    # (B, 2, 3, S, S): the trainer indexes faces[:, k], so the per-image layout is what matters
    nhwc = faces.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return (nhwc, *batch[1:])


def in_thread(function, *args) -> threading.Thread:
    worker = threading.Thread(target=function, args=args)
    worker.start()
    return worker


def encoder_threads_step(state, cfg, batch, device: torch.device) -> torch.Tensor:
    """The same step with the face and the voice encoder on a thread each (one torch thread apiece): forward in
    parallel, the loss, its gradient with respect to the four embeddings, then each encoder's backward in parallel
    (the CPU autograd engine runs one backward on its calling thread, and the encoders share no parameters)."""
    model = state.model
    faces, voice, voice_aux = (as_float(x, device) for x in batch[:3])
    face_pair = []
    worker = in_thread(lambda: face_pair.extend(model.encode_face(faces[:, k]) for k in (0, 1)))
    voices = [model.encode_voice(voice), model.encode_voice(voice_aux)]
    worker.join()
    embeddings = (*face_pair, *voices)
    loss, _, _ = state.equilibrium(*embeddings, batch[3].to(device), iteration_after_regauge(cfg))
    gradients = torch.autograd.grad(loss, embeddings)
    state.optimizer.zero_grad(set_to_none=True)
    worker = in_thread(torch.autograd.backward, embeddings[:2], gradients[:2])
    torch.autograd.backward(embeddings[2:], gradients[2:])
    worker.join()
    state.optimizer.step()
    return loss.detach()


def bf16_step(state, cfg, batch, device: torch.device) -> torch.Tensor:
    """The step with the encoders under bf16 autocast (training.amp: bf16)."""
    return one_step(state, cfg, batch, device, torch.bfloat16)


VARIANTS = ("baseline", "channels_last", "no_mkldnn", "one_thread", "encoder_threads", "compiled", "bf16")
STEPS = {"encoder_threads": encoder_threads_step, "bf16": bf16_step}


def front_end(rounds: int = 5, calls: int = 40) -> None:
    cfg = load_config(SYNTHETIC)
    ours = LogMelFrontEnd(cfg.models.voice.n_mels, cfg.dataset.sample_rate)
    plain_mel = copy.deepcopy(ours.mel)
    plain_mel.spectrogram.power = 2.0  # torchaudio's own power: |X|, then squared

    @torch.no_grad()
    def plain(waves: torch.Tensor) -> torch.Tensor:
        return ours.instance_norm((plain_mel(waves) + 1e-6).log())

    cpu = torch.device("cpu")
    waves = as_float(synthetic_batch(cfg, cpu, torch.Generator().manual_seed(0))[1], cpu)
    seconds = {"torchaudio |X|^2": 0.0, "re^2 + im^2 (models/voice.py)": 0.0}
    functions = dict(zip(seconds, (plain, ours)))
    for _ in range(rounds):
        for name, function in functions.items():
            began = time.perf_counter()
            for _ in range(calls):
                function(waves)
            seconds[name] += time.perf_counter() - began
    difference = float((plain(waves) - ours(waves)).abs().max())
    print(f"voice front end on {tuple(waves.shape)} crops, {rounds} interleaved rounds of {calls} calls, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")
    base = seconds["torchaudio |X|^2"]
    for name, total in seconds.items():
        print(f"{name:<32}{1e3 * total / (rounds * calls):7.2f} ms  {base / total:.2f}x")
    print(f"largest difference of the normalised log-mel features: {difference:.1e}")


def kernel_cache_child(enlarged: bool, batches: int) -> None:
    """One child of --kernel-cache: prints its s/iteration over the second half of `batches` fresh-length batches."""
    if enlarged:
        keep_cpu_kernels()
    cfg = load_config(SYNTHETIC)
    device = torch.device("cpu")
    torch.manual_seed(0)
    state = build_state(cfg, cfg.training.batch_size, device)
    generator = torch.Generator().manual_seed(0)
    made = [synthetic_batch(cfg, device, generator) for _ in range(batches)]
    amp = amp_dtype_of(cfg.training, device)
    for batch in made[:batches // 2]:
        one_step(state, cfg, batch, device, amp)
    began = time.perf_counter()
    for batch in made[batches // 2:]:
        one_step(state, cfg, batch, device, amp)
    print((time.perf_counter() - began) / (batches - batches // 2))


def kernel_cache(rounds: int, batches: int) -> None:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    rates = {"default (1024)": [], "enlarged (train.py)": []}
    for _ in range(rounds):
        for name in rates:
            command = [sys.executable, __file__, "--kernel-cache-child", str(int(name != "default (1024)")),
                       "--batches", str(batches)]
            output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
            rates[name].append(float(output.split()[-1]))
    print(f"config/synthetic.yaml step (eager, training.amp as the config sets it), {batches // 2} batches to fill "
          f"the caches, then {batches - batches // 2} timed, crop lengths new every batch; {rounds} rounds, "
          f"alternating, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| oneDNN kernel caches | s/iteration, each round | mean | speed vs default |\n|---|---|---|---|")
    base = sum(rates["default (1024)"]) / rounds
    for name, values in rates.items():
        mean = sum(values) / rounds
        print(f"| {name} | {', '.join(f'{v:.3f}' for v in values)} | {mean:.3f} | {base / mean:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40, help="iterations per variant")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the iterations are split into")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--front-end", action="store_true", help="time the voice front end's power, both ways")
    parser.add_argument("--kernel-cache", action="store_true", help="time the step with oneDNN's kernel caches at "
                                                                    "their default and enlarged, in child processes")
    parser.add_argument("--batches", type=int, default=240, help="--kernel-cache: batches per child")
    parser.add_argument("--kernel-cache-child", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.front_end:
        return front_end()
    if args.kernel_cache_child is not None:
        return kernel_cache_child(bool(args.kernel_cache_child), args.batches)
    if args.kernel_cache:
        return kernel_cache(args.rounds, args.batches)
    keep_cpu_kernels()
    cfg = load_config(SYNTHETIC)
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(cfg, device, generator) for _ in range(args.iterations)]
    variants = ["baseline"] + [v for v in args.variants if v != "baseline"]
    torch.manual_seed(0)
    initial = build_state(cfg, cfg.training.batch_size, device)
    states = {v: prepared(copy.deepcopy(initial), v) for v in variants}
    losses = {v: [] for v in variants}
    seconds = {v: [] for v in variants}  # per step
    per_round = -(-args.iterations // args.rounds)
    for start in range(0, args.iterations, per_round):
        for v in variants:
            with context(v):
                for batch in batches[start:start + per_round]:
                    began = time.perf_counter()
                    losses[v].append(float(STEPS.get(v, one_step)(states[v], cfg, layout(batch, v), device)))
                    seconds[v].append(time.perf_counter() - began)
    # The first step of a variant holds its one-off costs (torch.compile's compilation): reported apart.
    rates = {v: sum(seconds[v][1:]) / max(1, len(seconds[v]) - 1) for v in variants}
    print(f"config/synthetic.yaml step, batch {cfg.training.batch_size}, {args.iterations} iterations per variant in "
          f"{args.rounds} interleaved rounds, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; s/iteration after the first\n")
    print("| variant | first step s | s/iteration | speed vs baseline | max abs Δ loss vs baseline | 3000 iterations |\n"
          "|---|---|---|---|---|---|")
    for v in variants:
        delta = max(abs(a - b) for a, b in zip(losses[v], losses["baseline"]))
        total = seconds[v][0] + 2999 * rates[v]
        print(f"| {v} | {seconds[v][0]:.1f} | {rates[v]:.3f} | {rates['baseline'] / rates[v]:.2f}x | {delta:.1e} | "
              f"{total / 60:.1f} min |")

if __name__ == "__main__":
    main()
