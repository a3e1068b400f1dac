"""Find the face in a photo and crop it the way the VGGFace frontal faces are framed.

The detector is scikit-image's LBP frontal-face cascade, whose model file ships inside the
scikit-image wheel (nothing is downloaded at run time). opencv-python 5 no longer has
`CascadeClassifier` or its Haar files, and pinning opencv below 5 would change the decoder
and drawing code the stores and the synthetic corpus are made with.

The training faces show the whole head with some hair, neck and background around it: the
face (cheek to cheek) takes about 60% of the picture's width. The cascade's box spans about
the face, so the crop is the box grown by MARGIN of its side on every side (a square of 1.6
times the box); where that leaves the photo, the border is the grey (127) of the training canvas.
"""
from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from data.datasets import BORDER

MARGIN = 0.3  # of the detected box's side, added on each side
WORK_SIDE = 384  # photos are searched at most this large (longer side): faces of 24 px and more are found
MIN_FACE = 24  # px at the working size, the cascade's own window
SCALE_STEP = 1.1
MIN_NEIGHBOURS = 3  # overlapping hits a detection needs: fewer lets textures through, more misses faces


@cache
def _cascade():
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def detect_face(image: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, side) of the largest frontal face in a BGR image, in its pixels; None when there is none."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    scale = min(1.0, WORK_SIDE / max(gray.shape))
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if min(gray.shape) < MIN_FACE:
        return None
    found = _cascade().detect_multi_scale(img=gray.astype(np.float32) / 255, scale_factor=SCALE_STEP, step_ratio=1,
                                          min_size=(MIN_FACE, MIN_FACE), max_size=gray.shape,
                                          min_neighbor_number=MIN_NEIGHBOURS)
    if not found:
        return None
    box = max(found, key=lambda d: d["width"] * d["height"])
    return (round(box["c"] / scale), round(box["r"] / scale), round(max(box["width"], box["height"]) / scale))


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
