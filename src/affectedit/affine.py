"""2 x 3 affine matrices of points (x, y): the least-squares similarity between two point sets
(``similarity_transform``), the inverse (``invert_affine``) and the map of points
(``apply_affine``). Face alignment (``faces``) and the face ellipse (``ellipse``) use them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["apply_affine", "invert_affine", "similarity_transform"]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991, no reflection) mapping ``src`` onto ``dst``
    (N x 2 each); returns a 2 x 3 float64 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    c = float((sig * np.diag(e)).sum() / var_s) if var_s > 0 else 1.0
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = c * r
    m[:, 2] = mu_d - c * r @ mu_s
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2 x 3 affine matrix, as 2 x 3."""
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """A 2 x 3 affine matrix applied to N x 2 points."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
