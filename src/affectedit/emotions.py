"""Emotion words as points of the valence/arousal plane: the one table the CLI, the web page, the
derived training labels (``data/labels.py``) and the evaluation all read.

Valence (unpleasant -1 .. pleasant +1) and arousal (calm -1 .. excited +1) are the paper's labels.

Source of the positions: J. A. Russell (1980), "A circumplex model of affect", J. Personality and
Social Psychology 39(6):1161-1178, Fig. 4 (direct circular scaling of 28 affect words; pleasure =
valence on x, arousal on y, unit circle), as digitised in the public repository
toftul/tg-howwasyourday-v2 (about +-0.05), rounded to 2 decimals. Rows marked in ``NOTES`` are not
read from the figure:

* words of Russell's 28 the digitisation lacks are placed on the straight line between their
  digitised neighbours in Russell's circular order (e.g. glad half-way between pleased and happy);
* ``neutral`` is the origin, ``surprised`` is Russell's "astonished", ``disgusted`` sits at
  "annoyed" and ``contemptuous`` half-way from the origin to it (no such words in Russell's set);
  these are the anchors the training labels of lfw-expressions were derived with.

The words lie at radius 0.6-1.0, i.e. strong expressions; the model's training labels (AffectNet,
LFW) fill the inner plane too.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from affectedit.errors import UserError

__all__ = ["CATEGORY_WORDS", "EMOTIONS", "NOTES", "check_label", "emotion", "emotion_table", "parse_path",
           "path_labels"]

#: word -> (valence, arousal), both in [-1, 1]; listed by quadrant.
EMOTIONS: dict[str, tuple[float, float]] = {
    "neutral": (0.00, 0.00),
    # pleasant, aroused
    "pleased": (0.77, 0.19),
    "glad": (0.80, 0.36),
    "happy": (0.83, 0.53),
    "delighted": (0.72, 0.64),
    "excited": (0.62, 0.76),
    "astonished": (0.16, 0.89),
    "surprised": (0.16, 0.89),
    # unpleasant, aroused
    "alarmed": (-0.01, 0.81),
    "tense": (-0.17, 0.72),
    "afraid": (-0.34, 0.64),
    "angry": (-0.52, 0.58),
    "frustrated": (-0.65, 0.51),
    "distressed": (-0.60, 0.46),
    "annoyed": (-0.55, 0.41),
    "disgusted": (-0.55, 0.41),
    "contemptuous": (-0.27, 0.21),
    # unpleasant, calm
    "miserable": (-0.70, -0.08),
    "sad": (-0.65, -0.27),
    "gloomy": (-0.65, -0.39),
    "depressed": (-0.66, -0.51),
    "bored": (-0.66, -0.63),
    "tired": (0.04, -0.63),
    "sleepy": (0.28, -0.67),
    # pleasant, calm
    "calm": (0.56, -0.31),
    "relaxed": (0.69, -0.45),
    "satisfied": (0.64, -0.36),
    "at ease": (0.59, -0.26),
    "content": (0.65, -0.11),
    "serene": (0.71, 0.04),
}

#: Where a row does not come straight from the digitised figure.
NOTES: dict[str, str] = {
    "neutral": "the origin",
    "glad": "half-way between pleased and happy",
    "delighted": "half-way between happy and excited",
    "surprised": "Russell's 'astonished'",
    "alarmed": "1/3 of the way from astonished to afraid",
    "tense": "2/3 of the way from astonished to afraid",
    "distressed": "half-way between annoyed and frustrated",
    "disgusted": "at 'annoyed' (not among Russell's words)",
    "contemptuous": "half-way from the origin to 'annoyed' (not among Russell's words)",
    "gloomy": "1/3 of the way from sad to bored",
    "depressed": "2/3 of the way from sad to bored",
    "satisfied": "half-way between relaxed and at ease",
    "content": "1/3 of the way from at ease to pleased",
    "serene": "2/3 of the way from at ease to pleased",
}

#: The emotion categories of the data sets (AffectNet, lfw-expressions, london-portraits, FER-2013)
#: -> the word whose position is the category's anchor.
CATEGORY_WORDS: dict[str, str] = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprised",
    "anger": "angry",
    "fear": "afraid",
    "sadness": "sad",
    "disgust": "disgusted",
    "contempt": "contemptuous",
}


def emotion(name: str) -> tuple[float, float]:
    """(valence, arousal) of an emotion word of ``EMOTIONS`` or a category of ``CATEGORY_WORDS``
    (case-insensitive; "at_ease" works for "at ease"). An unknown word is a UserError that lists
    the vocabulary."""
    key = " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())
    key = CATEGORY_WORDS.get(key, key)
    if key not in EMOTIONS:
        raise UserError(f"unknown emotion {name!r}; choose one of: {', '.join(EMOTIONS)} (or give --valence/--arousal)")
    return EMOTIONS[key]


def check_label(valence, arousal) -> tuple[float, float]:
    """(valence, arousal) as floats, each a finite number in [-1, 1]; otherwise a UserError naming it."""
    out = []
    for name, value in (("valence", valence), ("arousal", arousal)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number in [-1, 1], got {value!r}") from None
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise UserError(f"{name} must be in [-1, 1], got {value!r}")
        out.append(v)
    return out[0], out[1]


def parse_path(text: str) -> list[tuple[float, float]]:
    """An animation path from text: points separated by spaces (or ';'), each "valence,arousal" or an
    emotion word (e.g. "0,0 0.8,0.5 sad"; write "at_ease" for "at ease")."""
    points = []
    for token in text.replace(";", " ").split():
        if "," in token:
            parts = token.split(",")
            if len(parts) != 2:
                raise UserError(f"path point {token!r} must be valence,arousal (e.g. 0.8,-0.5) or an emotion word")
            points.append(check_label(*parts))
        else:
            points.append(emotion(token))
    if len(points) < 2:
        raise UserError(f"--path {text!r} needs at least 2 points, e.g. \"0,0 0.8,0.5 -0.6,-0.4\"")
    return points


def path_labels(points: list[tuple[float, float]], frames_per_segment: int) -> list[tuple[float, float]]:
    """Labels along a polyline in label space, smoothstep-eased per segment, ending on the last point."""
    labels = []
    for (v0, a0), (v1, a1) in itertools.pairwise(points):
        for k in range(frames_per_segment):
            t = k / frames_per_segment
            s = t * t * (3.0 - 2.0 * t)  # eases in and out: the face rests briefly at each point
            labels.append((v0 + s * (v1 - v0), a0 + s * (a1 - a0)))
    labels.append(points[-1])
    return labels


def emotion_table(emotions: Iterable[str] | None = None) -> str:
    """The vocabulary as a text table: word, valence, arousal."""
    names = list(emotions or EMOTIONS)
    w = max(len("emotion"), *(len(n) for n in names))
    lines = [f"{'emotion':<{w}}  valence  arousal"]
    lines += [f"{n:<{w}}  {EMOTIONS[n][0]:>7.2f}  {EMOTIONS[n][1]:>7.2f}" for n in names]
    return "\n".join(lines)
