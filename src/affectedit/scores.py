"""The evaluation's measures (``evaluate.evaluate``; the module docstring there says what each
means): the label grid of Table IV and its extreme labels, the Fig. 2 heatmaps, and the Table IV
scores (RMSE, SAGR, CCC) of predictions against target labels. Plain functions of arrays and
tensors; importable from ``affectedit.evaluate`` as well.
"""
from __future__ import annotations

import numpy as np
import torch

from affectedit import metrics
from affectedit.errors import UserError

__all__ = ["DIMENSIONS", "difference_map", "extreme_mask", "heatmap_sums", "in_range_mask", "label_grid", "label_stats",
           "neutral_index", "normalise_heatmaps", "score_labels", "summary", "table_iv"]

DIMENSIONS = ("valence", "arousal")


# ---------------------------------------------------------------------------------------------
# Labels.

def label_grid(n: int = 7) -> np.ndarray:
    """The ``n x n`` grid of [-1, 1]^2 as ``n*n x 2`` [valence, arousal], row-major in the paper's
    figure layout: row i has valence ``1 - 2i/(n-1)`` (high to low, top to bottom), column j has
    arousal ``1 - 2j/(n-1)`` (high to low, left to right). ``n`` odd, so (0, 0) is included."""
    if n < 3 or n % 2 == 0:
        raise UserError(f"the label grid needs an odd size >= 3 so that it includes (0, 0), got {n}")
    values = np.linspace(1.0, -1.0, n)
    values[n // 2] = 0.0  # exactly zero, not 1e-16
    v, a = np.meshgrid(values, values, indexing="ij")
    return np.stack([v.ravel(), a.ravel()], axis=1).astype(np.float32)


def extreme_mask(labels, tol: float = 1e-6) -> np.ndarray:
    """True for the paper's extreme labels: |valence| = 1 and |arousal| = 1 (the grid's corners)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return (np.abs(np.abs(labels[:, 0]) - 1) <= tol) & (np.abs(np.abs(labels[:, 1]) - 1) <= tol)


def neutral_index(labels) -> int:
    """Index of the neutral label (0, 0) in ``labels`` (n x 2)."""
    labels = np.asarray(labels).reshape(-1, 2)
    hits = np.flatnonzero(np.all(np.abs(labels) < 1e-6, axis=1))
    if len(hits) != 1:
        raise ValueError("the labels must contain (0, 0) exactly once")
    return int(hits[0])


# ---------------------------------------------------------------------------------------------
# Heatmaps (Fig. 2).

def difference_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pixel max(|R1-R2|, |G1-G2|, |B1-B2|): ``... x 3 x H x W`` -> ``... x H x W``, in the
    images' own units (for [-1, 1] images the range is [0, 2])."""
    if a.shape != b.shape or a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"images must be ... x 3 x H x W of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.float() - b.float()).abs().amax(dim=-3)


def heatmap_sums(edits: torch.Tensor, neutral: int) -> torch.Tensor:
    """``edits``: N faces x L labels x 3 x H x W. Returns L x H x W: for every label the sum over
    the faces of ``difference_map(edit for that label, edit for label `neutral`)`` (zero at
    ``neutral``). Add the sums of several batches of faces to cover more faces."""
    if edits.ndim != 5:
        raise ValueError(f"edits must be N x L x 3 x H x W, got {tuple(edits.shape)}")
    reference = edits[:, neutral:neutral + 1].expand_as(edits)
    return difference_map(edits, reference).sum(dim=0)


def normalise_heatmaps(sums: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Divide all heatmaps by their common maximum (-> [0, 1]; labels stay comparable).
    Returns (normalised, the maximum); all-zero sums stay zero."""
    peak = float(sums.max()) if sums.numel() else 0.0
    return (sums / peak if peak > 0 else torch.zeros_like(sums)), peak


# ---------------------------------------------------------------------------------------------
# Scores.

def score_labels(targets, predictions) -> dict[str, float]:
    """RMSE, SAGR, CCC of predictions against target labels (1-D arrays). ``sagr_nonzero`` is SAGR
    over the targets that are not 0: a target of exactly 0 has sign 0, which no prediction shares,
    so SAGR over a grid containing 0 cannot reach 1."""
    targets = np.asarray(targets, dtype=np.float64).ravel()
    predictions = np.asarray(predictions, dtype=np.float64).ravel()
    nonzero = targets != 0
    return {
        "rmse": metrics.rmse(predictions, targets),
        "sagr": metrics.sagr(predictions, targets),
        "ccc": metrics.ccc(predictions, targets),
        "sagr_nonzero": metrics.sagr(predictions[nonzero], targets[nonzero]) if nonzero.any() else float("nan"),
        "count": len(targets),
    }


def in_range_mask(labels, label_range) -> np.ndarray:
    """True for the labels (n x 2) whose valence and arousal both lie in ``label_range``
    ({"valence": [low, high], "arousal": [low, high]}, the training labels' span)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(labels), bool)
    for i, d in enumerate(DIMENSIONS):
        low, high = label_range[d]
        keep &= (labels[:, i] >= low - 1e-6) & (labels[:, i] <= high + 1e-6)
    return keep


def table_iv(targets: np.ndarray, predictions: dict[str, np.ndarray], label_range=None) -> dict:
    """{"all"|"extreme"[|"in_range"]: {dimension: scores}} for targets K x 2 and predictions {dim: K};
    "in_range": the targets inside ``label_range`` (see ``in_range_mask``), when given."""
    subsets = [("all", np.ones(len(targets), bool)), ("extreme", extreme_mask(targets))]
    if label_range is not None:
        subsets.append(("in_range", in_range_mask(targets, label_range)))
    out = {}
    for subset, keep in subsets:
        if keep.any():
            out[subset] = {d: score_labels(targets[keep, i], predictions[d][keep]) for i, d in enumerate(DIMENSIONS)}
    return out


def label_stats(labels) -> dict:
    """Per dimension of ``labels`` (n x 2): min, max and the shares above and below 0."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return {d: {"min": float(labels[:, i].min()), "max": float(labels[:, i].max()),
                "positive_share": float((labels[:, i] > 0).mean()), "negative_share": float((labels[:, i] < 0).mean())}
            for i, d in enumerate(DIMENSIONS)}


def summary(values) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max()), "count": len(v)}
