"""Expression creases: the skin's folds that some action units make, drawn as shading at the photo's
own resolution.

Moving pixels gives an expression its geometry, not its new appearance: lowered brows alone do not
make the vertical furrows between them, nor raised inner brows the lines across the middle of the
forehead. Where the warp head's unit coefficients (``basis.ACTION_UNITS``, scaled by the edit strength)
ask for those movements, this module darkens thin valleys on the skin, each a soft Gaussian profile
with a fainter lit ridge beside it, multiplied into the edited pixels (the photo's own texture and
colour stay; only the light changes):

- brow lowerer (AU 4): two near-vertical furrows between the inner brows (glabellar lines);
- inner brow raiser (AU 1): three lines across the middle of the forehead;
- outer brow raiser (AU 2): the same lines' outer parts;
- lip corner puller (AU 12): the nasolabial folds, from beside the nose's wings to past the mouth's
  corners; with the lower lids raised as well (the cheek raiser, AU 6, of a felt smile), crow's feet
  fanning out from the eyes' outer corners;
- chin raiser (AU 17): the fold between the lower lip and the raised chin.

The creases are placed on the INPUT face from its own 68 landmarks (dlib, unit crop coordinates) and
read where the backward flow reads the photo, so they move with the skin they are on. Sizes are in
units of the distance between the eyes, seen through the photo's blur (:data:`BLUR`). :data:`DEPTH` (the darkening per unit coefficient) was chosen on the calibration faces
(docs/report/calibration).
"""
from __future__ import annotations

import numpy as np
import torch

from affectedit.basis import ACTION_UNITS

__all__ = ["BLUR", "DEPTH", "MIN_COEFFICIENT", "WIDTH", "crease_units", "extent", "shading"]

# The darkening at a crease's centre per unit coefficient (0.1 = 10% darker for a coefficient of 1).
DEPTH = 0.1
# A crease's half-width (the Gaussian's sigma) in eye distances, and the photo's own blur (a
# Gaussian's sigma, photo pixels) it is seen through: on a small face a fold of that width is wider
# and fainter than the drawing's, as the camera would have shown it.
WIDTH = 0.02
BLUR = 1.0
# The lit ridge beside a crease, relative to its darkening, and how far from it (in widths).
RIDGE, RIDGE_AT = 0.35, 2.2
# How far a crease's profile reaches (in widths; its values there are below 1e-4).
_REACH = 8.0
# Units below this coefficient draw nothing.
MIN_COEFFICIENT = 0.05

_NAMES = list(ACTION_UNITS)
_CREASING = ("brow_lower", "inner_brow_raise", "outer_brow_raise", "lower_lid_raise", "lip_corner_pull", "chin_raise")


def crease_units(units: torch.Tensor) -> dict[str, float]:
    """{unit name: coefficient} of one face's units (1 x (U + 1) or (U + 1)) that draw creases (those
    at :data:`MIN_COEFFICIENT` or more)."""
    u = units.reshape(-1)
    out = {n: float(u[_NAMES.index(n)]) for n in _CREASING}
    out = {n: c for n, c in out.items() if c >= MIN_COEFFICIENT}
    if "lip_corner_pull" not in out:  # raised lower lids crease only with a smile (the cheek raiser, not tightened lids)
        out.pop("lower_lid_raise", None)
    return out


def _near(x, y, points, reach: float):
    """The rows and columns (slices) of the grid (x, y) (h x w) within ``reach`` of the box around
    ``points``; None when no point of the grid is there. A crease is computed only there."""
    px, py = [p[0] for p in points], [p[1] for p in points]
    step = 4  # looked for on every 4th row and column (the read positions are smooth), then widened by as much
    xs, ys = x[::step, ::step], y[::step, ::step]
    inside = (xs >= min(px) - reach) & (xs <= max(px) + reach) & (ys >= min(py) - reach) & (ys <= max(py) + reach)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if not len(rows):
        return None
    h, w = x.shape
    return (slice(max(int(rows[0]) * step - step, 0), min(int(rows[-1]) * step + step + 1, h)),
            slice(max(int(cols[0]) * step - step, 0), min(int(cols[-1]) * step + step + 1, w)))


def _segment(x, y, a, b, bow: float = 0.0):
    """(s, d): for points (x, y), the position along the segment a -> b (0..1) and the signed distance
    from it (positive to the left of a -> b, i.e. up for a segment drawn left to right in image
    coordinates), the segment bowed by ``bow`` (the middle raised by bow, quadratically to the ends)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    s = ((x - ax) * dx + (y - ay) * dy) / length2
    d = ((x - ax) * dy - (y - ay) * dx) / float(np.sqrt(length2))  # left of the direction (up, for a -> b rightwards)
    if bow:
        c = np.clip(s, 0, 1)
        d = d - bow * 4 * c * (1 - c)
    return s, d


def _taper(s, end: float = 0.2):
    """1 along the middle of a crease, fading smoothly to 0 over ``end`` of its length at each end."""
    t = np.clip((0.5 - np.abs(s - 0.5)) / end, 0, 1)
    return t * t * (3 - 2 * t)


def _profile(d, width):
    """The darkening (a Gaussian valley) minus the lit ridge on the upper/left side."""
    dark = np.exp(-0.5 * (d / width) ** 2)
    ridge = np.exp(-0.5 * ((d - RIDGE_AT * width) / (1.5 * width)) ** 2)
    return (dark - RIDGE * ridge) * (np.abs(d) < _REACH * width)  # nothing beyond its reach (extent's box)


# The forehead lines' heights above the brows' highest point (eye distances) and their strengths.
_FOREHEAD = ((0.2, 1.0), (0.33, 0.85), (0.46, 0.6))
_FOREHEAD_HALF = 0.95  # their half-length across the forehead, eye distances
_WAVE = 0.012  # their waviness (eye distances)
_BOW = 0.05  # how much higher their middle is than their ends (eye distances)


def _frame(lm: np.ndarray):
    """(eye distance, centre x between the inner brows, the inner brows' mean y, the brows' highest y)."""
    e = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
    return e, float(lm[21, 0] + lm[22, 0]) / 2, float(lm[21, 1] + lm[22, 1]) / 2, float(min(lm[17:27, 1]))


def extent(lm: np.ndarray, coefficients: dict[str, float]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in the landmarks' coordinates: a box holding every crease of ``coefficients``
    drawn on the face with landmarks ``lm`` (68 x 2)."""
    e, cx, inner_y, top = _frame(np.asarray(lm, dtype=np.float64))
    x0, y0, x1, y1 = cx - 0.25 * e, inner_y - 0.35 * e, cx + 0.25 * e, inner_y + 0.15 * e  # the glabellar lines
    if coefficients.get("lip_corner_pull") and coefficients.get("lower_lid_raise"):  # crow's feet
        x0, x1 = min(x0, float(lm[36, 0]) - 0.45 * e), max(x1, float(lm[45, 0]) + 0.45 * e)
        y0, y1 = min(y0, float(min(lm[36, 1], lm[45, 1])) - 0.35 * e), max(y1, float(max(lm[36, 1], lm[45, 1])) + 0.35 * e)
    if coefficients.get("lip_corner_pull"):
        x0, x1 = min(x0, float(min(lm[31, 0], lm[48, 0])) - 0.35 * e), max(x1, float(max(lm[35, 0], lm[54, 0])) + 0.35 * e)
        y1 = max(y1, float(max(lm[48, 1], lm[54, 1])) + 0.35 * e)
    if coefficients.get("chin_raise"):
        x0, x1 = min(x0, float(lm[57, 0]) - 0.3 * e), max(x1, float(lm[57, 0]) + 0.3 * e)
        y1 = max(y1, float(lm[57, 1] + 0.33 * (lm[8, 1] - lm[57, 1])) + 0.3 * e)
    if coefficients.get("inner_brow_raise") or coefficients.get("outer_brow_raise"):
        x0, x1 = min(x0, cx - _FOREHEAD_HALF * e), max(x1, cx + _FOREHEAD_HALF * e)
        y0 = min(y0, top - (_FOREHEAD[-1][0] + _BOW + _WAVE + _REACH * WIDTH * 1.5) * e)
    return x0, y0, x1, y1


def shading(rx: torch.Tensor, ry: torch.Tensor, lm: np.ndarray, coefficients: dict[str, float], pixel: float,
            depth: float | None = None) -> torch.Tensor | None:
    """The factor (h x w, around 1) that draws the creases of ``coefficients`` (:func:`crease_units`)
    on the input face whose 68 landmarks are ``lm`` (68 x 2, unit crop coordinates), at the read
    positions (rx, ry) (h x w, unit crop coordinates: where each output pixel reads the input).
    ``pixel``: one photo pixel in unit crop coordinates. None where nothing is drawn. (Computed with
    numpy in float32: the many small operations on each crease's window cost a third of torch's.)"""
    depth = DEPTH if depth is None else depth
    if not coefficients or depth <= 0:
        return None
    e, cx, inner_y, top = _frame(np.asarray(lm, dtype=np.float64))
    # as a photo's own blur (BLUR pixels) would show the fold: wider and fainter on a small face
    width = float(np.hypot(WIDTH * e, BLUR * pixel))
    depth = depth * WIDTH * e / width
    rx, ry = np.asarray(rx, dtype=np.float32), np.asarray(ry, dtype=np.float32)
    dark = np.zeros(rx.shape, np.float32)
    def crease(a, b, strength, profile_sign: float, w: float, end: float, bow: float = 0.0, wave=None, fade: float = 0.0):
        a, b = (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))  # Python floats: numpy scalars cost a tensor per use
        reach = _REACH * w + abs(bow) + (_WAVE * e if wave is not None else 0.0)  # its profile, bow and wave reach no farther
        win = _near(rx, ry, (a, b), reach)
        if win is None:
            return
        x, y = rx[win], ry[win]
        s, d = _segment(x, y, a, b, bow)
        # only the pixels the crease can darken: along it (the taper is 0 at and beyond its ends) and
        # within its profile's reach (plus the wave's); every other pixel of the window adds 0 (computed
        # for the whole window and masked: picking the pixels out first is several times slower)
        near = (s > 0) & (s < 1) & (np.abs(d) < _REACH * w + (_WAVE * e if wave is not None else 0.0))
        if not bool(near.any()):
            return
        if wave is not None:  # skin folds are not ruled lines
            d = d + _WAVE * e * np.sin(2.6 * np.pi * (x - cx) / e + wave)
        k = strength(x) if callable(strength) else strength
        if fade:
            k = k * (1 - fade * np.clip(s, 0, 1))
        dark[win] += k * _taper(s, end) * _profile(profile_sign * d, w) * near

    c4 = coefficients.get("brow_lower", 0.0)
    if c4:
        for side in (-1.0, 1.0):  # glabellar lines: from above the inner brows down toward the nose root, converging
            crease((cx + side * 0.12 * e, inner_y - 0.26 * e), (cx + side * 0.075 * e, inner_y + 0.07 * e), c4,
                   -side, 0.7 * width, 0.3)  # narrower; the ridge toward the middle
    c1, c2 = coefficients.get("inner_brow_raise", 0.0), coefficients.get("outer_brow_raise", 0.0)
    if c1 or c2:
        half = _FOREHEAD_HALF * e

        def across(x):  # the middle for the inner brows' raise, the sides for the outer brows'
            along = (x - cx) / e
            return c1 * np.exp(-0.5 * (along / 0.32) ** 2) + c2 * np.exp(-0.5 * ((np.abs(along) - 0.55) / 0.25) ** 2)

        for k, (height, w) in enumerate(_FOREHEAD):
            y = top - height * e
            crease((cx - half, y), (cx + half, y), lambda x, w=w: w * across(x), 1.0, width * (1 + 0.15 * k), 0.25,
                   bow=_BOW * e, wave=1.9 * k)
    c12 = coefficients.get("lip_corner_pull", 0.0)
    if c12:
        for side, nose, corner in ((-1.0, lm[31], lm[48]), (1.0, lm[35], lm[54])):
            # nasolabial folds: from beside the nose's wing to beside and below the mouth's corner,
            # bowed outward; deepest by the nose, the lit cheek outside
            crease((nose[0] + side * 0.10 * e, nose[1] - 0.04 * e), (corner[0] + side * 0.10 * e, corner[1] + 0.14 * e),
                   c12, side, 1.3 * width, 0.25, bow=side * 0.04 * e, fade=0.5)
    c6 = min(coefficients.get("lower_lid_raise", 0.0), c12)  # the cheek raiser of a smile, not tightened lids
    if c6 >= MIN_COEFFICIENT:
        for side, corner in ((-1.0, lm[36]), (1.0, lm[45])):  # crow's feet: short lines fanning out from the eye's outer corner
            for angle, k in ((0.55, 0.7), (0.05, 1.0), (-0.45, 0.8)):
                direction = np.array([side * np.cos(angle), -np.sin(angle)])
                a, b = corner + 0.08 * e * direction, corner + 0.32 * e * direction
                crease(tuple(a), tuple(b), c6 * k, side if angle >= 0 else -side, 0.6 * width, 0.35)
    c17 = coefficients.get("chin_raise", 0.0)
    if c17:  # the fold between the lower lip and the raised chin, the chin's bulge lit below it
        y = float(lm[57, 1]) + 0.33 * float(lm[8, 1] - lm[57, 1])
        x = float(lm[57, 0])
        crease((x - 0.22 * e, y), (x + 0.22 * e, y), c17, -1.0, width, 0.35, bow=-0.03 * e)
    if not dark.any():
        return None
    return torch.from_numpy(1 - depth * dark)
