"""The opening mouth (``model.mouth = "open"``): lips parting and the jaw dropping, with the mouth's
inside (dark cavity, upper and lower teeth) rendered where the lips part.

A warp of a closed mouth cannot open it: moving pixels only stretches the lips where the dark mouth
and teeth should appear. So the opening is one more action unit (AU 25/26, :data:`MOUTH_OPEN`, in
units of the distance between the eyes, as ``basis.ACTION_UNITS``) whose motion carries the lower
lip, chin and jaw down, plus a new appearance where the lips part: the mask A is the lens between
the moved inner lips (dlib points 60-67), the colour C a parametric mouth inside (a dark cavity,
the upper incisors' band under the upper lip with faint gaps between teeth, lower teeth when the
mouth is wide open, shaded darker toward the corners). Both follow every unit's landmark moves, so
a smile's pulled corners widen the lens.

:func:`render` draws A and C at any set of points given in the aligned crop's unit coordinates:
the crop's pixel grid while training (G, at the model's resolution, from the mean neutral training
face's landmarks) and the photo's own pixels when a photo is edited (``warp.apply_to_photo``, from
the face's own 68 landmarks), so the teeth are drawn at the photo's resolution, never upsampled.
G only decides how far the mouth opens (one coefficient); it learns that from the expression
model's signal like every other unit. The drawing is differentiable in the landmarks."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["MOUTH_OPEN", "flow_for", "moved_landmarks", "render", "unit_moves"]

# Moves of dlib's 68 points for a clear opening (coefficient 1, G's most: OPEN_RANGE; the edit
# strength may scale it further), in inter-ocular distances, image-left and midline points (the rest mirrored):
# the lower lip, chin and jaw go down, the upper lip a little up, the corners slightly in.
MOUTH_OPEN: dict[int, tuple[float, float]] = {
    66: (0.0, 0.30), 67: (0.0, 0.29), 57: (0.0, 0.30), 58: (0.0, 0.28), 59: (0.0, 0.2),
    60: (0.02, 0.06), 48: (0.02, 0.05), 49: (0.0, -0.01), 50: (0.0, -0.03), 51: (0.0, -0.035),
    61: (0.0, -0.035), 62: (0.0, -0.04),
    8: (0.0, 0.30), 7: (0.0, 0.28), 6: (0.0, 0.22), 5: (0.0, 0.14), 4: (0.0, 0.06),
}

# The opening's coefficient lies in [0, OPEN_RANGE] (G's sigmoid; the other units: networks.UNIT_RANGE):
# at 1 the lips part by 0.33 of the distance between the eyes, a clearly open mouth.
OPEN_RANGE = 1.0

# Colours of the mouth's inside (RGB in [0, 1]: the cavity's dark top, the tongue's redder bottom,
# the teeth) and the upper teeth's visible height (inter-ocular units).
CAVITY = (0.13, 0.05, 0.05)
TONGUE = (0.36, 0.14, 0.14)
TEETH = (0.87, 0.82, 0.75)
UPPER_TEETH = 0.13
# Gaps between teeth, from the midline (central incisors 0.135, lateral 0.1, canines 0.095 wide),
# and how much each darkens.
TOOTH_EDGES = ((0.0, 0.16), (0.135, 0.09), (0.235, 0.07))


def _eye_distance(lm: torch.Tensor) -> torch.Tensor:
    """N: the distance between the eye centres of landmarks N x 68 x 2."""
    return (lm[:, 42:48].mean(1) - lm[:, 36:42].mean(1)).norm(dim=-1)


def unit_moves(units: dict) -> np.ndarray:
    """68 x 2 moves (inter-ocular units) of one unit given for the image-left side and midline."""
    from affectedit.basis import _MIRROR

    move = np.zeros((68, 2))
    for i, (dx, dy) in units.items():
        move[i] = (dx, dy)
        j = _MIRROR[i]
        if j != i:
            move[j] = (-dx, dy)
    return move


def all_moves(with_mouth: bool = True) -> torch.Tensor:
    """U x 68 x 2: the moves of every unit of ``basis.ACTION_UNITS`` (in order), then the opening."""
    from affectedit.basis import ACTION_UNITS

    moves = [unit_moves(u) for u in ACTION_UNITS.values()] + ([unit_moves(MOUTH_OPEN)] if with_mouth else [])
    return torch.from_numpy(np.stack(moves)).float()


def moved_landmarks(rest: torch.Tensor, coefficients: torch.Tensor, moves: torch.Tensor | None = None) -> torch.Tensor:
    """Landmarks N x 68 x 2 (any unit) moved by the units' coefficients N x U: rest + sum_k c_k
    moves_k scaled by each face's inter-ocular distance."""
    moves = all_moves() if moves is None else moves
    scale = _eye_distance(rest)[:, None, None]
    return rest + torch.einsum("nu,ukc->nkc", coefficients.to(rest.dtype), moves.to(rest)) * scale


def _inner_gap(lm: torch.Tensor) -> torch.Tensor:
    """N: how far the inner lips' centres (61-63, 65-67) are apart, across the corner line."""
    c0, c1 = lm[:, 60], lm[:, 64]
    ex = (c1 - c0) / (c1 - c0).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    ey = torch.stack([-ex[:, 1], ex[:, 0]], -1)
    return ((lm[:, 65:68].mean(1) - lm[:, 61:64].mean(1)) * ey).sum(-1)


def render(ux: torch.Tensor, uy: torch.Tensor, lm: torch.Tensor, soft: float, rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mouth's inside at points (ux, uy) (H x W, unit crop coordinates), for moved landmarks
    ``lm`` (N x 68 x 2, the same coordinates): (A N x 1 x H x W in [0, 1], C N x 3 x H x W in [-1, 1]).
    ``soft``: the edges' softness in those coordinates (about half a pixel of the output);
    ``rest``: the landmarks before the move: the lips part only by as much as the move adds to
    their own gap (dlib puts a closed mouth's inner lips a little apart)."""
    lm = lm.float()
    c0, c1 = lm[:, 60], lm[:, 64]  # inner mouth corners
    mid = (c0 + c1) / 2
    axis = c1 - c0
    half = axis.norm(dim=-1).clamp_min(1e-6) / 2  # N
    ex = axis / (2 * half)[:, None]
    ey = torch.stack([-ex[:, 1], ex[:, 0]], -1)  # perpendicular, pointing down the face
    dx, dy = ux[None] - mid[:, 0, None, None], uy[None] - mid[:, 1, None, None]
    t = (dx * ex[:, 0, None, None] + dy * ex[:, 1, None, None]) / half[:, None, None]  # -1..1 across
    v = dx * ey[:, 0, None, None] + dy * ey[:, 1, None, None]  # below the corner line
    up = ((lm[:, 61:64].mean(1) - mid) * ey).sum(-1)[:, None, None]  # the inner lips' centres
    low = ((lm[:, 65:68].mean(1) - mid) * ey).sum(-1)[:, None, None]
    scale = _eye_distance(lm)[:, None, None]
    gap = low - up
    if rest is not None:
        gap = gap - _inner_gap(rest.float()).clamp_min(0)[:, None, None]
    gap = gap.clamp_min(0)
    across2 = (1 - t.square()).clamp_min(0)
    bell = across2.pow(0.8)  # the upper lip's arch
    height = gap * across2.sqrt()  # the opening's height across: an ellipse's
    top, bottom = up * bell, up * bell + height
    sig = torch.sigmoid
    inside = sig((v - top) / soft) * sig((bottom - v) / soft) * sig((1 - t.abs()) * half[:, None, None] / soft)
    mask = inside * gap / (gap + 4 * soft)  # a hairline opening fades out instead of drawing a line
    # the teeth: upper band under the upper lip, lower band over the lower lip once it is wide open
    depth = v - top
    teeth_h = torch.minimum(UPPER_TEETH * scale * bell, 0.75 * height)  # never the whole of a tall opening
    teeth_a = sig((teeth_h - depth) / soft) * sig((0.72 - t.abs()) * half[:, None, None] / (4 * soft))
    across = t.abs() * half[:, None, None] / scale  # inter-ocular units from the midline
    edges = sum(k * torch.exp(-((across - e) / 0.006).square()) for e, k in TOOTH_EDGES)
    under_lip = (depth / (0.35 * UPPER_TEETH * scale)).clamp(0, 1)  # the upper lip's shadow
    tc = t.clamp(-1, 1)
    shade = (1 - 0.5 * tc.square()) * (0.78 + 0.22 * under_lip) * (1 - edges)
    low = (depth / height.clamp_min(soft)).clamp(0, 1)  # 0 under the upper lip, 1 at the lower lip
    cavity = torch.lerp(torch.tensor(CAVITY, device=lm.device)[None, :, None, None], torch.tensor(TONGUE, device=lm.device)[None, :, None, None],
                        (low.square() * (1 - tc.square()))[:, None])
    teeth = torch.tensor(TEETH, device=lm.device)[None, :, None, None] * shade[:, None]
    colour = teeth_a[:, None] * teeth + (1 - teeth_a[:, None]) * cavity
    return mask[:, None], colour.clamp(0, 1) * 2 - 1


def flow_for(points: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """The opening's flow at coefficient 1 (2 x size x size, grid_sample units) for a face whose
    landmarks are ``points`` (68 x 2, pixels of a size x size crop): :data:`MOUTH_OPEN` through
    ``basis.rbf_flow``, as the action units' fields, but from this face's own landmarks."""
    from affectedit.basis import rbf_flow

    scale = float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))
    return rbf_flow(points, unit_moves(MOUTH_OPEN) * scale, size, sigma)
