"""Faces: shapes in a face frame (unit = half the face height), posed by one affine map, then photographed."""
from __future__ import annotations

import math

import cv2
import numpy as np

from data.synthetic.people import Persona


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
