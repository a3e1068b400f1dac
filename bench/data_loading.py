"""Training-loader throughput: the LMDB loader against the release's way of reading the raw files.

    python bench/data_loading.py [--cfg config/synthetic.yaml] [--epochs 2] [--rounds 5] [--opts k=v ...]

Three loaders over the same training identities, with the same sampling, augmentation, batch
size, worker count and seed:
- lmdb: TrainDataset + train_loader (stored JPEG, pre-resized when dataset.store_image_size is
  set, and int16 PCM from one memory-mapped file; numpy collate into shared memory);
- release: what the release did per item (PIL decode of the original JPEG, scipy read of the
  WAV, np.tile to 10 s, float32) with PyTorch's default collate;
- raw files, our loader: the release's reading inside our loader, to isolate what the store
  itself saves.
Each loader runs one warm-up epoch (worker start, page cache); timed epochs then alternate
between loaders. Reported: items/s (median over rounds) and CPU time per item summed over the
main process and the workers, which is steadier than wall time on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.io.wavfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.datasets import TrainDataset, train_loader  # noqa: E402
from data.prepare import prepare  # noqa: E402
from utils.config import load_config  # noqa: E402


class ReleaseReadingDataset(TrainDataset):
    """The same items, each file read from disk as the release's loader read it."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_dir, self.audio_dir = cfg.dataset.image_data_dir, cfg.dataset.audio_data_dir

    def load_face(self, key: str) -> np.ndarray:
        with Image.open(os.path.join(self.image_dir, key)) as image:
            return np.asarray(image.convert("RGB"))[:, :, ::-1]

    def load_voice(self, key: str) -> np.ndarray:
        _, samples = scipy.io.wavfile.read(os.path.join(self.audio_dir, key))
        samples = samples if samples.ndim == 1 else samples[:, 0]
        tiled = np.tile(samples, (self.samples + len(samples) - 1) // len(samples))
        return tiled[:self.samples].astype(np.float32)


class ReleaseLoaderDataset(ReleaseReadingDataset):
    """One item at a time, as the release's dataset (no batched fetch into one tensor)."""

    __getitems__ = None


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def timed_epochs(loader: DataLoader, epochs: int) -> tuple[float, float]:
    """(items/s, CPU ms per item) over `epochs` epochs of a loader with persistent workers."""
    iterator = iter(loader)  # persistent workers: the same processes every epoch
    pids = [os.getpid()] + [w.pid for w in getattr(iterator, "_workers", [])]
    cpu, start, items = _cpu_seconds(pids), time.perf_counter(), 0
    for epoch in range(epochs):
        for _, _, labels in (iterator if epoch == 0 else loader):
            items += len(labels)
    wall = time.perf_counter() - start
    return items / wall, 1000 * (_cpu_seconds(pids) - cpu) / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="config/synthetic.yaml")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per loader")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args()
    cfg = load_config(args.cfg, args.opts)
    prepare(cfg)
    workers = cfg.dataset.num_workers
    torch.manual_seed(cfg.seed)
    loaders = {
        "lmdb": train_loader(cfg, TrainDataset(cfg)),
        "release": DataLoader(ReleaseLoaderDataset(cfg), batch_size=cfg.training.batch_size, shuffle=True,
                              drop_last=True, num_workers=workers, persistent_workers=workers > 0),
        "raw files, our loader": train_loader(cfg, ReleaseReadingDataset(cfg)),
    }
    for loader in loaders.values():
        timed_epochs(loader, 1)  # warm-up
    results = {name: [] for name in loaders}
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            results[name].append(timed_epochs(loader, args.epochs))
    rate = {name: float(np.median([r[0] for r in runs])) for name, runs in results.items()}
    cpu = {name: float(np.median([r[1] for r in runs])) for name, runs in results.items()}
    print(f"{len(loaders['lmdb'].dataset)} identities, batch {cfg.training.batch_size}, {workers} workers, "
          f"store_image_size {cfg.dataset.store_image_size}, {args.rounds} rounds of {args.epochs} epochs")
    for name in loaders:
        print(f"{name:>22}: {rate[name]:7.1f} items/s  {cpu[name]:6.2f} CPU ms/item")
    for other in ("release", "raw files, our loader"):
        print(f"lmdb vs {other}: {rate['lmdb'] / rate[other]:.2f}x items/s, "
              f"{cpu[other] / cpu['lmdb']:.2f}x less CPU per item")


if __name__ == "__main__":
    main()
