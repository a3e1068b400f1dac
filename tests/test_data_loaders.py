"""Training and evaluation datasets: shapes, dtypes, sampling and augmentation, worker processes."""
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.datasets import (BORDER, EvalDataset, TrainDataset, as_float, augment_faces, crop_at, pick_two,
                           rotate_expanded, tile_clip, train_loader)
from data.lists import list_path, read_retrieval_keys
from data.lmdb_store import MissingKeyError
from helpers import tiny_config

T = 160000


@pytest.fixture(scope="module")
def train_set(tiny_cfg):
    return TrainDataset(tiny_cfg)


def test_training_item(train_set):
    faces, voice, voice_aux, label = train_set[2]
    voices = torch.stack([voice, voice_aux])
    assert faces.shape == (2, 3, 112, 112) and faces.dtype == torch.uint8
    assert voices.shape == (2, T) and voices.dtype == torch.int16
    assert label == 2 and len(train_set) == 5  # id00012..id00016
    clips = [train_set.voice_store.read_audio(k) for k in train_set.voice_keys[2]]
    for row in voices.numpy():  # each row is one of the identity's clips, tiled to 10 s
        assert any(np.array_equal(row, np.resize(c, T)) for c in clips)
    as_input = as_float(voices, torch.device("cpu"))  # the encoders' input: float at int16 scale
    assert as_input.dtype == torch.float32 and torch.equal(as_input, voices.double().float())
    assert as_float(faces, torch.device("cpu")).max() <= 255


def test_faces_are_bgr_of_the_stored_image(tiny_cfg):
    key = read_retrieval_keys(list_path(tiny_cfg.dataset.list_dir, "reterival_f2v_test"))[0][0]
    _, face = EvalDataset(tiny_cfg, [key], "face")[0]
    stored = EvalDataset(tiny_cfg, [key], "face").store.read_image(key)
    assert face.shape == (3, 112, 112) and torch.equal(face, torch.from_numpy(stored).permute(2, 0, 1))
    path = os.path.join(tiny_cfg.dataset.image_data_dir, key)
    original = cv2.resize(cv2.imread(path), (112, 112), interpolation=cv2.INTER_LINEAR)
    assert np.abs(original.astype(int) - stored).mean() < 4  # BGR order, re-encoded at quality 95


def test_eval_voice_is_full_tiled_clip(tiny_cfg):
    key = read_retrieval_keys(list_path(tiny_cfg.dataset.list_dir, "reterival_v2f_val"))[0][1]
    dataset = EvalDataset(tiny_cfg, [key], "voice")
    name, voice = dataset[0]
    clip = dataset.store.read_audio(key)
    assert name == key and voice.shape == (T,) and len(clip) < T
    assert voice.dtype == torch.int16 and torch.equal(voice[: len(clip)], torch.from_numpy(clip))
    assert torch.equal(voice[len(clip): 2 * len(clip)], voice[: len(clip)])


def test_missing_key_fails_with_its_name(tiny_cfg):
    with pytest.raises(MissingKeyError, match="Nobody/00000001.jpg"):
        EvalDataset(tiny_cfg, ["Nobody/00000001.jpg"], "face")[0]


def test_tile_clip():
    clip = np.arange(7, dtype=np.int16)
    assert np.array_equal(tile_clip(clip, 30), np.concatenate([clip] * 5)[:30]) and tile_clip(clip, 30).dtype == np.int16
    assert np.array_equal(tile_clip(np.arange(50, dtype=np.int16), 30), np.arange(30))


def test_pick_two_avoids_the_last_draws():
    rng = np.random.default_rng(0)
    for count in (4, 5, 9):
        recent = np.array([1, 2])
        for _ in range(50):
            a, b = pick_two(count, recent, rng)
            assert a != b and not {a, b} & {1, 2}
    assert pick_two(3, np.array([0, 2]), rng)[0] == 1  # what count allows: the fresh one first
    assert sorted(pick_two(2, np.array([0, 1]), rng)) == [0, 1]
    assert pick_two(1, np.array([-1, -1]), rng) == (0, 0)


def test_consecutive_epochs_avoid_previous_files(tiny_cfg):
    dataset = TrainDataset(tiny_cfg)
    identity = int(np.argmax([len(k) for k in dataset.voice_keys]))
    assert len(dataset.voice_keys[identity]) >= 4
    draws = [dataset.draw(identity, epoch) for epoch in range(6)]
    for (faces, voices), (next_faces, next_voices) in zip(draws, draws[1:]):
        assert voices[0] != voices[1] and not set(voices) & set(next_voices)
    # a pure function of (seed, identity, epoch): a fresh process (no memo) draws the same
    assert all(np.array_equal(a, b) for a, b in zip(TrainDataset(tiny_cfg).draw(identity, 4), draws[4]))


def test_rotation_canvas_and_crop():
    image = np.full((112, 112, 3), 200, np.uint8)
    rotated = rotate_expanded(image, 10)
    assert rotated.shape == (129, 129, 3) and (rotated[0, 0] == BORDER).all()
    grid = np.arange(130 * 130 * 3, dtype=np.uint32).reshape(130, 130, 3).astype(np.uint8)
    assert np.array_equal(crop_at(grid, 112, 0.0), grid[:112, :112])
    assert np.array_equal(crop_at(grid, 112, 1.0), grid[18:, 18:])
    small = crop_at(np.zeros((100, 90, 3), np.uint8), 112, 0.5)
    assert (small[100:] == BORDER).all() and (small[:, 90:] == BORDER).all() and (small[:100, :90] == 0).all()


def test_augmentation_shares_one_decision_for_the_pair():
    image = np.zeros((150, 120, 3), np.uint8)
    image[:, :40] = 255  # bright left band: tells flips apart
    rng = np.random.default_rng(0)
    flipped, bordered = [], []
    for _ in range(400):
        a, b = augment_faces([image, image.copy()], 112, rng)
        assert a.shape == (112, 112, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
        flipped.append(a[56, 100:].mean() > a[56, :12].mean())
        bordered.append((a[0, 0] == BORDER).all() or (a[-1, -1] == BORDER).all())
    assert 0.43 < np.mean(flipped) < 0.57
    assert 0.4 < np.mean(bordered) < 0.55  # rotated in half the items (angle 0 leaves no border)


def first_batches(cfg, count=2, **kwargs):
    loader = iter(train_loader(cfg, **kwargs))
    return [next(loader) for _ in range(count)]


def test_multi_worker_loading_gives_the_same_batches(tiny_cfg):
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), "dataset.num_workers=2")
    batches = first_batches(cfg)
    for faces, voice, voice_aux, labels in batches:  # 5 identities in batches of 4: one batch per epoch
        assert faces.shape == (4, 2, 3, 112, 112) and len(set(labels.tolist())) == 4
        lo, hi = (int(seconds * 16000) for seconds in cfg.training.crop_seconds)
        assert voice.shape[0] == voice_aux.shape[0] == 4 and lo <= voice.shape[1] < hi
        assert voice.shape[1] != voice_aux.shape[1]
    single = first_batches(tiny_cfg)
    assert all(torch.equal(x, y) for a, b in zip(batches, single) for x, y in zip(a, b))
    keys = read_retrieval_keys(list_path(cfg.dataset.list_dir, "reterival_v2f_test"))[0].tolist()
    eval_loader = DataLoader(EvalDataset(cfg, keys, "voice"), batch_size=4, num_workers=2)
    names = [n for batch_names, _ in eval_loader for n in batch_names]
    assert names == keys


def test_a_resumed_loader_continues_the_same_stream(tiny_cfg):
    full = first_batches(tiny_cfg, 3)
    resumed = first_batches(tiny_cfg, 2, start_iteration=2)
    assert all(torch.equal(x, y) for a, b in zip(full[1:], resumed) for x, y in zip(a, b))
    other_rank = first_batches(tiny_cfg, 1, rank=1, world_size=2)[0]
    assert torch.equal(other_rank[3], full[0][3][2:])


def test_training_clips_are_the_windows_of_the_tiled_clips(train_set):
    window, window_aux = (3000, 50000), (150000, 40000)  # the second one wraps around the tiling
    whole = train_set[(1, 3, ((0, T), (0, T)))]
    cut = train_set[(1, 3, (window, window_aux))]
    assert torch.equal(cut[0], whole[0]) and cut[3] == whole[3] == 1
    assert torch.equal(cut[1], whole[1][3000:53000]) and torch.equal(cut[2], whole[2][150000:])
