"""The synthetic corpus: layout, formats, meta file, determinism and the cross-modal link."""
import hashlib
import os
import re

import cv2
import numpy as np
import pytest
import soundfile

from config import load_config
from data import synthetic
from data.splits import read_meta, split_of_ranges
from helpers import TINY_IDENTITIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_voice_layout_and_format(tiny_root):
    clips = _files(os.path.join(tiny_root, "wav"))
    assert clips and all(re.fullmatch(r"id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav", f) for f in clips)
    assert {f.split("/")[0] for f in clips} == {f"id{i:05d}" for i in range(1, TINY_IDENTITIES + 1)}
    for f in clips[:10]:
        info = soundfile.info(os.path.join(tiny_root, "wav", f))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 <= info.duration <= 1.6
    videos = {}
    for f in clips:
        videos.setdefault(f.split("/")[0], set()).add(f.split("/")[1])
    assert min(len(v) for v in videos.values()) >= 2  # several videos per identity


def test_face_layout_and_format(tiny_root):
    faces = _files(os.path.join(tiny_root, "VGG_ALL_FRONTAL"))
    assert faces and all(re.fullmatch(r"[A-Z][a-z]+_[A-Z][a-z]+(_\d+)?/\d{8}\.jpg", f) for f in faces)
    sizes = set()
    for f in faces:
        path = os.path.join(tiny_root, "VGG_ALL_FRONTAL", f)
        with open(path, "rb") as fh:
            assert fh.read(2) == b"\xff\xd8"  # JPEG
        h, w = cv2.imread(path).shape[:2]
        assert 130 <= w <= 220 and h != w
        sizes.add((h, w))
    assert len(sizes) > len(faces) // 2  # sizes vary


def test_meta_file_format(tiny_root):
    with open(os.path.join(tiny_root, "vox1_meta.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
    meta = read_meta(os.path.join(tiny_root, "vox1_meta.csv"))
    assert [i.vox_id for i in meta] == [f"id{n:05d}" for n in range(1, TINY_IDENTITIES + 1)]
    assert {i.gender for i in meta} == {"m", "f"} and {i.set for i in meta} <= {"dev", "test"}
    assert all(len(line.split("\t")) == 5 for line in lines)
    face_dirs = set(os.listdir(os.path.join(tiny_root, "VGG_ALL_FRONTAL")))
    with_faces = {i.vgg_id for i in meta
                  if i.vgg_id in face_dirs and os.listdir(os.path.join(tiny_root, "VGG_ALL_FRONTAL", i.vgg_id))}
    assert meta[0].vgg_id not in face_dirs  # the faceless identity of a 16-identity corpus
    assert with_faces == {i.vgg_id for i in meta[1:]}


def test_contact_sheet(tiny_root):
    sheet = cv2.imread(os.path.join(tiny_root, "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 2 * 120 and sheet.shape[1] > 600


def _hashes(root: str) -> dict[str, str]:
    return {f: hashlib.sha1(open(os.path.join(root, f), "rb").read()).hexdigest() for f in _files(root)}


def test_deterministic_for_a_seed(tmp_path):
    small = dict(clips=(1, 2), images=(1, 2), seconds=(0.5, 0.7), workers=1)
    synthetic.generate_corpus(str(tmp_path / "a"), 3, seed=5, **small)
    synthetic.generate_corpus(str(tmp_path / "b"), 3, seed=5, **small)
    synthetic.generate_corpus(str(tmp_path / "c"), 3, seed=6, **small)
    a, b, c = (_hashes(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert set(a.values()).isdisjoint(c.values())


def test_default_corpus_has_faceless_identities_in_every_split():
    cfg = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
    faceless = synthetic.people._faceless(cfg.dataset.synthetic.identities)
    meta = [synthetic.sample_persona(i, cfg.dataset.synthetic.identities, 0) for i in sorted(faceless)]
    splits = split_of_ranges(meta, cfg.dataset.split_ranges)
    assert sorted(splits.values()) == ["test", "test", "train", "train", "val", "val"]
    assert sorted(faceless.values()) == [False] * 3 + [True] * 3  # missing and empty folders


def _f0(clip: np.ndarray) -> float:
    """Median autocorrelation pitch (Hz) over loud 40 ms frames."""
    frames = np.lib.stride_tricks.sliding_window_view(clip.astype(np.float64), 640)[::320]
    frames = frames[np.abs(frames).mean(1) > 0.5 * np.abs(frames).mean(1).max()]
    spectrum = np.fft.rfft(frames - frames.mean(1, keepdims=True), 2048)
    ac = np.fft.irfft(np.abs(spectrum) ** 2)[:, :400]
    lags = 40 + ac[:, 40:400].argmax(1)  # 40-400 Hz
    return float(np.median(16000 / lags))


def test_shared_attributes_drive_both_modalities():
    people = [synthetic.sample_persona(i, 2000, 0) for i in range(2000)]
    male = np.array([p.gender == "m" for p in people])
    body = np.array([p.body for p in people])
    f0 = np.array([p.f0 for p in people])
    vtl = np.array([p.vtl for p in people])
    width = np.array([p.face_width for p in people])
    assert 0.5 < male.mean() < 0.6
    assert np.median(f0[male]) < 0.7 * np.median(f0[~male])
    assert vtl[male].mean() > vtl[~male].mean() + 1.5 and width[male].mean() > width[~male].mean()
    for group in (male, ~male):  # body size shows in both modalities within a gender
        assert np.corrcoef(body[group], vtl[group])[0, 1] > 0.6
        assert np.corrcoef(body[group], width[group])[0, 1] > 0.6
    nation_tone = np.array([synthetic.people.NATIONALITIES[p.nation][2] for p in people])
    nation_f1 = np.array([synthetic.people.NATIONALITIES[p.nation][3] for p in people])
    brightness = np.array([p.skin.mean() for p in people])
    assert np.corrcoef(nation_tone, brightness)[0, 1] < -0.8
    assert np.corrcoef(nation_f1, [p.vowel_colour[0] for p in people])[0, 1] > 0.8
    age = np.array([p.age for p in people])
    assert np.corrcoef(age, [p.jitter for p in people])[0, 1] > 0.9
    assert np.corrcoef(age, [p.hair.mean() for p in people])[0, 1] > 0.3  # greying


def test_pitch_of_the_signal_follows_the_persona():
    rng = np.random.default_rng(0)
    low = next(p for p in (synthetic.sample_persona(i, 100, 0) for i in range(100)) if p.f0 < 110)
    high = next(p for p in (synthetic.sample_persona(i, 100, 0) for i in range(100)) if p.f0 > 220)
    channel = synthetic.sample_channel(rng)
    channel["snr_db"] = 40.0
    low_f0 = _f0(synthetic.synthesize_clip(low, channel, 3.0, rng))
    high_f0 = _f0(synthetic.synthesize_clip(high, channel, 3.0, rng))
    assert abs(np.log(low_f0 / low.f0)) < 0.25 and abs(np.log(high_f0 / high.f0)) < 0.25


# sha256 over the relative names and bytes of every file of this tiny corpus, computed with the code before
# `off_archetype_fraction` existed: the default corpus must stay byte for byte what it was.
DEFAULT_CORPUS_DIGEST = "0e95775c84565c4d84dfce8dcf0b2ee42cedcac49e76f773313b092ac5af062a"


def _digest(root: str) -> str:
    digest = hashlib.sha256()
    for name in _files(root):
        digest.update(name.encode())
        with open(os.path.join(root, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def test_default_corpus_is_unchanged_by_the_off_archetype_knob(tmp_path):
    small = dict(clips=(1, 1), images=(1, 1), seconds=(0.3, 0.4), workers=1)
    synthetic.generate_corpus(str(tmp_path / "default"), 12, seed=5, **small)
    synthetic.generate_corpus(str(tmp_path / "zero"), 12, seed=5, off_archetype_fraction=0.0, **small)
    assert _digest(str(tmp_path / "default")) == _digest(str(tmp_path / "zero")) == DEFAULT_CORPUS_DIGEST
    assert not os.path.exists(tmp_path / "default" / synthetic.corpus.OFF_ARCHETYPE_FILE)
    assert synthetic.corpus.off_archetype_ids(str(tmp_path / "default")) == set()


def test_off_archetype_identities_are_recorded_and_only_their_faces_change(tmp_path):
    small = dict(clips=(1, 1), images=(1, 1), seconds=(0.3, 0.4), workers=1)
    default, off = str(tmp_path / "default"), str(tmp_path / "off")
    synthetic.generate_corpus(default, 12, seed=5, **small)
    synthetic.generate_corpus(off, 12, seed=5, off_archetype_fraction=0.5, **small)
    record = synthetic.corpus.off_archetype_record(off)
    faceless = synthetic.people._faceless(12)  # 1 of 12: the fraction is of the 11 with faces
    assert record["fraction"] == 0.5 and record["seed"] == 5 and len(record["identities"]) == round(0.5 * 11)
    chosen = synthetic.corpus.off_archetype_ids(off)
    assert not {f"id{i + 1:05d}" for i in faceless} & chosen
    before, after = _hashes(default), _hashes(off)
    for name, digest in before.items():
        identity = name.split(os.sep)[1] if name.startswith(("wav", "VGG")) else None
        face_of_chosen = name.startswith("VGG") and any(
            synthetic.sample_persona(int(v[2:]) - 1, 12, 5).name == identity for v in chosen)
        assert (after[name] != digest) == face_of_chosen or name == "contact_sheet.png", name
    assert set(after) - set(before) == {synthetic.corpus.OFF_ARCHETYPE_FILE}
    assert read_meta(os.path.join(default, "vox1_meta.csv")) == read_meta(os.path.join(off, "vox1_meta.csv"))


def test_off_archetype_faces_do_not_follow_their_voices():
    """Body size shows in the voice (vocal tract) and the face (width) of ordinary identities; an off-archetype
    face is drawn apart: no such link, same gender, same voice."""
    people = [synthetic.sample_persona(i, 2000, 0) for i in range(2000)]
    off = [synthetic.sample_persona(i, 2000, 0, off_archetype=True) for i in range(2000)]
    assert all(p.gender == q.gender and p.f0 == q.f0 and p.vtl == q.vtl and p.nation == q.nation and q.off_archetype
               for p, q in zip(people, off))
    male = np.array([p.gender == "m" for p in people])
    vtl = np.array([p.vtl for p in people])
    for group in (male, ~male):
        linked = np.corrcoef(vtl[group], [p.face_width for p, g in zip(people, group) if g])[0, 1]
        unlinked = np.corrcoef(vtl[group], [q.face_width for q, g in zip(off, group) if g])[0, 1]
        assert linked > 0.5 and abs(unlinked) < 0.1
    assert np.mean([q.face_width for q, m in zip(off, male) if m]) > np.mean([q.face_width for q, m in zip(off, male)
                                                                               if not m])


def test_off_archetype_share_is_exact_and_nested():
    """The chosen identities are the first by their own stream: a larger share keeps the smaller one's."""
    small, large = (synthetic.people.off_archetype_indices(300, 0, f) for f in (0.1, 0.3))
    assert len(small) == round(0.1 * 294) and len(large) == round(0.3 * 294) and small < large
    assert synthetic.people.off_archetype_indices(300, 0, 0.0) == set()


def test_off_archetype_fraction_in_the_config(tmp_path):
    from data.prepare import check_off_archetype
    from utils.errors import ConfigError, UserError

    cfg = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
    assert cfg.dataset.synthetic.off_archetype_fraction == 0.0
    with pytest.raises(ConfigError, match="dataset.synthetic.off_archetype_fraction.*between 0 and 1"):
        load_config(os.path.join(ROOT, "config", "synthetic.yaml"), ["dataset.synthetic.off_archetype_fraction=1.5"])
    check_off_archetype(str(tmp_path), 0.0)  # a corpus without the record has none
    with pytest.raises(UserError, match=f"0.3, but the corpus in {tmp_path} was generated with 0.0"):
        check_off_archetype(str(tmp_path), 0.3)
