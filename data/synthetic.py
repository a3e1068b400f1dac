"""The embedded synthetic corpus: made-up people with a voice and a face, in the VoxCeleb1 / VGGFace layouts.

Every identity draws shared attributes (gender, body size, age, nationality) that shape BOTH
its voice and its face, and modality-only attributes that shape one of them (speaking rate,
breathiness... for the voice; hair colour, glasses, eye colour... for the face). The constants
under "The cross-modal link" say how strongly each shared attribute shows in each modality:
raise a slope or lower a spread to make voice-face matching easier.

    python -m data.synthetic --out DIR [--seed S] [--identities N]

writes DIR/wav/<idNNNNN>/<video>/<NNNNN>.wav (16 kHz mono int16), DIR/VGG_ALL_FRONTAL/<Name>/
<NNNNNNNN>.jpg, DIR/vox1_meta.csv (VoxCeleb1 meta format) and DIR/contact_sheet.png.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import string
import time
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import Pool

import cv2
import numpy as np
import soundfile
from scipy import signal
from tqdm import tqdm

from utils.files import atomic_write

SAMPLE_RATE = 16000
META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")

# ---------------------------------------------------------------------------
# The cross-modal link: identity attributes -> signals (tune here)
# ---------------------------------------------------------------------------
MALE_SHARE = 0.55
AGE_YEARS = (20.0, 75.0)  # uniform; age_z = (age - 47.5) / 15.9 has unit sd

# Nationalities are fictional. Per nation: share of identities, skin tone (0 light .. 1 dark),
# vowel colour as multipliers of F1 and F2, and the two vowels its speakers favour.
NATIONALITIES = (
    ("Arvania", 0.30, 0.25, 1.00, 1.00, (0, 4)),
    ("Belmoria", 0.18, 0.55, 1.10, 0.92, (3, 5)),
    ("Cestria", 0.14, 0.10, 0.92, 1.08, (1, 7)),
    ("Dunmark", 0.12, 0.80, 1.06, 1.07, (2, 6)),
    ("Elzona", 0.10, 0.40, 0.94, 0.93, (4, 7)),
    ("Farolia", 0.08, 0.65, 1.12, 1.02, (0, 3)),
    ("Gravend", 0.08, 0.18, 0.97, 0.88, (5, 6)),
)
VOWEL_FAVOUR = 4.0  # weight of a nation's two favoured vowels against 1 for the others

# Voice side.
F0_HZ = {"m": 120.0, "f": 210.0}  # mean fundamental frequency
F0_BODY = -0.05  # log-F0 per body-size sd (bigger people, lower voices)
F0_AGE = {"m": 0.03, "f": -0.07}  # log-F0 per age sd (women's voices drop with age)
F0_SPREAD = 0.09  # voice-only log-F0 idiosyncrasy (sd)
VTL_CM = {"m": 17.0, "f": 14.7}  # vocal-tract length: sets the formant spacing
VTL_BODY = 0.55  # cm per body-size sd
VTL_SPREAD = 0.35  # voice-only vocal-tract idiosyncrasy (cm sd)
VOWEL_COLOUR_SPREAD = 0.03  # voice-only sd of the F1 / F2 multipliers around the nation's
JITTER = (0.004, 0.012)  # cycle-to-cycle F0 jitter at age 20 and at age 75
BREATH = (0.03, 0.12)  # aspiration noise level at age 20 and at age 75 (plus a voice-only part)
RATE_AGE = -0.25  # syllables/s per age sd
SPEAKING_RATE = (4.6, 0.6)  # voice-only syllables/s (mean, sd)

# Face side.
FACE_WIDTH = {"m": 0.80, "f": 0.74}  # half-width / half-height of the face
FACE_WIDTH_BODY = 0.035  # per body-size sd
FACE_WIDTH_SPREAD = 0.02  # face-only
JAW = {"m": 3.0, "f": 2.2}  # superellipse exponent of the lower face (2 = oval, higher = squarer)
JAW_BODY = 0.25  # per body-size sd
SKIN_SPREAD = 0.08  # face-only sd of the skin tone around the nation's
GREY_AGE = 55.0  # age at which half the hair is grey
WRINKLE_AGE = 45.0  # age from which wrinkles show
BALD_MALE_OLD = 0.5  # chance that a man of 75 is balding (linear from 0 at 35)
LONG_HAIR = {"m": 0.1, "f": 0.8}
BEARD_MALE = 0.4
LIPSTICK_FEMALE = 0.5

# ---------------------------------------------------------------------------
# Corpus shape
# ---------------------------------------------------------------------------
VIDEOS = (2, 4)  # videos per identity (inclusive)
FACELESS_PER_300 = 6  # identities with no face folder (half) or an empty one (half)
# Where the faceless identities sit along the id range: two in each of the default splits
# (val first 40/300, test next 60/300, train the rest).
FACELESS_AT = (0.05, 0.10, 0.20, 0.27, 0.50, 0.80)
TEST_SET_AT = (0.215, 0.247)  # the Set column says `test` for this slice of ids, as VoxCeleb1

# Peterson & Barney (1952) adult male F1, F2, F3 (Hz) of /i ɪ ɛ æ ɑ ɔ ʊ u/.
VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
], dtype=np.float64)
F4_HZ = 3500.0
REFERENCE_VTL_CM = 17.0  # the tract length the vowel table belongs to
BANDWIDTHS_HZ = np.array([80.0, 100.0, 150.0, 220.0])
FFT_SIZE, HOP = 512, 256

HAIR_COLOURS = np.array([(20, 20, 25), (30, 45, 75), (40, 70, 120), (80, 140, 200), (40, 70, 160),
                         (60, 60, 60)], np.float32)  # BGR: black, dark brown, brown, blonde, red, ash
EYE_COLOURS = np.array([(30, 50, 80), (60, 90, 60), (140, 110, 60), (50, 70, 110)], np.float32)
SKIN_LIGHT = np.array([175, 195, 235], np.float32)  # BGR at skin tone 0
SKIN_DARK = np.array([45, 70, 105], np.float32)  # BGR at skin tone 1
GREY_HAIR = np.array([185, 185, 190], np.float32)


@dataclass
class Persona:
    """One made-up identity: shared attributes first, then modality-only ones."""

    index: int
    vox_id: str
    name: str
    gender: str
    nation: int
    body: float  # body size z-score
    age: float  # years
    has_faces: bool
    empty_face_folder: bool
    # voice
    f0: float
    vtl: float
    vowel_colour: tuple[float, float]
    rate: float
    breath: float
    jitter: float
    intonation: float  # semitones sd
    tilt_hz: float  # glottal spectral tilt corner
    # face
    face_width: float
    jaw: float
    skin: np.ndarray
    hair: np.ndarray
    hair_long: bool
    bald: float  # 0 full hair .. 1 hairline far back
    beard: float  # 0 none .. 1 full
    lipstick: bool
    eye_colour: np.ndarray
    eye_gap: float
    eye_size: float
    brow: float
    nose: float
    mouth: float
    glasses: bool
    wrinkles: float


def _age_z(age: float) -> float:
    return (age - 47.5) / 15.9


def _name(rng: np.random.Generator) -> str:
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"

    def word(syllables: int) -> str:
        return "".join(consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))]
                       for _ in range(syllables)).capitalize()

    return f"{word(2)}_{word(int(rng.integers(2, 4)))}"


def sample_persona(index: int, identities: int, seed: int) -> Persona:
    """Draw identity `index` (0-based) from its own stream: the same person at any corpus size."""
    rng = np.random.default_rng([seed, index])
    gender = "m" if rng.random() < MALE_SHARE else "f"
    shares = np.array([n[1] for n in NATIONALITIES])
    nation = int(rng.choice(len(NATIONALITIES), p=shares / shares.sum()))
    _, _, skin_tone, f1_mult, f2_mult, _ = NATIONALITIES[nation]
    body = float(rng.normal())
    age = float(rng.uniform(*AGE_YEARS))
    age_z, age01 = _age_z(age), (age - AGE_YEARS[0]) / (AGE_YEARS[1] - AGE_YEARS[0])
    faceless = _faceless(identities)
    hair_base = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    grey = 1.0 / (1.0 + math.exp(-(age - GREY_AGE) / 6.0)) * rng.uniform(0.6, 1.0)
    tone = float(np.clip(skin_tone + rng.normal(0, SKIN_SPREAD), 0, 1))
    skin = (SKIN_LIGHT * (1 - tone) + SKIN_DARK * tone) * rng.uniform(0.95, 1.05, 3)
    bald_chance = BALD_MALE_OLD * np.clip((age - 35) / 40, 0, 1) if gender == "m" else 0.0
    return Persona(
        index=index,
        vox_id=f"id{index + 1:05d}",
        name=_name(rng),
        gender=gender,
        nation=nation,
        body=body,
        age=age,
        has_faces=index not in faceless,
        empty_face_folder=faceless.get(index, False),
        f0=F0_HZ[gender] * math.exp(F0_BODY * body + F0_AGE[gender] * age_z + rng.normal(0, F0_SPREAD)),
        vtl=VTL_CM[gender] + VTL_BODY * body + rng.normal(0, VTL_SPREAD),
        vowel_colour=(f1_mult * (1 + rng.normal(0, VOWEL_COLOUR_SPREAD)),
                      f2_mult * (1 + rng.normal(0, VOWEL_COLOUR_SPREAD))),
        rate=float(np.clip(rng.normal(*SPEAKING_RATE) + RATE_AGE * age_z, 2.8, 6.5)),
        breath=BREATH[0] + (BREATH[1] - BREATH[0]) * age01 + rng.uniform(0, 0.06),
        jitter=JITTER[0] + (JITTER[1] - JITTER[0]) * age01,
        intonation=float(rng.uniform(1.0, 3.5)),
        tilt_hz=float(rng.uniform(150, 600)),
        face_width=FACE_WIDTH[gender] + FACE_WIDTH_BODY * body + rng.normal(0, FACE_WIDTH_SPREAD),
        jaw=max(1.8, JAW[gender] + JAW_BODY * body + rng.normal(0, 0.15)),
        skin=skin.astype(np.float32),
        hair=(hair_base * (1 - grey) + GREY_HAIR * grey).astype(np.float32),
        hair_long=bool(rng.random() < LONG_HAIR[gender]),
        bald=float(rng.uniform(0.4, 1.0)) if rng.random() < bald_chance else 0.0,
        beard=float(rng.uniform(0.3, 1.0)) if gender == "m" and rng.random() < BEARD_MALE else 0.0,
        lipstick=bool(gender == "f" and rng.random() < LIPSTICK_FEMALE),
        eye_colour=EYE_COLOURS[rng.integers(len(EYE_COLOURS))],
        eye_gap=float(rng.uniform(0.36, 0.46)),
        eye_size=float(rng.uniform(0.85, 1.15)) * (1.06 if gender == "f" else 1.0),
        brow=float(rng.uniform(0.025, 0.045)) * (1.5 if gender == "m" else 1.0),
        nose=float(rng.uniform(0.85, 1.2)),
        mouth=float(rng.uniform(0.8, 1.15)),
        glasses=bool(rng.random() < 0.15),
        wrinkles=float(np.clip((age - WRINKLE_AGE) / 25, 0, 1)),
    )


def _faceless(identities: int) -> dict[int, bool]:
    """Indices of identities without faces -> True where the folder exists but is empty."""
    count = min(len(FACELESS_AT), max(1, round(identities * FACELESS_PER_300 / 300)))
    indices = sorted({min(identities - 1, int(f * identities)) for f in FACELESS_AT[:count]})
    return {i: k % 2 == 1 for k, i in enumerate(indices)}


# ---------------------------------------------------------------------------
# Voices: glottal pulses -> formant filters, syllable by syllable, then a channel
# ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _stft() -> signal.ShortTimeFFT:
    return signal.ShortTimeFFT(signal.windows.hann(FFT_SIZE, sym=False), HOP, SAMPLE_RATE)


def _resonance_gain(freqs: np.ndarray, bandwidths: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """|H(ω)| of two-pole resonators with unit gain at DC: (..., K) formants -> (..., F)."""
    r = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    cos_theta = np.cos(2 * np.pi * freqs / SAMPLE_RATE)
    a = 1 + 4 * r**2 * cos_theta**2 + r**4
    b = -4 * r * (1 + r**2) * cos_theta
    c = 2 * r**2
    denom = a[..., None] + b[..., None] * np.cos(omega) + c[..., None] * np.cos(2 * omega)
    dc = (1 - 2 * r * cos_theta + r**2)[..., None]
    return np.prod(dc / np.sqrt(np.maximum(denom, 1e-12)), axis=-2)


def _syllables(p: Persona, seconds: float, rng: np.random.Generator):
    """Segment plan: ends (s), kinds (0 pause, 1 consonant, 2 vowel), vowel index and gain per segment."""
    n = int(seconds / 0.05) + 2  # every syllable lasts >= 0.05 s, so n of them fill the clip
    rate = p.rate * rng.uniform(0.9, 1.1)
    consonant = np.where(rng.random(n) < 0.7, rng.uniform(0.035, 0.09, n), 0.0)
    vowel = np.maximum(rng.uniform(0.55, 1.15, n) / rate - consonant, 0.05)
    pause = np.where(rng.random(n) < 0.18, rng.uniform(0.08, 0.35, n), 0.0)
    favour = np.ones(len(VOWELS))
    favour[list(NATIONALITIES[p.nation][5])] = VOWEL_FAVOUR
    vowel_ids = rng.choice(len(VOWELS), size=n, p=favour / favour.sum())
    lead_in = rng.uniform(0.05, 0.3)
    ends = np.concatenate([[lead_in], lead_in + np.cumsum(np.stack([consonant, vowel, pause], 1).ravel())])
    kinds = np.concatenate([[0], np.tile([1, 2, 0], n)])
    return ends, kinds, _per_segment(vowel_ids), _per_segment(rng.uniform(0.5, 1.0, n))


def _per_segment(per_syllable: np.ndarray) -> np.ndarray:
    """Syllable values for the lead-in (borrowing syllable 0's) and the 3 segments of each syllable."""
    return np.concatenate([per_syllable[:1], np.repeat(per_syllable, 3)])


def synthesize_clip(p: Persona, channel: dict, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of `p` speaking through `channel`: int16 (seconds * 16000,)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ends, kinds, vowel_ids, gains = _syllables(p, seconds, rng)
    starts = np.concatenate([[0.0], ends[:-1]])
    centres = (starts + ends) / 2

    # Source: F0 contour through the syllable targets, with declination and jitter.
    targets = p.f0 * 2 ** (rng.normal(0, p.intonation, len(ends)) / 12) * np.exp(-0.08 * centres / seconds)
    f0 = np.interp(t, centres, targets)
    wobble = signal.lfilter([0.02], [1, -0.98], rng.normal(0, 1, n))
    f0 *= 1 + p.jitter * wobble / (wobble.std() + 1e-9)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.zeros(n)
    at = np.flatnonzero(np.diff(np.floor(phase), prepend=0) > 0)
    pulses[at] = 1 + 0.08 * rng.normal(size=len(at))  # shimmer
    pole = math.exp(-2 * math.pi * p.tilt_hz / SAMPLE_RATE)
    voiced = signal.lfilter([1, -1], [1, -2 * pole, pole * pole], pulses)  # glottal flow + lip radiation
    voiced = voiced / (voiced.std() + 1e-9) + p.breath * rng.normal(size=n) * 3
    unvoiced = rng.normal(size=n)

    # Filter: formant envelope per frame (vowel targets interpolated = coarticulation).
    stft = _stft()
    frame_t = stft.t(n)
    seg = np.minimum(np.searchsorted(ends, frame_t, side="right"), len(ends) - 1)
    kind = np.where(frame_t < 0, 0, kinds[seg])
    is_vowel = kinds == 2
    scale = REFERENCE_VTL_CM / p.vtl * rng.uniform(0.98, 1.02)
    formants = np.empty((len(frame_t), 4))
    for k in range(3):
        vowel_f = VOWELS[vowel_ids[is_vowel], k] * (p.vowel_colour[k] if k < 2 else 1.0)
        formants[:, k] = np.interp(frame_t, centres[is_vowel], vowel_f) * scale
    formants[:, 3] = F4_HZ * scale
    omega = 2 * np.pi * stft.f / SAMPLE_RATE
    envelope = _resonance_gain(formants, np.broadcast_to(BANDWIDTHS_HZ, formants.shape), omega)
    within = np.clip((frame_t - starts[seg]) / np.maximum(ends[seg] - starts[seg], 1e-3), 0, 1)
    voicing = (kind == 2) * gains[seg] * np.sqrt(np.sin(np.pi * within))
    centre_hz = np.where(kind == 1, rng.uniform(2500, 6500, len(ends))[seg], 4000.0)
    hiss = np.exp(-0.5 * (np.log2(np.maximum(stft.f, 1.0)[None] / centre_hz[:, None]) / 0.45) ** 2)
    frication = (kind == 1) * gains[seg] * 0.25
    spectrum = (stft.stft(voiced) * (envelope * voicing[:, None]).T
                + stft.stft(unvoiced) * (hiss * frication[:, None]).T)
    speech = stft.istft(spectrum, k1=n)
    return _through_channel(speech, channel, rng)


def sample_channel(rng: np.random.Generator) -> dict:
    """Recording conditions of one video: band limits, a colouring peak, room, noise, hum."""
    room = rng.uniform(0.05, 0.5)
    ir_t = np.arange(int(room * SAMPLE_RATE)) / SAMPLE_RATE
    impulse = rng.normal(size=len(ir_t)) * np.exp(-6.9 * ir_t / room)
    impulse[0] = 0.0
    return {
        "band": signal.butter(2, [rng.uniform(60, 250), rng.uniform(3400, 7600)], "bandpass",
                              fs=SAMPLE_RATE, output="sos"),
        "peak": signal.butter(1, sorted(rng.uniform(300, 3000) * np.array([0.8, 1.25])), "bandpass",
                              fs=SAMPLE_RATE, output="sos"),
        "peak_gain": rng.uniform(-0.5, 1.0),
        "reverb": impulse / (np.abs(impulse).sum() + 1e-9) * rng.uniform(0, 3),
        "snr_db": rng.uniform(8, 35),
        "noise_colour": rng.uniform(0, 0.95),
        "hum_hz": rng.choice([50.0, 60.0]) if rng.random() < 0.15 else 0.0,
    }


def _through_channel(speech: np.ndarray, channel: dict, rng: np.random.Generator) -> np.ndarray:
    x = speech / (speech.std() + 1e-9)
    x = x + channel["peak_gain"] * signal.sosfilt(channel["peak"], x)
    x = x + signal.fftconvolve(x, channel["reverb"])[: len(x)]
    noise = signal.lfilter([1], [1, -channel["noise_colour"]], rng.normal(size=len(x)))
    snr_db = channel["snr_db"] + rng.uniform(-3, 3)
    x = x + noise / (noise.std() + 1e-9) * x.std() * 10 ** (-snr_db / 20)
    if channel["hum_hz"]:
        t = np.arange(len(x)) / SAMPLE_RATE
        x = x + 0.05 * x.std() * sum(np.sin(2 * np.pi * channel["hum_hz"] * h * t) / h for h in (1, 2, 3))
    x = signal.sosfilt(channel["band"], x)
    peak = rng.uniform(0.25, 0.9) * 32767
    return np.round(x / (np.abs(x).max() + 1e-9) * peak).astype(np.int16)


# ---------------------------------------------------------------------------
# Faces: shapes in a face frame (unit = half the face height), posed by one affine map
# ---------------------------------------------------------------------------
def _ellipse(cu: float, cv: float, ru: float, rv: float, start: float = 0.0, stop: float = 2 * np.pi,
             n: int = 28) -> np.ndarray:
    a = np.linspace(start, stop, n)
    return np.stack([cu + ru * np.cos(a), cv + rv * np.sin(a)], 1)


def _face_outline(width: float, jaw: float, n: int = 48) -> np.ndarray:
    """Oval forehead, superellipse lower face (higher `jaw` = squarer), points in the face frame."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(a), np.sin(a)
    exponent = np.where(s > 0, jaw, 2.0)
    u = width * np.sign(c) * np.abs(c) ** (2 / exponent)
    v = np.sign(s) * np.abs(s) ** (2 / exponent)
    return np.stack([u * (1 - 0.12 * np.clip(v, 0, 1) ** 2), v], 1)


class _Painter:
    """Draws face-frame polygons and lines onto an image through a 2x3 affine map."""

    def __init__(self, image: np.ndarray, affine: np.ndarray, unit: float):
        self.image, self.affine, self.unit = image, affine, unit

    def _px(self, pts: np.ndarray) -> np.ndarray:
        xy = pts @ self.affine[:, :2].T + self.affine[:, 2]
        return np.round(xy * 16).astype(np.int32)  # 4 fractional bits (shift=4)

    def fill(self, pts: np.ndarray, colour, alpha: float = 1.0) -> None:
        target = self.image if alpha >= 1 else self.image.copy()
        cv2.fillPoly(target, [self._px(pts)], tuple(float(c) for c in colour), cv2.LINE_AA, 4)
        if alpha < 1:
            cv2.addWeighted(target, alpha, self.image, 1 - alpha, 0, dst=self.image)

    def line(self, pts: np.ndarray, colour, width: float, closed: bool = False) -> None:
        thickness = max(1, int(round(width * self.unit)))
        cv2.polylines(self.image, [self._px(pts)], closed, tuple(float(c) for c in colour), thickness,
                      cv2.LINE_AA, 4)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    colours = rng.uniform(20, 235, (2, 3)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(colours[0], (h, w, 3)).copy()
    if kind == 1:
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        return np.broadcast_to(colours[0] * (1 - ramp) + colours[1] * ramp, (h, w, 3)).copy()
    blobs = cv2.resize(rng.uniform(0, 1, (4, 3, 1)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return colours[0] * (1 - blobs[..., None]) + colours[1] * blobs[..., None]


def draw_face(p: Persona, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One photo of `p`: BGR uint8 image (not square, 130-220 px wide) and its JPEG quality."""
    w = int(rng.integers(130, 221))
    h = int(round(w * rng.uniform(1.1, 1.3)))
    image = _background(h, w, rng).astype(np.uint8)
    unit = h * rng.uniform(0.30, 0.36)
    roll = math.radians(rng.normal(0, 5))
    yaw = float(np.clip(rng.normal(0, 0.12), -0.3, 0.3))
    centre = np.array([w / 2 + rng.normal(0, 0.03) * w, h * 0.47 + rng.normal(0, 0.03) * h])
    rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]]) * unit
    paint = _Painter(image, np.concatenate([rot, centre[:, None]], 1), unit)
    width = p.face_width * (1 - 0.2 * abs(yaw))
    skin, hair = p.skin, p.hair
    shade = skin * 0.8

    def at(u, depth: float):  # features nearer the camera move more with yaw
        return u * (1 - 0.2 * abs(yaw)) + yaw * depth

    shirt = rng.uniform(10, 240, 3)
    paint.fill(np.array([[-2.2, 3.0], [-1.9 * width, 1.25], [1.9 * width, 1.25], [2.2, 3.0]]), shirt)
    neck = 0.5 * width * (1 + 0.15 * p.body)
    paint.fill(np.array([[-neck, 0.5], [neck, 0.5], [neck * 1.1, 1.4], [-neck * 1.1, 1.4]]), shade)
    if p.hair_long:
        paint.fill(_ellipse(0, 0.15, width * 1.38, 1.25), hair * 0.9)
    for side in (-1, 1):
        paint.fill(_ellipse(side * width * 0.98, 0.02, 0.12, 0.2), skin * 0.92)
    outline = _face_outline(width, p.jaw)
    outline[:, 0] += yaw * 0.05
    paint.fill(outline, skin)
    if p.beard:
        lower = outline[outline[:, 1] > 0.15]
        paint.fill(lower[np.argsort(np.arctan2(lower[:, 1] - 0.15, lower[:, 0]))], hair, alpha=0.45 + 0.5 * p.beard)
        paint.fill(_ellipse(at(0, 0.1), 0.4, 0.34 * p.mouth * width, 0.06), hair * 0.9)
    # Hair cap down to a hairline that recedes when balding.
    hairline = -0.55 - 0.35 * p.bald
    cap = _ellipse(0, -0.12, width * 1.07, 0.98, np.pi, 2 * np.pi)
    cap = cap[cap[:, 1] <= hairline + 0.2]
    front = np.stack([np.linspace(width, -width, 12), hairline + 0.12 * np.linspace(-1, 1, 12) ** 2], 1)
    if p.bald < 0.9:
        paint.fill(np.concatenate([cap, front]), hair)
    # Eyes, brows.
    gap = p.eye_gap * width
    for side in (-1, 1):
        eu = at(side * gap, 0.08)
        paint.fill(_ellipse(eu, -0.12, 0.16 * width * p.eye_size, 0.065 * p.eye_size), (235, 235, 235))
        paint.fill(_ellipse(eu + yaw * 0.03, -0.12, 0.055 * p.eye_size, 0.055 * p.eye_size), p.eye_colour)
        paint.fill(_ellipse(eu + yaw * 0.03, -0.12, 0.022, 0.022), (15, 15, 15))
        lid = _ellipse(eu, -0.12, 0.17 * width * p.eye_size, 0.07 * p.eye_size, np.pi, 2 * np.pi, 12)
        paint.line(lid, (20, 20, 20) if p.lipstick else shade * 0.7, 0.03 if p.lipstick else 0.015)
        brow = _ellipse(eu, -0.2, 0.2 * width, 0.08, 1.15 * np.pi, 1.85 * np.pi, 10)
        paint.line(brow, hair * 0.7, p.brow)
        if p.wrinkles > 0:
            crow = np.array([[eu + side * 0.2 * width, -0.15], [eu + side * 0.28 * width, -0.1]])
            paint.line(crow, shade * 0.85, 0.012 * (1 + p.wrinkles))
    if p.glasses and rng.random() < 0.85:
        for side in (-1, 1):
            paint.line(_ellipse(at(side * gap, 0.08), -0.12, 0.24 * width, 0.15), (25, 25, 25), 0.025, True)
        paint.line(np.array([[at(-gap, 0.08) + 0.24 * width, -0.12], [at(gap, 0.08) - 0.24 * width, -0.12]]),
                   (25, 25, 25), 0.025)
    # Nose and mouth.
    nose = np.array([[at(0.02, 0.15), -0.08], [at(0.07 * p.nose, 0.18), 0.2 * p.nose],
                     [at(-0.06 * p.nose, 0.15), 0.24 * p.nose]])
    paint.line(nose, shade * 0.85, 0.02)
    smile = rng.uniform(-0.03, 0.07)
    mouth_w = 0.3 * p.mouth * width
    lip = skin * 0.6 + np.array([40, 30, 120], np.float32) * (0.7 if p.lipstick else 0.3)
    upper = np.stack([np.linspace(-mouth_w, mouth_w, 9), 0.47 - smile * np.cos(np.linspace(-1.3, 1.3, 9))], 1)
    lower = _ellipse(0, 0.47, mouth_w, 0.06 + rng.uniform(0, 0.04), 0, np.pi, 9)
    upper[:, 0], lower[:, 0] = at(upper[:, 0], 0.1), at(lower[:, 0], 0.1)
    paint.fill(np.concatenate([upper, lower[::-1]]), np.clip(lip, 0, 255))
    # Age: forehead lines and nasolabial folds.
    for k in range(int(round(3 * p.wrinkles))):
        v = -0.45 - 0.08 * k
        paint.line(_ellipse(at(0, 0.05), v + 0.25, 0.4 * width, 0.25, 1.3 * np.pi, 1.7 * np.pi, 8), shade * 0.9,
                   0.01 + 0.01 * p.wrinkles)
    if p.wrinkles > 0.3:
        for side in (-1, 1):
            fold = np.array([[at(side * 0.12, 0.12), 0.22], [at(side * 0.28 * width, 0.1), 0.46]])
            paint.line(fold, shade * 0.85, 0.015)
    return _photograph(image, rng), int(rng.integers(35, 96))


def _photograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (gain, direction, colour cast), blur, sensor noise, maybe low resolution."""
    h, w = image.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle))
    light = rng.uniform(0.65, 1.25) * (1 + rng.uniform(0, 0.9) * ramp)
    image = image.astype(np.float32) * light[..., None] * rng.normal(1, 0.06, 3).astype(np.float32)
    if rng.random() < 0.3:
        small = (max(24, int(w * rng.uniform(0.3, 0.6))), max(24, int(h * rng.uniform(0.3, 0.6))))
        image = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (w, h))
    if rng.random() < 0.6:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.6))
    image = image + rng.normal(0, rng.uniform(0, 6), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------
def _video_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=11))


def _write_identity(job: tuple) -> tuple[int, int]:
    """Write the clips and photos of one identity; returns (clips, images)."""
    root, p, seed, clips, images, seconds = job
    rng = np.random.default_rng([seed, p.index, 1])
    n_videos = int(rng.integers(VIDEOS[0], VIDEOS[1] + 1))
    videos = [(_video_id(rng), sample_channel(rng)) for _ in range(n_videos)]
    n_clips = int(rng.integers(clips[0], clips[1] + 1))
    per_video = np.bincount(np.concatenate([np.arange(n_videos), rng.integers(n_videos, size=max(0, n_clips - n_videos))]),
                            minlength=n_videos)
    for (video, channel), count in zip(videos, per_video):
        folder = os.path.join(root, "wav", p.vox_id, video)
        os.makedirs(folder, exist_ok=True)
        for k in range(count):
            clip = synthesize_clip(p, channel, float(rng.uniform(*seconds)), rng)
            soundfile.write(os.path.join(folder, f"{k + 1:05d}.wav"), clip, SAMPLE_RATE, subtype="PCM_16")
    n_images = 0
    if p.has_faces or p.empty_face_folder:
        folder = os.path.join(root, "VGG_ALL_FRONTAL", p.name)
        os.makedirs(folder, exist_ok=True)
        if p.has_faces:
            n_images = int(rng.integers(images[0], images[1] + 1))
            for k in range(n_images):
                face, quality = draw_face(p, rng)
                cv2.imwrite(os.path.join(folder, f"{k + 1:08d}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return int(per_video.sum()), n_images


def _unique_names(personas: list[Persona]) -> None:
    seen: dict[str, int] = {}
    for p in personas:
        count = seen.get(p.name, 0)
        seen[p.name] = count + 1
        if count:
            p.name = f"{p.name}_{count + 1}"


def write_meta(path: str, personas: list[Persona]) -> None:
    """vox1_meta.csv as VoxCeleb1 ships it (tab-separated), written atomically."""
    lo, hi = (int(f * len(personas)) for f in TEST_SET_AT)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(META_HEADER)
        for p in personas:
            writer.writerow([p.vox_id, p.name, p.gender, NATIONALITIES[p.nation][0],
                             "test" if lo <= p.index < hi else "dev"])


def contact_sheet(root: str, personas: list[Persona], path: str, rows: int = 6) -> None:
    """A PNG with, per identity, three of its faces beside the spectrogram of one of its clips."""
    height = 120
    shown = [p for p in personas if p.has_faces][:rows]
    strips = []
    for p in shown:
        face_dir = os.path.join(root, "VGG_ALL_FRONTAL", p.name)
        faces = [cv2.imread(os.path.join(face_dir, f)) for f in sorted(os.listdir(face_dir))[:3]]
        faces = [cv2.resize(f, (int(f.shape[1] * height / f.shape[0]), height)) for f in faces]
        voice_dir = os.path.join(root, "wav", p.vox_id)
        video = sorted(os.listdir(voice_dir))[0]
        clip, _ = soundfile.read(os.path.join(voice_dir, video, sorted(os.listdir(os.path.join(voice_dir, video)))[0]),
                                 dtype="float32", frames=3 * SAMPLE_RATE)
        spec = np.abs(_stft().stft(clip))
        db = 20 * np.log10(spec + 1e-6)
        db = np.clip((db - db.max() + 70) / 70, 0, 1)[::-1]
        spec_img = cv2.applyColorMap((db * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
        spec_img = cv2.resize(spec_img, (360, height))
        label = np.full((height, 170, 3), 255, np.uint8)
        for k, text in enumerate([p.vox_id, p.name[:16], f"{p.gender}, {p.age:.0f} y",
                                  NATIONALITIES[p.nation][0], f"body {p.body:+.1f}"]):
            cv2.putText(label, text, (6, 22 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        strips.append(np.concatenate([label] + faces + [spec_img], 1))
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((2, 2), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                            for s in strips])
    cv2.imwrite(path, sheet)


def generate_corpus(root: str, identities: int = 300, seed: int = 0, *, clips: tuple[int, int] = (6, 10),
                    images: tuple[int, int] = (6, 10), seconds: tuple[float, float] = (3.0, 8.0),
                    workers: int | None = None) -> None:
    """Write the synthetic corpus under `root` (meta file last: its presence means complete)."""
    personas = [sample_persona(i, identities, seed) for i in range(identities)]
    _unique_names(personas)
    os.makedirs(root, exist_ok=True)
    jobs = [(root, p, seed, clips, images, seconds) for p in personas]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = tqdm(total=identities, desc="synthetic corpus", unit="id")
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_identity, jobs):
                bar.update()
    else:
        for job in jobs:
            _write_identity(job)
            bar.update()
    bar.close()
    contact_sheet(root, personas, os.path.join(root, "contact_sheet.png"))
    write_meta(os.path.join(root, "vox1_meta.csv"), personas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="corpus root folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--identities", type=int, default=300)
    args = parser.parse_args()
    start = time.time()
    generate_corpus(args.out, args.identities, args.seed)
    print(f"wrote {args.identities} identities to {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
