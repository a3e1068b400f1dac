"""Training-loader throughput: the LMDB loader against reading the raw files the way the release did.

    python bench/data_loading.py [--cfg config/synthetic.yaml] [--batches 40] [--rounds 3] [--opts k=v ...]

Both loaders draw the same identities, files and augmentations (same sampler, seed, batch size and
worker count); they differ in how a file is read and what crosses from the workers:
- lmdb: TrainDataset over the LMDB stores (stored JPEG, pre-resized when dataset.store_image_size
  is set; int16 PCM), handing uint8 faces and the int16 clip windows of the iteration to the
  trainer, which casts on its device;
- release: each original JPEG decoded with PIL, each WAV read with scipy and tiled with np.tile,
  items handed over as float32 with whole 10 s clips, as the release's dataset did.
Timed rounds alternate between the loaders; items/s is the median over rounds.
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

from config import load_config  # noqa: E402
from data.datasets import TrainDataset, train_loader  # noqa: E402
from data.prepare import prepare  # noqa: E402


class ReleaseDataset(TrainDataset):
    """The same items, each file read from disk and each item handed over as the release did."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.image_dir, self.audio_dir = cfg.dataset.image_data_dir, cfg.dataset.audio_data_dir

    def load_face(self, key: str) -> np.ndarray:
        with Image.open(os.path.join(self.image_dir, key)) as image:
            return np.asarray(image.convert("RGB"))[:, :, ::-1]

    def load_voice(self, key: str) -> np.ndarray:
        _, samples = scipy.io.wavfile.read(os.path.join(self.audio_dir, key))
        samples = samples if samples.ndim == 1 else samples[:, 0]
        return np.tile(samples, (self.samples + len(samples) - 1) // len(samples))[:self.samples]

    def __getitem__(self, item):
        identity, epoch, _ = item  # the release handed over whole 10 s clips and cropped in the forward pass
        faces, voice, voice_aux, label = super().__getitem__((identity, epoch, ((0, self.samples),) * 2))
        return faces.float(), voice.float(), voice_aux.float(), label


def items_per_second(batches, count: int) -> float:
    start, items = time.perf_counter(), 0
    for _ in range(count):
        items += len(next(batches)[-1])
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="config/synthetic.yaml")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per loader")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args()
    cfg = load_config(args.cfg, args.opts)
    prepare(cfg)
    loaders = {"lmdb": iter(train_loader(cfg, TrainDataset(cfg))),
               "release": iter(train_loader(cfg, ReleaseDataset(cfg)))}
    for batches in loaders.values():
        items_per_second(batches, 5)  # warm-up: worker start, page cache
    rates = {name: [] for name in loaders}
    for _ in range(args.rounds):
        for name, batches in loaders.items():
            rates[name].append(items_per_second(batches, args.batches))
    rate = {name: float(np.median(r)) for name, r in rates.items()}
    print(f"batch {cfg.training.batch_size}, {cfg.dataset.num_workers} workers, store_image_size "
          f"{cfg.dataset.store_image_size}, {args.rounds} rounds of {args.batches} batches, "
          f"torch threads {torch.get_num_threads()}")
    for name, value in rate.items():
        print(f"{name:>8}: {value:7.1f} items/s")
    print(f"lmdb / release: {rate['lmdb'] / rate['release']:.2f}x")


if __name__ == "__main__":
    main()
