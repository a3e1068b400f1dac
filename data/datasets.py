"""Training and evaluation datasets over the LMDB stores, with the release's sampling and transforms.

Training item = one training identity: two different face images and two different clips, drawn
so that neither repeats the two drawn for that identity in the previous epoch. Faces: resize to
112x112, one flip / rotation / crop decision for the pair, BGR 0-255 CHW. Clips: tiled to 10 s.
Evaluation items are (key, tensor) with the resize only (faces) or the full tiled 10 s (voices).
Tensors leave the loader as uint8 images and int16 samples; `as_float` turns them into the
encoders' float input (0-255 BGR, int16 scale) on the device, which moves a third of the bytes.
"""
from __future__ import annotations

import os
import signal
from typing import Iterator

import cv2
import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader, Dataset, default_collate

from data.lmdb_store import AUDIO_STORE, FACE_STORE, LmdbStore, settings_mismatch
from data.sampler import IdentityBatchSampler
from data.splits import Identity, IdentityFiles, read_split, select_keys
from utils.errors import UserError

BORDER = 127  # value of the canvas around rotated faces and of crop padding
MAX_ANGLE = 15  # rotation angles are integers in [-15, 14]


def clip_samples(cfg: EasyDict) -> int:
    """T = clip_seconds * sample_rate (160,000 for the released config)."""
    return int(round(cfg.dataset.clip_seconds * cfg.dataset.sample_rate))


def store_params(cfg: EasyDict) -> dict[str, dict]:
    """What the values of each store depend on (recorded in its store.json by data.prepare)."""
    d = cfg.dataset
    return {AUDIO_STORE: {"kind": "audio", "sample_rate": d.sample_rate, "max_samples": clip_samples(cfg)},
            FACE_STORE: {"kind": "face", "store_image_size": d.store_image_size}}


def open_store(cfg: EasyDict, name: str) -> LmdbStore:
    """The store `name` of dataset.lmdb_dir; a StoreError when it was built with other settings than the config's."""
    store = LmdbStore(os.path.join(cfg.dataset.lmdb_dir, name))
    mismatch = settings_mismatch(store.path, store_params(cfg)[name])
    if mismatch:
        raise mismatch
    return store


def tile_clip(clip: np.ndarray, samples: int) -> np.ndarray:
    """Repeat a clip until it is `samples` long and keep the first `samples` (dtype kept: int16)."""
    return np.resize(clip, samples)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 BGR -> (..., 3, H, W) uint8 BGR (cast to float 0-255 on the device)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


def resize_face(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def rotate_expanded(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate about the centre onto a canvas enlarged to the rotated bounds, border 127."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(h * sin + w * cos), int(h * cos + w * sin)
    matrix[0, 2] += new_w / 2 - w / 2
    matrix[1, 2] += new_h / 2 - h / 2
    return cv2.warpAffine(image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                          borderValue=(BORDER, BORDER, BORDER))


def crop_at(image: np.ndarray, size: int, u: float) -> np.ndarray:
    """size x size window at offsets u*(W-size), u*(H-size); 127 where the image is smaller."""
    h, w = image.shape[:2]
    x, y = int(u * max(w - size, 0)), int(u * max(h - size, 0))
    out = np.full((size, size, 3), BORDER, np.uint8)
    window = image[y:y + size, x:x + size]
    out[:window.shape[0], :window.shape[1]] = window
    return out


def augment_faces(images: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """The release's training transform, one random decision for all images: (N, size, size, 3) uint8."""
    faces = [resize_face(image, size) for image in images]
    if rng.random() < 0.5:
        faces = [face[:, ::-1] for face in faces]
    if rng.random() < 0.5:
        angle = int(rng.integers(-MAX_ANGLE, MAX_ANGLE))
        faces = [rotate_expanded(np.ascontiguousarray(face), angle) for face in faces]
    u = rng.random()
    return np.stack([crop_at(face, size, u) for face in faces])


def pick_two(count: int, recent: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Two different indices in [0, count), avoiding `recent` as far as `count` allows."""
    positions = np.arange(count)
    rank = rng.random(count) + (positions == recent[0]) + (positions == recent[1])  # recent ones sort last
    order = np.argsort(rank)
    return int(order[0]), int(order[min(1, count - 1)])


def group_keys(keys: list[str], identities: list[Identity]) -> list[np.ndarray]:
    """Sorted store keys of each identity (keys of other identities are ignored)."""
    return IdentityFiles(select_keys(keys, identities), identities).of_each()


class TrainDataset(Dataset):
    """One item per training identity: faces (2,3,S,S) uint8 BGR, two int16 clips, the label.

    Items are indexed by (identity, epoch), as IdentityBatchSampler yields them, and every random
    draw of an item is seeded from (seed, identity, epoch): a batch is the same whichever worker,
    rank or resumed run loads it. The two files of each modality avoid the two drawn for that
    identity in the previous epoch (the release's rule), replayed from a per-process memo.
    Compact dtypes keep the hand-over from workers cheap; the trainer casts to float on its device.
    """

    def __init__(self, cfg: EasyDict):
        d = cfg.dataset
        self.identities = read_split(d.list_dir, "train")
        self.face_store = open_store(cfg, FACE_STORE)
        self.voice_store = open_store(cfg, AUDIO_STORE)
        self.face_keys = group_keys(self.face_store.keys(), self.identities)
        self.voice_keys = group_keys(self.voice_store.keys(), self.identities)
        for identity, faces, voices in zip(self.identities, self.face_keys, self.voice_keys):
            if len(faces) == 0 or len(voices) == 0:
                raise ValueError(f"training identity {identity.vox_id} / {identity.vgg_id} has "
                                 f"{len(faces)} faces and {len(voices)} clips in {d.lmdb_dir}; "
                                 f"re-run `python -m data.prepare` (it marks such identities `none`)")
        self.image_size = d.image_size
        self.samples = clip_samples(cfg)
        self.seed = cfg.seed
        self._drawn: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}  # identity -> (epoch, faces, voices)

    def __len__(self) -> int:
        return len(self.identities)

    def load_face(self, key: str) -> np.ndarray:
        return self.face_store.read_image(key)

    def load_voice(self, key: str) -> np.ndarray:
        return self.voice_store.read_audio(key)

    def draw(self, identity: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the two faces and the two clips of `identity` at `epoch`."""
        last, faces, voices = self._drawn.get(identity, (-1, np.full(2, -1), np.full(2, -1)))
        if last > epoch:
            last, faces, voices = -1, np.full(2, -1), np.full(2, -1)
        while last < epoch:
            last += 1
            rng = np.random.default_rng([self.seed, identity, last, 0])
            faces = np.array(pick_two(len(self.face_keys[identity]), faces, rng))
            voices = np.array(pick_two(len(self.voice_keys[identity]), voices, rng))
        self._drawn[identity] = (last, faces, voices)
        return faces, voices

    def __getitem__(self, item: tuple | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(faces, voice, voice_aux, identity) of item (identity, epoch, windows) or of an identity.

        Each clip is tiled to 10 s and cut to its window (start, length); a bare identity index
        means epoch 0 and the whole 10 s.
        """
        identity, epoch, windows = item if isinstance(item, tuple) else (item, 0, ((0, self.samples),) * 2)
        faces, voices = self.draw(identity, epoch)
        images = [self.load_face(k) for k in self.face_keys[identity][faces]]
        rng = np.random.default_rng([self.seed, identity, epoch, 1])
        clips = [torch.from_numpy(tile_clip(self.load_voice(k), self.samples)[start:start + length])
                 for k, (start, length) in zip(self.voice_keys[identity][voices], windows)]
        return to_tensor(augment_faces(images, self.image_size, rng)), clips[0], clips[1], identity


class EvalDataset(Dataset):
    """(key, tensor) for each key: faces (3,S,S) uint8 resized only, voices (T,) int16 tiled to 10 s."""

    def __init__(self, cfg: EasyDict, keys: list[str], modality: str):
        if modality not in ("face", "voice"):
            raise ValueError(f"modality must be 'face' or 'voice', got {modality!r}")
        self.keys = list(keys)
        self.modality = modality
        self.store = open_store(cfg, FACE_STORE if modality == "face" else AUDIO_STORE)
        self.image_size = cfg.dataset.image_size
        self.samples = clip_samples(cfg)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        key = self.keys[index]
        if self.modality == "face":
            return key, eval_face(self.store.read_image(key), self.image_size)
        return key, eval_voice(self.store.read_audio(key), self.samples)


def eval_face(image: np.ndarray, size: int) -> torch.Tensor:
    """The evaluation transform of a face: BGR uint8 (H, W, 3) -> (3, size, size) uint8, resized only."""
    return to_tensor(resize_face(image, size))


def eval_voice(clip: np.ndarray, samples: int) -> torch.Tensor:
    """The evaluation transform of a clip: int16 (T,) -> (samples,) int16, tiled to the full length."""
    return torch.from_numpy(tile_clip(clip, samples))


def as_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader tensor (uint8 images / int16 clips) on `device` as float32 at the same scale."""
    return batch.to(device, non_blocking=True).float()


def train_loader(cfg: EasyDict, dataset: TrainDataset | None = None, start_iteration: int = 1, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    """Endless batches (faces, voice, voice_aux, labels) for iterations start_iteration, start_iteration + 1, ..."""
    dataset = dataset or TrainDataset(cfg)
    rate = cfg.dataset.sample_rate
    crop = tuple(int(seconds * rate) for seconds in cfg.training.crop_seconds)
    sampler = IdentityBatchSampler(len(dataset), cfg.training.batch_size, crop_samples=crop,
                                   clip_samples=dataset.samples, seed=cfg.seed, start_iteration=start_iteration,
                                   rank=rank, world_size=world_size)
    workers = cfg.dataset.num_workers
    # Iterated once (the sampler is endless), so persistent workers would only keep a reference to the iterator.
    return StoreLoader(dataset, batch_sampler=sampler, num_workers=workers,
                       pin_memory=torch.cuda.is_available(), worker_init_fn=leave_signals_to_the_trainer)


class _Failed:
    """In place of an item or batch: the UserError that loading it raised (it pickles, message and type intact)."""

    def __init__(self, error: UserError):
        self.error = error


class _Carrying(Dataset):
    """`dataset` whose items' UserErrors are returned as _Failed instead of raised."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except UserError as e:
            return _Failed(e)


def _collate(items: list) -> object:
    return next((x for x in items if isinstance(x, _Failed)), None) or default_collate(items)


class StoreLoader(DataLoader):
    """A DataLoader whose items' UserErrors (a damaged store value, a missing key) reach the caller as raised, with
    any num_workers: torch re-raises a worker's error around its multi-line traceback, as a message no longer
    one line. The error travels from the worker as a batch and is raised here."""

    def __init__(self, dataset: Dataset, **kwargs):
        super().__init__(_Carrying(dataset), collate_fn=_collate, **kwargs)

    def __iter__(self) -> Iterator:
        batches = super().__iter__()
        try:
            for batch in batches:
                if isinstance(batch, _Failed):
                    raise batch.error
                yield batch
        finally:
            # Closed or failed: drop the iterator now, which stops its workers. They ignore SIGTERM
            # (leave_signals_to_the_trainer), so multiprocessing's exit would wait for them forever while a
            # traceback still held this frame and with it the iterator.
            del batches


def leave_signals_to_the_trainer(worker_id: int) -> None:
    """Workers ignore Ctrl-C / SIGTERM sent to the whole process group: the trainer saves a checkpoint and then
    shuts them down itself, instead of failing on a batch a killed worker never delivered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def eval_loader(cfg: EasyDict, keys: list[str], modality: str) -> DataLoader:
    """Batches of (keys, tensors) in key order for embedding extraction."""
    workers = cfg.dataset.num_workers
    return StoreLoader(EvalDataset(cfg, keys, modality), batch_size=cfg.testing.batch_size, shuffle=False,
                       num_workers=workers, pin_memory=torch.cuda.is_available())
