"""Dataset readers. Each yields :class:`Sample` records (one face image with its labels).

| format    | reader                | layout                                                            | V/A labels |
|-----------|-----------------------|-------------------------------------------------------------------|------------|
| affectnet | :class:`AffectNetReader` | ``training.csv`` / ``validation.csv`` (official columns) + images | yes (manual) |
| celeba    | :func:`read_celeba`   | ``img_align_celeba/`` + ``list_landmarks_align_celeba.txt``        | none: NaN  |
| folder    | :func:`read_folder`   | a folder with ``labels.csv`` (image, valence, arousal)             | yes        |
| lfw       | :func:`read_lfw`      | lfw-expressions: ``images/`` + ``labels.csv`` (image, identity, emotion, split) | from a derived labels file (see :mod:`affectedit.data.labels`) |
| london    | :func:`read_london`   | london-portraits: ``images/`` + ``labels.csv`` (image, identity, emotion) | circumplex anchor of the emotion |

Conventions: ``box`` is ``(x0, y0, x1, y1)`` in photo pixels; ``landmarks`` is a K x 2 float array in
photo pixels (AffectNet: 68 points, iBUG order; CelebA: 5 points lefteye, righteye, nose,
leftmouth, rightmouth where "left" is the image's left). Valence and arousal are floats in [-1, 1];
CelebA has no V/A labels and gets NaN (the heatmap study only needs its faces).
"""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affectedit.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "AffectNetReader",
    "AFFECTNET_EXPRESSIONS",
    "read_affectnet",
    "read_celeba",
    "read_folder",
    "read_lfw",
    "read_london",
    "read_dataset",
    "FORMATS",
]


@dataclass
class Sample:
    """One face image and its labels (see the module docstring for conventions)."""

    path: Path
    valence: float
    arousal: float
    emotion: str | None = None
    identity: str | None = None
    split: str | None = None
    box: tuple | None = None
    landmarks: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.path.name


def _check_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist; pass the dataset's root folder with --data")
    return root


def _open_csv(path: Path):
    if not path.is_file():
        raise UserError(f"label file {path} not found")
    return open(path, newline="", encoding="utf-8-sig")


def _want_split(split: str | None, value: str | None) -> bool:
    return split in (None, "all") or value is None or value == split


# --------------------------------------------------------------------------------------------- AffectNet

#: AffectNet expression codes (Mollahosseini et al. 2017). 8-10 are not usable faces/labels.
AFFECTNET_EXPRESSIONS = {
    0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear",
    5: "disgust", 6: "anger", 7: "contempt", 8: "none", 9: "uncertain", 10: "non-face",
}
_AFFECTNET_COLUMNS = [
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
]


class AffectNetReader:
    """AffectNet in its official layout.

    ``root`` holds ``training.csv`` and ``validation.csv`` (directly or in
    ``Manually_Annotated_file_lists/``); image paths (``subDirectory_filePath``) are relative to
    ``root/Manually_Annotated_Images`` (or to ``root`` if that folder does not exist).
    ``split``: "train" (training.csv), "val" (validation.csv) or "all".

    Rows marked uncertain / not a face are skipped and counted in ``self.skipped`` after
    iteration: expression 8 (none), 9 (uncertain), 10 (non-face), valence or arousal == -2
    (and rows that cannot be parsed)."""

    def __init__(self, root, split: str = "train"):
        self.root = _check_dir(root, "AffectNet")
        if split not in ("train", "val", "all"):
            raise UserError(f"unknown split {split!r}; use train, val or all")
        self.split = split
        self.skipped: Counter = Counter()
        lists = self.root / "Manually_Annotated_file_lists"
        self.csv_dir = lists if lists.is_dir() else self.root
        images = self.root / "Manually_Annotated_Images"
        self.image_dir = images if images.is_dir() else self.root

    def _files(self):
        names = {"train": ["training.csv"], "val": ["validation.csv"], "all": ["training.csv", "validation.csv"]}
        return [(self.csv_dir / n, "train" if n.startswith("training") else "val") for n in names[self.split]]

    def __iter__(self) -> Iterator[Sample]:
        self.skipped = Counter()
        for path, split in self._files():
            with _open_csv(path) as f:
                reader = csv.reader(f)
                first = next(reader, None)
                if first is None:
                    continue
                if first and first[0].strip() == "subDirectory_filePath":
                    cols = [c.strip() for c in first]
                    rows = reader
                else:  # validation.csv ships without a header in some releases
                    if len(first) != len(_AFFECTNET_COLUMNS):
                        raise UserError(f"{path} lacks AffectNet columns {_AFFECTNET_COLUMNS}; is this the official CSV?")
                    cols = _AFFECTNET_COLUMNS
                    rows = _chain([first], reader)
                missing = [c for c in _AFFECTNET_COLUMNS if c not in cols]
                if missing:
                    raise UserError(f"{path} lacks AffectNet columns {missing}; is this the official CSV?")
                idx = {c: cols.index(c) for c in _AFFECTNET_COLUMNS}
                for row in rows:
                    sample = self._parse(row, idx, split)
                    if sample is not None:
                        yield sample

    def _parse(self, row, idx, split) -> Sample | None:
        try:
            expr = int(float(row[idx["expression"]]))
            val = float(row[idx["valence"]])
            aro = float(row[idx["arousal"]])
        except (ValueError, IndexError):
            self.skipped["unparsable row"] += 1
            return None
        if expr in (8, 9, 10):
            self.skipped[f"expression {expr} ({AFFECTNET_EXPRESSIONS[expr]})"] += 1
            return None
        if val == -2 or aro == -2:
            self.skipped["valence/arousal -2 (uncertain)"] += 1
            return None
        if expr not in AFFECTNET_EXPRESSIONS or not (-1 <= val <= 1 and -1 <= aro <= 1):
            self.skipped["label out of range"] += 1
            return None
        try:
            x, y = float(row[idx["face_x"]]), float(row[idx["face_y"]])
            w, h = float(row[idx["face_width"]]), float(row[idx["face_height"]])
            box = (x, y, x + w, y + h)
        except ValueError:
            box = None
        lm = None
        raw = row[idx["facial_landmarks"]].strip()
        if raw:
            try:
                vals = np.array([float(v) for v in raw.split(";") if v.strip()], dtype=np.float64)
                if len(vals) % 2 == 0 and len(vals) >= 10:
                    lm = vals.reshape(-1, 2)
            except ValueError:
                lm = None
        rel = row[idx["subDirectory_filePath"]].strip()
        return Sample(self.image_dir / rel, val, aro, AFFECTNET_EXPRESSIONS[expr], None, split, box, lm)


def _chain(*its):
    for it in its:
        yield from it


def read_affectnet(root, split: str = "train") -> AffectNetReader:
    """An iterable :class:`AffectNetReader` (its ``skipped`` counts fill while iterating)."""
    return AffectNetReader(root, split)


# --------------------------------------------------------------------------------------------- CelebA

def read_celeba(root, split: str | None = None, limit: int | None = None) -> Iterator[Sample]:
    """CelebA aligned images: ``root/img_align_celeba/*.jpg`` and
    ``root/list_landmarks_align_celeba.txt`` (line 1: count, line 2: header, then
    ``name x y x y ...`` for lefteye, righteye, nose, leftmouth, rightmouth).

    CelebA has no valence/arousal labels: valence = arousal = NaN (the paper uses CelebA only as
    input faces for the heatmap study). ``split`` uses ``list_eval_partition.txt`` when present
    (0 train, 1 val, 2 test)."""
    root = _check_dir(root, "CelebA")
    img_dir = root / "img_align_celeba"
    if not img_dir.is_dir():
        raise UserError(f"{img_dir} not found; --data must be the CelebA folder holding img_align_celeba/")
    parts = {}
    part_file = root / "list_eval_partition.txt"
    if part_file.is_file():
        for line in part_file.read_text().split("\n"):
            f = line.split()
            if len(f) == 2:
                parts[f[0]] = {"0": "train", "1": "val", "2": "test"}.get(f[1])
    lm_file = root / "list_landmarks_align_celeba.txt"
    n = 0
    if lm_file.is_file():
        with open(lm_file) as f:
            for i, line in enumerate(f):
                fields = line.split()
                if i < 2 or len(fields) != 11:  # count line, header line
                    continue
                name = fields[0]
                s = parts.get(name)
                if split not in (None, "all") and s is not None and s != split:
                    continue
                lm = np.array([float(v) for v in fields[1:]], dtype=np.float64).reshape(5, 2)
                yield Sample(img_dir / name, math.nan, math.nan, None, None, s, None, lm)
                n += 1
                if limit is not None and n >= limit:
                    return
    else:
        log.warning("%s not found: CelebA faces will be detected instead of using its landmarks", lm_file)
        for p in sorted(img_dir.glob("*.jpg")):
            yield Sample(p, math.nan, math.nan, None, None, parts.get(p.name), None, None)
            n += 1
            if limit is not None and n >= limit:
                return


# --------------------------------------------------------------------------------------------- folder

def read_folder(root, labels: str | Path | None = None, split: str | None = None) -> Iterator[Sample]:
    """A folder of images with a CSV (default ``root/labels.csv``) with columns
    ``image, valence, arousal`` (optional: ``emotion``, ``identity``, ``split``); ``image`` is
    relative to ``root``. Values must be in [-1, 1]."""
    root = _check_dir(root, "image")
    path = Path(labels) if labels else root / "labels.csv"
    with _open_csv(path) as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        need = {"image", "valence", "arousal"}
        if not need <= cols:
            raise UserError(f"{path} needs columns image, valence, arousal; it has {sorted(cols)}")
        for i, row in enumerate(reader, start=2):
            try:
                v, a = float(row["valence"]), float(row["arousal"])
            except (TypeError, ValueError):
                raise UserError(f"{path} line {i}: valence/arousal {row['valence']!r}, {row['arousal']!r} are not numbers") from None
            if not (-1 <= v <= 1 and -1 <= a <= 1):
                raise UserError(f"{path} line {i}: valence/arousal ({v}, {a}) outside [-1, 1]")
            s = row.get("split") or None
            if not _want_split(split, s):
                continue
            yield Sample(root / row["image"], v, a, row.get("emotion") or None, row.get("identity") or None, s)


# --------------------------------------------------------------------------------------------- shared sets

def _load_va(labels: str | Path | None):
    if labels is None:
        return None
    va = {}
    with _open_csv(Path(labels)) as f:
        reader = csv.DictReader(f)
        if not {"image", "valence", "arousal"} <= set(reader.fieldnames or []):
            raise UserError(f"labels file {labels} needs columns image, valence, arousal (make it with `affectedit labels`)")
        for row in reader:
            va[row["image"]] = (float(row["valence"]), float(row["arousal"]))
    return va


def _read_emotion_set(root, labels, split, has_split: bool, what: str) -> Iterator[Sample]:
    from affectedit.data.labels import CIRCUMPLEX  # local: labels imports this module

    root = _check_dir(root, what)
    va = _load_va(labels)
    if va is None:
        log.warning("no --labels file for %s: every image gets its emotion's circumplex anchor "
                    "(make per-image labels with `affectedit labels`)", what)
    missing = 0
    with _open_csv(root / "labels.csv") as f:
        for row in csv.DictReader(f):
            s = row.get("split") if has_split else london_split(row.get("identity") or "")
            if not _want_split(split, s):
                continue
            emotion = row.get("emotion") or None
            if va is not None:
                if row["image"] not in va:
                    missing += 1
                    continue
                v, a = va[row["image"]]
            else:
                v, a = CIRCUMPLEX.get(emotion, (0.0, 0.0))
            yield Sample(root / "images" / row["image"], v, a, emotion, row.get("identity") or None, s)
    if missing:
        log.warning("%d %s images have no entry in the labels file %s and were left out", missing, what, labels)


def read_lfw(root, labels: str | Path | None = None, split: str | None = None) -> Iterator[Sample]:
    """lfw-expressions (``images/<person>/<file>.jpg`` + ``labels.csv`` image, identity, emotion,
    split). V/A come from ``labels`` (the CSV written by ``affectedit labels``); without it each
    image gets its emotion's circumplex anchor (:data:`affectedit.data.labels.CIRCUMPLEX`)."""
    return _read_emotion_set(root, labels, split, True, "lfw-expressions")


def london_split(identity: str) -> str:
    """The project's split of london-portraits by identity (the set has none): a London identity
    whose 3-digit number is odd (001, 003, 009, 011, ...) is ``val``, the rest and every ``canada_*``
    identity are ``train``. The example portraits (001, 011) are validation faces."""
    prefix, _, number = identity.rpartition("_")
    return "val" if prefix == "london" and number.isdigit() and int(number) % 2 == 1 else "train"


def read_london(root, labels: str | Path | None = None, split: str | None = None) -> Iterator[Sample]:
    """london-portraits (``images/...`` + ``labels.csv`` image, identity, emotion); split by
    identity with :func:`london_split` (odd London numbers are validation)."""
    return _read_emotion_set(root, labels, split, False, "london-portraits")


FORMATS = ("lfw", "affectnet", "celeba", "folder", "london")


def read_dataset(fmt: str, root, labels=None, split: str | None = "all"):
    """The reader for ``fmt`` (one of :data:`FORMATS`); returns an iterable of samples."""
    if fmt == "lfw":
        return read_lfw(root, labels, split)
    if fmt == "london":
        return read_london(root, labels, split)
    if fmt == "affectnet":
        return AffectNetReader(root, split or "all")
    if fmt == "celeba":
        return read_celeba(root, split)
    if fmt == "folder":
        return read_folder(root, labels, split)
    raise UserError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
