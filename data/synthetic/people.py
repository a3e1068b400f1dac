"""Made-up people: the attributes each identity draws, shared by its voice and its face or shown in one of them.

The constants under "The cross-modal link" say how strongly each shared attribute shows in each modality:
raise a slope or lower a spread to make voice-face matching easier."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


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

# Off-archetype identities (`dataset.synthetic.off_archetype_fraction`): their face is drawn from attributes
# re-sampled apart from their voice's (same gender), so voice and face disagree with the population's link.
# Their draws come from the identity's stream [seed, index, OFF_ARCHETYPE_STREAM] (1 draws its files), so
# the fraction 0 draws nothing and leaves every other identity as it was.
OFF_ARCHETYPE_STREAM = 2
# What an off-archetype identity takes from its face's draw: the shared attributes its face shows, then the face.
FACE_FIELDS = ("body", "age", "face_width", "jaw", "skin", "hair", "hair_long", "bald", "beard", "lipstick",
               "eye_colour", "eye_gap", "eye_size", "brow", "nose", "mouth", "glasses", "wrinkles")


HAIR_COLOURS = np.array([(20, 20, 25), (30, 45, 75), (40, 70, 120), (80, 140, 200), (40, 70, 160),
                         (60, 60, 60)], np.float32)  # BGR: black, dark brown, brown, blonde, red, ash
EYE_COLOURS = np.array([(30, 50, 80), (60, 90, 60), (140, 110, 60), (50, 70, 110)], np.float32)
SKIN_LIGHT = np.array([175, 195, 235], np.float32)  # BGR at skin tone 0
SKIN_DARK = np.array([45, 70, 105], np.float32)  # BGR at skin tone 1
GREY_HAIR = np.array([185, 185, 190], np.float32)



@dataclass
class Persona:
    """One made-up identity: shared attributes first, then modality-only ones.

    Off-archetype (the last field): `body`, `age` and the face's fields are those of a second draw of the same
    gender; the voice's fields, `nation` (the meta file's) and the name stay the first draw's."""

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
    off_archetype: bool = False


def _age_z(age: float) -> float:
    return (age - 47.5) / 15.9


def _name(rng: np.random.Generator) -> str:
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"

    def word(syllables: int) -> str:
        return "".join(consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))]
                       for _ in range(syllables)).capitalize()

    return f"{word(2)}_{word(int(rng.integers(2, 4)))}"


def sample_persona(index: int, identities: int, seed: int, off_archetype: bool = False) -> Persona:
    """Draw identity `index` (0-based) from its own stream: the same person at any corpus size. `off_archetype`:
    its face from a second draw of the same gender ([seed, index, OFF_ARCHETYPE_STREAM], after the number
    `off_archetype_indices` ranks it by)."""
    persona = _draw_persona(index, identities, np.random.default_rng([seed, index]))
    if not off_archetype:
        return persona
    rng = np.random.default_rng([seed, index, OFF_ARCHETYPE_STREAM])
    rng.random()  # the identity's rank among the candidates (off_archetype_indices)
    face = _draw_persona(index, identities, rng, gender=persona.gender)
    return dataclasses.replace(persona, off_archetype=True, **{k: getattr(face, k) for k in FACE_FIELDS})


def off_archetype_indices(identities: int, seed: int, fraction: float) -> set[int]:
    """The round(fraction × identities with faces) identities ranked first by their own off-archetype stream."""
    if fraction <= 0:
        return set()
    faceless = _faceless(identities)
    candidates = [i for i in range(identities) if i not in faceless]
    rank = {i: np.random.default_rng([seed, i, OFF_ARCHETYPE_STREAM]).random() for i in candidates}
    return set(sorted(candidates, key=rank.__getitem__)[:round(fraction * len(candidates))])


def _draw_persona(index: int, identities: int, rng: np.random.Generator, gender: str | None = None) -> Persona:
    """A persona from `rng`'s draws; `gender` fixes the gender (the draw for it still happens)."""
    drawn = "m" if rng.random() < MALE_SHARE else "f"
    gender = gender or drawn
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
