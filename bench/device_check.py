"""One prepared check of the GPU paths (CUDA, mixed precision, NCCL), under 5 minutes on one GPU, one table.

    python bench/device_check.py [--tiny] [--work DIR]

On the paper's encoders (config/cfg.yaml's models, random weights) with inputs of the real sizes
(faces at dataset.image_size, voice crops of training.crop_seconds at the sample rate), batch 20:
  parity      the same batch through CPU and CUDA in float32 (TF32 off): embeddings, the loss
              (AaSM + BCR + IE), and the weights after one SGD step, each against a stated tolerance;
  train       iterations/s and peak GPU memory for float32, bf16 and fp16 (GradScaler), loss and IE
              included, on batches made on the device (the loader is not timed);
  loader      the same with the real loader on a small generated real-layout corpus (does it keep up?);
  torchrun    `torch.distributed.run --standalone --nproc_per_node 1` with NCCL through a validation,
              a checkpoint, a SIGTERM and `--resume auto`, on a tiny schedule;
  extract     features of the test split's size (21,850 clips, 20,076 faces, generated), then the ten
              lists' evaluation of them (evaluation/protocol.py; numpy on the host), seconds for each;
  cudnn       cudnn.benchmark on and off for the voice encoder over varying crop lengths.
Each part states its time against its budget (the budgets add up to 5 minutes). Without CUDA the
CPU parts run (train and loader in float32, extract) and the table names the parts skipped; the
exit status is 0 unless a check fails. --tiny shrinks every size (the synthetic config's encoders,
batch 4, a few iterations, 400 files) so that the whole script runs in CI in seconds.
"""
from __future__ import annotations

import argparse
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import yaml

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

from config import load_config  # noqa: E402
from data.datasets import TrainDataset, clip_samples, train_loader  # noqa: E402
from data.lists import evaluation_lists, list_path  # noqa: E402
from data.prepare import prepare  # noqa: E402
from data.synthetic import generate_corpus  # noqa: E402
from models import build_model  # noqa: E402
from evaluate import identity_of, test_split_files, write_lists  # noqa: E402  (bench/evaluate.py)
from models.pair_encoder import PairEncoder  # noqa: E402
from train import build_state, embed, optimizer_step  # noqa: E402
from evaluation.extraction import embed_batches  # noqa: E402
from evaluation.features import Features  # noqa: E402
from evaluation.protocol import evaluate_list  # noqa: E402
from utils import distributed  # noqa: E402
from utils.run_folder import config_to_dict  # noqa: E402

PAPER = os.path.join(ROOT, "config", "cfg.yaml")
SYNTHETIC = os.path.join(ROOT, "config", "synthetic.yaml")
PRECISIONS = ("off", "bf16", "fp16")  # training.amp
# Parity in float32 with TF32 off: what accumulating sums in another order leaves over ~150 layers.
EMBEDDING_TOLERANCE = 1e-3  # max |Δ| relative to max |embedding|
LOSS_TOLERANCE = 1e-4  # |Δ| relative to |loss|
STEP_TOLERANCE = 1e-5  # max |Δ weight| after one SGD step, relative to the tensor's max |weight|


@dataclass
class Sizes:
    """What --tiny scales: batch, timed iterations, corpus identities, extracted files, crop lengths."""

    batch: int
    warmup: int
    iterations: int
    corpus_identities: int
    clips: int
    faces: int
    crop_lengths: int
    identities: int  # of the generated test split
    paper_models: bool
    budgets: dict[str, float] = field(default_factory=dict)  # seconds per part on one GPU


FULL = Sizes(batch=20, warmup=3, iterations=20, corpus_identities=80, clips=21850, faces=20076, crop_lengths=12, identities=189,
             paper_models=True, budgets={"parity": 20, "train": 60, "loader": 70, "torchrun": 60, "extract": 60,
                                         "cudnn": 30})
TINY = Sizes(batch=4, warmup=1, iterations=2, corpus_identities=16, clips=96, faces=96, crop_lengths=2, identities=12,
             paper_models=False, budgets={"parity": 5, "train": 10, "loader": 20, "torchrun": 60, "extract": 10,
                                          "cudnn": 5})


@dataclass
class Row:
    part: str
    what: str
    result: str
    seconds: float = 0.0
    ok: bool = True


def base_config(sizes: Sizes, work: str, device: str):
    """The synthetic config pointed at a corpus under `work`, with the paper's encoders, input sizes and training
    keys unless --tiny (then the synthetic ones at batch 4)."""
    corpus = os.path.join(work, "corpus")
    n = sizes.corpus_identities
    val, test = n * 3 // 8, n * 11 // 16  # 16 identities: the tests' tiny ranges (both genders in each split)
    opts = [f"dataset.audio_data_dir={corpus}/wav", f"dataset.image_data_dir={corpus}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={corpus}/vox1_meta.csv", f"dataset.list_dir={corpus}/lists",
            f"dataset.lmdb_dir={corpus}/lmdb", f"dataset.synthetic.root={corpus}", f"dataset.synthetic.identities={n}",
            f"dataset.split_ranges.val=[id00001, id{val:05d}]",
            f"dataset.split_ranges.test=[id{val + 1:05d}, id{test:05d}]",
            f"dataset.split_ranges.train=[id{test + 1:05d}, id{n:05d}]", f"output_dir={work}/runs",
            f"device={device}", f"training.batch_size={sizes.batch}", "testing.bootstrap=100"]
    cfg = load_config(SYNTHETIC, opts)
    if sizes.paper_models:
        paper = load_config(PAPER)
        cfg.models = copy.deepcopy(paper.models)
        cfg.dataset.image_size = cfg.dataset.store_image_size = paper.dataset.image_size
        cfg.dataset.num_workers = min(8, len(os.sched_getaffinity(0)))
        for key in ("crop_seconds", "loss_impl", "temperature", "bcr_anchor_margin", "bcr_margin", "bcr_hinge", "bcr_weight", "lr", "momentum",
                    "weight_decay"):
            cfg.training[key] = paper.training[key]
    else:  # the tests' tiny encoders and inputs (tests/test_torchrun.py)
        cfg.dataset.num_workers = 0
        cfg.dataset.clip_seconds, cfg.dataset.image_size, cfg.training.crop_seconds = 1.0, 32, [0.5, 1.0]
        cfg.models.face.update(units=[1, 1, 1, 1], widths=[8, 8, 16, 16], head_hidden=16)
        cfg.models.voice.update(layers=[1, 1, 1, 1], filters=[8, 8, 16, 16])
        if not os.path.isfile(cfg.dataset.meta_file):  # the tests' tiny corpus (tests/conftest.py)
            generate_corpus(corpus, n, seed=0, clips=(3, 4), images=(3, 4), seconds=(1.0, 1.6), workers=1)
    return cfg


def synthetic_batch(cfg, device: torch.device, generator: torch.Generator, crop: int | None = None) -> tuple:
    """A training batch as the loader hands it (uint8 faces (B, 2, 3, S, S), int16 crops, labels), made on `device`."""
    b, s = cfg.training.batch_size, cfg.dataset.image_size
    low, high = (int(x * cfg.dataset.sample_rate) for x in cfg.training.crop_seconds)
    made_on = generator.device  # the generator's device makes the batch; `device` receives it
    crop = crop or int(torch.randint(low, high + 1, (), generator=generator, device=made_on))
    faces = torch.randint(0, 256, (b, 2, 3, s, s), dtype=torch.uint8, generator=generator, device=made_on).to(device)
    voices = torch.randint(-8000, 8000, (2, b, crop), dtype=torch.int16, generator=generator, device=made_on).to(device)
    return faces, voices[0], voices[1], torch.arange(b, device=device)


def iteration_after_regauge(cfg) -> int:
    """An iteration where every term (AaSM, BCR, re-gauging with IE weights) is active."""
    return cfg.training.bcr_start_iter + 1


def one_step(state, cfg, batch, device: torch.device, amp_dtype=None) -> torch.Tensor:
    """Forward, loss with IE, backward, SGD step: the trainer's own pieces (train.py)."""
    encoders = distributed.wrap_module(PairEncoder(state.model), distributed.Context(), device)
    embeddings, labels = embed(encoders, batch, cfg, device, amp_dtype)
    loss, _, _ = state.equilibrium(*distributed.gather_batch(embeddings, labels, distributed.Context()),
                                   iteration_after_regauge(cfg))
    optimizer_step(state, loss, None)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- parts

def parity(cfg, sizes: Sizes, devices: list[torch.device]) -> list[Row]:
    cuda = devices[-1]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cpu_state = build_state(cfg, cfg.training.batch_size, torch.device("cpu"))
    gpu_state = build_state(cfg, cfg.training.batch_size, cuda)
    gpu_state.model.load_state_dict(cpu_state.model.state_dict())
    batch = synthetic_batch(cfg, torch.device("cpu"), torch.Generator().manual_seed(1))
    rows = []
    with torch.no_grad():
        cpu_state.model.train()
        gpu_state.model.train()
        encoders = [distributed.wrap_module(PairEncoder(s.model), distributed.Context(), d) for s, d in
                    ((cpu_state, torch.device("cpu")), (gpu_state, cuda))]
        inputs = [tuple(x.to(d).float() for x in batch[:3]) for d in (torch.device("cpu"), cuda)]
        out = [e(f[:, 0], f[:, 1], v, a) for e, (f, v, a) in zip(encoders, inputs)]
    for name, a, b in zip(("face", "face_aux", "voice", "voice_aux"), out[0], out[1]):
        error = float((a - b.cpu()).abs().max() / a.abs().max())
        rows.append(Row("parity", f"{name} embeddings", f"rel. max |Δ| {error:.1e} (≤ {EMBEDDING_TOLERANCE:g})",
                        ok=error <= EMBEDDING_TOLERANCE))
    losses = [one_step(s, cfg, tuple(x.to(d) for x in batch), d)
              for s, d in ((cpu_state, torch.device("cpu")), (gpu_state, cuda))]
    error = float((losses[0] - losses[1].cpu()).abs() / losses[0].abs())
    rows.append(Row("parity", "loss (AaSM + BCR + IE)", f"{float(losses[0]):.5f} vs {float(losses[1]):.5f}, rel. "
                    f"{error:.1e} (≤ {LOSS_TOLERANCE:g})", ok=error <= LOSS_TOLERANCE))
    gpu_weights = gpu_state.model.state_dict()
    worst, worst_name = 0.0, ""
    for name, value in cpu_state.model.state_dict().items():
        if value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            error = float((value - gpu_weights[name].cpu()).abs().max()) / scale
            worst, worst_name = max((worst, worst_name), (error, name))
    rows.append(Row("parity", "weights after one SGD step", f"worst rel. max |Δ| {worst:.1e} in {worst_name} "
                    f"(≤ {STEP_TOLERANCE:g})", ok=worst <= STEP_TOLERANCE))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return rows


def throughput(cfg, sizes: Sizes, device: torch.device, amp: str, batches: Callable[[], tuple],
               identities: int) -> tuple[float, float]:
    """(iterations/s, peak GPU GiB or NaN) of training steps on `batches()`, after a warm-up."""
    cfg = copy.deepcopy(cfg)
    cfg.training.amp = amp
    torch.manual_seed(0)
    state = build_state(cfg, identities, device)
    state.model.train()
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp] if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(sizes.warmup + sizes.iterations):
        if i == sizes.warmup:
            synchronize(device)
            start = time.perf_counter()
        one_step(state, cfg, batches(), device, amp_dtype)
    synchronize(device)
    rate = sizes.iterations / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def train_rates(cfg, sizes: Sizes, devices: list[torch.device]) -> list[Row]:
    device = devices[-1]
    generator = torch.Generator(device).manual_seed(0)
    rows = []
    for amp in PRECISIONS if device.type == "cuda" else ("off",):
        rate, peak = throughput(cfg, sizes, device, amp, lambda: synthetic_batch(cfg, device, generator),
                                cfg.training.batch_size)
        rows.append(Row("train", f"{device.type} {'float32' if amp == 'off' else amp}, batch {sizes.batch}, "
                        "synthetic batches", f"{rate:.2f} it/s, peak {peak:.2f} GiB"))
    return rows


def loader_rate(cfg, sizes: Sizes, devices: list[torch.device]) -> list[Row]:
    device = devices[-1]
    start = time.perf_counter()
    prepare(cfg)
    prepared = time.perf_counter() - start
    dataset = TrainDataset(cfg)
    batches = iter(train_loader(cfg, dataset))
    amp = "bf16" if device.type == "cuda" else "off"
    rate, peak = throughput(cfg, sizes, device, amp, lambda: next(batches), len(dataset))
    return [Row("loader", f"corpus of {sizes.corpus_identities} identities generated and prepared", "", prepared),
            Row("loader", f"{device.type} {'float32' if amp == 'off' else amp}, batch {sizes.batch}, real loader "
                f"({cfg.dataset.num_workers} workers)", f"{rate:.2f} it/s, peak {peak:.2f} GiB")]


def torchrun_resume(cfg, sizes: Sizes, devices: list[torch.device]) -> list[Row]:
    """A tiny schedule under torchrun with NCCL: validation and checkpoint at 2, SIGTERM, `--resume auto` for 4 more."""
    prepare(cfg)  # the loader part's corpus
    run_cfg = load_config(SYNTHETIC, [])  # small encoders: this part checks the launcher, not the speed
    run_cfg.dataset, run_cfg.output_dir, run_cfg.device = copy.deepcopy(cfg.dataset), cfg.output_dir, "cuda"
    run_cfg.exp_name = "torchrun"
    run_cfg.dataset.num_workers = 2
    run_cfg.training.update(batch_size=4, max_iter=400, val_start=2, val_iter=200, save_iter=2, keep_last=0,
                            log_iter=2, timeout_minutes=2)
    path = os.path.join(cfg.output_dir, "torchrun.yaml")
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(run_cfg), f, sort_keys=False)
    folder = os.path.join(cfg.output_dir, "torchrun")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               os.path.join(ROOT, "train.py"), "--cfg", path]
    first_log = os.path.join(cfg.output_dir, "torchrun_first.log")  # a file: a full pipe would stall the run
    checkpoint = os.path.join(folder, "checkpoint_2.pth.tar")
    with open(first_log, "w") as log_file:
        first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        deadline = time.time() + 120
        while not os.path.isfile(checkpoint) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    with open(first_log) as f:
        first_err = f.read()
    saved = [int(n[len("checkpoint_"):-len(".pth.tar")]) for n in os.listdir(folder)
             if n.startswith("checkpoint_") and n[len("checkpoint_"):-len(".pth.tar")].isdigit()] or [0]
    last = max(saved) + 4
    resumed = subprocess.run(command + ["--resume", "auto", "--opts", f"training.max_iter={last}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    log = open(os.path.join(folder, "train.log")).read() if os.path.isfile(os.path.join(folder, "train.log")) else ""
    checks = {"validation at 2": "iteration 2: validation" in log, "checkpoint_2": os.path.isfile(checkpoint),
              f"SIGTERM exit {first.returncode}": first.returncode != 0 and "SIGTERM" in first_err,
              "resumed": "resumed from" in log and resumed.returncode == 0,
              f"checkpoint_{last}": os.path.isfile(os.path.join(folder, f"checkpoint_{last}.pth.tar"))}
    failed = [name for name, ok in checks.items() if not ok]
    detail = (resumed.stderr or first_err).strip().splitlines()[-1:] if failed else []
    return [Row("torchrun", "nccl, 1 process: validate, save, SIGTERM, --resume auto",
                ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in checks.items()) +
                (f"; {detail[0][:120]}" if detail else ""), ok=not failed)]


def extract_and_evaluate(cfg, sizes: Sizes, devices: list[torch.device], work: str) -> list[Row]:
    """Test-split-size extraction through the paper's encoders in float32 (as test.py runs it), inputs generated on
    the device, then the ten lists' evaluation of those features, each timed."""
    device = devices[-1]
    identities, voices, faces = test_split_files(0, sizes.identities, sizes.clips, sizes.faces)
    list_dir = write_lists(os.path.join(work, "test_split"), identities, voices, faces)
    torch.manual_seed(0)
    model = build_model(cfg.models, cfg.dataset.sample_rate).to(device).eval()
    samples, size, batch = clip_samples(cfg), cfg.dataset.image_size, cfg.testing.batch_size
    generator = torch.Generator(device).manual_seed(0)

    def batches(count: int, shape: tuple, dtype, low: int, high: int):
        for start in range(0, count, batch):
            n = min(batch, count - start)
            yield [""] * n, torch.randint(low, high, (n, *shape), dtype=dtype, generator=generator, device=device)

    rows, embeddings = [], []
    for modality, count, shape, dtype, low, high in (("voice", len(voices), (samples,), torch.int16, -8000, 8000),
                                                     ("face", len(faces), (3, size, size), torch.uint8, 0, 256)):
        start = time.perf_counter()
        _, out = embed_batches(model, batches(count, shape, dtype, low, high), modality, device, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        embeddings.append(out)
        rows.append(Row("extract", f"{device.type} float32, {count} {modality} inputs "
                        f"{'x'.join(map(str, shape))}, batch {batch}", f"{count / seconds:.0f} items/s", seconds))
    keys = voices + faces
    features = Features(dict(zip(keys, range(len(keys)))), torch.cat(embeddings).numpy(),
                        np.array(identity_of(keys, identities), np.int64))
    for spec in evaluation_lists("test"):
        start = time.perf_counter()
        result = evaluate_list(spec, list_path(list_dir, spec.name), features, cfg.testing.bootstrap, 0)
        rows.append(Row("extract", f"evaluate {spec.name} ({result.count} lines/queries, host)",
                        f"{100 * result.value:.2f} %", time.perf_counter() - start))
    return rows


def cudnn_benchmark(cfg, sizes: Sizes, devices: list[torch.device]) -> list[Row]:
    """Voice encoder forward + backward over `crop_lengths` different crops, cudnn.benchmark on against off."""
    device = devices[-1]
    torch.manual_seed(0)
    encode = build_model(cfg.models, cfg.dataset.sample_rate).to(device).train().encode_voice
    low, high = (int(x * cfg.dataset.sample_rate) for x in cfg.training.crop_seconds)
    lengths = np.linspace(low, high, sizes.crop_lengths).astype(int).tolist()
    rows, previous = [], torch.backends.cudnn.benchmark
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        synchronize(device)
        start = time.perf_counter()
        for length in lengths:
            voice = torch.randn(2 * cfg.training.batch_size, length, device=device) * 3000
            encode(voice).sum().backward()
        synchronize(device)
        seconds = time.perf_counter() - start
        rows.append(Row("cudnn", f"benchmark {'on' if benchmark else 'off'}: voice encoder fwd+bwd, "
                        f"{len(lengths)} crop lengths", f"{len(lengths) / seconds:.2f} crops/s", seconds))
    torch.backends.cudnn.benchmark = previous
    return rows


PARTS = (("parity", True, parity), ("train", False, train_rates), ("loader", False, loader_rate),
         ("torchrun", True, torchrun_resume), ("extract", False, extract_and_evaluate),
         ("cudnn", True, cudnn_benchmark))


def print_table(rows: list[Row], title: str) -> None:
    print(title)
    print("| part | what | result | s |\n|---|---|---|---|")
    for r in rows:
        seconds = f"{r.seconds:.1f}" if r.seconds else ""
        print(f"| {r.part} | {r.what} | {r.result}{'' if r.ok else ' **FAILED**'} | {seconds} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="every size shrunk: a CI run in seconds")
    parser.add_argument("--work", help="folder for the generated corpus, lists and runs (default: a temporary one)")
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    if args.tiny:  # CI machines are shared: two OpenMP threads on a loaded 2-core machine ran a step 20x slower
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if cuda else [])
    name = torch.cuda.get_device_name(0) if cuda else f"no CUDA; {len(os.sched_getaffinity(0))} CPU cores"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        cfg = base_config(sizes, work, "cuda" if cuda else "cpu")
        for part, needs_cuda, run in PARTS:
            budget = sizes.budgets[part]
            if needs_cuda and not cuda:
                rows.append(Row(part, "skipped: needs CUDA", "", ok=True))
                continue
            start = time.perf_counter()
            extra = (work,) if run is extract_and_evaluate else ()
            try:
                part_rows = run(cfg, sizes, devices, *extra)
            except Exception as error:  # one part failing still leaves the others' numbers
                part_rows = [Row(part, "raised", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}",
                                 ok=False)]
            seconds = time.perf_counter() - start
            rows.extend(part_rows)
            over = "" if seconds <= budget or not cuda else " OVER BUDGET"
            rows.append(Row(part, "part total", f"budget {budget:.0f} s{over}", seconds))
    total = sum(r.seconds for r in rows if r.what == "part total")
    print_table(rows, f"device check on {name} ({'tiny' if args.tiny else 'paper'} sizes, torch {torch.__version__})")
    skipped = [r.part for r in rows if r.what.startswith("skipped")]
    print(f"total {total:.0f} s of {sum(sizes.budgets.values()):.0f} s budgeted"
          + (f"; skipped without CUDA: {', '.join(skipped)}" if skipped else ""))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
