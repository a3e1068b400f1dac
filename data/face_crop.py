"""Find the face in a photo and crop it the way the VGGFace frontal faces are framed.

The detector is dlib's HOG frontal-face detector (its model is compiled into the dlib-bin wheel:
nothing is downloaded at run time; about 0.15 s a photo on one CPU core at the working size). Its
score is the SVM's margin: a box scoring under DETECTION_THRESHOLD is no face. The other
candidates measured failed the dependency pins (facenet-pytorch's MTCNN needs torch < 2.3 and
numpy < 2), ship no model (MediaPipe's tasks and OpenCV's YuNet download theirs) or need TensorFlow.

A photo with no face upright is searched turned by 90°, 180° and 270° (EXIF orientation is already
applied by the decoder); of several faces the most confident one is taken, and a note says so.

The training faces show the whole head with some hair, neck and background around it: the
face (cheek to cheek) takes about 60% of the picture's width. The detector's box spans about
the face, so the crop is the box grown by MARGIN of its side on every side (a square of 1.6
times the box); where that leaves the photo, the border is the grey (127) of the training canvas.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from data.datasets import BORDER

MARGIN = 0.3  # of the detected box's side, added on each side
WORK_SIDE = 512  # photos are searched at most this large (longer side), upsampled once: faces of 40 px and more
UPSAMPLE = 1
# dlib's own default is 0; on scikit-image's astronaut a mission patch scores 0.12 and the face 1.16.
DETECTION_THRESHOLD = 0.3


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    side: int
    score: float

    @property
    def box(self) -> tuple[int, int, int]:
        return self.x, self.y, self.side


@dataclass(frozen=True)
class Detection:
    """The photo turned so that the chosen face is upright (`turns` quarter turns counter-clockwise), the faces
    found in it, most confident first, and what a user should be told about the choice ('' when nothing)."""
    image: np.ndarray
    faces: list[Face]
    turns: int
    note: str


@cache
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def find_faces(image: np.ndarray, threshold: float = DETECTION_THRESHOLD) -> list[Face]:
    """The frontal faces of an upright BGR image scoring at least `threshold`, most confident first, in its pixels."""
    scale = min(1.0, WORK_SIDE / max(image.shape[:2]))
    work = image if scale == 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes, scores, _ = _detector().run(np.ascontiguousarray(work[..., ::-1]), UPSAMPLE, threshold)
    faces = [Face(round(b.left() / scale), round(b.top() / scale), round(max(b.width(), b.height()) / scale),
                  float(s)) for b, s in zip(boxes, scores) if s >= threshold]
    return sorted(faces, key=lambda f: -f.score)


def detect_face(image: np.ndarray, threshold: float = DETECTION_THRESHOLD) -> Detection:
    """Faces of a BGR photo: upright, else the quarter turn whose best face is the most confident."""
    faces, turns, image_turned = find_faces(image, threshold), 0, image
    if not faces:
        for k in (1, 2, 3):
            turned = np.ascontiguousarray(np.rot90(image, k))
            found = find_faces(turned, threshold)
            if found and (not faces or found[0].score > faces[0].score):
                faces, turns, image_turned = found, k, turned
    notes = []
    if faces and turns:
        notes.append(f"no face upright: turned {90 * turns}° counter-clockwise")
    if len(faces) > 1:
        others = ", ".join(f"{f.score:.2f} at ({f.x}, {f.y})" for f in faces[1:])
        notes.append(f"{len(faces)} faces: took the most confident ({faces[0].score:.2f} at ({faces[0].x}, "
                     f"{faces[0].y}), {faces[0].side} px); the others scored {others}")
    return Detection(image_turned, faces, turns, "; ".join(notes))


def crop_face(image: np.ndarray, box: tuple[int, int, int], margin: float = MARGIN) -> np.ndarray:
    """The square around `box` (x, y, side) grown by `margin` of its side on each side, grey where off the photo."""
    x, y, side = box
    pad = round(margin * side)
    top, left, size = y - pad, x - pad, side + 2 * pad
    h, w = image.shape[:2]
    out = np.full((size, size, 3), BORDER, np.uint8)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
    out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return out
