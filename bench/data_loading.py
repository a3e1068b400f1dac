"""Training-loader throughput: LMDB stores against reading the raw files the way the release did.

    python bench/data_loading.py --cfg config/synthetic.yaml [--epochs 3] [--opts key=value ...]

Both loaders draw and augment identically (same TrainDataset code, same worker count, batch
size and seed); only how a face and a clip are read differs. The release decoded the original
JPEG with PIL and read the WAV with scipy; the LMDB path reads the stored (optionally
pre-resized) JPEG and int16 PCM from one memory-mapped file. Each loader runs one warm-up
epoch (worker start, page cache) before the timed epochs; the two are timed alternately.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.datasets import TrainDataset, train_loader  # noqa: E402
from data.prepare import prepare  # noqa: E402
from utils.config import load_config  # noqa: E402


class RawFileDataset(TrainDataset):
    """The same items, read from the raw files as the release's loader did."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_dir, self.audio_dir = cfg.dataset.image_data_dir, cfg.dataset.audio_data_dir

    def load_face(self, key: str) -> np.ndarray:
        with Image.open(os.path.join(self.image_dir, key)) as image:
            return np.asarray(image.convert("RGB"))[:, :, ::-1]

    def load_voice(self, key: str) -> np.ndarray:
        _, samples = scipy.io.wavfile.read(os.path.join(self.audio_dir, key))
        samples = samples if samples.ndim == 1 else samples[:, 0]
        tiled = np.tile(samples, (self.samples + len(samples) - 1) // len(samples))  # the release's tiling
        return tiled[:self.samples].astype(np.float32)


def items_per_second(loader, epochs: int) -> float:
    start, items = time.perf_counter(), 0
    for _ in range(epochs):
        for faces, voices, labels in loader:
            items += len(labels)
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="config/synthetic.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per loader")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args()
    cfg = load_config(args.cfg, args.opts)
    prepare(cfg)
    loaders = {}
    for name, dataset in (("lmdb", TrainDataset(cfg)), ("raw files", RawFileDataset(cfg))):
        torch.manual_seed(cfg.seed)
        loaders[name] = train_loader(cfg, dataset)
        items_per_second(loaders[name], 1)  # warm-up
    rates = {name: [] for name in loaders}
    for _ in range(args.rounds):
        for name, loader in loaders.items():
            rates[name].append(items_per_second(loader, args.epochs))
    print(rates)
    best = {name: max(r) for name, r in rates.items()}
    print(f"{len(loaders['lmdb'].dataset)} identities, batch {cfg.training.batch_size}, "
          f"{cfg.dataset.num_workers} workers, store_image_size {cfg.dataset.store_image_size}")
    for name, rate in best.items():
        print(f"{name:>9}: {rate:8.1f} items/s")
    print(f"lmdb / raw files: {best['lmdb'] / best['raw files']:.2f}x")


if __name__ == "__main__":
    main()
