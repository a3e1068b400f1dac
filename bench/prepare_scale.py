"""Evaluation-only preparation against the full one, on a corpus at the VoxCeleb1 test-split scale.

    python bench/prepare_scale.py --out /tmp/scale [--others 0.1] [--keep]

Generates noise WAVs (16 kHz mono, 4–20 s) and small JPEGs in the VoxCeleb1 / VGG_ALL_FRONTAL layouts:
the test split's 189 usable identities with 21,850 clips and 20,076 images in all, and the train and
val identities (924 and 112 usable; 26 identities in all without a face folder, as in the real split)
with `--others` times the test split's files per identity. Then times `python -m data.prepare --check
--splits test`, `--splits test` and, on fresh lists and stores, the full `python -m data.prepare`, and
prints the time and store size of each. The corpus is deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool

import cv2
import numpy as np
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (first ID, identities in the range, of them without a face folder) per split, as in the paper's split.
RANGES = {"val": (10001, 116, 4), "test": (10117, 193, 4), "train": (10310, 942, 18)}
TEST_CLIPS, TEST_IMAGES = 21850, 20076
RATE = 16000


def _spread(total: int, parts: int) -> np.ndarray:
    return np.full(parts, total // parts) + (np.arange(parts) < total % parts)


def _write_identity(job: tuple) -> None:
    out, vox_id, name, clips, images, faceless, seed = job
    rng = np.random.default_rng(seed)
    for c in range(clips):
        folder = os.path.join(out, "wav", vox_id, f"video{c // 20:03d}")
        os.makedirs(folder, exist_ok=True)
        samples = rng.integers(-3000, 3000, int(rng.uniform(4, 20) * RATE), dtype=np.int16)
        soundfile.write(os.path.join(folder, f"{c % 20 + 1:05d}.wav"), samples, RATE, subtype="PCM_16")
    if faceless:
        return
    folder = os.path.join(out, "VGG_ALL_FRONTAL", name)
    os.makedirs(folder, exist_ok=True)
    for i in range(images):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth noise: a face-sized JPEG of a few KB
        image = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(folder, f"{i:08d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def generate(out: str, others: float, workers: int) -> None:
    per_clip, per_image = TEST_CLIPS / 189, TEST_IMAGES / 189
    jobs, meta = [], ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for split, (first, count, faceless) in RANGES.items():
        usable = count - faceless
        if split == "test":
            clips, images = _spread(TEST_CLIPS, usable), _spread(TEST_IMAGES, usable)
        else:
            clips = np.full(usable, max(1, round(per_clip * others)))
            images = np.full(usable, max(1, round(per_image * others)))
        for k in range(count):
            vox_id, name = f"id{first + k}", f"Person_{first + k}"
            meta.append(f"{vox_id}\t{name}\t{'mf'[k % 2]}\tNowhere\tdev")
            has_face = k < usable
            jobs.append((out, vox_id, name, int(clips[k]) if has_face else 2, int(images[k]) if has_face else 0,
                         not has_face, first + k))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vox1_meta.csv"), "w") as f:
        f.write("\n".join(meta) + "\n")
    with Pool(workers) as pool:
        pool.map(_write_identity, jobs, chunksize=4)


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(here, f)) for here, _, files in os.walk(path) for f in files)


def prepare(out: str, *args: str) -> tuple[float, int]:
    """Seconds and store bytes of one `data.prepare` run (with `args`) from nothing."""
    for folder in ("lists", "lmdb"):
        shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
    opts = [f"dataset.audio_data_dir={out}/wav", f"dataset.image_data_dir={out}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={out}/vox1_meta.csv", f"dataset.list_dir={out}/lists", f"dataset.lmdb_dir={out}/lmdb"]
    command = [sys.executable, "-m", "data.prepare", "--cfg", os.path.join(ROOT, "config", "cfg.yaml"), *args]
    start = time.time()
    subprocess.run(command + ["--opts", *opts], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.time() - start, _size(os.path.join(out, "lmdb"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the corpus (deleted at the end unless --keep)")
    parser.add_argument("--others", type=float, default=0.1,
                        help="files per train / val identity, as a fraction of the test split's")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workers = len(os.sched_getaffinity(0))
    start = time.time()
    generate(args.out, args.others, workers)
    print(f"corpus: {_size(os.path.join(args.out, 'wav')) / 1e9:.2f} GB of WAVs, "
          f"{_size(os.path.join(args.out, 'VGG_ALL_FRONTAL')) / 1e9:.2f} GB of JPEGs, "
          f"generated in {time.time() - start:.0f} s on {workers} cores")
    try:
        for run in (["--check", "--splits", "test"], ["--splits", "test"], []):
            seconds, size = prepare(args.out, *run)
            print(f"data.prepare {' '.join(run) or '(all splits)'}: {seconds:.0f} s, stores {size / 1e9:.2f} GB")
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
