"""Face detection, alignment and paste-back on real photos from ../shared/data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectedit import faces as F
from affectedit.affine import apply_affine, invert_affine
from affectedit.errors import UserError

DATA = Path(__file__).parents[1].parent / "shared" / "data"
LONDON = DATA / "london-portraits" / "images"
PORTRAITS = [LONDON / "neutral_front" / "001_03.jpg", LONDON / "smiling_front" / "001_08.jpg"]
LFW = DATA / "lfw-expressions" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"

pytestmark = pytest.mark.skipif(not PORTRAITS[0].is_file(), reason="../shared/data not available")


@pytest.fixture(scope="module")
def portrait():
    img = Image.open(PORTRAITS[0])
    img.load()
    return img


@pytest.fixture(scope="module")
def face(portrait):
    faces = F.detect_faces(portrait)
    assert len(faces) == 1
    return faces[0]


def test_model_file_and_missing():
    assert F.dlib_model_file("shape_predictor_5_face_landmarks.dat").is_file()
    with pytest.raises(UserError):
        F.dlib_model_file("no_such_model.dat")


@pytest.mark.parametrize("path", PORTRAITS)
def test_portrait_has_one_sensible_face(path):
    img = Image.open(path)
    faces = F.detect_faces(img)
    assert len(faces) == 1
    f = faces[0]
    x0, y0, x1, y1 = f.box
    w, h = img.size
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert 0.2 * w < x1 - x0 < 0.7 * w  # a head-and-shoulders portrait
    assert abs((x0 + x1) / 2 - w / 2) < 0.15 * w
    assert f.landmarks.shape == (5, 2) and f.transform.shape == (2, 3) and f.transform.dtype == np.float64
    # landmarks inside the box (roughly) and in dlib order: point 0 right of point 2, nose below eyes
    lm = f.landmarks
    assert np.all((lm[:, 0] > x0 - 5) & (lm[:, 0] < x1 + 5) & (lm[:, 1] > y0 - 5) & (lm[:, 1] < y1 + 5))
    assert lm[0, 0] > lm[1, 0] > lm[3, 0] > lm[2, 0]
    assert lm[4, 1] > lm[:4, 1].max()
    assert f.score > 0


def test_small_lfw_image_and_modes():
    img = Image.open(LFW)
    faces = F.detect_faces(img)
    assert len(faces) >= 1
    # any PIL mode is accepted and gives the same detection
    for mode in ("L", "RGBA", "P"):
        fs = F.detect_faces(img.convert(mode))
        assert len(fs) >= 1
        assert np.abs(np.array(fs[0].box) - np.array(faces[0].box)).max() < 0.1 * img.width


def test_no_face():
    assert F.detect_faces(Image.new("RGB", (320, 240), (128, 128, 128))) == []
    img = Image.open(PORTRAITS[0])
    background = img.crop((0, 0, 200, 200))  # top-left corner: plain studio wall
    assert F.detect_faces(background) == []


def test_align_shape_mode_and_template(portrait, face):
    for size in (96, 150):
        crop = F.align_face(portrait, face, size)
        assert crop.mode == "RGB" and crop.size == (size, size)
    # transform maps landmarks near the template (least squares: small residual)
    mapped = apply_affine(face.transform, face.landmarks)
    assert np.abs(mapped - F.TEMPLATE).max() < 0.03
    # matrix(size) is size * transform - 0.5
    m = face.matrix(150)
    np.testing.assert_allclose(apply_affine(m, face.landmarks), mapped * 150 - 0.5, atol=1e-9)


def test_transform_round_trip():
    rng = np.random.default_rng(0)
    ang, scale, t = 0.3, 250.0, np.array([400.0, 300.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lm = (F.TEMPLATE @ r.T) * scale + t  # an exact similarity image of the template
    f = F.Face.from_landmarks(lm)
    np.testing.assert_allclose(apply_affine(f.transform, lm), F.TEMPLATE, atol=1e-9)
    assert f.scale == pytest.approx(1 / scale)
    back = apply_affine(invert_affine(f.transform), F.TEMPLATE)
    np.testing.assert_allclose(back, lm, atol=1e-6)
    noisy = lm + rng.normal(0, 1.0, lm.shape)
    assert np.abs(apply_affine(F.Face.from_landmarks(noisy).transform, noisy) - F.TEMPLATE).max() < 0.02


def test_chip_matches_dlib(portrait, face):
    dlib = pytest.importorskip("dlib")
    arr = np.asarray(portrait.convert("RGB"))
    pts = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(*[int(v) for v in face.box]), pts)
    for size, tol in ((256, 1.5), (150, 4.0)):
        ours = np.asarray(F.align_face(portrait, face, size)).astype(np.float32)
        theirs = dlib.get_face_chip(arr, shape, size, F.CHIP_PADDING).astype(np.float32)
        assert np.abs(ours - theirs).mean() < tol, size


def test_face_mask():
    m = F.face_mask(96)
    assert m.shape == (96, 96) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() == 1.0
    # inner face (eyes, nose, mouth) is 1, corners and the crop's border are 0
    for u, v in list(F.TEMPLATE) + [(0.5, 0.75)]:
        assert m[int(v * 96), int(u * 96)] == 1.0
    assert m[0].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


@pytest.mark.parametrize("method", ["alpha", "poisson"])
def test_paste_back_outside_unchanged_inside_changed(portrait, face, method):
    size = 128
    crop = F.align_face(portrait, face, size)
    edited = Image.fromarray(255 - np.asarray(crop))
    out = F.paste_back(portrait, face, edited, method=method)
    assert out.size == portrait.size and out.mode == "RGB"
    before, after = np.asarray(portrait), np.asarray(out)
    # support of the warped mask, computed independently: photo pixels whose crop coordinates fall
    # where the mask is > 0 (with a one-pixel safety margin for bilinear interpolation)
    h, w = before.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    uv = apply_affine(face.matrix(size), np.stack([xs.ravel(), ys.ravel()], 1)).reshape(h, w, 2)
    mask = F.face_mask(size)
    iu = np.clip(np.rint(uv[..., 0]).astype(int), -2, size + 1)
    iv = np.clip(np.rint(uv[..., 1]).astype(int), -2, size + 1)
    padded = np.zeros((size + 4, size + 4), np.float32)
    padded[2:-2, 2:-2] = mask
    support = padded[iv + 2, iu + 2] > 0
    outside = ~_dilate(support, 2)
    assert outside.sum() > 0.5 * h * w
    np.testing.assert_array_equal(after[outside], before[outside])
    # inside the region where the mask is 1, the inverted crop shows
    core = padded[iv + 2, iu + 2] >= 1.0
    assert core.sum() > 1000
    diff = np.abs(after.astype(int) - before.astype(int))[core].mean()
    assert diff > (40 if method == "alpha" else 10)


def test_paste_back_identity_and_sizes(portrait, face):
    before = np.asarray(portrait).astype(int)
    for size in (96, 256):
        out = np.asarray(F.paste_back(portrait, face, F.align_face(portrait, face, size))).astype(int)
        # pasting the unedited crop back changes the photo only by resampling blur
        assert np.abs(out - before).mean() < 1.0
    with pytest.raises(ValueError):
        F.paste_back(portrait, face, Image.new("RGB", (96, 64)))


def test_batch(portrait, face):
    batch = F.align_faces_batch(portrait, [face, face], 64)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], np.asarray(F.align_face(portrait, face, 64)))


def test_small_face_in_large_photo_and_face_at_edge(portrait):
    canvas = Image.new("RGB", (1600, 1200), (200, 200, 200))
    canvas.paste(portrait.resize((400, 400)), (800, 400))
    faces = F.detect_faces(canvas)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 800 < x0 < x1 < 1200 and 400 < y0 < y1 < 800
    # a face cut by the photo's left edge: alignment replicates the border, paste-back stays in bounds
    edge = portrait.crop((300, 150, 675, 600))
    faces = F.detect_faces(edge)
    assert len(faces) == 1
    crop = F.align_face(edge, faces[0], 96)
    out = F.paste_back(edge, faces[0], Image.fromarray(255 - np.asarray(crop)))
    assert out.size == edge.size
    before, after = np.asarray(edge), np.asarray(out)
    assert np.array_equal(before[:, -100:], after[:, -100:])  # far right: hair and wall untouched
    assert not np.array_equal(before, after)


def test_a_portrait_skips_the_small_face_pass_unless_asked(monkeypatch):
    """A face of a third of the photo makes it a portrait: one HOG pass; portrait=None runs both."""
    from PIL import Image

    from affectedit import faces
    from conftest import LONDON

    photo = Image.open(sorted((LONDON / "images" / "neutral_front").glob("*.jpg"))[0]).convert("RGB")
    runs = []
    real = faces._hog_detector

    class Counting:
        def __init__(self, det):
            self.det = det

        def run(self, *a):
            runs.append((max(a[0].shape), a[1]))  # (longest side of the copy, upsampling)
            return self.det.run(*a)

    monkeypatch.setattr(faces, "_hog_detector", lambda: Counting(real()))
    one = faces.detect_faces(photo)
    assert len(one) == 1 and runs == [(faces.QUICK_SIZE, 0)]  # the quick look alone
    runs.clear()
    both = faces.detect_faces(photo, portrait=None)
    assert len(both) == 1 and runs == [(faces.DETECT_SIZE, 0), (faces.DETECT_SIZE, 1)]
    width = both[0].box[2] - both[0].box[0]
    assert one[0].box == pytest.approx(both[0].box, abs=0.1 * width)  # the coarser copy quantises the box
    # the landmarks (found on the full photo from either box) agree to 1% of the face
    assert np.abs(one[0].landmarks - both[0].landmarks).max() < 0.01 * width
