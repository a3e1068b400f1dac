"""The split rule, split CSVs, split files, and key -> identity resolution."""
import os
import shutil

import numpy as np
import pytest

from config import DEFAULTS
from data.prepare import make_splits, prepare
from data.scan import IdentityScanner
from data.splits import (SPLIT_HEADER, Identity, assign_splits, key_labels, natural_key, read_meta,
                         read_split, read_split_file, split_of_ranges, split_path, write_split)
from helpers import tiny_config


def _voxceleb_shaped_meta() -> tuple[list[Identity], set[str]]:
    """1,251 identities id10001..id11251 and the 26 without faces (4 val, 4 test, 18 train)."""
    meta = [Identity(f"id{n}", f"Person_{n}", "mf"[n % 2], "USA", "test" if 10270 <= n <= 10309 else "dev")
            for n in range(10001, 11252)]
    faceless = {f"id{n}" for n in (10001, 10002, 10006, 10077, 10117, 10200, 10250, 10309)}
    faceless |= {f"id{n}" for n in range(10310, 11252, 53)}  # 18 in training
    return meta, faceless


def test_voxceleb1_split_rule(tmp_path):
    meta, faceless = _voxceleb_shaped_meta()
    assert len(faceless) == 26
    splits = assign_splits(meta, split_of_ranges(meta, DEFAULTS["dataset"]["split_ranges"]),
                           lambda i: i.vox_id not in faceless)
    assert {s: len(ids) for s, ids in splits.items()} == {"train": 942, "val": 116, "test": 193}
    for split, ids in splits.items():
        write_split(str(tmp_path), split, ids)
    usable = {s: read_split(str(tmp_path), s) for s in splits}
    assert {s: len(ids) for s, ids in usable.items()} == {"train": 924, "val": 112, "test": 189}
    assert usable["val"][0].vox_id == "id10003" and usable["test"][-1].vox_id == "id10308"
    assert [i.vox_id for i in usable["train"]] == sorted(i.vox_id for i in usable["train"])
    with open(split_path(str(tmp_path), "val")) as f:
        lines = f.read().splitlines()
    assert lines[0] == ",".join(SPLIT_HEADER) and lines[1] == "id10001,Person_10001,f,USA,none"
    assert len(lines) == 117


def test_ranges_compare_by_number_and_must_not_overlap():
    assert natural_key("id10042") == ("id", 10042)
    meta = [Identity(f"spk{n}", f"P{n}", "m", "X", "dev") for n in (1, 9, 10, 25)]
    assert split_of_ranges(meta, {"val": ["spk1", "spk9"], "train": ["spk10", "spk30"]}) == {
        "spk1": "val", "spk9": "val", "spk10": "train", "spk25": "train"}
    with pytest.raises(ValueError, match="split_ranges.val and .test overlap"):
        split_of_ranges(meta, {"val": ["spk1", "spk10"], "test": ["spk9", "spk20"]})


def test_split_file(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("VoxCeleb1 ID,split\nid1,train\nid2,test\n")
    assert read_split_file(str(path)) == {"id1": "train", "id2": "test"}
    path.write_text("id1,train\nid2,validation\n")
    with pytest.raises(ValueError, match="split.csv, line 2"):
        read_split_file(str(path))


def test_identities_without_faces_or_clips_are_none(tmp_path, tiny_root):
    """Face folder missing, face folder empty, clip folder missing: Set `none`."""
    root = tmp_path / "corpus"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("lists", "lmdb"))
    meta = read_meta(str(root / "vox1_meta.csv"))
    shutil.rmtree(root / "VGG_ALL_FRONTAL" / meta[8].vgg_id)
    for f in os.listdir(root / "VGG_ALL_FRONTAL" / meta[9].vgg_id):
        os.remove(root / "VGG_ALL_FRONTAL" / meta[9].vgg_id / f)
    shutil.rmtree(root / "wav" / meta[10].vox_id)
    cfg = tiny_config(str(root))
    splits = make_splits(cfg, IdentityScanner(cfg))
    with open(split_path(cfg.dataset.list_dir, "test")) as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    assert [r[0] for r in rows] == [f"id{n:05d}" for n in range(7, 12)]
    assert [r[4] for r in rows] == ["dev", "dev", "none", "none", "none"]
    assert [i.vox_id for i in splits["test"]] == ["id00007", "id00008"]


def test_another_corpus_by_configuration_alone(tmp_path, tiny_root):
    """Its own (comma-separated) meta file and a split file instead of ID ranges."""
    meta = read_meta(os.path.join(tiny_root, "vox1_meta.csv"))
    meta_file, split_file = tmp_path / "speakers.csv", tmp_path / "split.csv"
    meta_file.write_text("VoxCeleb1 ID,VGGFace1 ID,Gender,Nationality,Set\n"
                         + "".join(f"{i.vox_id},{i.vgg_id},{i.gender},{i.nationality},dev\n" for i in meta))
    splits = ["test"] * 6 + ["val"] * 5 + ["train"] * 5  # not the configured ID ranges
    split_file.write_text("".join(f"{i.vox_id},{s}\n" for i, s in zip(meta, splits)))
    cfg = tiny_config(tiny_root, f"dataset.meta_file={meta_file}", f"dataset.split_file={split_file}",
                      f"dataset.list_dir={tmp_path}/lists", f"dataset.lmdb_dir={tmp_path}/lmdb")
    prepare(cfg)
    assert [i.vox_id for i in read_split(cfg.dataset.list_dir, "val")] == [f"id{n:05d}" for n in range(7, 12)]
    assert len(read_split(cfg.dataset.list_dir, "test")) == 5  # id00001 has no faces
    assert os.path.exists(os.path.join(cfg.dataset.list_dir, "match_g_f2v_2_val.txt"))


def test_keys_resolve_to_identities():
    ids = [Identity("id00002", "Bea_Lo", "f", "X", "dev"), Identity("id00001", "Al_Po", "m", "Y", "dev")]
    labels = key_labels(["id00001/vid/00001.wav", "Bea_Lo/00000001.jpg", "Al_Po/00000003.jpg"], ids)
    assert labels.tolist() == [1, 0, 1] and labels.dtype == np.int64
    assert ids[int(key_labels(["Bea_Lo/00000002.jpg"], ids)[0])].vox_id == "id00002"
    with pytest.raises(KeyError, match="Zed/1.jpg"):
        key_labels(["Al_Po/1.jpg", "Zed/1.jpg"], ids)
