"""Voices: glottal pulses through formant filters, syllable by syllable, then a recording channel."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import signal

from data.synthetic.people import NATIONALITIES, Persona, VOWEL_FAVOUR


SAMPLE_RATE = 16000

# Peterson & Barney (1952) adult male F1, F2, F3 (Hz) of /i ɪ ɛ æ ɑ ɔ ʊ u/.
VOWELS = np.array([
    [270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
], dtype=np.float64)
F4_HZ = 3500.0
REFERENCE_VTL_CM = 17.0  # the tract length the vowel table belongs to
BANDWIDTHS_HZ = np.array([80.0, 100.0, 150.0, 220.0])
FFT_SIZE, HOP = 512, 256

# ---------------------------------------------------------------------------
# Voices: glottal pulses -> formant filters, syllable by syllable, then a channel
# ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def short_time_fft() -> signal.ShortTimeFFT:
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
    stft = short_time_fft()
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
