"""LMDB stores of clips and faces, keyed by the relative paths the lists use.

One store per modality: `<lmdb_dir>/audio.lmdb` holds int16 PCM (little-endian, 16 kHz mono, at
most the 10 s the method reads) and `<lmdb_dir>/face.lmdb` JPEG bytes (optionally pre-resized).
The builder writes into `<store>.partial`, resumes from it after an interruption, and renames it
to `<store>` only when every file has been stored or skipped: a store that exists is complete.
Bad raw files never stop a build; each is skipped and reported with its reason. store.json records
the build's settings, its source folder, the entry count and a digest of the contents: a reader refuses a
store shorter than its pages (reading past the end would kill it with SIGBUS) or holding another count,
damaged pages met while reading are a StoreError naming the store, and `verify_store` checks every value.
Each value starts with the CRC-32 of the rest, checked at every read: bytes changed on disk after the build
are a StoreError naming the store and key even where they would still decode (stores built before the checksum,
without `value_checksum` in store.json, are read unchecked).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool
from typing import Callable, Iterable, Iterator

import cv2
import lmdb
import numpy as np
import soundfile
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils.errors import UserError
from utils.files import WriteError, atomic_write

AUDIO_STORE = "audio.lmdb"
FACE_STORE = "face.lmdb"
INFO_FILE = "store.json"  # build parameters and counts, next to data.mdb
SKIPPED_FILE = "skipped.tsv"  # `source path<TAB>reason` per skipped file
NOTES_FILE = "notes.tsv"  # `source path<TAB>note` per stored file with something to report (clipped samples)
MAP_SIZE = 1 << 40  # address space only: the file grows with the data
FULL_DISK_MARGIN = 16 << 20  # free bytes under which a failed write is put down to a full disk
MAX_KEY_BYTES = 511  # LMDB's key size limit (lmdb.Environment.max_key_size() of the default build)
JPEG_QUALITY = 95  # when faces are re-encoded after resizing
VALUE_CHECKSUM = "crc32"  # store.json's `value_checksum`: each value is CRC-32 (4 bytes, little-endian) + payload
CHECKSUM_BYTES = 4
# Integer PCM reads as int16 exactly (its top 16 bits). Everything else (float WAV, lossy codecs) reads as
# float in [-1, 1], which libsndfile would truncate to 0 as int16: it is scaled by 32768 instead.
INTEGER_PCM = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")
INT16_SCALE = 32768.0


class MissingKeyError(UserError, KeyError):
    """A key is not in a store (or a list names a file the store does not have)."""

    def __str__(self) -> str:
        return str(self.args[0])


class BadInput(UserError, ValueError):
    """A raw file that cannot be used: its message names the file and says why (`reason` alone, for skipped.tsv)."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class StoreError(UserError, ValueError):
    """A store that cannot be read as it was built (truncated, damaged pages) or was built for another config."""


def damaged(path: str, why: str) -> StoreError:
    # data.prepare rebuilds a store whose size or count is off by itself, but a damaged value or page is found
    # only when read (or by --check, reading everything): deleting the store makes the rebuild certain.
    return StoreError(f"LMDB store {path} is damaged ({why}); delete it and run `python -m data.prepare --cfg CFG` "
                      f"to rebuild it")


def environment_damage(env: lmdb.Environment, path: str) -> str | None:
    """Why an open environment cannot be read safely, or None; reads only its meta pages.

    A data.mdb shorter than its last page would kill the reading process with SIGBUS on first access.
    """
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if size < needed:
        return f"data.mdb holds {size} bytes, its pages need {needed}: truncated"
    info = read_info(path)
    if "stored" in info and env.stat()["entries"] != info["stored"]:
        return f"it holds {env.stat()['entries']} entries, {INFO_FILE} says {info['stored']}"
    return None


def store_damage(path: str) -> str | None:
    """Why the store (or partial build) at `path` cannot be read or resumed safely, or None (cheap)."""
    _release(path)  # LMDB refuses a second environment of a file in one process; readers reopen lazily
    try:
        env = lmdb.open(path, readonly=True, lock=False)
    except lmdb.Error as e:
        return f"not a readable LMDB environment: {e}"
    try:
        return environment_damage(env, path)
    finally:
        env.close()


def content_digest(env: lmdb.Environment) -> str:
    """sha256 over every (key, value) in key order: equal for equal contents, whatever the page layout."""
    digest = hashlib.sha256()
    with env.begin(buffers=True) as txn:
        for key, value in txn.cursor():
            digest.update(len(key).to_bytes(4, "little") + bytes(key) + len(value).to_bytes(8, "little"))
            digest.update(value)
    return digest.hexdigest()


def verify_store(path: str) -> str | None:
    """Why a built store is damaged, or None: the cheap checks, then every value against the digest in store.json
    (reads the whole store; --check)."""
    why = store_damage(path)
    if why:
        return why
    recorded = read_info(path).get("digest")
    if recorded is None:
        return None  # built before digests were recorded: the cheap checks are all there is
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        actual = content_digest(env)
    except lmdb.Error as e:
        return str(e)
    finally:
        env.close()
    return None if actual == recorded else "its contents differ from the digest recorded when it was built"


_ENVIRONMENTS: dict[str, tuple[int, int, lmdb.Environment]] = {}  # real path -> (pid, inode, env)


def _environment(path: str) -> lmdb.Environment:
    """The read-only environment of a store in this process (LMDB allows one per file and process)."""
    real = os.path.realpath(path)
    inode = os.stat(os.path.join(real, "data.mdb")).st_ino
    pid, known_inode, env = _ENVIRONMENTS.get(real, (None, None, None))
    if env is not None and (pid, known_inode) == (os.getpid(), inode):
        return env
    if env is not None:
        env.close()  # a forked worker's copy of its parent's handle, or a store rebuilt since
    # lock=False: a built store never changes, so readers need no lock table. Readahead stays
    # on: every read takes a whole value (a clip is up to 320 KB), front to back.
    try:
        env = lmdb.open(real, readonly=True, lock=False, readahead=True, meminit=False)
    except lmdb.Error as e:
        raise damaged(path, f"not a readable LMDB environment: {e}") from None
    why = environment_damage(env, real)
    if why:
        env.close()
        raise damaged(path, why)
    _ENVIRONMENTS[real] = (os.getpid(), inode, env)
    return env


def _release(path: str) -> None:
    """Close this process' reader of a store that is about to be rebuilt."""
    entry = _ENVIRONMENTS.pop(os.path.realpath(path), None)
    if entry is not None:
        entry[2].close()


class LmdbStore:
    """Read-only access to a built store; the environment opens lazily in each process."""

    def __init__(self, path: str):
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            hint = " (an interrupted build is in .partial)" if os.path.isdir(path + ".partial") else ""
            raise FileNotFoundError(f"LMDB store {path} not found{hint}; build it with "
                                    f"`python -m data.prepare --cfg CFG`")
        self.path = path
        self.checksummed = read_info(path).get("value_checksum") == VALUE_CHECKSUM
        self._env, self._pid = None, None

    def _env_txn(self, buffers: bool = False) -> lmdb.Transaction:
        if self._env is None or self._pid != os.getpid():  # first use in this process
            self._env, self._pid = _environment(self.path), os.getpid()
        try:
            return self._env.begin(buffers=buffers)
        except lmdb.Error:  # closed: the store has been rebuilt since
            self._env = _environment(self.path)
            return self._env.begin(buffers=buffers)

    @contextlib.contextmanager
    def _reading(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        """A read transaction; an LMDB error (a damaged page) becomes a StoreError naming the store."""
        try:
            with self._env_txn(buffers) as txn:
                yield txn
        except lmdb.Error as e:
            raise damaged(self.path, str(e)) from None

    def __getstate__(self) -> dict:
        return {"path": self.path, "checksummed": self.checksummed, "_env": None, "_pid": None}

    def keys(self) -> list[str]:
        with self._reading() as txn:
            return [k.decode() for k in txn.cursor().iternext(keys=True, values=False)]

    def __len__(self) -> int:
        with self._reading() as txn:
            return txn.stat()["entries"]

    def __contains__(self, key: str) -> bool:
        raw = key.encode()
        if len(raw) > MAX_KEY_BYTES:
            return False
        with self._reading() as txn:
            return txn.get(raw) is not None

    def _read(self, key: str, convert: Callable[[memoryview], object]) -> object:
        """convert(value) while the transaction is open: the value is a view into the map, no copy."""
        raw = key.encode()
        with self._reading(buffers=True) as txn:
            value = txn.get(raw) if len(raw) <= MAX_KEY_BYTES else None
            if value is None:
                raise MissingKeyError(f"key '{key}' is not in the store {self.path}")
            if self.checksummed:
                value = payload(value)
                if value is None:
                    raise damaged(self.path, f"the value of '{key}' differs from the checksum stored with it")
            return convert(value)

    def read_bytes(self, key: str) -> bytes:
        return self._read(key, bytes)

    def read_audio(self, key: str) -> np.ndarray:
        """int16 samples (T,) of a clip."""
        clip = self._read(key, lambda v: None if len(v) % 2 else np.frombuffer(v, "<i2").astype(np.int16))
        if clip is None:
            raise damaged(self.path, f"the clip '{key}' is not int16 samples (odd byte count)")
        return clip

    def read_image(self, key: str) -> np.ndarray:
        """uint8 BGR image (H, W, 3)."""
        image = self._read(key, image_of_bytes)
        if image is None:
            raise damaged(self.path, f"the image '{key}' does not decode")
        return image


def with_checksum(value: bytes) -> bytes:
    """A value as the store holds it: its CRC-32, then the value."""
    return zlib.crc32(value).to_bytes(CHECKSUM_BYTES, "little") + value


def payload(stored: bytes | memoryview) -> bytes | memoryview | None:
    """The value inside `with_checksum`'s bytes, or None when they no longer match their checksum."""
    body = stored[CHECKSUM_BYTES:]
    if len(stored) < CHECKSUM_BYTES or zlib.crc32(body) != int.from_bytes(stored[:CHECKSUM_BYTES], "little"):
        return None
    return body


def image_of_bytes(value: bytes | memoryview) -> np.ndarray | None:
    """Stored image bytes -> uint8 BGR (H, W, 3) upright by its EXIF orientation; None if they do not decode."""
    return cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)


# ---------------------------------------------------------------------------
# Encoders: raw file -> (stored bytes, note), or BadInput
# ---------------------------------------------------------------------------
def _wav_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file declares more sample bytes than it holds."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"data":
            return size not in (0, 0xFFFFFFFF) and pos + 8 + size > len(data)  # 0/-1: streamed, size unknown
        pos += 8 + size + (size & 1)
    return False


def decode_audio(path: str, sample_rate: int, max_samples: int | None = None) -> tuple[np.ndarray, int]:
    """int16 samples of channel 0 at `sample_rate` (the first `max_samples`), and how many were clipped.

    Integer PCM at `sample_rate` is copied bit-exactly; float data is scaled to the int16 range and
    resampled data rounded, and samples beyond that range are clipped and counted.
    """
    with open(path, "rb") as f:
        data = f.read()
    if _wav_truncated(data):
        raise BadInput(path, "truncated WAV (the data chunk is shorter than its header says)")
    buffer = io.BytesIO(data)
    try:
        with soundfile.SoundFile(buffer) as sound:
            integer = sound.subtype in INTEGER_PCM
            samples = sound.read(dtype="int16" if integer else "float64", always_2d=True)
            rate = sound.samplerate
    except Exception as e:  # libsndfile says why; its full message would name the buffer, not the file
        why = getattr(e, "error_string", "") or str(e).replace(repr(buffer), path)
        raise BadInput(path, f"unreadable audio: {why}") from None
    if samples.shape[0] == 0:
        raise BadInput(path, "zero-length clip")
    return store_clip(path, samples[:, 0], integer, rate, sample_rate, max_samples)  # the release takes channel 0


def store_clip(path: str, clip: np.ndarray, integer: bool, rate: int, sample_rate: int,
               max_samples: int | None = None) -> tuple[np.ndarray, int]:
    """decode_audio's int16 clip of one channel's samples (int16, or floats in [-1, 1]) at `rate`, and how many
    were clipped; `path` names the source in a BadInput."""
    if integer and rate == sample_rate:
        return clip[:max_samples], 0
    scaled = clip.astype(np.float32) if integer else clip * INT16_SCALE
    if not np.isfinite(scaled).all():
        raise BadInput(path, f"{np.count_nonzero(~np.isfinite(scaled))} samples are NaN or infinite")
    if rate != sample_rate:
        import librosa

        scaled = librosa.resample(scaled.astype(np.float32), orig_sr=rate, target_sr=sample_rate)
        if scaled.shape[0] == 0:
            raise BadInput(path, "zero-length clip after resampling")
    rounded = np.round(scaled[:max_samples])
    clipped = int(np.count_nonzero((rounded < -32768) | (rounded > 32767)))
    return np.clip(rounded, -32768, 32767).astype(np.int16), clipped


def encode_audio(path: str, sample_rate: int, max_samples: int) -> tuple[bytes, str]:
    """The decoded clip (see decode_audio) as int16 little-endian bytes, and a note when samples were clipped."""
    clip, clipped = decode_audio(path, sample_rate, max_samples)
    note = f"clipped {clipped} of {len(clip)} samples to the int16 range" if clipped else ""
    return clip.astype("<i2").tobytes(), note


def load_image_file(path: str) -> tuple[bytes, np.ndarray]:
    """A photo's bytes and its decoded BGR image; BadInput when it is empty, truncated or undecodable."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise BadInput(path, "empty image file")
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as probe:
            probe.load()  # raises on a truncated file, which a lenient decoder would pad silently
    except UnidentifiedImageError:
        raise BadInput(path, "unreadable image: not an image format Pillow knows") from None
    except Exception as e:
        raise BadInput(path, f"unreadable image: {str(e).replace(repr(buffer), path)}") from None
    image = image_of_bytes(data)
    if image is None:
        raise BadInput(path, "unreadable image: OpenCV cannot decode it")
    return data, image


def resized_jpeg(image: np.ndarray, size: int) -> bytes:
    """A BGR image resized (bilinear) to size x size, as the JPEG a store with `store_image_size` holds."""
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def encode_image(path: str, size: int | None) -> tuple[bytes, str]:
    """The JPEG bytes as they are, or re-encoded after a bilinear resize to size x size (no note)."""
    data, image = load_image_file(path)
    return (data if size is None else resized_jpeg(image, size)), ""


Encoder = Callable[[str], tuple[object, str]]  # source file -> (value, note or ''); raises BadInput


def encode_or_reason(encode: Encoder, item: tuple[str, str]) -> tuple[str, object | None, str]:
    """(key, value, note) of a usable file, or (key, None, why it is unusable): a bad file never raises."""
    key, source = item
    try:
        return key, *encode(source)
    except BadInput as e:
        return key, None, e.reason
    except OSError as e:
        return key, None, f"cannot read: {e.strerror or e}"
    except Exception as e:  # any other failure of a decoder is still one bad file, not a failed build
        return key, None, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
@dataclass
class BuildReport:
    path: str
    stored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path or folder, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (source path of a stored file, note)


def _read_tsv(path: str) -> list[tuple[str, str]]:
    """The `source<TAB>text` rows of skipped.tsv or notes.tsv."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line]


def _fingerprint(items: list[tuple[str, str]]) -> str:
    return hashlib.sha1("\n".join(sorted(k for k, _ in items)).encode()).hexdigest()


def read_info(path: str) -> dict:
    try:
        with open(os.path.join(path, INFO_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def store_is_current(path: str, params: dict) -> bool:
    """A complete store exists at `path` and was built with `params` (cheap: reads store.json)."""
    return read_info(path).get("params") == params


# What each build parameter of data/prepare.py is set by, for the messages.
SETTINGS = {"kind": "the store's modality", "sample_rate": "dataset.sample_rate",
            "max_samples": "dataset.clip_seconds x dataset.sample_rate", "store_image_size": "dataset.store_image_size"}


def settings_mismatch(path: str, params: dict) -> StoreError | None:
    """A StoreError naming each setting the store at `path` was built with other than `params`, or None."""
    built = read_info(path).get("params")
    if built is None:
        return StoreError(f"LMDB store {path} has no readable {INFO_FILE}: it was not built by data.prepare; "
                          f"delete it and run `python -m data.prepare --cfg CFG`")
    differing = [f"{k}={built.get(k)!r} where the config gives {v!r} ({SETTINGS.get(k, k)})"
                 for k, v in params.items() if built.get(k) != v]
    if not differing:
        return None
    return StoreError(f"LMDB store {path} was built for another config: {'; '.join(differing)}; set "
                      f"dataset.lmdb_dir to a store of this config, or delete it and run data.prepare to rebuild it")


def _stamp(source: str) -> list[int] | None:
    """[size, mtime in ns] of a file, None when it is not there: a skipped file whose stamp changes is re-tried."""
    try:
        status = os.stat(source)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def _key_reason(key: str) -> str | None:
    size = len(key.encode("utf-8", "surrogateescape"))
    return f"its path is {size} bytes, over LMDB's {MAX_KEY_BYTES}-byte key limit" if size > MAX_KEY_BYTES else None


def _disk_full(folder: str, error: Exception) -> WriteError:
    """A failed write of a build as one line naming the folder (LMDB reports ENOSPC as an I/O error)."""
    why = getattr(error, "strerror", None) or str(error)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = FULL_DISK_MARGIN
    if getattr(error, "errno", None) == errno.ENOSPC or free < FULL_DISK_MARGIN:
        why = f"No space left on device ({why})" if "No space" not in why else why
    return WriteError(f"could not write {folder}: {why}; free space (or set dataset.lmdb_dir) and run "
                      f"data.prepare again: it resumes")


def build_store(path: str, items: list[tuple[str, str]], encode: Encoder, params: dict,
                skipped: Iterable[tuple[str, str]] = (), workers: int = 1, desc: str = "store",
                commit_every: int = 512, source_dir: str = "") -> BuildReport:
    """Pack `items` (key, source file) into the LMDB store `path`; resumable and atomic.

    `params` (what the stored values depend on) must match for a partial build to be resumed or
    a complete store to be updated in place; a complete store holding exactly `items` is kept as
    it is, unless a file it skipped has changed since (it is tried again) or the store is damaged
    (it is rebuilt). `skipped` lists inputs already known to be unusable (missing folders): they are
    reported with the files that fail to encode. The encoders' notes on stored files are printed
    and kept in notes.tsv. A write that fails (a full disk) is a WriteError naming the store.
    `source_dir` (the raw folder) is recorded in store.json; a partial build from another one is not resumed.
    """
    partial_dir = path + ".partial"
    try:
        return _build(path, partial_dir, items, encode, params, skipped, workers, desc, commit_every, source_dir)
    except (lmdb.Error, OSError) as e:
        if isinstance(e, UserError):
            raise
        raise _disk_full(partial_dir if os.path.isdir(partial_dir) else os.path.dirname(path) or ".", e) from None


def _build(path: str, partial_dir: str, items: list[tuple[str, str]], encode: Encoder, params: dict,
           skipped: Iterable[tuple[str, str]], workers: int, desc: str, commit_every: int, source_dir: str
           ) -> BuildReport:
    fingerprint = _fingerprint(items)
    info = read_info(path)
    damage = store_damage(path) if info else None
    if damage:
        tqdm.write(f"{desc}: {path} is damaged ({damage}): rebuilding it")
        _release(path)
        shutil.rmtree(path)
        info = {}
    retry = {s for s, stamp in info.get("skipped_stamps", {}).items() if _stamp(s) != stamp}
    if info.get("params") == params and info.get("fingerprint") == fingerprint and not retry:
        return BuildReport(path, info["stored"], _read_tsv(os.path.join(path, SKIPPED_FILE)),
                           _read_tsv(os.path.join(path, NOTES_FILE)))
    # same parameters, other files: update it rather than rebuild (unless its values are of the unchecked form)
    if info.get("params") == params and info.get("value_checksum") == VALUE_CHECKSUM:
        _release(path)
        if os.path.isdir(partial_dir):
            shutil.rmtree(partial_dir)
        os.replace(path, partial_dir)
    params_file = os.path.join(partial_dir, "params.json")
    if os.path.isdir(partial_dir):
        try:
            with open(params_file) as f:
                resumable = json.load(f) == dict(params, source=source_dir, value_checksum=VALUE_CHECKSUM)
        except (OSError, ValueError):
            resumable = False
        if not resumable or (os.path.exists(os.path.join(partial_dir, "data.mdb")) and store_damage(partial_dir)):
            shutil.rmtree(partial_dir)
    os.makedirs(partial_dir, exist_ok=True)
    with open(params_file, "w") as f:
        json.dump(dict(params, source=source_dir, value_checksum=VALUE_CHECKSUM), f)
    if os.path.exists(os.path.join(partial_dir, INFO_FILE)):
        os.remove(os.path.join(partial_dir, INFO_FILE))

    sources = dict(items)
    wanted = set(sources.values())
    skipped_file = os.path.join(partial_dir, SKIPPED_FILE)
    known_bad: dict[str, str] = {}
    for source, reason in _read_tsv(skipped_file):
        if source in wanted and source not in retry:  # what an interrupted run already found bad
            known_bad.setdefault(source, reason)
    for source, reason in skipped:
        known_bad.setdefault(source, reason)
    for key, source in items:
        reason = _key_reason(key)
        if reason:
            known_bad.setdefault(source, reason)
    for source, reason in known_bad.items():
        tqdm.write(f"{desc}: skipped {source}: {reason}")
    with open(skipped_file, "w", encoding="utf-8") as f:
        f.writelines(map(_tsv_row, known_bad.items()))
    notes_file = os.path.join(partial_dir, NOTES_FILE)
    notes = {source: note for source, note in _read_tsv(notes_file) if source in wanted}  # of stored files
    with open(notes_file, "w", encoding="utf-8") as f:
        f.writelines(map(_tsv_row, notes.items()))

    env = lmdb.open(partial_dir, map_size=MAP_SIZE, subdir=True, readahead=False, meminit=False)
    pool = None
    try:
        with env.begin(write=True) as txn:
            done = set()
            for raw in list(txn.cursor().iternext(keys=True, values=False)):
                if raw.decode() in sources:
                    done.add(raw.decode())
                else:
                    txn.delete(raw)  # a file no longer wanted
        todo = [(k, s) for k, s in items if k not in done and s not in known_bad]
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="file")
        encode_item = partial(encode_or_reason, encode)
        pool = Pool(workers) if workers > 1 and len(todo) > 64 else None
        results = pool.imap(encode_item, todo, chunksize=16) if pool else map(encode_item, todo)
        try:
            txn = env.begin(write=True)
            pending, pending_notes = [], []
            for n, (key, value, message) in enumerate(results, start=1):
                if value is None:
                    pending.append((sources[key], message))
                    tqdm.write(f"{desc}: skipped {sources[key]}: {message}")
                else:
                    txn.put(key.encode(), with_checksum(value))
                    if message:
                        pending_notes.append((sources[key], message))
                        tqdm.write(f"{desc}: {sources[key]}: {message}")
                if n % commit_every == 0:
                    # this batch's skips and notes first: a crash between the two re-examines at most one batch
                    _append(skipped_file, pending, known_bad)
                    _append(notes_file, pending_notes, notes)
                    txn.commit()
                    pending, pending_notes = [], []
                    txn = env.begin(write=True)
                bar.update()
            _append(skipped_file, pending, known_bad)
            _append(notes_file, pending_notes, notes)
            txn.commit()
        finally:
            bar.close()
        with env.begin() as txn:
            stored = txn.stat()["entries"]
        digest = content_digest(env)
    finally:
        if pool:
            pool.terminate()
            pool.join()
        env.close()
    report = BuildReport(path, stored, list(known_bad.items()), list(notes.items()))
    with atomic_write(os.path.join(partial_dir, INFO_FILE)) as f:
        json.dump({"params": params, "source": source_dir, "fingerprint": fingerprint, "stored": stored,
                   "skipped": len(known_bad), "notes": len(notes), "digest": digest, "value_checksum": VALUE_CHECKSUM,
                   "skipped_stamps": {s: _stamp(s) for s in known_bad if not os.path.isdir(s)}}, f, indent=1)
    if os.path.exists(path):
        _release(path)
        shutil.rmtree(path)  # a complete store built with other parameters
    os.replace(partial_dir, path)
    return report


def _append(path: str, entries: list[tuple[str, str]], known: dict[str, str]) -> None:
    """Record (source, text) rows in a .tsv file and in `known`."""
    with open(path, "a", encoding="utf-8") as f:
        for source, text in entries:
            known.setdefault(source, text)
            f.write(_tsv_row((source, text)))


def _tsv_row(row: tuple[str, str]) -> str:
    """`source<TAB>text` on one line, whatever characters a file name holds (tabs, newlines, undecodable bytes)."""
    fields = [f.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r") for f in row]
    return "\t".join(f.encode("utf-8", "backslashreplace").decode("utf-8") for f in fields) + "\n"
