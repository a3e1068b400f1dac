"""Training and evaluation datasets: shapes, dtypes, sampling and augmentation, worker processes."""
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from data.datasets import (BORDER, EvalDataset, TrainDataset, augment_faces, collate, crop_at, pick_two,
                           rotate_expanded, tile_clip, train_loader)
from data.lists import list_path, read_list
from data.lmdb_store import MissingKeyError
from test_data_fixtures import tiny_cfg, tiny_config  # noqa: F401 (fixture)

T = 160000


@pytest.fixture(scope="module")
def train_set(tiny_cfg):
    return TrainDataset(tiny_cfg)


def test_training_item(train_set):
    faces, voices, label = train_set[2]
    assert faces.shape == (2, 3, 112, 112) and faces.dtype == torch.float32
    assert voices.shape == (2, T) and voices.dtype == torch.float32
    assert label == 2 and len(train_set) == 5  # id00012..id00016
    assert 0 <= faces.min() and faces.max() <= 255 and torch.equal(faces, faces.round())
    clips = [train_set.voice_store.read_audio(k) for k in train_set.voice_keys[2]]
    for row in voices.numpy():  # each row is one of the identity's clips, tiled to 10 s
        assert any(np.array_equal(row, np.resize(c, T).astype(np.float32)) for c in clips)


def test_faces_are_bgr_of_the_stored_image(tiny_cfg):
    key = read_list(list_path(tiny_cfg.dataset.list_dir, "reterival_f2v_test"))[0][0]
    _, face = EvalDataset(tiny_cfg, [key], "face")[0]
    stored = EvalDataset(tiny_cfg, [key], "face").store.read_image(key)
    assert face.shape == (3, 112, 112) and torch.equal(face, torch.from_numpy(stored).permute(2, 0, 1).float())
    path = os.path.join(tiny_cfg.dataset.image_data_dir, key)
    original = cv2.resize(cv2.imread(path), (112, 112), interpolation=cv2.INTER_LINEAR)
    assert np.abs(original.astype(int) - stored).mean() < 4  # BGR order, re-encoded at quality 95


def test_eval_voice_is_full_tiled_clip(tiny_cfg):
    key = read_list(list_path(tiny_cfg.dataset.list_dir, "reterival_v2f_val"))[0][1]
    dataset = EvalDataset(tiny_cfg, [key], "voice")
    name, voice = dataset[0]
    clip = dataset.store.read_audio(key)
    assert name == key and voice.shape == (T,) and len(clip) < T
    assert torch.equal(voice[: len(clip)], torch.from_numpy(clip.astype(np.float32)))
    assert torch.equal(voice[len(clip): 2 * len(clip)], voice[: len(clip)])


def test_missing_key_fails_with_its_name(tiny_cfg):
    with pytest.raises(MissingKeyError, match="Nobody/00000001.jpg"):
        EvalDataset(tiny_cfg, ["Nobody/00000001.jpg"], "face")[0]


def test_tile_clip():
    clip = np.arange(7, dtype=np.int16)
    assert np.array_equal(tile_clip(clip, 30), np.resize(clip, 30).astype(np.float32))
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


def test_consecutive_items_avoid_previous_files(train_set):
    keys = np.array([f"x/{k}.jpg" for k in range(6)])
    first = set(train_set._draw(0, 0, keys))
    second = set(train_set._draw(0, 0, keys))
    assert len(first) == 2 and len(second) == 2 and not first & second


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


def test_collate_matches_default_collate(train_set):
    batch = [train_set[i] for i in range(3)]
    ours, default = collate(batch), default_collate(batch)
    assert all(torch.equal(x, y) for x, y in zip(ours, default))


def test_batched_fetch_is_the_same_items_without_a_copy(tiny_cfg):
    torch.manual_seed(5)
    one_by_one = TrainDataset(tiny_cfg)
    singles = [one_by_one[i] for i in (0, 3, 1)]
    torch.manual_seed(5)
    rows = TrainDataset(tiny_cfg).__getitems__([0, 3, 1])
    for single, row in zip(singles, rows):
        assert torch.equal(single[0], row[0]) and torch.equal(single[1], row[1]) and single[2] == row[2]
    batch = collate(rows)
    assert batch[1].data_ptr() == rows[0][1].data_ptr()  # the batch tensor itself, not a copy
    assert all(torch.equal(x, y) for x, y in zip(batch, default_collate(rows)))


def test_multi_worker_loading(tiny_cfg):
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), "dataset.num_workers=2")
    loader = train_loader(cfg, generator=torch.Generator().manual_seed(0))
    dataset = loader.dataset
    batches = list(loader)
    assert len(batches) == 1  # 5 identities in batches of 4, the last partial batch dropped
    faces, voices, labels = batches[0]
    assert faces.shape == (4, 2, 3, 112, 112) and voices.shape == (4, 2, T)
    seen = labels.tolist()
    assert len(set(seen)) == 4
    assert (dataset.recent[seen] >= 0).all()  # workers' draws are visible in the shared state
    assert (dataset.recent[[i for i in range(5) if i not in seen]] == -1).all()
    keys = read_list(list_path(cfg.dataset.list_dir, "reterival_v2f_test"))[0].tolist()
    eval_loader = DataLoader(EvalDataset(cfg, keys, "voice"), batch_size=4, num_workers=2, collate_fn=collate)
    names = [n for batch_names, _ in eval_loader for n in batch_names]
    assert names == keys


def test_train_loader_takes_a_batch_sampler(tiny_cfg):
    loader = train_loader(tiny_cfg, batch_sampler=[[4, 0], [2, 3]])
    assert [b[2].tolist() for b in loader] == [[4, 0], [2, 3]]


@pytest.mark.parametrize("workers", [0, 2])
def test_loading_repeats_under_a_seed(tiny_cfg, workers):
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), f"dataset.num_workers={workers}")

    def first_batch():
        torch.manual_seed(3)
        return next(iter(train_loader(cfg)))

    a, b = first_batch(), first_batch()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
