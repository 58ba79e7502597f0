"""Expression creases (affectedit.creases): where they are drawn on a real portrait's own landmarks,
that only the units that make them draw them, and that they reach the photo through apply_to_photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import faces as F
from affectedit import warp
from affectedit.basis import ACTION_UNITS
from affectedit.creases import crease_units, extent, shading
from affectedit.photo_metrics import landmarks68
from affectedit.warp import CropEdit, apply_to_photo

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "london_001_neutral.jpg"
U = len(ACTION_UNITS) + 1


@pytest.fixture(scope="module")
def portrait():
    img = Image.open(EXAMPLE).convert("RGB")
    face = F.detect_faces(img)[0]
    lm = landmarks68(img, face)
    t = np.asarray(face.transform)
    return img, face, lm, lm @ t[:, :2].T + t[:, 2]  # photo pixels, unit crop coordinates


def _units(**units) -> torch.Tensor:
    u = torch.zeros(1, U)
    for name, v in units.items():
        u[0, list(ACTION_UNITS).index(name)] = v
    return u


# a grid of unit crop coordinates from LO to HI (the forehead lies above the crop, below 0)
LO, HI, SIZE = -0.5, 1.0, 300
PIXEL = (HI - LO) / SIZE


def _grid():
    p = LO + (torch.arange(SIZE, dtype=torch.float32) + 0.5) * PIXEL
    uy, ux = torch.meshgrid(p, p, indexing="ij")
    return ux, uy


def _i(v) -> int:
    return int((v - LO) / PIXEL)


def _at(shade, x, y):
    return float(shade[_i(y), _i(x)])


def test_only_the_creasing_units_above_the_threshold_draw():
    assert crease_units(_units(upper_lid_raise=2.0, lower_lid_raise=1.0, lip_bare=1.0, nose_wrinkle=1.0)) == {}
    assert crease_units(_units(brow_lower=0.01, lip_corner_pull=-0.2)) == {}
    assert set(crease_units(_units(brow_lower=1.0, inner_brow_raise=0.5, chin_raise=1.0, lip_corner_pull=1.0, lip_bare=1.0))) == {
        "brow_lower", "inner_brow_raise", "chin_raise", "lip_corner_pull"}
    assert set(crease_units(_units(lower_lid_raise=1.0, lip_corner_pull=1.0))) == {"lower_lid_raise", "lip_corner_pull"}
    ux, uy = _grid()
    assert shading(ux, uy, np.zeros((68, 2)) + np.arange(68)[:, None] / 68, {}, PIXEL) is None


def test_lowered_brows_fold_between_the_inner_brows_only(portrait):
    _, _, _, unit = portrait
    ux, uy = _grid()
    shade = shading(ux, uy, unit, {"brow_lower": 1.5}, PIXEL, depth=0.1)
    cx, inner_y = (unit[21, 0] + unit[22, 0]) / 2, (unit[21, 1] + unit[22, 1]) / 2
    e = np.linalg.norm(unit[42:48].mean(0) - unit[36:42].mean(0))
    # darker along the two furrows (either side of the midline, a little above the inner brows) ...
    band = shade[_i(inner_y - 0.05 * e), _i(cx - 0.2 * e):_i(cx + 0.2 * e)]
    assert float(band.min()) < 0.9
    left = band[: len(band) // 2].argmin()
    right = band[len(band) // 2:].argmin() + len(band) // 2
    assert (right - left) * PIXEL > 0.1 * e  # two furrows, apart
    # ... and nowhere near the eyes, the mouth or the forehead's sides
    for x, y in [unit[36], unit[45], unit[48], unit[54], unit[57], (cx - 0.8 * e, inner_y - 0.3 * e)]:
        assert abs(_at(shade, x, y) - 1) < 1e-3


def test_a_smile_folds_from_the_nose_past_the_mouth_corners_and_a_raised_chin_below_the_lip(portrait):
    _, _, _, unit = portrait
    ux, uy = _grid()
    e = np.linalg.norm(unit[42:48].mean(0) - unit[36:42].mean(0))
    smile = shading(ux, uy, unit, {"lip_corner_pull": 1.5}, PIXEL, depth=0.1)
    for side, nose, corner in ((-1, unit[31], unit[48]), (1, unit[35], unit[54])):
        mid = (nose + corner) / 2 + np.array([side * 0.12 * e, 0.0])  # halfway down, outside the line nose-corner
        row = smile[_i(mid[1]), _i(mid[0] - 0.1 * e):_i(mid[0] + 0.1 * e)]
        assert float(row.min()) < 0.93
    # nothing on the lips, between the nose and the mouth's middle, or on the chin
    for point in [unit[51], unit[57], (unit[33] + unit[51]) / 2, unit[8]]:
        assert abs(_at(smile, point[0], point[1]) - 1) < 1e-3
    # a felt smile (the cheeks raised too) adds crow's feet beside the eyes' outer corners; a smile alone does not
    felt = shading(ux, uy, unit, {"lip_corner_pull": 1.5, "lower_lid_raise": 1.5}, PIXEL, depth=0.1)
    for side, corner in ((-1, unit[36]), (1, unit[45])):
        beside = (slice(_i(corner[1] - 0.1 * e), _i(corner[1] + 0.1 * e)),
                  slice(*sorted((_i(corner[0] + side * 0.1 * e), _i(corner[0] + side * 0.3 * e)))))
        assert float(felt[beside].min()) < 0.95 and float((smile[beside] - 1).abs().max()) < 1e-3
    chin = shading(ux, uy, unit, {"chin_raise": 1.5}, PIXEL, depth=0.1)
    column = chin[_i(unit[57, 1]):_i(unit[8, 1]), _i(unit[57, 0])]
    darkest = _i(unit[57, 1]) + int(column.argmin())
    assert float(column.min()) < 0.9 and _i(unit[57, 1]) < darkest < _i((unit[57, 1] + unit[8, 1]) / 2)
    assert abs(_at(chin, unit[48, 0] - 0.3 * e, unit[57, 1]) - 1) < 1e-3


def test_raised_inner_brows_line_the_middle_of_the_forehead_and_outer_ones_its_sides(portrait):
    _, _, _, unit = portrait
    ux, uy = _grid()
    e = np.linalg.norm(unit[42:48].mean(0) - unit[36:42].mean(0))
    cx, top = (unit[21, 0] + unit[22, 0]) / 2, unit[17:27, 1].min()
    inner = shading(ux, uy, unit, {"inner_brow_raise": 1.5}, PIXEL, depth=0.1)
    outer = shading(ux, uy, unit, {"outer_brow_raise": 1.5}, PIXEL, depth=0.1)

    def darkest(shade, x):  # the darkest point of the column above the brows at x
        col = shade[_i(top - 0.6 * e):_i(top), _i(x)]
        return float(col.min())

    assert darkest(inner, cx) < 0.9 and darkest(inner, cx - 0.75 * e) > 0.97
    assert darkest(outer, cx - 0.6 * e) < 0.93 and darkest(outer, cx) > darkest(outer, cx - 0.6 * e) + 0.05
    # nothing below the brows
    assert float((inner[_i(unit[36:48, 1].min()):] - 1).abs().max()) < 1e-3
    # the box of extent() holds every drawn pixel
    x0, y0, x1, y1 = extent(unit, {"inner_brow_raise": 1.5, "outer_brow_raise": 1.5})
    both = shading(ux, uy, unit, {"inner_brow_raise": 1.5, "outer_brow_raise": 1.5}, PIXEL, depth=0.1)
    drawn = (both - 1).abs() > 1e-4
    ys, xs = np.nonzero(drawn.numpy())
    xs, ys = LO + (xs + 0.5) * PIXEL, LO + (ys + 0.5) * PIXEL
    assert (xs >= x0).all() and (xs <= x1).all() and (ys >= y0).all() and (ys <= y1).all()


def test_photo_gets_creases_on_its_forehead_and_they_move_with_the_skin(portrait, monkeypatch):
    img, face, lm, unit = portrait
    src = np.asarray(img).astype(float)
    e = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    zero = torch.zeros(1, 2, 64, 64)
    sad = CropEdit(flow=zero.clone(), units=_units(inner_brow_raise=2.0), landmarks=torch.from_numpy(unit).float()[None],
                   mouth_flow=zero.clone())
    out = np.asarray(apply_to_photo(img, [face], sad)).astype(float)
    # the middle of the forehead, above the face's ellipse, is darker in places; the cheeks are untouched
    cx, top = int((lm[21, 0] + lm[22, 0]) / 2), int(lm[17:27, 1].min())
    column = (slice(int(top - 0.6 * e), top), slice(cx - 3, cx + 4))
    assert (out[column] - src[column]).mean(axis=(1, 2)).min() < -5
    cheek = (slice(int(lm[29, 1]) - 5, int(lm[29, 1]) + 5), slice(int(lm[1, 0]) + 10, int(lm[1, 0]) + 30))
    assert np.array_equal(out[cheek], src[cheek])
    assert np.array_equal(out[:, :20], src[:, :20])  # far from the face: untouched
    # without creases the same edit changes nothing (no flow, no other unit)
    monkeypatch.setattr(warp, "CREASES", False)
    assert np.array_equal(np.asarray(apply_to_photo(img, [face], sad)), np.asarray(img))
    monkeypatch.setattr(warp, "CREASES", True)


def test_creases_move_with_the_skin(portrait):
    """Placed on the input's landmarks and read where the flow reads the photo: a flow that reads
    from lower down (the skin moves up) moves the creases up with it, as far as the ellipse lets it in;
    beyond the face's region nothing moves."""
    img, face, lm, unit = portrait
    t = np.asarray(face.transform, dtype=np.float64)
    e = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    cx, top = int((lm[21, 0] + lm[22, 0]) / 2), int(lm[17:27, 1].min())
    box = (cx - 60, int(top - 0.8 * e), cx + 60, top)  # the middle of the forehead, photo pixels
    h, w = box[3] - box[1], box[2] - box[0]
    coefficients = {"inner_brow_raise": 2.0}
    zero = torch.zeros(2, h, w)
    down = zero.clone()
    down[1] = 0.04  # grid_sample units: 0.02 of the crop
    pixel = float(np.sqrt(abs(np.linalg.det(t[:, :2]))))  # one photo pixel in unit crop coordinates

    def darkest_row(flow, alpha, region=box):
        shade, _ = warp._crease_shade(box, region, flow, alpha, lm, t, coefficients)
        return int(shade[:, w // 2].argmin())

    still = darkest_row(zero, torch.ones(h, w))
    assert darkest_row(down, torch.ones(h, w)) == pytest.approx(still - 0.02 / pixel, abs=1.5)
    assert darkest_row(down, torch.zeros(h, w)) == still  # outside the face's ellipse nothing moves
    assert darkest_row(down, torch.ones(h, w), region=(0, 0, 10, 10)) == still  # nor beyond its region
