"""The feathered inner-face ellipse: the soft mask that blends an edit into a photo, in the unit
coordinates of the aligned crop (``ellipse_alpha``), as a mask of a size x size crop (``face_mask``)
and as the photo pixels it can touch for one face (``blend_region``). ``faces.paste_back`` and
``warp.apply_to_photo`` blend with it; importable from ``affectedit.faces`` as well.
"""
from __future__ import annotations

import functools

import numpy as np

from affectedit.affine import apply_affine, invert_affine

__all__ = ["blend_region", "ellipse_alpha", "face_mask"]


# Inner-face ellipse in unit crop coordinates. In the dlib chip with padding 0.25 the 68-point mean
# face (brows ... chin, jaw edge to jaw edge) spans [1/6, 5/6] in x and y; the eyes are at y ~ 0.31,
# the nose bottom at y ~ 0.59.
_MASK_CENTER = (0.5, 0.52)
_MASK_RADII = (0.32, 0.38)


def ellipse_alpha(ux, uy, feather: float = 0.2, center=_MASK_CENTER, radii=_MASK_RADII) -> np.ndarray:
    """The feathered inner-face ellipse at unit crop coordinates ``ux``, ``uy`` (arrays of one shape):
    1 inside the ellipse, falling smoothly (smoothstep) to 0 over ``feather`` times its radii
    outside. float32, the shape of ``ux``."""
    x = (np.asarray(ux, dtype=np.float64) - center[0]) / radii[0]
    y = (np.asarray(uy, dtype=np.float64) - center[1]) / radii[1]
    r = np.sqrt(x * x + y * y)
    t = np.clip((1.0 + feather - r) / max(feather, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _face_mask_cached(size: int, feather: float, center: tuple, radii: tuple) -> np.ndarray:
    c = (np.arange(size, dtype=np.float64) + 0.5) / size  # unit coordinate of each pixel centre
    m = ellipse_alpha(c[None, :], c[:, None], feather, center, radii)
    m.setflags(write=False)
    return m


def blend_region(face, width: int, height: int, feather: float = 0.2) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo pixels (x0 <= x < x1, y0 <= y < y1) that the feathered face
    ellipse of ``face`` (a ``faces.Face``) can touch, with a 2-pixel margin, clipped to a width x height photo (empty
    when x1 <= x0 or y1 <= y0). Every pixel outside it has alpha 0."""
    (cx, cy), (rx, ry) = _MASK_CENTER, _MASK_RADII
    rx, ry = rx * (1 + feather), ry * (1 + feather)
    corners = np.array([[cx - rx, cy - ry], [cx + rx, cy - ry], [cx - rx, cy + ry], [cx + rx, cy + ry]])
    pts = apply_affine(invert_affine(np.asarray(face.transform, dtype=np.float64)), corners)
    x0 = int(max(0, np.floor(pts[:, 0].min()) - 2))
    y0 = int(max(0, np.floor(pts[:, 1].min()) - 2))
    x1 = int(min(width, np.ceil(pts[:, 0].max()) + 3))
    y1 = int(min(height, np.ceil(pts[:, 1].max()) + 3))
    return x0, y0, x1, y1


def face_mask(
    size: int,
    feather: float = 0.2,
    center: tuple[float, float] = _MASK_CENTER,
    radii: tuple[float, float] = _MASK_RADII,
) -> np.ndarray:
    """Soft mask (float32, size x size, in [0, 1]) of the inner face region in the aligned crop.

    An ellipse covering brows, eyes, nose, mouth and chin is 1; it falls smoothly (smoothstep) to
    0 over ``feather`` times its radii outside.  With the defaults the support stays inside the
    crop (x in [0.116, 0.884], y in [0.064, 0.976]).  The returned array is read-only (cached)."""
    return _face_mask_cached(int(size), float(feather), tuple(map(float, center)), tuple(map(float, radii)))
