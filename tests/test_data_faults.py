"""Interrupted, damaged and hostile data, run as users run the commands: `python -m data.prepare` (and
`--check`), `python test.py`, `python train.py` on small trees on disk. Each fault ends in one line naming
the file, line or store, or in the right result; nothing prepared before it is lost."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial

import lmdb
import numpy as np
import pytest
import soundfile
import torch

from data.lmdb_store import AUDIO_STORE, FACE_STORE, LmdbStore, build_store, encode_audio, read_info
from data.prepare import prepare
from data.splits import read_meta
from helpers import ROOT, SYNTHETIC, tiny_config, tiny_opts
from models import build_model

P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04  # LMDB page flags (mdb.c)


def raw_copy(tiny_root: str, folder) -> str:
    """The tiny corpus' raw files (no lists, no stores) under `folder`."""
    root = str(folder)
    for name in ("wav", "VGG_ALL_FRONTAL"):
        shutil.copytree(os.path.join(tiny_root, name), os.path.join(root, name), symlinks=True)
    shutil.copy(os.path.join(tiny_root, "vox1_meta.csv"), root)
    return root


def prepared_copy(tiny_root: str, folder) -> str:
    root = raw_copy(tiny_root, folder)
    prepare(tiny_config(root))
    return root


def run(args: list[str], root: str, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python <args> --cfg config/synthetic.yaml --opts <the tiny corpus under root> <extra>`."""
    return subprocess.run([sys.executable, *args, "--cfg", SYNTHETIC, "--opts", *tiny_opts(root), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def data_prepare(root: str, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return run(["-m", "data.prepare"] + (["--check"] if check else []), root, *extra)


def run_test_py(root: str, checkpoint: str, out, *extra: str) -> subprocess.CompletedProcess:
    return run(["test.py"], root, f"testing.checkpoint={checkpoint}", f"testing.result_path={out}/results.txt",
               f"testing.extracted_features_path={out}/features.pt", "testing.bootstrap=20", *extra)


def error_line(process: subprocess.CompletedProcess) -> str:
    """The one line a failed command ends with (progress bars aside); no traceback."""
    assert process.returncode == 1, process.stdout + process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    return process.stderr.replace("\r", "\n").strip().splitlines()[-1]


def succeeded(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout + process.stderr


def contents(root: str) -> dict:
    """Everything data.prepare made under root, paths made relative: every store's keys and values, its
    skipped/notes files, the lists and split CSVs."""
    made = {}
    for name in (AUDIO_STORE, FACE_STORE):
        path = os.path.join(root, "lmdb", name)
        store = LmdbStore(path)
        made[name] = {key: store.read_bytes(key) for key in store.keys()}
        for report in ("skipped.tsv", "notes.tsv"):
            with open(os.path.join(path, report)) as f:
                made[f"{name}/{report}"] = f.read().replace(root, "ROOT")
    for path in sorted(glob.glob(os.path.join(root, "lists", "*"))):
        with open(path, "rb") as f:
            made[os.path.basename(path)] = f.read()
    return made


def pages(path: str, wanted: int) -> list[int]:
    """Offsets of the pages of data.mdb with a header (its own page number) and the flags `wanted`."""
    with open(path, "rb") as f:
        data = f.read()
    size = 4096
    return [n * size for n in range(2, len(data) // size)
            if int.from_bytes(data[n * size:n * size + 8], "little") == n
            and int.from_bytes(data[n * size + 10:n * size + 12], "little") == wanted]


def overwrite(path: str, offsets: list[int], data: bytes) -> None:
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(data)


@pytest.fixture(scope="module")
def clean(tiny_root, tmp_path_factory) -> str:
    """A clean preparation of the tiny corpus, to compare with."""
    return prepared_copy(tiny_root, tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("model") / "model.pth.tar")
    torch.manual_seed(0)
    torch.save({"format": "aasm", "model": build_model(tiny_config(str(tmp_path_factory.getbasetemp())).models)
                .state_dict()}, path)
    return path


def _edit_meta(root: str, vox_id: str, vgg_name: str) -> int:
    """Give `vox_id` another VGGFace name in the meta file; returns its line number."""
    path = os.path.join(root, "vox1_meta.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    line = next(n for n, text in enumerate(lines) if text.startswith(vox_id + "\t"))
    cells = lines[line].split("\t")
    lines[line] = "\t".join([cells[0], vgg_name, *cells[2:]])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return line + 1


# ---------------------------------------------------------------------------- the meta file
def test_one_vggface_name_on_two_ids_is_refused_naming_both_lines(tiny_root, tmp_path):
    root = raw_copy(tiny_root, tmp_path)
    meta = read_meta(os.path.join(root, "vox1_meta.csv"))
    line = _edit_meta(root, "id00003", meta[1].vgg_id)  # id00002's name
    message = error_line(data_prepare(root))
    assert message.startswith("data.prepare: ") and "vox1_meta.csv" in message
    assert f"lines 3 and {line}" in message and "id00002" in message and "id00003" in message
    assert not os.path.exists(os.path.join(root, "lists"))  # refused before anything is written


def test_a_meta_name_leading_outside_the_data_folders_is_refused(tiny_root, tmp_path):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    outside = tmp_path / "outside_faces" / "x"
    outside.mkdir(parents=True)
    shutil.copy(glob.glob(os.path.join(root, "VGG_ALL_FRONTAL", "*", "*.jpg"))[0], outside / "secret.jpg")
    line = _edit_meta(root, "id00013", "../../outside_faces/x")
    message = error_line(data_prepare(root))
    assert f"vox1_meta.csv, line {line}: VGGFace1_ID '../../outside_faces/x' holds a path separator" in message
    assert not os.path.exists(os.path.join(root, "lmdb", FACE_STORE))


# ---------------------------------------------------------------------------- unusable files
def test_links_out_and_overlong_paths_are_skipped_and_fixed_files_are_added(tiny_root, tmp_path):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    meta = {i.vox_id: i for i in read_meta(os.path.join(root, "vox1_meta.csv"))}
    wav, faces = os.path.join(root, "wav"), os.path.join(root, "VGG_ALL_FRONTAL")
    a_clip = sorted(glob.glob(os.path.join(wav, "id00013", "*", "*.wav")))[0]
    # a path of 520 bytes: over LMDB's key limit
    deep = os.path.join(wav, "id00013", "d" * 200, "e" * 200)
    os.makedirs(deep)
    long_clip = os.path.join(deep, "f" * (520 - len(os.path.relpath(deep, wav)) - 5) + ".wav")
    shutil.copy(a_clip, long_clip)
    assert len(os.path.relpath(long_clip, wav).encode()) == 520
    # a file and an identity folder that are links to outside the configured folders
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(a_clip, outside / "secret.wav")
    linked_clip = os.path.join(os.path.dirname(a_clip), "secret.wav")
    os.symlink(outside / "secret.wav", linked_clip)
    linked_faces = os.path.join(faces, meta["id00015"].vgg_id)
    shutil.move(linked_faces, outside / "faces")
    os.symlink(outside / "faces", linked_faces)
    # a damaged photo, fixed later
    bad_photo = sorted(glob.glob(os.path.join(faces, meta["id00014"].vgg_id, "*.jpg")))[0]
    with open(bad_photo, "rb") as f:
        good_bytes = f.read()
    with open(bad_photo, "wb") as f:
        f.write(b"not a photo")

    out = succeeded(data_prepare(root))
    audio, face = (os.path.join(root, "lmdb", n) for n in (AUDIO_STORE, FACE_STORE))
    with open(os.path.join(audio, "skipped.tsv")) as f:
        audio_skipped = dict(line.rstrip("\n").split("\t", 1) for line in f)
    with open(os.path.join(face, "skipped.tsv")) as f:
        face_skipped = dict(line.rstrip("\n").split("\t", 1) for line in f)
    assert audio_skipped[long_clip] == "its path is 520 bytes, over LMDB's 511-byte key limit"
    assert audio_skipped[linked_clip].startswith(f"a link to {outside / 'secret.wav'}, outside the folder of "
                                                 "config key dataset.audio_data_dir")
    assert face_skipped[bad_photo].startswith("unreadable image")
    with open(os.path.join(root, "lists", "vox1_train.csv")) as f:  # no face left: marked none, as a missing folder
        assert f"id00015,{meta['id00015'].vgg_id},{meta['id00015'].gender},{meta['id00015'].nationality},none" \
            in f.read()
    voice_keys, face_keys = LmdbStore(audio).keys(), LmdbStore(face).keys()
    assert not [k for k in voice_keys if "secret" in k or len(k) > 511]
    assert not [k for k in face_keys if k.startswith(meta["id00015"].vgg_id + "/")]
    bad_key = os.path.relpath(bad_photo, faces)
    assert bad_key not in face_keys
    assert f"audio.lmdb: {len(voice_keys)} files, 2 skipped" in out and f"face.lmdb: {len(face_keys)} files, 1 skipped" in out

    with open(bad_photo, "wb") as f:  # the user fixes the photo and runs data.prepare again
        f.write(good_bytes)
    out = succeeded(data_prepare(root))
    assert bad_key in LmdbStore(face).keys() and len(LmdbStore(face)) == len(face_keys) + 1
    assert f"face.lmdb: {len(face_keys) + 1} files\n" in out
    with open(os.path.join(face, "skipped.tsv")) as f:
        assert bad_photo not in f.read()
    assert LmdbStore(face).read_bytes(bad_key) != b""


def test_an_identity_folder_linked_outside_is_listed_in_skipped_tsv(tiny_root, tmp_path):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    vgg_id = {i.vox_id: i for i in read_meta(os.path.join(root, "vox1_meta.csv"))}["id00015"].vgg_id
    linked = os.path.join(root, "VGG_ALL_FRONTAL", vgg_id)
    shutil.move(linked, tmp_path / "faces")  # the only faces of id00015: it is marked none, never read
    os.symlink(tmp_path / "faces", linked)
    out = succeeded(data_prepare(root))
    face = os.path.join(root, "lmdb", FACE_STORE)
    with open(os.path.join(face, "skipped.tsv")) as f:
        skipped = dict(line.rstrip("\n").split("\t", 1) for line in f)
    assert skipped == {linked: f"a link to {tmp_path / 'faces'}, outside the folder of config key "
                               "dataset.image_data_dir"}
    assert f"face.lmdb: skipped {linked}: a link to" in out
    assert f"face.lmdb: {len(LmdbStore(face))} files\nface.lmdb: 1 left out with their identity, which is marked " \
           f"none (listed in {face}/skipped.tsv)" in out


# ---------------------------------------------------------------------------- damaged stores
def test_a_truncated_store_is_named_by_test_check_and_rebuilt_by_prepare(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    face = os.path.join(root, "lmdb", FACE_STORE)
    original = LmdbStore(face)
    keys = {k: original.read_bytes(k) for k in original.keys()}
    data = os.path.join(face, "data.mdb")
    os.truncate(data, os.path.getsize(data) // 2)
    message = error_line(run_test_py(root, checkpoint, tmp_path / "out"))
    assert message.startswith(f"test.py: LMDB store {face} is damaged (data.mdb holds ") and "truncated" in message
    report = data_prepare(root, check=True)
    assert report.returncode == 1 and f"LMDB store {face} is damaged" in report.stdout
    assert "nothing a run needs is missing" not in report.stdout
    out = succeeded(data_prepare(root))
    assert f"{face} is damaged" in out and "rebuilding it" in out
    rebuilt = LmdbStore(face)
    assert {k: rebuilt.read_bytes(k) for k in rebuilt.keys()} == keys


@pytest.mark.slow
def test_a_truncated_store_stops_train_with_one_line(tiny_root, tmp_path):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    audio = os.path.join(root, "lmdb", AUDIO_STORE)
    os.truncate(os.path.join(audio, "data.mdb"), os.path.getsize(os.path.join(audio, "data.mdb")) // 2)
    process = run(["train.py"], root, f"output_dir={tmp_path}/runs", "training.max_iter=2")
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert f"LMDB store {audio} is damaged" in process.stderr and "truncated" in process.stderr


def test_damaged_pages_are_one_line_naming_the_store(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    face, audio = (os.path.join(root, "lmdb", n) for n in (FACE_STORE, AUDIO_STORE))
    # the face store's tree pages zeroed: reading it fails mid-read
    tree = pages(os.path.join(face, "data.mdb"), P_LEAF) + pages(os.path.join(face, "data.mdb"), P_BRANCH)
    overwrite(os.path.join(face, "data.mdb"), tree, bytes(4096))
    message = error_line(run_test_py(root, checkpoint, tmp_path / "out"))
    assert message.startswith(f"test.py: LMDB store {face} is damaged (") and "data.prepare" in message
    # bytes inside the audio store's values changed: LMDB cannot tell; --check compares with the digest
    values = pages(os.path.join(audio, "data.mdb"), P_OVERFLOW)
    overwrite(os.path.join(audio, "data.mdb"), [values[len(values) // 2] + 1000], b"\x55" * 64)
    report = data_prepare(root, check=True)
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert f"LMDB store {audio} is damaged (its contents differ from the digest recorded when it was built)" \
        in report.stdout
    assert f"LMDB store {face} is damaged" in report.stdout


def test_a_damaged_value_read_by_a_loader_worker_is_one_line_naming_the_store(tiny_root, tmp_path):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    face = os.path.join(root, "lmdb", FACE_STORE)
    data = os.path.join(face, "data.mdb")
    overwrite(data, _jpeg_starts(data), bytes(4))  # every photo's JPEG header: LMDB cannot tell, no photo decodes
    process = run(["train.py"], root, f"output_dir={tmp_path}/runs", "training.max_iter=2", "dataset.num_workers=1",
                  timeout=120)  # before: torch's traceback, then a hang at exit on the worker
    message = error_line(process)
    assert message.startswith(f"error: LMDB store {face} is damaged (the value of '") and \
        "differs from the checksum stored with it" in message
    assert "Original Traceback" not in process.stderr and "worker process" not in process.stderr, process.stderr


def test_changed_bytes_that_still_decode_are_found_at_the_first_read(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    audio = os.path.join(root, "lmdb", AUDIO_STORE)
    data = os.path.join(audio, "data.mdb")
    # inside the clips' samples: any bytes are int16 samples, so only the per-value checksum can tell
    overwrite(data, [offset + 1000 for offset in pages(data, P_OVERFLOW)], b"\x55" * 64)
    for process in (run(["train.py"], root, f"output_dir={tmp_path}/runs", "training.max_iter=2"),
                    run_test_py(root, checkpoint, tmp_path / "out")):
        message = error_line(process)
        assert f"LMDB store {audio} is damaged (the value of '" in message, message
        assert "differs from the checksum stored with it" in message and "data.prepare" in message, message


def test_a_store_of_the_unchecked_form_is_read_and_rebuilt_only_when_its_files_change(tmp_path):
    wav = tmp_path / "raw"
    wav.mkdir()
    items = []
    for n in range(3):
        soundfile.write(wav / f"{n}.wav", np.full(1600, n, np.int16), 16000, subtype="PCM_16")
        items.append((f"id/{n}.wav", str(wav / f"{n}.wav")))
    store = str(tmp_path / "audio.lmdb")
    encode = partial(encode_audio, sample_rate=16000, max_samples=16000)
    build_store(store, items[:2], encode, {"sample_rate": 16000})
    # the form written before values carried their checksum: the bare values, no `value_checksum`
    with lmdb.open(store, subdir=True) as env, env.begin(write=True) as txn:
        for key, value in list(txn.cursor()):
            txn.put(key, bytes(value[4:]))
    info = read_info(store)
    del info["value_checksum"]
    (tmp_path / "audio.lmdb" / "store.json").write_text(json.dumps(info))
    old = LmdbStore(store)
    assert not old.checksummed and old.read_audio("id/1.wav").tolist() == [1] * 1600
    build_store(store, items[:2], encode, {"sample_rate": 16000})  # the same files: kept as it is
    assert not LmdbStore(store).checksummed
    build_store(store, items, encode, {"sample_rate": 16000})  # another file: rebuilt whole, checksums and all
    new = LmdbStore(store)
    assert new.checksummed and [new.read_audio(k).tolist()[0] for k, _ in items] == [0, 1, 2]


def _jpeg_starts(path: str) -> list[int]:
    with open(path, "rb") as f:
        data = f.read()
    starts, at = [], data.find(b"\xff\xd8\xff")
    while at >= 0:
        starts.append(at)
        at = data.find(b"\xff\xd8\xff", at + 1)
    return starts


# ---------------------------------------------------------------------------- stores of another config
def test_a_store_of_another_config_is_refused_by_test(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    message = error_line(run_test_py(root, checkpoint, tmp_path / "out", "dataset.sample_rate=8000"))
    audio = os.path.join(root, "lmdb", AUDIO_STORE)
    assert message.startswith(f"test.py: LMDB store {audio} was built for another config: sample_rate=16000 "
                              "where the config gives 8000 (dataset.sample_rate)")


@pytest.mark.slow
def test_a_store_of_another_config_or_corpus_is_not_overwritten_by_prepare(tiny_root, tmp_path):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    face = os.path.join(root, "lmdb", FACE_STORE)
    before = os.path.getmtime(os.path.join(face, "data.mdb"))
    message = error_line(data_prepare(root, "dataset.store_image_size=null"))
    assert f"LMDB store {face} was built for another config: store_image_size=112 where the config gives None " \
           "(dataset.store_image_size)" in message
    other = raw_copy(tiny_root, tmp_path / "other")  # another corpus, still there
    message = error_line(data_prepare(other, f"dataset.lmdb_dir={root}/lmdb"))
    assert message == (f"data.prepare: LMDB store {root}/lmdb/{AUDIO_STORE} was built from {root}/wav, not from "
                       f"{other}/wav (config key dataset.audio_data_dir): set dataset.lmdb_dir to another folder, "
                       "or delete the store to rebuild it")
    assert os.path.getmtime(os.path.join(face, "data.mdb")) == before


# ---------------------------------------------------------------------------- lists
def test_lists_edited_after_preparation_are_named_by_test(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    edited = os.path.join(root, "lists", "verify_v2f_test.txt")
    with open(edited) as f:
        lines = f.read().splitlines()
    with open(edited, "w") as f:
        f.write("\n".join(lines[:-3]) + "\n")  # the last query dropped
    out = succeeded(run_test_py(root, checkpoint, tmp_path / "out"))
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {edited} differs from the checksum data.prepare recorded in "
                        f"{root}/lists/lists.sha256 (edited since?); run data.prepare to check it against the "
                        "stores and record it"]


def test_a_list_that_is_not_utf8_names_its_line(tiny_root, tmp_path, checkpoint):
    root = prepared_copy(tiny_root, tmp_path / "corpus")
    path = os.path.join(root, "lists", "match_v2f_2_test.txt")
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines[2] = lines[2].replace(b"/", b"/\xe9", 1)  # Latin-1 é
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    message = error_line(run_test_py(root, checkpoint, tmp_path / "out"))
    assert message == f"test.py: {path}, line 3: not UTF-8 text (byte 0xe9); lists are UTF-8"


# ---------------------------------------------------------------------------- disks, kills, two at once
@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (skipped where mounting is not permitted), unmounted afterwards."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield str(folder)
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_the_build_resumes(tiny_root, tmp_path, tmpfs, clean):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    message = error_line(data_prepare(root, f"dataset.lmdb_dir={tmpfs}"))
    assert message.startswith(f"data.prepare: could not write {tmpfs}/{AUDIO_STORE}.partial: No space left on "
                              "device")
    subprocess.run(["mount", "-o", "remount,size=64m", tmpfs], check=True)
    succeeded(data_prepare(root, f"dataset.lmdb_dir={tmpfs}"))
    os.symlink(tmpfs, os.path.join(root, "lmdb"))
    assert contents(root) == contents(clean)


def _kill_when(root: str, ready) -> int:
    """Start data.prepare, SIGKILL it as soon as ready() holds; its return code (-9 when killed)."""
    process = subprocess.Popen([sys.executable, "-m", "data.prepare", "--cfg", SYNTHETIC, "--opts", *tiny_opts(root)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait(timeout=60)


KILL_POINTS = {
    "audio": lambda root: os.path.exists(os.path.join(root, "lmdb", AUDIO_STORE + ".partial", "data.mdb")),
    "face": lambda root: os.path.exists(os.path.join(root, "lmdb", FACE_STORE + ".partial", "data.mdb")),
    "lists": lambda root: bool(glob.glob(os.path.join(root, "lists", "*.txt"))),
}


@pytest.mark.parametrize("points", [("audio",), pytest.param(("audio", "face", "lists"), marks=pytest.mark.slow)])
def test_sigkill_then_rerun_gives_the_stores_of_a_clean_build(tiny_root, tmp_path, clean, points):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    killed = [_kill_when(root, lambda: KILL_POINTS[p](root)) for p in points]
    assert killed == [-signal.SIGKILL] * len(points)  # each stopped where it was meant to
    out = succeeded(data_prepare(root))
    assert "taking over the lock" in out  # the killed run's lock
    assert contents(root) == contents(clean)


def test_a_second_prepare_is_refused_naming_the_lock_and_pid(tiny_root, tmp_path):
    root = raw_copy(tiny_root, tmp_path / "corpus")
    lmdb = os.path.join(root, "lmdb")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom data.prepare import prepare_lock\n"
                               f"with prepare_lock({lmdb!r}):\n    print('held', flush=True)\n    time.sleep(300)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        message = error_line(data_prepare(root))
        assert message == (f"data.prepare: another data.prepare (pid {holder.pid}) is preparing this data: lock "
                           f"{lmdb}/prepare.lock; wait for it to finish")
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(os.path.join(lmdb, AUDIO_STORE))
