"""Writing the corpus: identity folders of clips and photos, the meta file and a contact sheet."""
from __future__ import annotations

import argparse
import csv
import json
import os
import string
import time
from multiprocessing import Pool

import cv2
import numpy as np
import soundfile
from tqdm import tqdm

from data.synthetic.faces import draw_face
from data.synthetic.people import NATIONALITIES, Persona, TEST_SET_AT, VIDEOS, off_archetype_indices, sample_persona
from data.synthetic.voices import SAMPLE_RATE, sample_channel, short_time_fft, synthesize_clip
from utils.files import atomic_write


META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")
# Written beside the meta file when the corpus has off-archetype identities: {"fraction", "seed", "identities"}.
OFF_ARCHETYPE_FILE = "off_archetype.json"

# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------
def _video_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=11))


def _write_identity(job: tuple) -> tuple[int, int]:
    """Write the clips and photos of one identity; returns (clips, images)."""
    root, p, seed, clips, images, seconds = job
    rng = np.random.default_rng([seed, p.index, 1])
    n_videos = int(rng.integers(VIDEOS[0], VIDEOS[1] + 1))
    videos = [(_video_id(rng), sample_channel(rng)) for _ in range(n_videos)]
    n_clips = int(rng.integers(clips[0], clips[1] + 1))
    per_video = np.bincount(np.concatenate([np.arange(n_videos), rng.integers(n_videos, size=max(0, n_clips - n_videos))]),
                            minlength=n_videos)
    for (video, channel), count in zip(videos, per_video):
        folder = os.path.join(root, "wav", p.vox_id, video)
        os.makedirs(folder, exist_ok=True)
        for k in range(count):
            clip = synthesize_clip(p, channel, float(rng.uniform(*seconds)), rng)
            soundfile.write(os.path.join(folder, f"{k + 1:05d}.wav"), clip, SAMPLE_RATE, subtype="PCM_16")
    n_images = 0
    if p.has_faces or p.empty_face_folder:
        folder = os.path.join(root, "VGG_ALL_FRONTAL", p.name)
        os.makedirs(folder, exist_ok=True)
        if p.has_faces:
            n_images = int(rng.integers(images[0], images[1] + 1))
            for k in range(n_images):
                face, quality = draw_face(p, rng)
                cv2.imwrite(os.path.join(folder, f"{k + 1:08d}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return int(per_video.sum()), n_images


def _unique_names(personas: list[Persona]) -> None:
    seen: dict[str, int] = {}
    for p in personas:
        count = seen.get(p.name, 0)
        seen[p.name] = count + 1
        if count:
            p.name = f"{p.name}_{count + 1}"


def write_meta(path: str, personas: list[Persona]) -> None:
    """vox1_meta.csv as VoxCeleb1 ships it (tab-separated), written atomically."""
    lo, hi = (int(f * len(personas)) for f in TEST_SET_AT)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(META_HEADER)
        for p in personas:
            writer.writerow([p.vox_id, p.name, p.gender, NATIONALITIES[p.nation][0],
                             "test" if lo <= p.index < hi else "dev"])


def write_off_archetype(root: str, personas: list[Persona], fraction: float, seed: int) -> None:
    """The off-archetype identities' VoxCeleb1 ids, so that evaluation can tell them apart."""
    record = {"fraction": fraction, "seed": seed, "identities": [p.vox_id for p in personas if p.off_archetype]}
    with atomic_write(os.path.join(root, OFF_ARCHETYPE_FILE)) as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def off_archetype_record(root: str) -> dict:
    """What the corpus under `root` records of its off-archetype identities ({"fraction": 0.0, "identities": []}
    for a corpus without them)."""
    path = os.path.join(root, OFF_ARCHETYPE_FILE)
    if not os.path.exists(path):
        return {"fraction": 0.0, "identities": []}
    with open(path) as f:
        return json.load(f)


def off_archetype_ids(root: str) -> set[str]:
    """The VoxCeleb1 ids of the corpus' off-archetype identities (empty for the default corpus)."""
    return set(off_archetype_record(root)["identities"])


def contact_sheet(root: str, personas: list[Persona], path: str, rows: int = 6) -> None:
    """A PNG with, per identity, three of its faces beside the spectrogram of one of its clips."""
    height = 120
    shown = [p for p in personas if p.has_faces][:rows]
    strips = []
    for p in shown:
        face_dir = os.path.join(root, "VGG_ALL_FRONTAL", p.name)
        faces = [cv2.imread(os.path.join(face_dir, f)) for f in sorted(os.listdir(face_dir))[:3]]
        faces = [cv2.resize(f, (int(f.shape[1] * height / f.shape[0]), height)) for f in faces]
        voice_dir = os.path.join(root, "wav", p.vox_id)
        video = sorted(os.listdir(voice_dir))[0]
        clip, _ = soundfile.read(os.path.join(voice_dir, video, sorted(os.listdir(os.path.join(voice_dir, video)))[0]),
                                 dtype="float32", frames=3 * SAMPLE_RATE)
        spec = np.abs(short_time_fft().stft(clip))
        db = 20 * np.log10(spec + 1e-6)
        db = np.clip((db - db.max() + 70) / 70, 0, 1)[::-1]
        spec_img = cv2.applyColorMap((db * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
        spec_img = cv2.resize(spec_img, (360, height))
        label = np.full((height, 170, 3), 255, np.uint8)
        for k, text in enumerate([p.vox_id, p.name[:16], f"{p.gender}, {p.age:.0f} y",
                                  NATIONALITIES[p.nation][0], f"body {p.body:+.1f}"]):
            cv2.putText(label, text, (6, 22 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        strips.append(np.concatenate([label] + faces + [spec_img], 1))
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((2, 2), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                            for s in strips])
    cv2.imwrite(path, sheet)


def generate_corpus(root: str, identities: int = 300, seed: int = 0, *, clips: tuple[int, int] = (6, 10),
                    images: tuple[int, int] = (6, 10), seconds: tuple[float, float] = (3.0, 8.0),
                    workers: int | None = None, off_archetype_fraction: float = 0.0) -> None:
    """Write the synthetic corpus under `root` (meta file last: its presence means complete).
    `off_archetype_fraction`: the share of identities with faces whose face disagrees with their voice
    (data/synthetic/people.py); recorded in OFF_ARCHETYPE_FILE when above 0."""
    off = off_archetype_indices(identities, seed, off_archetype_fraction)
    personas = [sample_persona(i, identities, seed, off_archetype=i in off) for i in range(identities)]
    _unique_names(personas)
    os.makedirs(root, exist_ok=True)
    jobs = [(root, p, seed, clips, images, seconds) for p in personas]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = tqdm(total=identities, desc="synthetic corpus", unit="id")
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_identity, jobs):
                bar.update()
    else:
        for job in jobs:
            _write_identity(job)
            bar.update()
    bar.close()
    contact_sheet(root, personas, os.path.join(root, "contact_sheet.png"))
    if off_archetype_fraction > 0:
        write_off_archetype(root, personas, off_archetype_fraction, seed)
    write_meta(os.path.join(root, "vox1_meta.csv"), personas)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic",
                                     description="Write the embedded synthetic corpus (data/synthetic/__init__.py).")
    parser.add_argument("--out", required=True, help="corpus root folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--off-archetype-fraction", type=float, default=0.0, metavar="F",
                        help="share of identities (0..1) whose face is drawn apart from their voice's attributes")
    args = parser.parse_args()
    if not 0 <= args.off_archetype_fraction <= 1:
        parser.error("--off-archetype-fraction must be between 0 and 1")
    start = time.time()
    generate_corpus(args.out, args.identities, args.seed, off_archetype_fraction=args.off_archetype_fraction)
    print(f"wrote {args.identities} identities to {args.out} in {time.time() - start:.0f} s")

