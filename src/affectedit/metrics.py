"""Evaluation measures: the paper's RMSE, CCC and SAGR (Sec. IV-A), identity distance and
background change.

Agreement metrics take two equally long 1-D sequences (numpy arrays, lists or torch tensors;
predictions and labels, both typically in [-1, 1]) and return a Python float.

Where torchmetrics is used and where not:
- RMSE: ``torchmetrics.functional.mean_squared_error(squared=False)``; same formula as the paper.
- CCC: our own. torchmetrics' ``concordance_corrcoef`` divides variances by n - 1 (sample
  variance), while the paper's formula (Lin 1989, and AffectNet's evaluation, which Table I/III
  numbers come from) uses population variances (divide by n). The two differ through the
  (mu_x - mu_y)^2 term, noticeably on small sets (e.g. 0.9777 vs 0.9768 on 4 values).
- SAGR: our own; torchmetrics has no sign-agreement metric.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# dlib's face-recognition model: two descriptors closer than this are the same person
# (dlib's documented operating point, 99.38% on LFW).
SAME_PERSON_THRESHOLD = 0.6


def _as_1d(values, name: str) -> np.ndarray:
    """``values`` as a float64 numpy vector; ValueError unless 1-D, non-empty and finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {e}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; the metrics need at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    return x, y


def rmse(x, y) -> float:
    """Root mean squared error sqrt(mean((x_i - y_i)^2)) of two equally long 1-D sequences."""
    x, y = _pair(x, y)
    # Imported here: torchmetrics takes about two seconds to import, needed only for evaluation.
    from torchmetrics.functional import mean_squared_error

    return float(mean_squared_error(torch.from_numpy(x), torch.from_numpy(y), squared=False))


def ccc(x, y) -> float:
    """Concordance correlation coefficient 2 rho s_x s_y / (s_x^2 + s_y^2 + (m_x - m_y)^2), in [-1, 1].

    Population (divide-by-n) variances, as in the paper and AffectNet. Since rho s_x s_y is
    the covariance, this is 2 cov / (var_x + var_y + (m_x - m_y)^2), which stays defined when
    one vector is constant (then CCC = 0). When both vectors are the same constant the
    coefficient is 0/0 and NaN is returned.
    """
    x, y = _pair(x, y)
    mean_x, mean_y = x.mean(), y.mean()
    var_x, var_y = x.var(), y.var()  # numpy's default ddof=0: population variance
    covariance = np.mean((x - mean_x) * (y - mean_y))
    denominator = var_x + var_y + (mean_x - mean_y) ** 2
    if denominator == 0.0:
        return math.nan
    return float(2.0 * covariance / denominator)


def sagr(x, y) -> float:
    """Sign agreement: the fraction of i with sign(x_i) == sign(y_i), in [0, 1].

    ``np.sign`` semantics: sign(0) = 0, a sign of its own. So 0 agrees only with 0: a neutral
    label 0.0 and a prediction 0.1 disagree, and so do 0.0 and -0.1. (The paper's Kronecker
    delta of signs says exactly this; predictions from a tanh are almost never exactly 0.)
    """
    x, y = _pair(x, y)
    return float(np.mean(np.sign(x) == np.sign(y)))


def identity_distance(desc_a, desc_b) -> np.ndarray:
    """Euclidean distances between face descriptors, row by row.

    ``desc_a`` and ``desc_b``: N x 128 dlib face descriptors (a single 128-vector is taken as
    N = 1). Returns N distances (float64); below ``SAME_PERSON_THRESHOLD`` means same person.
    """
    a = np.atleast_2d(np.asarray(desc_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(desc_b, dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"descriptors must be N x 128, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"descriptor arrays must have the same shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def background_change(original, edited, mask) -> float:
    """Mean absolute change of the background, in [0, 1] (1 = the full 8-bit range).

    ``original``, ``edited``: H x W x 3 uint8 images, or N x H x W x 3 batches. ``mask``: H x W
    (or N x H x W) float, 0 = background, anything else = face. The mean runs over all channels
    of the pixels where ``mask == 0`` exactly (a soft mask's border counts as face).
    """
    original = np.asarray(original)
    edited = np.asarray(edited)
    mask = np.asarray(mask)
    if original.shape != edited.shape:
        raise ValueError(f"original and edited must have the same shape, got {original.shape} and {edited.shape}")
    if original.ndim not in (3, 4) or original.shape[-1] != 3:
        raise ValueError(f"images must be H x W x 3 or N x H x W x 3, got shape {original.shape}")
    if original.dtype != np.uint8 or edited.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {original.dtype} and {edited.dtype}")
    image_hw = original.shape[-3:-1]
    if mask.shape != image_hw and mask.shape != original.shape[:-1]:
        raise ValueError(f"mask must be {image_hw[0]} x {image_hw[1]} (or one per image), got shape {mask.shape}")
    background = np.broadcast_to(mask == 0, original.shape[:-1])
    if not background.any():
        raise ValueError("the mask has no background pixels (mask == 0); nothing to measure")
    difference = np.abs(original.astype(np.int16) - edited.astype(np.int16))  # ... x H x W x 3
    return float(difference[background].mean() / 255.0)
