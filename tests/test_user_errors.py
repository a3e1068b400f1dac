"""Data that used to be silently wrong, and user errors as one line from the entry points (files on disk)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from data.lists import ListError, read_key_table, read_retrieval_keys, unlistable_reason
from data.prepare import prepare
from data.splits import SplitError, read_meta
from helpers import ROOT, tiny_config, load_test_script, save_config
from utils.errors import UserError

script = load_test_script()


def run(module_or_script: list[str], cfg, tmp_path) -> subprocess.CompletedProcess:
    """Run an entry point on `cfg` written to a YAML file, as a user would."""
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    return subprocess.run([sys.executable, *module_or_script, "--cfg", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def one_line_error(process: subprocess.CompletedProcess, prefix: str) -> str:
    """The error line that ends a failed run's stderr (after progress bars, if any; no traceback)."""
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), process.stderr
    return last


@pytest.fixture
def lists_copy(tmp_path, tiny_cfg):
    """The tiny corpus' split CSVs and lists in a folder of their own (its stores are shared, read only)."""
    list_dir = tmp_path / "lists"
    shutil.copytree(tiny_cfg.dataset.list_dir, list_dir)
    return tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), f"dataset.list_dir={list_dir}",
                       f"dataset.lmdb_dir={tiny_cfg.dataset.lmdb_dir}")


# ---------------------------------------------------------------- data.prepare

def test_duplicate_meta_row_names_file_lines_and_identity(tmp_path, tiny_root):
    meta = tmp_path / "vox1_meta.csv"
    lines = open(os.path.join(tiny_root, "vox1_meta.csv")).read().splitlines(keepends=True)
    meta.write_text("".join(lines[:6] + [lines[3]] + lines[6:]))  # identity of line 4 again on line 7
    identity = lines[3].split("\t")[0]
    with pytest.raises(SplitError, match=rf"vox1_meta\.csv: identity {identity} is on two rows, lines 4 and 7"):
        read_meta(str(meta))
    cfg = tiny_config(tiny_root, f"dataset.meta_file={meta}", f"dataset.list_dir={tmp_path}/lists",
                      f"dataset.lmdb_dir={tmp_path}/lmdb")
    error = one_line_error(run(["-m", "data.prepare"], cfg, tmp_path), "data.prepare: ")
    assert f"{meta}: identity {identity} is on two rows, lines 4 and 7" in error
    assert not os.path.exists(tmp_path / "lists" / "vox1_train.csv")  # nothing written from it


def test_existing_list_is_read_as_the_evaluation_reads_it(tmp_path, lists_copy):
    """A list test.py would reject (blank line inside, wrong column count) fails in data.prepare, naming it."""
    list_dir = lists_copy.dataset.list_dir
    path = os.path.join(list_dir, "verify_g_f2v_test.txt")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:4] + [""] + lines[4:]) + "\n")
    error = one_line_error(run(["-m", "data.prepare"], lists_copy, tmp_path), "data.prepare: ")
    assert f"{path}, line 5: blank line inside the list" in error and "delete it" in error
    with pytest.raises(ListError, match=r"blank line inside the list") as raised:  # test.py's own reader says so
        read_key_table(path)
    assert str(raised.value) in error

    lines[2] += " " + lines[2].split()[1]  # three paths on a verification line
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ListError, match=r"verify_g_f2v_test\.txt, line 3: malformed, expected 2 .* found 3"):
        prepare(lists_copy)
    os.remove(path)
    match = os.path.join(list_dir, "match_v2f_2_val.txt")
    with open(match) as f:
        rows = [line.split() for line in f.read().splitlines()]
    with open(match, "w") as f:  # a 1:3 list under a 1:2 name
        f.write("".join(" ".join(r + r[-1:]) + "\n" for r in rows))
    with pytest.raises(ListError, match=r"match_v2f_2_val\.txt, line 1: malformed, expected 3 .* found 4"):
        prepare(lists_copy)
    os.remove(match)
    prepare(lists_copy)  # both generated again
    assert read_key_table(path).shape[1] == 2 and read_key_table(match).shape[1] == 3


def test_file_names_the_lists_cannot_carry_are_skipped_and_reported(tmp_path, tiny_root):
    root = tmp_path / "corpus"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("lists", "lmdb"))
    voice = next(p for p in sorted((root / "wav" / "id00008").rglob("*.wav")))
    spaced = voice.parent / "00001 (copy).wav"
    tabbed = voice.parent / "00002\tx.wav"
    shutil.copy(voice, spaced)
    shutil.copy(voice, tabbed)
    face_dir = next(p for p in sorted((root / "VGG_ALL_FRONTAL").iterdir()) if p.is_dir() and any(p.iterdir()))
    face = sorted(face_dir.iterdir())[0]
    spaced_face = face_dir / "my photo.jpg"
    shutil.copy(face, spaced_face)
    cfg = tiny_config(str(root))
    prepare(cfg)
    skipped = {}
    for store in ("audio.lmdb", "face.lmdb"):
        with open(os.path.join(cfg.dataset.lmdb_dir, store, "skipped.tsv")) as f:
            skipped.update(line.rstrip("\n").split("\t", 1) for line in f)
    assert "a space" in skipped[str(spaced)] and "a space" in skipped[str(spaced_face)]
    assert "a tab" in skipped[str(tabbed).replace("\t", "\\t")]  # one line of skipped.tsv each
    keys = set()
    for name in os.listdir(cfg.dataset.list_dir):
        if name.startswith(("match", "verify")):
            keys.update(read_key_table(os.path.join(cfg.dataset.list_dir, name)).ravel().tolist())
        elif name.startswith("reterival"):
            keys.update(np.concatenate(read_retrieval_keys(os.path.join(cfg.dataset.list_dir, name))).tolist())
    assert str(voice.relative_to(root / "wav")) in keys  # its well-named twin is listed
    from data.lmdb_store import LmdbStore

    stored = set(LmdbStore(os.path.join(cfg.dataset.lmdb_dir, "audio.lmdb")).keys())
    stored |= set(LmdbStore(os.path.join(cfg.dataset.lmdb_dir, "face.lmdb")).keys())
    assert keys <= stored and not any(unlistable_reason(k) for k in stored)  # no list line is split


def test_unlistable_reasons():
    assert unlistable_reason("id10001/abc-DEF_1/00001.wav") is None
    assert unlistable_reason("A.J._Buckley/00000001.jpg") is None and unlistable_reason("Zoë/1.jpg") is None
    assert "a space" in unlistable_reason("A B/1.jpg")
    assert "a line break" in unlistable_reason("A\nB/1.jpg")
    assert "\\xa0" in unlistable_reason("A\xa0B/1.jpg")  # any whitespace str.split() would split at
    assert "UTF-8" in unlistable_reason("A\udcff/1.jpg")  # an undecodable byte in the file name


# ---------------------------------------------------------------- test.py

def test_list_key_missing_from_the_store_fails_before_embedding(tmp_path, lists_copy):
    path = os.path.join(lists_copy.dataset.list_dir, "match_g_v2f_2_test.txt")
    lines = open(path).read().splitlines()
    absent = lines[7].split()[0].rsplit("/", 1)[0] + "/99999.wav"
    lines[7] = " ".join([absent] + lines[7].split()[1:])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    checkpoint = tmp_path / "checkpoint_best.pth.tar"
    checkpoint.write_bytes(b"never loaded: the lists are checked first")
    lists_copy.testing.checkpoint = str(checkpoint)
    lists_copy.output_dir = str(tmp_path / "runs")
    error = one_line_error(run(["test.py"], lists_copy, tmp_path), "test.py: ")
    assert f"{path}, line 8: key '{absent}' is not in {lists_copy.dataset.lmdb_dir}" in error
    assert not os.path.exists(tmp_path / "runs")  # no features, no results


def test_unreadable_checkpoint_is_one_line(tmp_path, lists_copy):
    checkpoint = tmp_path / "checkpoint_best.pth.tar"
    checkpoint.write_bytes(b"")
    argv = ["--cfg", os.path.join(ROOT, "config", "synthetic.yaml"), "--opts", f"testing.checkpoint={checkpoint}",
            f"output_dir={tmp_path}", *(f"dataset.{k}={lists_copy.dataset[k]}" for k in ("list_dir", "lmdb_dir")),
            "dataset.split_ranges.val=[id00001, id00006]", "dataset.split_ranges.test=[id00007, id00011]",
            "dataset.split_ranges.train=[id00012, id00016]", "dataset.num_workers=0"]
    with pytest.raises(UserError, match=rf"^{checkpoint}: empty file \(0 bytes\), not a checkpoint$"):
        script.main(argv)


def test_float_wav_corpus_is_not_stored_as_silence(tmp_path, tiny_root):
    """The same corpus with every clip rewritten as 32-bit float WAV gives the same audio store."""
    root = tmp_path / "corpus"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("lists", "lmdb"))
    clips = sorted((root / "wav").rglob("*.wav"))
    originals = {}
    for clip in clips:
        samples, rate = soundfile.read(clip, dtype="int16")
        originals[str(clip.relative_to(root / "wav"))] = samples
        soundfile.write(clip, samples.astype(np.float32) / 32768, rate, subtype="FLOAT")
    cfg = tiny_config(str(root))
    prepare(cfg)
    from data.lmdb_store import LmdbStore

    store = LmdbStore(os.path.join(cfg.dataset.lmdb_dir, "audio.lmdb"))
    assert len(store) > 0
    for key in store.keys():
        np.testing.assert_array_equal(store.read_audio(key), originals[key])
