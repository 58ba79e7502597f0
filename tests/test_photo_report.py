"""The photo report's measures and the judge, on real London portraits and LFW faces (fast)."""
import json

import numpy as np
import pytest
from PIL import Image

from affectedit import photo_metrics as pm
from affectedit import photo_report as pr
from conftest import LONDON


def _open(rel):
    return Image.open(LONDON / "images" / rel).convert("RGB")


@pytest.fixture(scope="module")
def pair(shared_data):
    neutral, smiling = _open("neutral_front/001_03.jpg"), _open("smiling_front/001_08.jpg")
    return neutral, smiling, pm._largest_face(neutral)


def test_london_split_and_lfw_selection(shared_data):
    pairs = pr.london_val_pairs(LONDON)
    assert pairs and all(int(p["id"].split("_")[1]) % 2 == 1 for p in pairs)
    assert all(p["smiling"] is None or p["smiling"].is_file() for p in pairs)
    lfw = pr.lfw_val_neutral(shared_data / "lfw-expressions", 60)
    assert len(lfw) == 60 and len({p["id"].rsplit("_", 1)[0] for p in lfw}) == 60  # one per identity
    assert all(p["neutral"].is_file() for p in lfw)


def test_texture_and_change(pair):
    neutral, _, face = pair
    assert pm.texture_ratio(neutral, neutral, face) == pytest.approx(1.0)
    assert pm.mean_abs_change(neutral, neutral, face) == 0.0
    # a blurred face loses texture, noise adds it; a uniform +3 shift changes 3 grey levels
    from PIL import ImageFilter

    assert pm.texture_ratio(neutral.filter(ImageFilter.GaussianBlur(2)), neutral, face) < 0.6
    noisy = np.clip(np.asarray(neutral, np.float32) + np.random.default_rng(0).normal(0, 8, (675, 675, 1)), 0, 255)
    assert pm.texture_ratio(Image.fromarray(noisy.astype(np.uint8)), neutral, face) > 1.5
    brighter = Image.fromarray((np.asarray(neutral, np.int16) + 3).clip(0, 255).astype(np.uint8))
    assert pm.mean_abs_change(brighter, neutral, face) == pytest.approx(3.0, abs=0.1)
    # the eyes' box lies across the upper face, above the mouth's
    lm = pm.landmarks68(neutral, face)
    ex0, ey0, ex1, ey1 = pm.eyes_box(lm, (675, 675))
    mx0, my0, mx1, my1 = pm.mouth_box(lm, (675, 675))
    assert ey1 < my0 and ex1 - ex0 > mx1 - mx0
    x0, y0, x1, y1 = pm.face_box(face, (675, 675))
    assert 0 <= x0 < x1 <= 675 and 0 <= y0 < y1 <= 675 and (x1 - x0) > 150


def test_mouth_fraction_of_real_pair(pair):
    neutral, smiling, face = pair
    lm = pm.landmarks68(neutral, face)
    assert lm.shape == (68, 2)
    ref = pm._eye_centres(lm)
    n = lm[pm.MOUTH]
    s = pm.mouth_landmarks(smiling, None, ref)
    # the real smile widens the mouth: the corners (48, 54) move apart
    assert np.linalg.norm(s[6] - s[0]) > np.linalg.norm(n[6] - n[0]) + 5
    assert pm.mouth_fraction(n, s, s) == pytest.approx(1.0)
    assert pm.mouth_fraction(n, s, n) == pytest.approx(0.0)
    r = pm.pair_mouth_fraction(neutral, smiling, neutral, face)  # "edited" = the neutral photo itself
    assert r["fraction"] == pytest.approx(0.0, abs=1e-9) and r["smile_shift_px"] > 3
    # half-way between the two mouths is half-way
    assert pm.mouth_fraction(n, s, (n + s) / 2) == pytest.approx(0.5)


def test_judge_on_real_london_validation_pair(pair):
    from affectedit.judge import CLASSES, Judge

    neutral, smiling, _ = pair
    judge = Judge.load()
    p = judge.predict([neutral, smiling])
    assert p.shape == (2, len(CLASSES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert judge.top([neutral, smiling]) == ["neutral", "happiness"]
    # aligned crops give the same answer as photos
    from affectedit.faces import align_face

    crops = np.stack([np.asarray(align_face(im, pm._largest_face(im), 64)) for im in (neutral, smiling)])
    assert np.allclose(judge.predict(crops), p, atol=1e-5)
    assert judge.metadata["scores"]["lfw_val"]["balanced_accuracy"] > 0.5


def test_judge_no_face_is_nan():
    from affectedit.judge import Judge

    p = Judge.load().predict([Image.new("RGB", (120, 120), (128, 128, 128))])
    assert np.isnan(p).all()


def test_emotion_va():
    assert pr.emotion_va("happy")[0] > 0.5
    assert pr.emotion_va("sad")[0] < 0
    assert pr.emotion_va("surprised")[1] > 0.5


class _NoEdit:
    """An 'editor' that returns the photo unchanged: every measure has a known value."""

    def edit(self, image, valence, arousal):
        return image.copy()


def test_report_end_to_end_with_identity_editor(shared_data, tmp_path):
    r = pr.photo_report(_NoEdit(), tmp_path, data=shared_data, lfw_faces=1, london_faces=2, grid_rows=2, cell=96,
                        progress=False)
    assert r["faces"]["london"] == 2 and r["faces"]["lfw"] == 1
    s = r["summary"]["neutral"]["all"]
    assert s["same_person"] == 1.0 and s["change"]["max"] == 0.0
    assert s["texture_ratio"]["min"] == pytest.approx(1.0) and s["texture_ratio"]["max"] == pytest.approx(1.0)
    assert s["mouth_texture_ratio"]["mean"] == pytest.approx(1.0) and s["eyes_texture_ratio"]["mean"] == pytest.approx(1.0)
    assert r["summary"]["happy"]["all"]["identity_distance"]["max"] < 1e-6
    assert r["mouth"]["n"] == 2 and abs(r["mouth"]["median"]) < 1e-9
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["sad"]["all"]["n"] == 3
    md = (tmp_path / "README.md").read_text()
    assert "| happy" in md and "judge agrees" in md and "grid.jpg" in md
    grid = Image.open(tmp_path / "grid.jpg")
    assert grid.width > 6 * 96 and grid.height > 2 * 96


def test_calibration_faces_are_disjoint_from_the_reports():
    """Settings are chosen on LFW validation identities that the report never edits (and on no London face)."""
    lfw = pr.DEFAULT_DATA / "lfw-expressions"
    report = {f["id"].rsplit("_", 1)[0] for f in pr.lfw_val_neutral(lfw, 60)}
    for n in (10, 40, 200):
        calib = {f["id"].rsplit("_", 1)[0] for f in pr.lfw_val_neutral(lfw, n, calibration=True)}
        assert calib and not (calib & report)
