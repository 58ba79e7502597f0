"""What an edit asks for: how to edit (``EditConfig``: mode, strength, colour, label range; stored
with exported weights), the label range a model was trained on (``label_range``), and the target
labels, checked (``check_labels``, ``target_label``). ``editor.Editor`` reads them all; they are
importable from ``affectedit.editor`` as well.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from affectedit.emotions import check_label, emotion
from affectedit.errors import UserError

__all__ = ["COLOURS", "MODES", "EditConfig", "check_label_range", "check_labels", "label_range", "target_label"]

MODES = ("residual", "paper", "warp")
COLOURS = ("keep", "change")


@dataclass
class EditConfig:
    """How an Editor edits; stored inside exported weights (``checkpoint.save_weights``).

    mode: "residual", "paper" or "warp" (see the module docstring of ``editor``).
    strength: scale of the change in [0, 4]; 0 = no change, 1 = the change as generated.
    colour: "keep" = residual mode applies only the brightness of the change (``warp.luma_change``),
        so the photo keeps its colours; "change" = the RGB change as generated.
    label_range: [[valence low, high], [arousal low, high]], the labels the model was trained on
        (see ``label_range``): the dials' [-1, 0] and [0, 1] map linearly onto [low, 0] and
        [0, high] before G sees them, so a target the training data never reached asks for the
        nearest the model knows instead of an extrapolation; None = labels go to G as given (the paper).

    Everywhere (``from_pretrained``, ``edit``, the CLI) an option left out or None means "the value
    stored with the weights"; ``label_range="off"`` switches a stored range off."""

    mode: str = "residual"
    strength: float = 1.0
    colour: str = "keep"
    label_range: list | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        try:
            self.strength = float(self.strength)
        except (TypeError, ValueError):
            self.strength = math.nan
        if not (math.isfinite(self.strength) and 0 <= self.strength <= 4):
            raise UserError(f"strength must be in [0, 4], got {self.strength!r}")
        if self.colour not in COLOURS:
            raise UserError(f"colour must be one of {', '.join(COLOURS)}, got {self.colour!r}")
        self.label_range = check_label_range(self.label_range)

    @classmethod
    def defaults(cls, head: str = "pixels", **stored) -> EditConfig:
        """The ``stored`` settings, the defaults for the rest: mode "warp" for a generator with the
        warp head, else "residual"."""
        try:
            return cls(**{"mode": "warp" if head == "warp" else "residual", **stored})
        except TypeError as e:
            raise UserError(f"the edit settings stored with the weights are not valid ({e}); export the weights again") from None

    @classmethod
    def stored(cls, state: dict) -> EditConfig:
        """The settings stored in a checkpoint dict (``checkpoint.load_checkpoint``), with ``defaults``."""
        config, edit = state.get("config"), state.get("edit") or {}
        model = config.get("model") if isinstance(config, dict) else None
        head = model.get("head", "pixels") if isinstance(model, dict) else "pixels"
        if not isinstance(edit, dict) or not all(isinstance(k, str) for k in edit):
            raise UserError(f"the edit settings stored with the weights are not valid (a {type(edit).__name__}, "
                            "not a table of settings); export the weights again")
        return cls.defaults(head if isinstance(head, str) else "pixels", **edit)

    def update(self, **options) -> EditConfig:
        """A copy with the options that are not None replaced (``label_range="off"``: no range)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown edit option(s) {', '.join(sorted(unknown))}; known: mode, strength, colour, label_range")
        given = {k: v for k, v in options.items() if v is not None}
        if given.get("label_range") in ("off", False):
            given["label_range"] = None
        return dataclasses.replace(self, **given)


def check_label_range(value) -> list | None:
    if value is None:
        return None
    try:
        r = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        r = np.zeros(0)
    if r.shape != (2, 2) or not np.isfinite(r).all() or (r[:, 0] > 0).any() or (r[:, 1] < 0).any() \
            or (np.abs(r) > 1).any() or (r[:, 1] - r[:, 0] <= 0).any():
        raise UserError(f"label_range must be [[valence low, high], [arousal low, high]] with -1 <= low <= 0 <= high <= 1, "
                        f"got {value!r}")
    return r.tolist()


def label_range(labels, tail: float = 0.1) -> list[list[float]]:
    """The range of training labels a model has seen: [[valence low, high], [arousal low, high]],
    the ``tail`` and 100 - ``tail`` percentiles of N x 2 labels (robust to a few outliers), with
    low <= 0 <= high (the dial's 0 stays the label 0)."""
    a = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    a = a[np.isfinite(a).all(1)]
    if len(a) == 0:
        raise UserError("no finite valence/arousal labels to take a label range from")
    lo, hi = np.percentile(a, tail, axis=0), np.percentile(a, 100 - tail, axis=0)
    return [[round(float(min(lo[d], 0.0)), 4), round(float(max(hi[d], 0.0)), 4)] for d in range(2)]


def check_labels(labels, n: int) -> torch.Tensor:
    """N x 2 float tensor from an N x 2 tensor/array or one (valence, arousal) pair (broadcast)."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32) if not torch.is_tensor(labels) else labels).float().cpu()
    if y.ndim == 1 and y.shape[0] == 2:
        y = y.expand(n, 2)
    if y.ndim != 2 or y.shape != (n, 2):
        raise ValueError(f"labels must be N x 2 (valence, arousal) with N = {n}, got shape {tuple(y.shape)}")
    bad = ~torch.isfinite(y) | (y.abs() > 1.0)
    if bad.any():
        i, j = (int(k) for k in bad.nonzero()[0])
        raise UserError(f"{('valence', 'arousal')[j]} must be in [-1, 1], got {float(y[i, j])!r} (label {i})")
    return y.contiguous()


def target_label(valence, arousal, emotion_word=None) -> tuple[float, float]:
    """(valence, arousal) from numbers or an emotion word (``emotion="happy"``, or a word given as
    ``valence``)."""
    if isinstance(valence, str) and arousal is None and emotion_word is None:
        valence, emotion_word = None, valence
    if emotion_word is not None:
        if valence is not None or arousal is not None:
            raise UserError("give either an emotion word or valence and arousal, not both")
        return emotion(emotion_word)
    if valence is None or arousal is None:
        raise UserError("say the target expression: valence and arousal (each in [-1, 1]) or emotion='happy'")
    return check_label(valence, arousal)
