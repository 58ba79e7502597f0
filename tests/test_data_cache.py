"""prepare (real LFW faces + bad files), resume, FaceCache and the batch iterator."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from affectedit.data import cache as cache_mod
from affectedit.data.cache import FaceCache, batches, denormalize, normalize, prepare
from affectedit.errors import UserError

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-expressions"
needs_lfw = pytest.mark.skipif(not (LFW / "labels.csv").is_file(), reason="shared lfw-expressions data not found")


def _lfw_subset(tmp_path, n=12):
    """A small lfw-expressions tree: n real images, a truncated JPEG, a non-image, a face-less
    image and a row whose file is missing."""
    root = tmp_path / "lfw"
    with open(LFW / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["split"] == "train"][:n]
    for r in rows:
        dst = root / "images" / r["image"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LFW / "images" / r["image"], dst)
    bad = root / "images" / "Bad"
    bad.mkdir(parents=True)
    data = (LFW / "images" / rows[0]["image"]).read_bytes()
    (bad / "Bad_0001.jpg").write_bytes(data[: len(data) // 3])       # truncated JPEG
    (bad / "Bad_0002.jpg").write_text("this is not an image\n")       # not an image
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(np.full((250, 250, 3), 128, np.uint8) + rng.integers(0, 8, (250, 250, 3), dtype=np.uint8)).save(
        bad / "Bad_0003.jpg")                                         # an image without a face
    extra = [("Bad/Bad_0001.jpg", "neutral"), ("Bad/Bad_0002.jpg", "neutral"), ("Bad/Bad_0003.jpg", "happiness"),
             ("Bad/Bad_0004.jpg", "neutral")]                         # last one: missing file
    rows = rows[:5] + [{"image": i, "identity": "Bad", "emotion": e, "split": "train"} for i, e in extra] + rows[5:]
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "identity", "emotion", "split"])
        w.writeheader()
        w.writerows(rows)
    va = tmp_path / "va.csv"
    with open(va, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "emotion", "split", "valence", "arousal"])
        for i, r in enumerate(rows):
            w.writerow([r["image"], r["emotion"], "train", round(-0.5 + i / 20, 3), 0.25])
    return root, va, len(rows)


@needs_lfw
def test_prepare_real_faces_skips_bad_files_and_resumes(tmp_path, monkeypatch):
    root, va, n = _lfw_subset(tmp_path)
    out = tmp_path / "cache"
    s = prepare(root, "lfw", out, labels=va, split="train", size=32, workers=1, progress=False, chunk=4)
    reasons = {d["source"]: d["reason"] for d in json.loads((out / "meta.json").read_text())["skipped"]}
    assert reasons["Bad/Bad_0001.jpg"].startswith("unreadable or truncated image")
    assert reasons["Bad/Bad_0002.jpg"] == "not an image"
    assert reasons["Bad/Bad_0003.jpg"] == "no face found"
    assert reasons["Bad/Bad_0004.jpg"] == "missing file"
    assert s["skipped"] == len(reasons) >= 4 and s["count"] == n - s["skipped"] >= 11
    assert not (out / ".partial").exists()

    c = FaceCache(out)
    assert len(c) == s["count"] and c.images.shape[1:] == (32, 32, 3) and c.images.dtype == np.uint8
    assert c.images.std() > 20  # real image content
    # labels follow the sources in order
    va_map = {r["image"]: (float(r["valence"]), float(r["arousal"])) for r in csv.DictReader(open(va))}
    assert np.allclose(c.labels, [va_map[x] for x in c.sources])
    x, y = c[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert y.shape == (2,)
    meta = c.meta
    assert meta["count"] == len(meta["sources"]) == len(meta["emotions"]) == len(meta["identities"])
    assert meta["config"]["split"] == "train" and meta["skip_reasons"]["no face found"] >= 1

    # A finished cache with the same settings is left alone; other settings need --force.
    assert prepare(root, "lfw", out, labels=va, split="train", size=32, progress=False)["count"] == s["count"]
    with pytest.raises(UserError, match="other settings"):
        prepare(root, "lfw", out, labels=va, split="train", size=40, progress=False)

    # Interrupt a fresh run after 7 images, then resume: only the rest is processed and the
    # result equals the uninterrupted one.
    out2 = tmp_path / "cache2"
    real = cache_mod.align_sample
    calls = []

    def flaky(task):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(task[0])
        return real(task)

    monkeypatch.setattr(cache_mod, "align_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, "lfw", out2, labels=va, split="train", size=32, workers=1, progress=False, chunk=3)
    assert not (out2 / "meta.json").exists()
    state = json.loads((out2 / ".partial" / "state.json").read_text())
    assert state["done"] == 7
    with pytest.raises(UserError, match="unfinished"):
        FaceCache(out2)
    monkeypatch.setattr(cache_mod, "align_sample", real)
    resumed = []
    monkeypatch.setattr(cache_mod, "align_sample", lambda t: (resumed.append(t[0]), real(t))[1])
    s2 = prepare(root, "lfw", out2, labels=va, split="train", size=32, workers=1, progress=False)
    assert len(resumed) == n - 7
    assert s2["count"] == s["count"] and s2["skipped"] == s["skipped"]
    assert np.array_equal(np.load(out2 / "images.npy"), np.load(out / "images.npy"))


@needs_lfw
@pytest.mark.slow
def test_prepare_cli_with_workers(tmp_path):
    from affectedit.cli import main

    root, va, n = _lfw_subset(tmp_path, n=4)
    out = tmp_path / "c"
    rc = main(["prepare", "--data", str(root), "--format", "lfw", "--labels", str(va), "--size", "24",
               "--workers", "2", "--no-progress", "-o", str(out)])
    assert rc == 0
    assert len(FaceCache(out)) == 4
    assert main(["prepare", "--data", str(tmp_path / "missing"), "--format", "lfw", "-o", str(out)]) == 2


def _fake_cache(path, n=50, size=8, seed=0):
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.save(path / "images.npy", images)
    labels = np.stack([np.linspace(-1, 1, n), np.arange(n) / n], 1).astype(np.float32)
    np.save(path / "labels.npy", labels)
    (path / "meta.json").write_text(json.dumps({"size": size, "count": n, "sources": [f"{i}.jpg" for i in range(n)],
                                                "emotions": [None] * n, "identities": [None] * n}))
    return images, labels


def test_normalize_roundtrip():
    a = np.random.default_rng(1).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    t = normalize(a)
    assert t.shape == (2, 3, 5, 6) and t.min() >= -1 and t.max() <= 1
    assert normalize(a[0]).shape == (3, 5, 6)
    assert np.array_equal(denormalize(t), a) and np.array_equal(denormalize(t[1]), a[1])
    assert float(normalize(np.array([[[0, 255, 0]]], np.uint8))[1, 0, 0]) == 1.0
    assert denormalize(torch.full((3, 1, 1), 5.0)).max() == 255


def test_batches_deterministic_resumable_and_flipped(tmp_path):
    images, labels = _fake_cache(tmp_path / "c")
    c = FaceCache(tmp_path / "c")
    it = batches(c, 7, seed=3)
    first = [next(it) for _ in range(16)]  # crosses epochs (7 batches per epoch)
    again = batches(c, 7, seed=3)
    for a, b in zip(first, (next(again) for _ in range(16))):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    resumed = next(batches(c, 7, seed=3, start_step=11))
    assert torch.equal(resumed[0], first[11][0]) and torch.equal(resumed[1], first[11][1])
    other = next(batches(c, 7, seed=4))
    assert not torch.equal(other[1], first[0][1])

    # Every image is the cached one, flipped or not; about half are flipped; labels match.
    plain = normalize(images)
    lab = torch.from_numpy(labels)
    flips = 0
    for x, y in first[:7]:  # one epoch: each image at most once
        assert x.shape == (7, 3, 8, 8) and y.shape == (7, 2)
        for xi, yi in zip(x, y):
            k = int(torch.nonzero((lab == yi).all(1))[0])
            if torch.equal(xi, plain[k]):
                continue
            assert torch.equal(xi, plain[k].flip(-1))
            flips += 1
    assert 10 <= flips <= 39
    seen = torch.cat([y for _, y in first[:7]])
    assert len({tuple(v.tolist()) for v in seen}) == 49  # no repeats within an epoch
    x, _ = next(batches(c, 7, seed=3, hflip=False))
    assert torch.equal(x[0], plain[int(torch.nonzero((lab == first[0][1][0]).all(1))[0])])


def test_batch_size_and_unfinished_cache_errors(tmp_path):
    _fake_cache(tmp_path / "c", n=40)
    c = FaceCache(tmp_path / "c")
    with pytest.raises(UserError, match="larger than"):
        next(batches(c, 41, seed=0))
    with pytest.raises(UserError, match="not a finished face cache"):
        FaceCache(tmp_path)


@needs_lfw
def test_dataset_landmarks_and_boxes_give_the_detected_alignment():
    """AffectNet's 68 landmarks / box and CelebA's 5 landmarks are used instead of detection."""
    from PIL import Image

    from affectedit import faces

    name = next(csv.DictReader(open(LFW / "labels.csv")))["image"]
    path = str(LFW / "images" / name)
    img = Image.open(path).convert("RGB")
    face = faces.detect_faces(img)[0]
    ref = np.asarray(faces.align_face(img, face, 48)).astype(np.int16)

    lm68 = np.zeros((68, 2))
    lm68[[45, 42, 36, 39, 33]] = face.landmarks  # the 5 points dlib's model shares with iBUG-68
    got, why = cache_mod.align_sample((path, face.box, lm68, 48, False))
    assert why is None and np.abs(got.astype(np.int16) - ref).max() <= 1

    got, why = cache_mod.align_sample((path, face.box, None, 48, False))  # box only: detect inside it
    assert why is None and np.abs(got.astype(np.int16) - ref).max() <= 1
    got, why = cache_mod.align_sample((path, (0, 0, 10, 10), None, 48, False))
    assert got is None and why == "no face found in the given box"

    lm = face.landmarks
    eyes = np.array([(lm[2] + lm[3]) / 2, (lm[0] + lm[1]) / 2])  # image-left eye centre, image-right
    celeba5 = np.vstack([eyes, [[lm[4][0], lm[4][1] - 5], lm[4] + (-15, 25), lm[4] + (15, 25)]])
    got, why = cache_mod.align_sample((path, None, celeba5, 48, False))
    assert why is None and got.shape == (48, 48, 3)
    # CelebA: the eye centres land exactly on the template's; the face lands within ~2% of the
    # crop of where the detector's 5-point alignment puts it.
    from affectedit.data.align import face_from_landmarks

    f5 = face_from_landmarks(faces, celeba5, None)
    t = faces.TEMPLATE
    on_crop = lambda m, p: p @ m[:2, :2].T + m[:, 2]  # noqa: E731
    assert np.allclose(on_crop(f5.transform, eyes), [(t[2] + t[3]) / 2, (t[0] + t[1]) / 2])
    assert np.abs(on_crop(f5.transform, lm) - on_crop(face.transform, lm)).max() < 0.03


def test_balance_weights_raise_rare_expressions_on_the_real_labels():
    from affectedit.data.cache import balance_weights

    rows = list(csv.DictReader(open(Path(__file__).parents[1] / "data" / "lfw-expressions-va.csv")))
    labels = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    emotions = np.array([r["emotion"] for r in rows])
    assert balance_weights(labels, 0.0) is None
    share = {}
    for power in (0.5, 1.0):
        w = balance_weights(labels, power)
        assert w.shape == (len(rows),) and np.isclose(w.sum(), 1.0) and (w > 0).all()
        share[power] = {e: w[emotions == e].sum() for e in ("happiness", "neutral", "surprise", "sadness")}
    plain = {e: np.mean(emotions == e) for e in ("happiness", "neutral", "surprise", "sadness")}
    for e in ("surprise", "sadness"):  # rare expressions: drawn more often, the more so the stronger the power
        assert plain[e] * 2 < share[0.5][e] < share[1.0][e]
    for e in ("happiness", "neutral"):
        assert share[1.0][e] < share[0.5][e] < plain[e]


def test_balanced_batches_are_deterministic_resumable_and_favour_rare_labels(tmp_path):
    images, labels = _fake_cache(tmp_path / "c", n=49)
    labels[:42] = [0.8, 0.5]  # 42 "happy" faces and 7 distinct rare ones
    np.save(tmp_path / "c" / "labels.npy", labels)
    c = FaceCache(tmp_path / "c")
    it = batches(c, 7, seed=3, balance=1.0)
    first = [next(it) for _ in range(14)]
    resumed = next(batches(c, 7, seed=3, balance=1.0, start_step=9))
    assert torch.equal(resumed[0], first[9][0]) and torch.equal(resumed[1], first[9][1])
    seen = torch.cat([y for _, y in first])
    rare = (seen != torch.tensor([0.8, 0.5])).any(1).float().mean()
    assert rare > 0.3  # 7/49 = 0.14 without balancing; each cell is about equally likely with power 1
    plain = torch.cat([next(b)[1] for b in [batches(c, 49, seed=3)]])
    assert (plain != torch.tensor([0.8, 0.5])).any(1).sum() == 7


@needs_lfw
def test_prepare_refuses_labels_outside_the_square_and_damaged_state(tmp_path, capsys):
    """Labels of 50 or 1e30 never reach a cache (training would take them silently); a damaged
    unfinished run or index is one line naming the file, not a JSONDecodeError."""
    from affectedit.cli import main

    labels = Path(__file__).resolve().parents[1] / "data" / "lfw-expressions-va.csv"
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if r["split"] == "train"][:4]
    rows[1]["valence"], rows[2]["arousal"] = "50", "1e30"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "cache"
    with pytest.raises(UserError, match=r"outside \[-1, 1\]"):
        prepare(LFW, "lfw", out, labels=bad, split="train", size=32, progress=False)
    assert not (out / "meta.json").exists() and not (out / "images.npy").exists()
    # a damaged unfinished run: one line, and --force starts over
    (out / ".partial" / "state.json").write_text('{"config": ')
    rc = main(["prepare", "--data", str(LFW), "--format", "lfw", "--labels", str(labels), "--split", "train", "--size", "32",
               "--limit", "4", "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "state.json" in err[0] and "--force" in err[0]
    assert main(["prepare", "--data", str(LFW), "--format", "lfw", "--labels", str(labels), "--split", "train", "--size", "32",
                 "--limit", "4", "--no-progress", "--force", "-o", str(out)]) == 0
    (out / "meta.json").write_text("{")
    with pytest.raises(UserError, match="meta.json .* is damaged"):
        FaceCache(out)
    assert main(["prepare", "--data", str(LFW), "--format", "lfw", "--size", "4", "-o", str(tmp_path / "x")]) == 2
