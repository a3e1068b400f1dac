"""Evaluation lists: names, line statistics, determinism, reading, key checks, kept existing lists."""
import os
import shutil

import numpy as np
import pytest
from helpers import tiny_config

from data.lists import ListSpec, check_keys, evaluation_lists, list_names, list_path, make_list, read_key_table, read_retrieval_keys
from data.lmdb_store import MissingKeyError
from data.prepare import prepare
from data.splits import Identity, key_labels

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "metric_case")


@pytest.fixture(scope="module")
def split():
    """60 identities (half each gender) with 3-9 clips and 2-7 faces each."""
    rng = np.random.default_rng(1)
    ids = [Identity(f"id{n:05d}", f"Name_{n}", "mf"[n % 2], "X", "dev") for n in range(60)]
    voices = [f"{i.vox_id}/vid{v % 2}/{v:05d}.wav" for i in ids for v in range(rng.integers(3, 10))]
    faces = [f"{i.vgg_id}/{f:08d}.jpg" for i in ids for f in range(rng.integers(2, 8))]
    return ids, voices, faces


def _rows(text: str) -> np.ndarray:
    return np.array([line.split(" ") for line in text.splitlines()])


def _by_identity(keys: list[str], ids: list[Identity]) -> list[str]:
    """Files in the lists' order: identity by identity (split order), then by name."""
    keys = np.array(keys)
    return keys[np.lexsort((keys, key_labels(keys, ids)))].tolist()


def test_names_are_the_released_ones():
    assert list_names("test") == [
        "match_v2f_2_test", "match_f2v_2_test", "match_g_v2f_2_test", "match_g_f2v_2_test",
        "verify_v2f_test", "verify_f2v_test", "verify_g_v2f_test", "verify_g_f2v_test",
        "reterival_v2f_test", "reterival_f2v_test"]
    assert "match_g_f2v_10_val" in list_names("val", (2, 10))


@pytest.mark.parametrize("direction", ["v2f", "f2v"])
@pytest.mark.parametrize("gender", ["", "g_"])
@pytest.mark.parametrize("n", [2, 5])
def test_matching_lists(split, direction, gender, n):
    ids, voices, faces = split
    rows = _rows(make_list(ListSpec("matching", direction, bool(gender), "test", n), ids, voices, faces, seed=0))
    queries = voices if direction == "v2f" else faces
    assert rows.shape == (3 * len(queries), n + 1)
    assert (rows[:, 0] == np.repeat(_by_identity(queries, ids), 3)).all()  # every query file, 3 consecutive lines
    owner = key_labels(rows.ravel(), ids).reshape(rows.shape)
    assert (owner[:, 1] == owner[:, 0]).all()  # positive first
    negatives = owner[:, 2:]
    assert (negatives != owner[:, :1]).all()
    assert all(len(set(r)) == n - 1 for r in negatives.tolist())  # distinct negative identities
    same_gender = (negatives % 2) == (owner[:, :1] % 2)
    assert same_gender.all() if gender else 0.4 < same_gender.mean() < 0.6
    gallery = set(faces if direction == "v2f" else voices)
    assert set(rows[:, 1:].ravel()) <= gallery


@pytest.mark.parametrize("gender", ["", "g_"])
def test_verification_lists(split, gender):
    ids, voices, faces = split
    rows = _rows(make_list(ListSpec("verification", "f2v", bool(gender), "test"), ids, voices, faces, seed=0))
    assert rows.shape == (3 * len(faces), 2)
    owner = key_labels(rows.ravel(), ids).reshape(rows.shape)
    positive = owner[:, 0] == owner[:, 1]
    assert abs(positive.mean() - 0.5) < 0.05
    if gender:
        assert ((owner[~positive, 0] % 2) == (owner[~positive, 1] % 2)).all()


def test_retrieval_lists(split):
    ids, voices, faces = split
    lines = make_list(ListSpec("retrieval", "v2f", False, "test"), ids, voices, faces, seed=0).splitlines()
    assert len(lines) == 2
    assert lines[0].split(" ") == _by_identity(voices, ids) and lines[1].split(" ") == _by_identity(faces, ids)


def test_lists_are_deterministic_for_a_seed(split):
    ids, voices, faces = split
    spec = ListSpec("matching", "v2f", True, "val")
    a = make_list(spec, ids, voices, faces, seed=3)
    assert a == make_list(spec, ids, list(reversed(voices)), faces, seed=3)
    assert a != make_list(spec, ids, voices, faces, seed=4)


def test_too_few_identities_of_a_gender(split):
    ids, voices, faces = split
    ids = ids[:3]  # f, m, f: a man has no other man
    voices = [v for v in voices if v.split("/")[0] in {i.vox_id for i in ids}]
    faces = [f for f in faces if f.split("/")[0] in {i.vgg_id for i in ids}]
    with pytest.raises(ValueError, match="match_g_v2f_2_test"):
        make_list(ListSpec("matching", "v2f", True, "test"), ids, voices, faces, seed=0)


def test_read_released_lists():
    rows = read_key_table(os.path.join(DATA, "match_v2f_2_test.txt"))
    assert rows.shape == (459, 3) and rows[0, 0] == "id10000/vid0/00001.wav"
    retrieval = read_retrieval_keys(os.path.join(DATA, "reterival_v2f_test.txt"))
    assert len(retrieval) == 2 and len(retrieval[0]) == 153 and retrieval[1][0].endswith(".jpg")


def test_check_keys_names_list_line_and_key(tmp_path):
    path = str(tmp_path / "verify_v2f_test.txt")
    with open(path, "w") as f:
        f.write("a.wav A/1.jpg\nb.wav A/1.jpg\nb.wav B/9.jpg\n")
    rows = read_key_table(path)
    check_keys(path, rows, ["a.wav", "b.wav"], {"A/1.jpg", "B/9.jpg"})
    with pytest.raises(MissingKeyError, match=r"verify_v2f_test.txt, line 3: key 'B/9.jpg'"):
        check_keys(path, rows, ["a.wav", "b.wav"], ["A/1.jpg"])
    with pytest.raises(KeyError):
        check_keys(path, list(read_retrieval_keys(os.path.join(DATA, "reterival_f2v_test.txt"))), ["a.wav"])


def test_prepared_lists_cover_the_split(tiny_cfg):
    d = tiny_cfg.dataset
    from data.lmdb_store import LmdbStore

    voices, faces = LmdbStore(os.path.join(d.lmdb_dir, "audio.lmdb")), LmdbStore(os.path.join(d.lmdb_dir, "face.lmdb"))
    for spec in evaluation_lists("val") + evaluation_lists("test"):
        path = list_path(d.list_dir, spec.name)
        check_keys(path, spec.read_keys(path), voices, faces)
    queries = read_retrieval_keys(list_path(d.list_dir, "reterival_v2f_test"))[0]
    assert {k.split("/")[0] for k in queries} == {f"id{n:05d}" for n in range(7, 12)}
    assert set(read_key_table(list_path(d.list_dir, "match_v2f_2_test"))[:, 0]) == set(queries)


def test_prepare_keeps_existing_lists(tmp_path, tiny_cfg):
    d = tiny_cfg.dataset
    lists = tmp_path / "lists"
    shutil.copytree(d.list_dir, lists)
    authors = read_key_table(list_path(d.list_dir, "match_v2f_2_test"))[::3][:, [0, 2, 1]]  # a list of their own
    with open(lists / "match_v2f_2_test.txt", "w") as f:
        f.write("\n".join(" ".join(r) for r in authors) + "\n")
    os.remove(lists / "verify_f2v_val.txt")
    before = (lists / "match_v2f_2_test.txt").read_text()
    root = os.path.dirname(d.meta_file)
    prepare(tiny_config(root, f"dataset.list_dir={lists}"))
    assert (lists / "match_v2f_2_test.txt").read_text() == before
    assert (lists / "verify_f2v_val.txt").read_text() == open(list_path(d.list_dir, "verify_f2v_val")).read()
    with open(lists / "verify_g_v2f_test.txt", "a") as f:
        f.write("id00007/nothere/00001.wav Name/00000001.jpg\n")
    with pytest.raises(MissingKeyError, match=r"verify_g_v2f_test.txt, line \d+: key 'id00007/nothere/00001.wav'"):
        prepare(tiny_config(root, f"dataset.list_dir={lists}"))
