"""Training and evaluation datasets over the LMDB stores, with the release's sampling and transforms.

Training item = one training identity: two different face images and two different clips, drawn
so that neither repeats the two drawn for that identity last time (state shared by all loader
workers). Faces: resize to 112x112, one flip / rotation / crop decision for the pair, BGR 0-255
CHW float. Clips: tiled to 10 s at int16 scale. Evaluation items are (key, tensor) with the
resize only (faces) or the full tiled 10 s (voices).
"""
from __future__ import annotations

import os
from typing import Iterable

import cv2
import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader, Dataset, get_worker_info

from data.lmdb_store import AUDIO_STORE, FACE_STORE, LmdbStore
from data.splits import Identity, key_labels, read_split, select_keys

BORDER = 127  # value of the canvas around rotated faces and of crop padding
MAX_ANGLE = 15  # rotation angles are integers in [-15, 14]


def clip_samples(cfg: EasyDict) -> int:
    """T = clip_seconds * sample_rate (160,000 for the released config)."""
    return int(round(cfg.dataset.clip_seconds * cfg.dataset.sample_rate))


def tile_clip(clip: np.ndarray, samples: int, out: np.ndarray | None = None) -> np.ndarray:
    """Repeat a clip until it is `samples` long and keep the first `samples` (float32, int16 scale)."""
    out = np.empty(samples, np.float32) if out is None else out
    filled = min(len(clip), samples)
    out[:filled] = clip[:filled]
    while filled < samples:  # doubling copies: a few passes whatever the clip length
        step = min(filled, samples - filled)
        out[filled:filled + step] = out[:step]
        filled += step
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 BGR -> (..., 3, H, W) float32 BGR 0-255."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3), dtype=np.float32))


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
    keys = np.sort(select_keys(keys, identities))
    owners = key_labels(keys, identities)
    order = np.argsort(owners, kind="stable")
    return np.split(keys[order], np.cumsum(np.bincount(owners, minlength=len(identities)))[:-1])


class _ProcessRng:
    """A numpy Generator per process, seeded from torch's seed of that process (DataLoader workers
    get base_seed + worker_id), so runs repeat under torch.manual_seed."""

    def __init__(self):
        self._rng, self._pid = None, None

    def __call__(self) -> np.random.Generator:
        if self._pid != os.getpid():
            self._rng, self._pid = np.random.default_rng(torch.initial_seed()), os.getpid()
        return self._rng

    def __getstate__(self) -> dict:
        return {"_rng": None, "_pid": None}


class TrainDataset(Dataset):
    """One item per training identity: (faces (2,3,S,S), voices (2,T), label).

    `share_batches`: a loader worker writes each batch straight into shared memory, which only
    pays off with `collate` (train_loader sets it); with another collate function leave it off.
    """

    share_batches = False

    def __init__(self, cfg: EasyDict):
        d = cfg.dataset
        self.identities = read_split(d.list_dir, "train")
        self.face_store = LmdbStore(os.path.join(d.lmdb_dir, FACE_STORE))
        self.voice_store = LmdbStore(os.path.join(d.lmdb_dir, AUDIO_STORE))
        self.face_keys = group_keys(self.face_store.keys(), self.identities)
        self.voice_keys = group_keys(self.voice_store.keys(), self.identities)
        for identity, faces, voices in zip(self.identities, self.face_keys, self.voice_keys):
            if len(faces) == 0 or len(voices) == 0:
                raise ValueError(f"training identity {identity.vox_id} / {identity.vgg_id} has "
                                 f"{len(faces)} faces and {len(voices)} clips in {d.lmdb_dir}; "
                                 f"re-run `python -m data.prepare` (it marks such identities `none`)")
        self.image_size = d.image_size
        self.samples = clip_samples(cfg)
        # Last two indices drawn per identity and modality (0 faces, 1 voices), in shared memory
        # so that every loader worker avoids what any worker drew last time.
        self.recent = torch.full((len(self.identities), 2, 2), -1, dtype=torch.int64).share_memory_()
        self.rng = _ProcessRng()

    def __len__(self) -> int:
        return len(self.identities)

    def load_face(self, key: str) -> np.ndarray:
        return self.face_store.read_image(key)

    def load_voice(self, key: str) -> np.ndarray:
        return self.voice_store.read_audio(key)

    def _draw(self, index: int, modality: int, keys: np.ndarray) -> list[str]:
        first, second = pick_two(len(keys), self.recent[index, modality].numpy(), self.rng())
        self.recent[index, modality] = torch.tensor([first, second])
        return [keys[first], keys[second]]

    def _fill(self, index: int, faces: np.ndarray, voices: np.ndarray) -> None:
        """Draw and write item `index`: faces (2,3,S,S) and voices (2,T), float32 arrays."""
        rng = self.rng()
        images = [self.load_face(k) for k in self._draw(index, 0, self.face_keys[index])]
        clips = [self.load_voice(k) for k in self._draw(index, 1, self.voice_keys[index])]
        faces[:] = np.moveaxis(augment_faces(images, self.image_size, rng), -1, -3)
        for row, clip in zip(voices, clips):
            tile_clip(clip, self.samples, out=row)

    def _allocate(self, count: int, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.image_size
        return (new_tensor((count, 2, 3, size, size), torch.float32, shared),
                new_tensor((count, 2, self.samples), torch.float32, shared))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        faces, voices = self._allocate(1, shared=False)
        self._fill(index, faces[0].numpy(), voices[0].numpy())
        return faces[0], voices[0], index

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """The items of a batch, written as consecutive rows of one batch tensor per field (in
        shared memory in a loader worker): `collate` then hands the batch over without a copy."""
        faces, voices = self._allocate(len(indices), shared=self.share_batches and get_worker_info() is not None)
        face_rows, voice_rows = faces.numpy(), voices.numpy()
        for row, index in enumerate(indices):
            self._fill(index, face_rows[row], voice_rows[row])
        return [(faces[row], voices[row], index) for row, index in enumerate(indices)]


class EvalDataset(Dataset):
    """(key, tensor) for each key: faces (3,S,S) resized only, voices (T,) tiled to 10 s."""

    def __init__(self, cfg: EasyDict, keys: list[str], modality: str):
        if modality not in ("face", "voice"):
            raise ValueError(f"modality must be 'face' or 'voice', got {modality!r}")
        self.keys = list(keys)
        self.modality = modality
        self.store = LmdbStore(os.path.join(cfg.dataset.lmdb_dir, FACE_STORE if modality == "face" else AUDIO_STORE))
        self.image_size = cfg.dataset.image_size
        self.samples = clip_samples(cfg)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        key = self.keys[index]
        if self.modality == "face":
            return key, to_tensor(resize_face(self.store.read_image(key), self.image_size))
        return key, torch.from_numpy(tile_clip(self.store.read_audio(key), self.samples))


def new_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised CPU tensor, in shared memory if `shared` (how a worker hands a batch over)."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    empty = torch.empty(0, dtype=dtype)
    return empty.new(empty._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")).resize_(shape)


def _whole(rows: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The tensor whose consecutive rows `rows` are (TrainDataset.__getitems__), else None."""
    first = rows[0]
    storage, step = first.untyped_storage(), first.numel()
    if storage.nbytes() != len(rows) * step * first.element_size():
        return None
    if not all(r.is_contiguous() and r.untyped_storage().data_ptr() == storage.data_ptr()
               and r.storage_offset() == n * step for n, r in enumerate(rows)):
        return None
    return torch.empty(0, dtype=first.dtype).set_(storage, 0, (len(rows),) + tuple(first.shape))


def collate(batch: list[tuple]) -> tuple:
    """default_collate for these items, without its torch.stack: rows of one batch tensor are
    handed over as that tensor, other tensors are stacked with numpy (torch.stack on CPU is an
    order of magnitude slower for batches of 10 s clips)."""
    fields = []
    for values in zip(*batch):
        first = values[0]
        if isinstance(first, torch.Tensor):
            whole = _whole(values)
            if whole is None:
                whole = new_tensor((len(values),) + tuple(first.shape), first.dtype, get_worker_info() is not None)
                np.stack([v.numpy() for v in values], out=whole.numpy())
            fields.append(whole)
        elif isinstance(first, int):
            fields.append(torch.tensor(values))
        else:
            fields.append(list(values))
    return tuple(fields)


def train_loader(cfg: EasyDict, dataset: Dataset | None = None, generator: torch.Generator | None = None,
                 batch_sampler: Iterable[list[int]] | None = None) -> DataLoader:
    """Batches of distinct identities: shuffled with the last partial batch dropped (as the
    release), or as `batch_sampler` says. Collates with `collate` and turns on share_batches."""
    dataset = dataset or TrainDataset(cfg)
    dataset.share_batches = True
    workers = cfg.dataset.num_workers
    batching = ({"batch_sampler": batch_sampler} if batch_sampler is not None else
                {"batch_size": cfg.training.batch_size, "shuffle": True, "drop_last": True, "generator": generator})
    return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(), collate_fn=collate, **batching)


def eval_loader(cfg: EasyDict, keys: list[str], modality: str) -> DataLoader:
    """Batches of (keys, tensors) in key order for embedding extraction."""
    workers = cfg.dataset.num_workers
    return DataLoader(EvalDataset(cfg, keys, modality), batch_size=cfg.testing.batch_size, shuffle=False,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=collate)
