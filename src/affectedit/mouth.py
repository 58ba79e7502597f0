"""The opening mouth (``model.mouth = "open"``): lips parting and the jaw dropping, with the mouth's
inside (dark cavity, upper teeth, tongue) drawn where the lips part.

A warp of a closed mouth cannot open it: moving pixels only stretches the lips where the dark mouth
and teeth should appear. So the opening is one more action unit (AU 25/26, :data:`MOUTH_OPEN`, in
units of the distance between the eyes, as ``basis.ACTION_UNITS``) whose motion carries the lower
lip, chin and jaw down, plus a new appearance where the lips part: the mask A is the lens between
the outer lips (dlib points 48-59) where the whole flow put them (``warped_landmarks``), the colour
C a parametric mouth inside (a dark cavity with the tongue's redder floor, the upper incisors' band
under the upper lip with faint gaps between teeth, darker toward the corners, and while the lips
part by less than both rows of teeth, as in a grin, the lower incisors above the lower lip). The lens follows
every unit's motion, so a smile's pulled corners widen it.

:func:`render` draws A and C at any set of points given in the aligned crop's unit coordinates:
the crop's pixel grid while training (G, at the model's resolution, from the mean neutral training
face's landmarks) and the photo's own pixels when a photo is edited (``warp.apply_to_photo``, from
the face's own 68 landmarks), so the teeth are drawn at the photo's resolution, never upsampled.
G only decides how far the mouth opens (one coefficient); it learns that from the expression
model's signal like every other unit. The drawing is differentiable in the landmarks."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from affectedit.basis import ACTION_UNITS, eye_distance, rbf_flow, unit_moves

__all__ = ["MOUTH_OPEN", "OPEN_RANGE", "PARTING", "PARTING_INDEX", "bared", "parting", "appearance_keep", "flow_for", "carry_lips", "moved_landmarks", "render", "warped_landmarks"]

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

# The action units besides the opening that part the lips (``basis.ACTION_UNITS``): where one of
# them or the opening acts, an edited photo draws the mouth's inside (``warp.apply_to_photo``).
PARTING = ("lip_bare",)
PARTING_INDEX = [list(ACTION_UNITS).index(n) for n in PARTING]  # their places among the units


def parting(units: torch.Tensor) -> torch.Tensor:
    """N: how far the coefficients ``units`` (N x (U + 1), the opening last) part the lips, as the
    largest of the opening's and the :data:`PARTING` units' coefficients."""
    return units[:, PARTING_INDEX + [units.shape[1] - 1]].float().amax(1)


# Colours of the mouth's inside (RGB in [0, 1]: the cavity's dark top, the tongue's redder bottom,
# the teeth) and the upper teeth's visible height (inter-ocular units).
CAVITY = (0.13, 0.05, 0.05)
TONGUE = (0.36, 0.14, 0.14)
TEETH = (0.87, 0.82, 0.75)
UPPER_TEETH = 0.13
# The lower incisors' visible height (inter-ocular units, > 0) while the bite is closed: a gap
# between the lips up to UPPER_TEETH + LOWER_TEETH is all teeth (a grin), beyond it the jaw has
# dropped and the lower teeth sink behind the lower lip.
LOWER_TEETH = 0.09
# On an edited photo: the lens' outline is this many times softer than the teeth's edges
# (``render``'s ``soft``), and the gaps between teeth no thinner than MIN_LINE times that (chosen on
# the calibration faces: a sharper drawing out-textured small, soft photos; see docs/report/calibration).
OUTLINE_SOFT = 2.5
MIN_LINE = 1.5

# Gaps between teeth, from the midline (central incisors 0.135, lateral 0.1, canines 0.095 wide),
# and how much each darkens.
TOOTH_EDGES = ((0.0, 0.16), (0.135, 0.09), (0.235, 0.07))


def _eye_distance(lm: torch.Tensor) -> torch.Tensor:
    """N: the distance between the eye centres of landmarks N x 68 x 2."""
    return (lm[:, 42:48].mean(1) - lm[:, 36:42].mean(1)).norm(dim=-1)


@functools.lru_cache(maxsize=1)
def _all_moves() -> torch.Tensor:
    """U x 68 x 2: the moves of every unit of ``basis.ACTION_UNITS`` (in order), then the opening's."""
    return torch.from_numpy(np.stack([unit_moves(u) for u in [*ACTION_UNITS.values(), MOUTH_OPEN]])).float()


# dlib's lips: each one's inner edge (the closed mouth's seam, corner to corner) and its outer edge.
_INNER_LOW_EDGE, _OUTER_LOW_EDGE = [60, 67, 66, 65, 64], [48, 59, 58, 57, 56, 55, 54]
_INNER_UP_EDGE, _OUTER_UP_EDGE = [60, 61, 62, 63, 64], [48, 49, 50, 51, 52, 53, 54]
# dlib's lip points: the upper lip's inner and outer edge, the lower lip's outer edge (centres).
_INNER_UP, _OUTER_UP, _OUTER_LOW = [61, 62, 63], [50, 51, 52], [56, 57, 58]


def moved_landmarks(rest: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Where the units' coefficients (N x (U + 1)) would move the landmarks ``rest`` (N x 68 x 2, any
    unit): rest + sum_k c_k moves_k, scaled by each face's inter-ocular distance."""
    scale = _eye_distance(rest)[:, None, None]
    return rest + torch.einsum("nu,ukc->nkc", units.to(rest.dtype), _all_moves().to(rest)) * scale


def warped_landmarks(points: torch.Tensor, flow: torch.Tensor, units: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Where a backward flow (N x 2 x S x S, grid_sample units: the output at q reads the input at
    q + flow(q)) carries the landmarks ``points`` (N x 68 x 2, unit crop coordinates): the q with
    q + flow(q) / 2 = p, by fixed-point iteration from where the units' moves (N x (U + 1)) would
    put them (:func:`moved_landmarks`). The inner lips (60-67) are ill-posed (the parted gap reads
    from the closed mouth's seam, so any point of the gap is a solution); :func:`render` uses the
    outer ones. Differentiable in the flow: the drawn mouth follows the warped lips."""
    q = moved_landmarks(points.float(), units.float())
    flow = flow.float()
    for _ in range(iterations):
        at = torch.nn.functional.grid_sample(flow, (2 * q - 1)[:, :, None], mode="bilinear", padding_mode="border",
                                             align_corners=False)[:, :, :, 0]  # N x 2 x K
        q = points.float() - at.transpose(1, 2) / 2
    return q


def appearance_keep(rest: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """H x W in [0, 1]: 0 over the mouth of the landmarks ``rest`` (68 x 2, unit crop coordinates;
    an ellipse around the lips, reaching a little below where the lower lip and chin go when the
    mouth opens), 1 elsewhere, with a soft edge; at points (ux, uy) (H x W, the same coordinates).
    The mean expression faces of the appearance basis carry an averaged open mouth (a dark blur, a
    band of teeth) at the mean face's place; with the mouth drawn from the face's own lips
    (``model.appearance_mouth = False``) the basis keeps its folds and shading but not that."""
    width = (rest[54, 0] - rest[48, 0]).abs()
    cx = rest[48:60, 0].mean()
    cy = (rest[51, 1] + rest[57, 1]) / 2 + 0.1 * width
    a = 0.7 * width
    b = (rest[57, 1] - rest[51, 1]).abs() / 2 + 0.25 * width
    r = (((ux - cx) / a) ** 2 + ((uy - cy) / b) ** 2).sqrt()
    return torch.sigmoid((r - 1) / 0.15)


def _root(x: torch.Tensor, p: float) -> torch.Tensor:
    """x ** p for x >= 0 and 0 < p < 1, the same values, with a zero gradient at x = 0 instead of
    pow's infinite one (which times a zero upstream gradient is NaN: one pixel exactly at the
    opening's corner once made a whole training step's gradients NaN)."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).pow(p), torch.zeros_like(x))


class _Lens(NamedTuple):
    """The opening's geometry at points (ux, uy) (N x H x W each, except as noted): ``t`` across
    (-1..1 between the inner corners), ``v`` below the line through the moved outer corners, the
    frame (``mid``, ``ex``, ``ey`` N x 2; ``half``, ``outer`` N: the opening's and the outer
    corners' half width), the gap's height at the middle ``gap`` (N x 1 x 1), the upper teeth's arch
    ``bell``, the opening's ``height`` across, and its ``top`` and ``bottom`` edges in ``v``."""

    t: torch.Tensor
    v: torch.Tensor
    mid: torch.Tensor
    ex: torch.Tensor
    ey: torch.Tensor
    half: torch.Tensor
    outer: torch.Tensor
    gap: torch.Tensor
    bell: torch.Tensor
    height: torch.Tensor
    top: torch.Tensor
    bottom: torch.Tensor

    def window(self, rows: slice, cols: slice) -> _Lens:
        """The same lens at the points [rows, cols] of the H x W it was computed at (the same values:
        a photo's edit computes it once for the window around the lips and reads its middle part)."""
        return self._replace(**{k: getattr(self, k)[:, rows, cols] for k in ("t", "v", "bell", "height", "top", "bottom")})


def _edge(points: torch.Tensor, mid: torch.Tensor, ex: torch.Tensor, ey: torch.Tensor, half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A lip edge (``points`` N x K x 2, corner to corner) in a mouth's frame: each point's place
    across (N x K, in ``half`` widths from ``mid`` along ``ex``, made non-decreasing) and how far below
    the corner line it lies (N x K, along ``ey``)."""
    d = points - mid[:, None]
    across = (d * ex[:, None]).sum(-1) / half[:, None]
    running = [across[:, 0]]
    for k in range(1, across.shape[1]):  # a running maximum (torch.cummax has no ONNX export)
        running.append(torch.maximum(running[-1], across[:, k]))
    return torch.stack(running, 1), (d * ey[:, None]).sum(-1)


def _interp(t: torch.Tensor, at: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation, batched and differentiable: ``values`` (N x K) given at the
    non-decreasing places ``at`` (N x K), read at ``t`` (N x H x W, or any shape that broadcasts to it), held constant beyond the ends."""
    a0, a1 = at[:, None, None, :-1], at[:, None, None, 1:]
    w = ((t[..., None] - a0) / (a1 - a0).clamp_min(1e-6)).clamp(0, 1)  # N x H x W x K-1
    return values[:, None, None, 0] + (w * (values[:, 1:] - values[:, :-1])[:, None, None]).sum(-1)


# The lips' edges are tabled at this many places across the mouth, from -_REACH to _REACH half
# widths of the opening (the outer corners lie within 2: the inset is at least 0.5).
_PLACES, _REACH = 257, 2.0


def _lens(ux: torch.Tensor, uy: torch.Tensor, lm: torch.Tensor, rest: torch.Tensor) -> _Lens:
    """The lens between the lips that :func:`render` draws in, for the landmarks ``lm`` where the
    warp put them and ``rest`` where they were (N x 68 x 2), at points (ux, uy) (H x W).

    The opening follows the lips: at each place across, its top is the warped upper lip's outer
    edge plus the upper lip's own thickness there (the rest face's seam below its outer edge), its
    height how much farther apart the two lips' outer edges are there than at rest (a jaw drop's
    round opening, bared teeth's square one, a smile's crescent), each lip's edge read between its
    points at their own places across (the rest face's in its own frame, so a widened mouth
    compares the same stretch of lip)."""
    lm, rest = lm.float(), rest.float()
    c0, c1 = lm[:, 48], lm[:, 54]  # outer mouth corners
    mid = (c0 + c1) / 2
    axis = c1 - c0
    outer = axis.norm(dim=-1).clamp_min(1e-6) / 2  # N
    ex = axis / (2 * outer)[:, None]
    ey = torch.stack([-ex[:, 1], ex[:, 0]], -1)  # perpendicular, pointing down the face
    inset = ((rest[:, 64] - rest[:, 60]).norm(dim=-1) / (rest[:, 54] - rest[:, 48]).norm(dim=-1).clamp_min(1e-6)).clamp(0.5, 1.0)
    half = outer * inset  # the opening's half width: the inner corners'
    dx, dy = ux[None] - mid[:, 0, None, None], uy[None] - mid[:, 1, None, None]
    t = (dx * ex[:, 0, None, None] + dy * ex[:, 1, None, None]) / half[:, None, None]  # -1..1 across
    v = dx * ey[:, 0, None, None] + dy * ey[:, 1, None, None]  # below the corner line
    # the rest face in its own frame
    r0, r1 = rest[:, 48], rest[:, 54]
    mid_r = (r0 + r1) / 2
    ex_r = (r1 - r0) / (r1 - r0).norm(dim=-1, keepdim=True).clamp_min(1e-6)
    ey_r = torch.stack([-ex_r[:, 1], ex_r[:, 0]], -1)
    half_r = (r1 - r0).norm(dim=-1).clamp_min(1e-6) / 2 * inset

    # the lips' edges are tabled at _PLACES places across, then read at every pixel in one lookup
    places = torch.linspace(-_REACH, _REACH, _PLACES, device=lm.device)[None, None]  # 1 x 1 x P (broadcast: a dynamic batch in ONNX)

    def edge(points, of, frame):
        return _interp(places, *_edge(of[:, points], *frame))  # N x 1 x P

    moved, still = (mid, ex, ey, half), (mid_r, ex_r, ey_r, half_r)
    up_out, up_rest = edge(_OUTER_UP_EDGE, lm, moved), edge(_OUTER_UP_EDGE, rest, still)
    spread = (edge(_OUTER_LOW_EDGE, lm, moved) - up_out) - (edge(_OUTER_LOW_EDGE, rest, still) - up_rest)
    table = torch.stack([up_out + (edge(_INNER_UP_EDGE, rest, still) - up_rest).clamp_min(0),
                         spread.clamp_min(0)], 1)  # N x 2 x 1 x P: the opening's top and height across
    at = torch.stack([t / _REACH, torch.zeros_like(t)], -1)  # N x H x W x 2
    top, height = torch.nn.functional.grid_sample(table, at, mode="bilinear", padding_mode="border", align_corners=True).unbind(1)

    def below(points, of):  # how far below the corner line the centre of ``points`` of ``of`` lies
        return ((of[:, points].mean(1) - mid) * ey).sum(-1)[:, None, None]

    # the gap at the middle, for the teeth: how much farther apart the lips' outer centres are than at rest
    gap = ((below(_OUTER_LOW, lm) - below(_OUTER_UP, lm)) - (below(_OUTER_LOW, rest) - below(_OUTER_UP, rest))).clamp_min(0)
    bell = _root((1 - t.square()).clamp_min(0), 0.8)  # the upper teeth's arch
    return _Lens(t, v, mid, ex, ey, half, outer, gap, bell, height, top, top + height)


def bared(units: torch.Tensor) -> torch.Tensor:
    """N: how far (inter-ocular units) the :data:`PARTING` units among ``units`` (N x (U + 1)) pull
    the lips off the teeth, at the lips' middle."""
    moves = _all_moves()
    span = (moves[PARTING_INDEX, 57, 1] - moves[PARTING_INDEX, 51, 1]).to(units.device)  # each unit's parting at coefficient 1
    return (units[:, PARTING_INDEX].float().clamp_min(0) * span).sum(1)


def render(ux: torch.Tensor, uy: torch.Tensor, lm: torch.Tensor, soft: float, rest: torch.Tensor, outline: float = 1.0,
           min_line: float = 0.0, units: torch.Tensor | None = None, lens: _Lens | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mouth's inside at points (ux, uy) (H x W, unit crop coordinates), for the landmarks ``lm``
    where the warp put them and ``rest`` where they were (N x 68 x 2, the same coordinates):
    (A N x 1 x H x W in [0, 1], C N x 3 x H x W in [-1, 1]). ``soft``: the edges' softness in those
    coordinates (about half a pixel of the output); ``outline``: how many times softer the lips' edge
    over the dark inside is; ``min_line``: the gaps between teeth are no thinner than this many
    ``soft`` (no aliasing on small faces); ``units``: the coefficients (N x (U + 1)) that moved the
    lips, when known: the lips that :data:`PARTING` units pull back (bared teeth) uncover the teeth
    whatever the jaw does, so that part of the gap never sinks the lower teeth; ``lens``: ``_lens(ux, uy,
    lm, rest)`` when the caller has it already. The defaults are G's
    drawing in training; an edited photo uses :data:`OUTLINE_SOFT` and :data:`MIN_LINE` (``warp.apply_to_photo``).

    Only the outer lip points (48-59) are used: they are where the warp really put the lips (the
    inner ones sit on the closed mouth's seam, which the parted gap reads from). The lips keep their
    own thickness; at each place across, between the outer corners inset as the inner corners were,
    the gap is how much farther apart the two lips' outer edges are there than at rest (``_lens``).
    A gap up to :data:`UPPER_TEETH` + :data:`LOWER_TEETH` (the bite closed: a grin, bared teeth) is
    teeth from lip to lip, split between the rows in that proportion with a faint shadow where they
    meet; as the jaw drops further the lower teeth sink behind the lower lip and the dark mouth shows
    (bared lips keep them uncovered: an angry shout shows both rows of teeth, a surprised one the upper)."""
    g = _lens(ux, uy, lm, rest) if lens is None else lens
    t, v, half, gap, bell, height, top, bottom = g.t, g.v, g.half, g.gap, g.bell, g.height, g.top, g.bottom
    lm = lm.float()
    scale = _eye_distance(lm)[:, None, None]
    sig = torch.sigmoid
    outline = outline * soft  # the lips' edge over the dark inside: a photo's lips blur into it
    inside = sig((v - top) / outline) * sig((bottom - v) / outline) * sig((1 - t.abs()) * half[:, None, None] / outline)
    mask = inside * gap / (gap + 4 * soft)  # a hairline opening fades out instead of drawing a line
    # the teeth: the upper incisors' band under the upper lip and, while the bite is closed or
    # nearly (a grin, bared teeth), the lower incisors' band above the lower lip
    depth = v - top
    across = t.abs() * half[:, None, None] / scale  # inter-ocular units from the midline
    line = torch.clamp_min(0.006 * scale, min_line * soft) / scale
    edges = sum(k * torch.exp(-((across - e) / line).square()) for e, k in TOOTH_EDGES)
    under_lip = (depth / (0.35 * UPPER_TEETH * scale)).clamp(0, 1)  # the upper lip's shadow
    tc = t.clamp(-1, 1)
    bite = (UPPER_TEETH + LOWER_TEETH) * scale  # a gap up to this is all teeth: the bite is closed
    # the jaw drops beyond the bite: the lower teeth sink behind the lower lip over LOWER_TEETH more
    # (the share of the gap that bared lips make leaves them uncovered)
    jaw = gap if units is None else (gap - bared(units).to(lm.device)[:, None, None] * scale).clamp_min(0)
    lower_vis = LOWER_TEETH * scale * bell * (1 - ((jaw - bite) / (LOWER_TEETH * scale)).clamp(0, 1))
    share = UPPER_TEETH / (UPPER_TEETH + LOWER_TEETH)
    teeth_h = torch.minimum(UPPER_TEETH * scale * bell, share * height)  # where the upper teeth end
    lower_h = torch.minimum(lower_vis, height - teeth_h)
    lower_shown = lower_h > 0
    upper_a = sig((teeth_h - depth) / soft)
    lower_a = sig((depth - (height - lower_h)) / soft) * lower_shown
    teeth_a = torch.maximum(upper_a, lower_a) * sig((0.78 - t.abs()) * half[:, None, None] / (4 * soft))
    # the biting edges' thin shadow, and the lower teeth a little darker (under the upper ones)
    seam = torch.exp(-((depth - teeth_h) / (line * scale + soft)).square()) * lower_shown
    shade = ((1 - 0.5 * tc.square()) * (0.78 + 0.22 * under_lip) * (1 - edges) * (1 - 0.3 * seam)
             * (1 - 0.12 * lower_a * (1 - upper_a)))
    low = (depth / height.clamp_min(soft)).clamp(0, 1)  # 0 under the upper lip, 1 at the lower lip
    cavity = torch.lerp(torch.tensor(CAVITY, device=lm.device)[None, :, None, None], torch.tensor(TONGUE, device=lm.device)[None, :, None, None],
                        (low.square() * (1 - tc.square()))[:, None])
    teeth = torch.tensor(TEETH, device=lm.device)[None, :, None, None] * shade[:, None]
    colour = teeth_a[:, None] * teeth + (1 - teeth_a[:, None]) * cavity
    return mask[:, None], colour.clamp(0, 1) * 2 - 1


def _along(a: torch.Tensor, at: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``values`` (K x C, given at positions ``at``, K) at ``a``
    (any shape), held constant beyond the ends: ... x C. Not differentiable (numpy's interp: a few
    microseconds for the photo path's tables, against a millisecond for torch's sort and gathers)."""
    at_, values_ = at.detach().double().cpu().numpy(), values.detach().double().cpu().numpy()
    order = np.argsort(at_, kind="stable")
    flat = a.detach().double().cpu().numpy().reshape(-1)
    out = np.stack([np.interp(flat, at_[order], values_[order, c]) for c in range(values_.shape[-1])], -1)
    return torch.from_numpy(out).to(values.dtype).reshape(*a.shape, values.shape[-1])


def carry_lips(ux: torch.Tensor, uy: torch.Tensor, flow: torch.Tensor, lm: torch.Tensor, rest: torch.Tensor,
               lens: _Lens | None = None) -> torch.Tensor:
    """``flow`` (2 x H x W, grid_sample units, backward: the output at (ux, uy) reads the input at
    (ux, uy) + flow / 2, unit crop coordinates) with both lips carried whole where the mouth opens.

    A smooth flow cannot part the lips: the upper and the lower lip both start at the closed mouth's
    seam, and the flow spreads the jump between them over the width of its radial functions, so the
    lower lip is stretched (about 1.7x its height for a smile's opening) and only partly hidden by the
    drawn inside, and where the corners rise the seam runs through the upper lip as a dark line. Here
    each point of a lip's band of the output (the upper lip between its outer edge where the warp put
    it, ``lm``, and the drawn opening's top; the lower lip between the opening's bottom and its outer
    edge) reads the input's lip (between its outer edge and the seam at ``rest``, at the same place
    across), so a lip keeps its texture and its thickness and only moves; inside the opening the read
    slides along the seam (it is drawn over), and beyond the lips the change fades out over one lip's
    height. Between the inner and the outer corners both bands narrow to the corner, where the lips
    meet; beyond the outer corners, and outside the mouth, ``flow`` is unchanged. For an edited photo
    only (``warp.apply_to_photo``, one face; ``lens``: ``_lens(ux, uy, lm[:1], rest[:1])`` when the caller has it)."""
    g = _lens(ux, uy, lm[:1], rest[:1]) if lens is None else lens
    lm, rest = lm[0].float(), rest[0].float()
    t, v, top, bottom = g.t[0], g.v[0], g.top[0], g.bottom[0]
    a = t * (g.half / g.outer)[0]  # across, the outer corners at -1 and 1
    mid_r = (rest[48] + rest[54]) / 2
    ex_r = (rest[54] - rest[48]) / (rest[54] - rest[48]).norm().clamp_min(1e-9)
    ey_r = torch.stack([-ex_r[1], ex_r[0]])
    half_r = (rest[54] - rest[48]).norm().clamp_min(1e-9) / 2

    def across(points, m, e, h):
        return ((points - m) * e).sum(-1) / h

    # every lip edge as a function of the place across, tabled at 129 places and read at each pixel's
    # in one go (one lookup instead of twelve gathers: the photo path's time)
    places = torch.linspace(-1, 1, 129)

    def rest_edge(points):  # the input's lip edge at each place across: 129 x 2
        return _along(places, across(rest[points], mid_r, ex_r, half_r), rest[points])

    def moved_edge(points):  # how far below the moved corners' line the warped lip edge lies: 129 x 1
        m = lm[points]
        return _along(places, across(m, g.mid[0], g.ex[0], g.outer[0]), ((m - g.mid[0]) * g.ey[0]).sum(-1, keepdim=True))

    table = torch.cat([rest_edge(_INNER_UP_EDGE), rest_edge(_INNER_LOW_EDGE), rest_edge(_OUTER_UP_EDGE),
                       rest_edge(_OUTER_LOW_EDGE), moved_edge(_OUTER_UP_EDGE), moved_edge(_OUTER_LOW_EDGE)], -1)  # 129 x 10
    at = torch.stack([a.clamp(-1, 1), torch.zeros_like(a)], -1)[None]
    edges = torch.nn.functional.grid_sample(table.T[None, :, None, :], at, mode="bilinear", padding_mode="border",
                                            align_corners=True)[0].permute(1, 2, 0)  # H x W x 10
    seam_up, seam_low, outer_up, outer_low = edges[..., 0:2], edges[..., 2:4], edges[..., 4:6], edges[..., 6:8]
    up_out, low_out = edges[..., 8], edges[..., 9]
    s_up = ((v - up_out) / (top - up_out).clamp_min(1e-6))[..., None]  # 0 at the upper lip's outer edge, 1 at its inner
    s_low = ((v - bottom) / (low_out - bottom).clamp_min(1e-6))[..., None]  # 0 at the lower lip's inner edge, 1 at its outer
    s_gap = ((v - top) / (bottom - top).clamp_min(1e-6))[..., None].clamp(0, 1)
    target = torch.where(v[..., None] < top[..., None], torch.lerp(outer_up, seam_up, s_up.clamp(0, 1)),
                         torch.where(v[..., None] < bottom[..., None], torch.lerp(seam_up, seam_low, s_gap),
                                     torch.lerp(seam_low, outer_low, s_low.clamp(0, 1))))
    # beyond the lips, the lips' own move continued, fading out over one lip's height
    target = torch.where(s_up < 0, outer_up + (v - up_out)[..., None] * ey_r, target)
    target = torch.where(s_low > 1, outer_low + (v - low_out)[..., None] * ey_r, target)
    weight = torch.minimum((1 + s_up[..., 0]).clamp(0, 1), (2 - s_low[..., 0]).clamp(0, 1))
    weight = weight * ((1 - a.abs()) / 0.15).clamp(0, 1)  # to the outer corners, where the lips meet
    read = torch.stack([ux, uy], -1) + flow.permute(1, 2, 0) / 2
    return flow + (2 * (target - read) * weight[..., None]).permute(2, 0, 1)


def flow_for(points: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """The opening's flow at coefficient 1 (2 x size x size, grid_sample units) for a face whose
    landmarks are ``points`` (68 x 2, pixels of a size x size crop): :data:`MOUTH_OPEN` through
    ``basis.rbf_flow``, as the action units' fields, but from this face's own landmarks."""
    return rbf_flow(points, unit_moves(MOUTH_OPEN) * eye_distance(points), size, sigma)
