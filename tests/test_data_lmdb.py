"""LMDB stores: bit-exact round trip, every bad-input case, resumable and atomic builds."""
import os
from functools import partial

import cv2
import librosa
import numpy as np
import pytest
import soundfile

from data.lmdb_store import (AUDIO_STORE, NOTES_FILE, BadInput, LmdbStore, MissingKeyError, build_store,
                             decode_audio, encode_audio, encode_image)
from data.prepare import make_stores
from data.scan import IdentityScanner
from data.splits import read_split, write_split
from utils.errors import UserError
from helpers import tiny_config

RATE, MAX = 16000, 160000
AUDIO_PARAMS = {"kind": "audio", "sample_rate": RATE, "max_samples": MAX}


def _wav(path, samples, rate=RATE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Good and bad raw files: {name: path}, and the int16 samples of the good clips."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    clips = {"short": rng.integers(-30000, 30000, 21000, dtype=np.int16),
             "long": rng.integers(-30000, 30000, 12 * RATE, dtype=np.int16)}
    files = {name: _wav(str(root / f"{name}.wav"), clip) for name, clip in clips.items()}
    stereo = rng.integers(-20000, 20000, (8000, 2), dtype=np.int16)
    files["stereo"] = _wav(str(root / "stereo.wav"), stereo)
    clips["stereo"] = stereo[:, 0]
    clips["8k"] = clips["short"][:8000] // 8  # headroom: resampling overshoots a full-scale signal
    files["8k"] = _wav(str(root / "8k.wav"), clips["8k"], rate=8000)
    files["empty"] = _wav(str(root / "empty.wav"), np.zeros(0, np.int16))
    data = open(files["short"], "rb").read()
    (root / "truncated.wav").write_bytes(data[: len(data) // 2])
    (root / "garbage.wav").write_bytes(b"not a wav file at all" * 10)
    files.update(truncated=str(root / "truncated.wav"), garbage=str(root / "garbage.wav"))
    image = rng.integers(0, 255, (150, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "face.jpg"), image)
    jpeg = open(root / "face.jpg", "rb").read()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "zero.jpg").write_bytes(b"")
    files.update({f"{n}.jpg": str(root / f"{n}.jpg") for n in ("face", "truncated", "garbage", "zero")})
    return files, clips


def test_audio_round_trip_and_bad_inputs(tmp_path, raw):
    files, clips = raw
    names = ["short", "long", "stereo", "8k", "empty", "truncated", "garbage"]
    items = [(f"id1/v/{n}.wav", files[n]) for n in names] + [("id2/v/gone.wav", str(tmp_path / "gone.wav"))]
    encode = partial(encode_audio, sample_rate=RATE, max_samples=MAX)
    report = build_store(str(tmp_path / AUDIO_STORE), items, encode, AUDIO_PARAMS,
                         skipped=[(str(tmp_path / "id3"), "identity folder missing")])
    store = LmdbStore(str(tmp_path / AUDIO_STORE))
    assert sorted(store.keys()) == sorted(f"id1/v/{n}.wav" for n in ["short", "long", "stereo", "8k"])
    assert report.stored == 4
    for name in ("short", "long", "stereo"):
        clip = store.read_audio(f"id1/v/{name}.wav")
        assert clip.dtype == np.int16 and np.array_equal(clip, clips[name][:MAX])  # bit-exact, at most 10 s
    resampled = store.read_audio("id1/v/8k.wav")
    expected = librosa.resample(clips["8k"].astype(np.float32), orig_sr=8000, target_sr=RATE)
    assert len(resampled) == 16000 and np.abs(resampled - np.round(expected)).max() <= 1
    reasons = dict(report.skipped)
    assert "zero-length" in reasons[files["empty"]]
    assert "truncated" in reasons[files["truncated"]]
    assert "unreadable" in reasons[files["garbage"]]
    assert "cannot read" in reasons[str(tmp_path / "gone.wav")]
    assert reasons[str(tmp_path / "id3")] == "identity folder missing"
    skipped_file = open(tmp_path / AUDIO_STORE / "skipped.tsv").read()
    assert all(path in skipped_file for path in reasons)


@pytest.mark.parametrize("size", [None, 112])
def test_image_store(tmp_path, raw, size):
    files, _ = raw
    items = [(f"A/{n}.jpg", files[f"{n}.jpg"]) for n in ("face", "truncated", "garbage", "zero")]
    report = build_store(str(tmp_path / "face.lmdb"), items, partial(encode_image, size=size),
                         {"kind": "face", "store_image_size": size})
    store = LmdbStore(str(tmp_path / "face.lmdb"))
    assert store.keys() == ["A/face.jpg"] and len(report.skipped) == 3
    assert {r.split(":")[0] for r in dict(report.skipped).values()} == {"unreadable image", "empty image file"}
    image = store.read_image("A/face.jpg")
    if size is None:
        assert store.read_bytes("A/face.jpg") == open(files["face.jpg"], "rb").read()
        assert np.array_equal(image, cv2.imread(files["face.jpg"]))
    else:
        assert image.shape == (112, 112, 3) and image.dtype == np.uint8


def test_missing_key_names_key_and_store(tmp_path, raw):
    files, _ = raw
    path = str(tmp_path / AUDIO_STORE)
    build_store(path, [("a/b.wav", files["short"])], partial(encode_audio, sample_rate=RATE, max_samples=MAX),
                AUDIO_PARAMS)
    with pytest.raises(KeyError) as error:
        LmdbStore(path).read_audio("a/c.wav")
    assert isinstance(error.value, MissingKeyError)
    assert "a/c.wav" in str(error.value) and path in str(error.value)


class _Interrupt:
    """An encoder that counts its calls and is interrupted at call `stop_at`."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at, self.max_samples = 0, stop_at, MAX

    def __call__(self, source):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return encode_audio(source, RATE, self.max_samples)


def test_build_is_resumable_and_atomic(tmp_path, raw):
    files, _ = raw
    items = [(f"id/v/{k:05d}.wav", files["short"]) for k in range(9)]
    path = str(tmp_path / AUDIO_STORE)
    with pytest.raises(KeyboardInterrupt):
        build_store(path, items, _Interrupt(stop_at=6), AUDIO_PARAMS, commit_every=2)
    assert not os.path.exists(path) and os.path.isdir(path + ".partial")
    with pytest.raises(FileNotFoundError, match="partial"):
        LmdbStore(path)
    resumed = _Interrupt()
    report = build_store(path, items, resumed, AUDIO_PARAMS, commit_every=2)
    assert resumed.calls == 5  # 4 committed before the interruption
    assert report.stored == 9 and not os.path.exists(path + ".partial")
    assert sorted(LmdbStore(path).keys()) == [k for k, _ in items]
    again = _Interrupt()
    build_store(path, items, again, AUDIO_PARAMS)
    assert again.calls == 0  # complete and current: nothing to do
    changed = items[1:] + [("id/v/99999.wav", files["long"])]
    build_store(path, changed, again, AUDIO_PARAMS)
    assert again.calls == 1  # updated in place: only the new file is read
    assert sorted(LmdbStore(path).keys()) == sorted(k for k, _ in changed)
    again.max_samples = RATE
    build_store(path, changed, again, dict(AUDIO_PARAMS, max_samples=RATE))
    assert again.calls == 1 + len(changed)  # other parameters: rebuilt
    assert len(LmdbStore(path).read_audio("id/v/99999.wav")) == RATE


def test_missing_identity_folder_is_reported(tmp_path, tiny_root, capsys):
    """A split CSV (e.g. the authors') naming an identity whose folder is not there."""
    cfg = tiny_config(tiny_root, f"dataset.list_dir={tmp_path}/lists", f"dataset.lmdb_dir={tmp_path}/lmdb")
    os.makedirs(cfg.dataset.list_dir)
    from data.splits import Identity, read_meta

    meta = read_meta(cfg.dataset.meta_file)
    ghost = Identity("id99999", "No_Body", "m", "X", "dev")
    for split, ids in (("train", meta[11:] + [ghost]), ("val", meta[1:6]), ("test", meta[6:11])):
        write_split(cfg.dataset.list_dir, split, ids)
    make_stores(cfg, read_split(cfg.dataset.list_dir, "train"), IdentityScanner(cfg))
    out = capsys.readouterr().out
    assert f"skipped {os.path.join(cfg.dataset.audio_data_dir, 'id99999')}: identity folder missing" in out
    assert f"skipped {os.path.join(cfg.dataset.image_data_dir, 'No_Body')}: identity folder missing" in out
    assert "audio.lmdb:" in out and "2 skipped" not in out  # one per store


def test_bad_input_is_a_user_error_naming_the_file(tmp_path, raw):
    files, _ = raw
    assert issubclass(BadInput, UserError) and issubclass(BadInput, ValueError)
    for name in ("garbage", "truncated", "empty"):
        with pytest.raises(BadInput) as error:
            decode_audio(files[name], RATE)
        assert str(error.value).startswith(files[name] + ": ") and "BytesIO" not in str(error.value)
    with pytest.raises(BadInput, match="unreadable audio: Format not recognised") as error:
        decode_audio(files["garbage"], RATE)
    for name in ("garbage", "truncated"):
        with pytest.raises(BadInput) as error:
            encode_image(files[f"{name}.jpg"], None)
        assert str(error.value).startswith(files[f"{name}.jpg"] + ": unreadable image")
        assert "BytesIO" not in str(error.value)


# Every sample width and format soundfile writes -> the int16 samples the stores must hold.
SAMPLES = np.random.default_rng(3).integers(-32768, 32768, 4000).astype(np.int16)
SAMPLES[:2] = (-32768, 32767)  # both ends of the range
LOW_BITS = np.random.default_rng(4).integers(0, 1 << 16, SAMPLES.size).astype(np.int32)
WIDE = (SAMPLES.astype(np.int32) << 16) + LOW_BITS  # the int16 samples are its top 16 bits
FORMATS = {  # (container, subtype): (data written, expected int16)
    ("WAV", "PCM_U8"): (SAMPLES, (SAMPLES >> 8) << 8),  # 8 bits keep the top byte
    ("WAV", "PCM_16"): (SAMPLES, SAMPLES),
    ("WAV", "PCM_24"): (WIDE, SAMPLES),
    ("WAV", "PCM_32"): (WIDE, SAMPLES),
    ("WAV", "FLOAT"): (SAMPLES.astype(np.float32) / 32768, SAMPLES),
    ("WAV", "DOUBLE"): (SAMPLES.astype(np.float64) / 32768, SAMPLES),
    ("FLAC", "PCM_S8"): (SAMPLES, (SAMPLES >> 8) << 8),
    ("FLAC", "PCM_16"): (SAMPLES, SAMPLES),
    ("FLAC", "PCM_24"): (WIDE, SAMPLES),
}


@pytest.mark.parametrize("container, subtype", list(FORMATS))
def test_every_sample_format_is_stored_as_its_int16_samples(tmp_path, container, subtype):
    data, expected = FORMATS[(container, subtype)]
    path = str(tmp_path / f"clip.{container.lower()}")
    soundfile.write(path, data, RATE, format=container, subtype=subtype)
    assert soundfile.info(path).subtype == subtype
    clip, clipped = decode_audio(path, RATE, MAX)
    assert clip.dtype == np.int16 and clipped == 0
    np.testing.assert_array_equal(clip, expected)
    value, note = encode_audio(path, RATE, MAX)
    assert np.array_equal(np.frombuffer(value, "<i2"), expected) and note == ""


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_audio_beyond_full_scale_is_clipped_and_counted(tmp_path, subtype):
    data = np.array([0.5, 1.5, -2.0, 1.0, -1.0, 0.25], np.float64)
    path = str(tmp_path / "loud.wav")
    soundfile.write(path, data, RATE, subtype=subtype)
    clip, clipped = decode_audio(path, RATE)
    np.testing.assert_array_equal(clip, [16384, 32767, -32768, 32767, -32768, 8192])
    assert clipped == 3  # 1.5, -2.0, and 1.0 (= 32768, one step above int16)
    assert encode_audio(path, RATE, MAX)[1] == "clipped 3 of 6 samples to the int16 range"


def test_float_audio_is_resampled_on_the_int16_scale(tmp_path):
    quiet = SAMPLES // 8  # headroom: resampling overshoots a full-scale signal
    path = str(tmp_path / "8k.wav")
    soundfile.write(path, quiet.astype(np.float32) / 32768, 8000, subtype="FLOAT")
    clip, clipped = decode_audio(path, RATE)
    expected = librosa.resample(quiet.astype(np.float32), orig_sr=8000, target_sr=RATE)
    assert clipped == 0 and len(clip) == 2 * len(quiet)
    assert np.abs(clip - np.round(expected)).max() <= 1


def test_clipped_clips_are_stored_and_noted(tmp_path, raw):
    files, clips = raw
    loud = str(tmp_path / "loud.wav")
    soundfile.write(loud, np.array([0.5, 3.0, -3.0, 0.0] * 100), RATE, subtype="FLOAT")
    items = [("id1/v/short.wav", files["short"]), ("id1/v/loud.wav", loud)]
    path = str(tmp_path / AUDIO_STORE)
    report = build_store(path, items, partial(encode_audio, sample_rate=RATE, max_samples=MAX), AUDIO_PARAMS)
    assert report.stored == 2 and not report.skipped
    assert report.notes == [(loud, "clipped 200 of 400 samples to the int16 range")]
    assert open(os.path.join(path, NOTES_FILE)).read() == f"{loud}\tclipped 200 of 400 samples to the int16 range\n"
    assert LmdbStore(path).read_audio("id1/v/loud.wav")[:4].tolist() == [16384, 32767, -32768, 0]
    again = build_store(path, items, partial(encode_audio, sample_rate=RATE, max_samples=MAX), AUDIO_PARAMS)
    assert again.notes == report.notes  # a complete store reports its notes without re-reading the files
