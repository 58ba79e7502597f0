"""An edit as a change to apply, and the one function that applies it to a photo.

A generator's edit of an aligned crop (S x S, dlib face-chip geometry as ``faces.align_face`` cuts
it) is described by up to four low-resolution fields, a :class:`CropEdit`::

    flow    N x 2 x S x S   backward displacement in grid_sample units of the crop (x, then y;
                            align_corners=False): the edited crop at p samples the input at p + flow(p)
    mask    N x 1 x S x S   in [0, 1]: where ``colour`` replaces the (warped) input
    colour  N x 3 x S x S   in [-1, 1]
    delta   N x 3 x S x S   an additive change, in [-1, 1] units

    edited = (1 - mask) * warp(x, flow) + mask * colour + delta      (missing terms: identity / 0)

``compose(x, edit)`` computes that for crops (any resolution: the fields are resampled to the
crop's). ``apply_to_photo(photo, faces, edit)`` computes it for the ORIGINAL photo at its own
resolution: each photo pixel of a face's region is mapped into crop coordinates by the face's
similarity transform, the fields are sampled there (so they are upsampled in photo space, the photo
is never downsampled), the flow is turned into photo pixels, the original photo is sampled at the
displaced position, and the result is blended in with the feathered face ellipse, as
``faces.paste_back`` blends. A zero change (no flow, mask 0, delta 0) leaves every pixel as it was.

The edit modes build CropEdits (see ``Editor.crop_edit``): "paper" = CropEdit(mask=1, colour=G(E(x), y));
"residual" = CropEdit(delta=strength * (G(E(x), y) - G(E(x), y_x))); "warp" = the warp head's
:class:`Fields` scaled by the strength.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from affectedit.faces import blend_region, ellipse_alpha
from affectedit.images import LUMA
from affectedit.networks import Fields, warp_image

_IMAGE_FIELDS = ("flow", "mask", "colour", "delta")

__all__ = ["CropEdit", "Fields", "apply_to_photo", "compose", "luma_change", "warp_image"]


@dataclass
class CropEdit:
    """The change of N aligned crops, as low-resolution fields (see the module docstring). Any
    field may be None: no flow, no mask (so ``colour`` has no effect), no delta."""

    flow: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    colour: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    units: torch.Tensor | None = None       # the opening mouth (affectedit.mouth): N x (U + 1) unit coefficients,
    landmarks: torch.Tensor | None = None   # N x 68 x 2 where they start (unit crop coordinates),
    mouth_flow: torch.Tensor | None = None  # N x 2 x S x S the opening's part of flow

    @classmethod
    def from_fields(cls, f, strength: float = 1.0) -> CropEdit:
        """The edit of a warp head's :class:`Fields`, scaled: flow * s, mask * s (clamped to [0, 1]);
        with the opening mouth, its units * s instead of mask and colour (the mouth's inside is
        drawn where the edit is applied, at that resolution)."""
        delta = getattr(f, "delta", None)
        delta = None if delta is None else delta * strength
        if getattr(f, "units", None) is not None:
            per_face = strength.reshape(-1, 1) if torch.is_tensor(strength) else strength  # a strength per face: N x 1 x 1 x 1
            return cls(flow=f.flow * strength, delta=delta, units=f.units * per_face, landmarks=f.landmarks,
                       mouth_flow=f.mouth_flow * strength)
        return cls(flow=f.flow * strength, mask=(f.mask * strength).clamp(0, 1), colour=f.colour, delta=delta)

    def present(self) -> dict[str, torch.Tensor]:
        """The fields that are not None, by name, in the order flow, mask, colour, delta, units,
        landmarks, mouth_flow."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def images(self) -> dict[str, torch.Tensor]:
        """The present fields that are images at the model's resolution (flow, mask, colour, delta)."""
        return {k: v for k, v in self.present().items() if k in _IMAGE_FIELDS}

    def __len__(self) -> int:
        return next((len(t) for t in self.present().values()), 0)

    def __getitem__(self, index) -> CropEdit:
        """The edits of the crops ``index`` (an int, a slice or an index tensor)."""
        index = slice(index, index + 1 if index != -1 else None) if isinstance(index, int) else index  # a view, not a copy
        return replace(self, **{k: t[index] for k, t in self.present().items()})

    def to(self, device=None, dtype=None) -> CropEdit:
        return replace(self, **{k: t.to(device=device, dtype=dtype) for k, t in self.present().items()})


def luma_change(delta: torch.Tensor) -> torch.Tensor:
    """An RGB change (... x 3 x H x W) reduced to its brightness part (BT.601 luma of the change,
    the same in the 3 channels): shading and shape survive, colour casts do not."""
    w = torch.tensor(LUMA, device=delta.device, dtype=delta.dtype).view(3, 1, 1)
    return (delta * w).sum(-3, keepdim=True).expand_as(delta)


def compose(x: torch.Tensor, edit) -> torch.Tensor:
    """The edited crops: x (N x 3 x H x W in [-1, 1]) changed by ``edit`` (a CropEdit, or Fields),
    clamped to [-1, 1]. Fields at another resolution than H x W are resampled bilinearly
    (align_corners=False) to it; flow units do not depend on the resolution."""
    if not isinstance(edit, CropEdit):
        edit = CropEdit.from_fields(edit)
    h, w = x.shape[-2:]
    f = {k: t.to(x.dtype) if t.shape[-2:] == (h, w) else
         F.interpolate(t.to(x.dtype), size=(h, w), mode="bilinear", align_corners=False)
         for k, t in edit.images().items()}
    out = warp_image(x, f["flow"]) if "flow" in f and f["flow"].any() else x  # no flow: exactly x
    if edit.units is not None:  # the mouth's inside, drawn at this resolution
        from affectedit.mouth import render, warped_landmarks

        pix = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        piy = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        uy, ux = torch.meshgrid(piy, pix, indexing="ij")
        rest, units = edit.landmarks.float().cpu(), edit.units.float().cpu()
        moved = warped_landmarks(rest, edit.flow.float().cpu(), units)
        f["mask"], f["colour"] = (t.to(x) for t in render(ux, uy, moved, 0.5 / w, rest, units=units))
    if "mask" in f:
        out = (1 - f["mask"]) * out + f["mask"] * f.get("colour", torch.zeros_like(out))
    if "delta" in f:
        out = out + f["delta"]
    return out.clamp(-1, 1)


@torch.inference_mode()  # no autograd bookkeeping: a tenth of the paste's time
def apply_to_photo(photo, faces, edit: CropEdit, feather: float = 0.2) -> Image.Image:
    """``photo`` (PIL image or H x W x 3 uint8 RGB array) with face i changed by ``edit[i]``, at the
    photo's own resolution, blended in with the feathered face ellipse (``faces.ellipse_alpha``).

    Only each face's region (``faces.blend_region``) is computed; pixels outside it and wherever the
    ellipse is 0 are byte-identical to the photo, and so is every pixel when the edit is zero.
    Faces are applied in order, each to the photo as the previous ones left it. Returns a new RGB
    image (the photo is not modified)."""
    if isinstance(photo, Image.Image) and photo.mode != "RGB":
        photo = photo.convert("RGB")
    out = np.array(photo, dtype=np.uint8, copy=True)
    H, W = out.shape[:2]
    if edit.present() and len(faces) != len(edit):
        raise ValueError(f"{len(faces)} faces but {len(edit)} edits")
    edit = edit.to("cpu", torch.float32)
    for i, face in enumerate(faces):
        one = edit[i]
        t = np.asarray(face.transform, dtype=np.float64)
        x0, y0, x1, y1 = blend_region(face, W, H, feather)
        mouth, lm, creasing, opens = None, None, {}, False
        if one.units is not None and x1 > x0 and y1 > y0:
            from affectedit.creases import crease_units
            from affectedit.mouth import parting

            creasing = crease_units(one.units) if CREASES else {}
            opens = float(parting(one.units)[0]) > MIN_OPENING  # the lips part: the mouth's inside is drawn
            if opens or creasing:
                from affectedit.photo_metrics import landmarks68

                lm = landmarks68(out, face)
        if x1 <= x0 or y1 <= y0:
            continue
        px, py, ux, uy = _unit_grid(t, (x0, y0, x1, y1))  # unit crop coordinates of the region's pixels
        alpha = torch.from_numpy(ellipse_alpha(ux, uy, feather))
        grid = torch.from_numpy(np.stack([2 * ux - 1, 2 * uy - 1], -1).astype(np.float32))[None]
        parts = one.images()
        if lm is not None and opens:
            mouth = _face_mouth(out, face, one, lm)
            parts["flow"] = parts["flow"] + mouth[0]
        sampled = F.grid_sample(torch.cat(list(parts.values()), 1), grid, mode="bilinear", padding_mode="border",
                                align_corners=False)[0] if parts else None
        f, k = {}, 0
        for name, field in parts.items():  # split the sampled channels back into the fields
            f[name], k = sampled[k:k + field.shape[1]], k + field.shape[1]
        lips = None
        if mouth is not None:
            f["flow"], lips = _carry_lips(f["flow"], mouth[1], mouth[2], ux, uy)
        region = torch.from_numpy(out[y0:y1, x0:x1]).permute(2, 0, 1).float()
        edited = _displaced(out, f["flow"], t, px, py) if "flow" in f and f["flow"].any() else region
        if "mask" in f:
            colour = (f["colour"] + 1) * 127.5 if "colour" in f else torch.zeros_like(edited)
            edited = (1 - f["mask"]) * edited + f["mask"] * colour
        if "delta" in f:
            edited = edited + f["delta"] * 127.5
        if mouth is not None:
            edited = _draw_mouth(edited, region, mouth[1], mouth[2], t, ux, uy, _eye_whites(out, mouth[3]), one.units.float(), lips)
        blended = region * (1 - alpha) + edited.clamp(0, 255) * alpha
        creases = None
        if creasing:
            box = _crease_box(t, lm, creasing, W, H)
            creases = _crease_shade(box, (x0, y0, x1, y1), f.get("flow"), alpha, lm, t, creasing)
            if creases is not None and creases[1] is not None:  # the part on the region
                blended[:, creases[1][1][0], creases[1][1][1]] *= creases[0][creases[1][0]]
        out[y0:y1, x0:x1] = blended.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        if creases is not None:  # the part beyond the region (the forehead above the ellipse), where nothing moves
            shade = creases[0].numpy()
            for ry, rx in _beyond(box, (x0, y0, x1, y1)):
                part = out[ry, rx]
                part[:] = np.clip(np.round(part * shade[ry.start - box[1]:ry.stop - box[1], rx.start - box[0]:rx.stop - box[0], None]),
                                  0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def _unit_grid(t: np.ndarray, box: tuple[int, int, int, int]):
    """(px, py, ux, uy): the photo pixels of ``box`` (x0, y0, x1, y1) as a row ``px`` and a column
    ``py`` of their coordinates, and their unit crop coordinates under the transform ``t`` (2 x 3),
    h x w each (float64)."""
    x0, y0, x1, y1 = box
    px, py = np.arange(x0, x1, dtype=np.float64)[None], np.arange(y0, y1, dtype=np.float64)[:, None]
    return px, py, t[0, 0] * px + t[0, 1] * py + t[0, 2], t[1, 0] * px + t[1, 1] * py + t[1, 2]


def _beyond(box: tuple[int, int, int, int], region: tuple[int, int, int, int]) -> list[tuple[slice, slice]]:
    """The photo pixels of ``box`` outside ``region`` (both x0, y0, x1, y1), as up to four (rows,
    columns) rectangles: the rows above and below the region, and beside it."""
    bx0, by0, bx1, by1 = box
    ox0, oy0, ox1, oy1 = max(bx0, region[0]), max(by0, region[1]), min(bx1, region[2]), min(by1, region[3])
    if ox1 <= ox0 or oy1 <= oy0:  # apart
        return [(slice(by0, by1), slice(bx0, bx1))]
    parts = [(slice(by0, oy0), slice(bx0, bx1)), (slice(oy1, by1), slice(bx0, bx1)),
             (slice(oy0, oy1), slice(bx0, ox0)), (slice(oy0, oy1), slice(ox1, bx1))]
    return [(r, c) for r, c in parts if r.stop > r.start and c.stop > c.start]


def _displaced(photo: np.ndarray, flow: torch.Tensor, t: np.ndarray, px: np.ndarray, py: np.ndarray) -> torch.Tensor:
    """The photo (H x W x 3 uint8) sampled at (px, py) + d (its smooth band bicubically, its fine
    detail at the nearest pixel; px a row, py a column of pixel coordinates, or both h x w), d the
    crop flow (2 x h x w, grid_sample units) in photo pixels: half the flow is a step in unit crop coordinates, which the
    inverse of the transform's linear part turns into photo pixels. Returns 3 x h x w float32."""
    inv = torch.from_numpy(np.linalg.inv(t[:, :2]).astype(np.float32))
    d = torch.einsum("ij,jhw->ihw", inv, flow * 0.5)
    qx = torch.from_numpy(px.astype(np.float32)) + d[0]
    qy = torch.from_numpy(py.astype(np.float32)) + d[1]
    H, W = photo.shape[:2]
    # read only the rectangle the displaced positions fall in, plus the bicubic neighbours and the
    # blur's reach (cv2's kernel reaches 4 sigma)
    m = 2 + (int(np.ceil(4 * DETAIL_SIGMA)) if DETAIL_SIGMA > 0 else 0)
    sx0 = int(max(0, np.floor(float(qx.min())) - m))
    sy0 = int(max(0, np.floor(float(qy.min())) - m))
    sx1 = int(min(W, np.ceil(float(qx.max())) + m + 1))
    sy1 = int(min(H, np.ceil(float(qy.max())) + m + 1))
    if sx1 <= sx0 or sy1 <= sy0:  # the flow points entirely outside the photo: its nearest edge
        sx0, sy0 = min(max(sx0, 0), W - 1), min(max(sy0, 0), H - 1)
        sx1, sy1 = sx0 + 1, sy0 + 1
    patch = np.ascontiguousarray(photo[sy0:sy1, sx0:sx1], dtype=np.float32)  # read once: both bands come from it
    # Any interpolation at sub-pixel positions is a blur: bilinear took ~8% of the face's fine texture
    # for a flow of a tenth of a pixel, bicubic still 9% for a quarter and 17% for half a pixel. So
    # the photo is split in two bands: the smooth one (a Gaussian blur of DETAIL_SIGMA pixels) is read
    # bicubically, the fine detail above it (pores, hair, grain) at the nearest pixel, whole. Where
    # the flow is zero both reads are exact.
    if DETAIL_SIGMA <= 0:
        w, h = sx1 - sx0, sy1 - sy0
        grid = torch.stack([(2 * (qx - sx0) + 1) / w - 1, (2 * (qy - sy0) + 1) / h - 1], -1)[None]
        src = torch.from_numpy(patch).permute(2, 0, 1)[None]
        return F.grid_sample(src, grid, mode="bicubic", padding_mode="border", align_corners=False)[0].clamp_(0, 255)
    import cv2

    low = cv2.GaussianBlur(patch, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REPLICATE)
    mx, my = (qx - sx0).numpy(), (qy - sy0).numpy()
    # the smooth band through cv2's bicubic remap (the same kernel, a = -0.75, and border; 2-4x faster
    # than grid_sample's; it places the read to 1/32 pixel, which on a band blurred this much moves
    # a value by well under a grey level); the detail at the nearest pixel, the same way (exact:
    # the nearest pixel is a whole one)
    out = cv2.remap(low, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    out += cv2.remap(patch - low, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out).permute(2, 0, 1).clamp_(0, 255)


# The photo's fine detail is the part above a Gaussian blur of this many pixels (``_displaced``); 0 reads
# the whole photo bicubically. Chosen on training faces (6 London portraits, 10 LFW train-split faces,
# four expressions each, texture ratio of the face box): 0 gives London 0.89-0.98 and LFW 0.99-1.09,
# 1.0 gives 0.96-1.02 and 1.01-1.10, 1.5 gives 0.98-1.04 and 1.02-1.13 (a pixel repeated where
# the warp stretches is an edge the small, soft LFW photos did not have).
DETAIL_SIGMA = 1.0


# The drawn mouth's edge softness, in photo pixels (the sigmoid's scale).
MOUTH_SOFT = 0.8

# The largest grain (grey levels, mean absolute) added to the drawn mouth.
MAX_GRAIN = 3.0

# The opening below which a face's mouth is left closed (no landmarks, no drawing): 0.02 of a
# moderate opening parts the lips by well under a pixel.
MIN_OPENING = 0.02


def _face_mouth(photo: np.ndarray, face, edit: CropEdit, lm: np.ndarray | None = None):
    """(flow correction 1 x 2 x S x S, moved and own landmarks 1 x 68 x 2 in unit crop coordinates, own
    landmarks 68 x 2 in photo pixels) of one face's opening mouth: the face's own 68 landmarks replace
    the mean face's where the opening moves pixels and where the mouth's inside is drawn."""
    from affectedit.mouth import flow_for, warped_landmarks
    from affectedit.photo_metrics import landmarks68

    t = np.asarray(face.transform, dtype=np.float64)
    lm = landmarks68(photo, face) if lm is None else lm
    unit = lm @ t[:, :2].T + t[:, 2]  # photo pixels -> unit crop coordinates
    size = edit.mouth_flow.shape[-1]
    own = torch.from_numpy(flow_for(unit * size - 0.5, size)).float()
    opening = edit.units[0, -1].float()
    correction = (opening * own - edit.mouth_flow[0].float())[None]
    own_lm = torch.from_numpy(unit).float()[None]
    moved = warped_landmarks(own_lm, edit.flow.float() + correction, edit.units.float())
    return correction, moved, own_lm, lm


# Draw the expression creases of ``affectedit.creases`` (folds between lowered brows, lines across a
# raised forehead) where the units ask for them.
CREASES = True


def _crease_box(t: np.ndarray, lm: np.ndarray, coefficients: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo pixels the creases of ``coefficients`` can touch (``creases.extent``),
    clipped to the photo."""
    from affectedit.creases import extent

    ex0, ey0, ex1, ey1 = extent(lm @ t[:, :2].T + t[:, 2], coefficients)
    inv = np.linalg.inv(np.vstack([t, [0.0, 0.0, 1.0]]))[:2]
    corners = np.array([[ex0, ey0, 1], [ex1, ey0, 1], [ex0, ey1, 1], [ex1, ey1, 1]]) @ inv.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 3
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), width), min(int(y1), height)


def _crease_shade(box: tuple[int, int, int, int], region: tuple[int, int, int, int], flow: torch.Tensor | None,
                  alpha: torch.Tensor, lm: np.ndarray, t: np.ndarray, coefficients: dict):
    """The creases' shading (``creases.shading``, bh x bw) over the photo pixels of ``box`` (x0, y0, x1,
    y1), placed on the input face's own landmarks ``lm`` (68 x 2, photo pixels) and read where the
    edited photo reads the input: within ``region`` (the face's blend region) moved by its flow (2 x h
    x w, grid_sample units) as far as the ellipse's ``alpha`` lets it in, so that the creases move
    with the skin; beyond it (the forehead above the ellipse) where nothing moves. Also returns the
    slices of the box and the region where they overlap (None when they do not). None where nothing
    is drawn."""
    from affectedit.creases import shading

    bx0, by0, bx1, by1 = box
    x0, y0, x1, y1 = region
    rx, ry = (torch.from_numpy(u).float() for u in _unit_grid(t, box)[2:])
    ox0, oy0, ox1, oy1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
    overlap = None
    if ox1 > ox0 and oy1 > oy0:
        overlap = ((slice(oy0 - by0, oy1 - by0), slice(ox0 - bx0, ox1 - bx0)),
                   (slice(oy0 - y0, oy1 - y0), slice(ox0 - x0, ox1 - x0)))
        if flow is not None:
            (b, r) = overlap
            rx[b] += alpha[r] * flow[0][r] / 2
            ry[b] += alpha[r] * flow[1][r] / 2
    shade = shading(rx, ry, lm @ t[:, :2].T + t[:, 2], coefficients, float(np.sqrt(abs(np.linalg.det(t[:, :2])))))
    return None if shade is None else (shade, overlap)


# The drawn teeth's brightness follows the photo's exposure through the whites of the eyes: on the
# London *training* pairs with an open smile (18 people) the real teeth's brightest tenth (luma,
# 90th percentile inside the inner lips) was 1.29 times the neutral photo's eye whites' (90th
# percentile inside dlib's eye outlines), varying 14% from person to person, against 28% for a
# ratio to the skin's brightness, which follows skin tone rather than the light.
TEETH_OVER_EYES = 1.29


def _eye_whites(photo: np.ndarray, lm: np.ndarray) -> float | None:
    """The brightest tenth of the eyes (luma, 90th percentile of the pixels inside dlib's two eye
    outlines, points 36-47 in photo pixels) of ``photo`` (H x W x 3 uint8); None where the eyes
    cover fewer than 30 pixels (a small face: the skin decides)."""
    import cv2

    pts = np.round(lm[36:48]).astype(np.int32)
    x0, y0 = np.maximum(pts.min(0), 0)
    x1, y1 = np.minimum(pts.max(0) + 1, [photo.shape[1], photo.shape[0]])
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)  # only the eyes' box
    for eye in (pts[:6], pts[6:]):
        cv2.fillPoly(mask, [eye - [x0, y0]], 1)
    inside = mask.astype(bool)
    if inside.sum() < 30:
        return None
    return float(np.percentile(photo[y0:y1, x0:x1][inside].astype(np.float32) @ np.asarray(LUMA, np.float32), 90))


def _lip_window(moved: torch.Tensor, rest: torch.Tensor, ux: np.ndarray, uy: np.ndarray, reach: float = 0.0):
    """The rows and columns (slices) of the region around the lips where they start (``rest``) and
    where the warp put them (``moved``, 1 x 68 x 2, unit crop coordinates), reaching ``reach`` farther
    up and down; None when no pixel of the region is there."""
    lips = torch.cat([moved[0, 48:68], rest[0, 48:68]]).numpy()
    pad = 0.01  # unit crop coordinates (the lens lies within the outer lips)
    inside = ((ux >= lips[:, 0].min() - pad) & (ux <= lips[:, 0].max() + pad)
              & (uy >= lips[:, 1].min() - pad - reach) & (uy <= lips[:, 1].max() + pad + reach))
    rows, cols = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
    if not len(rows) or not len(cols):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _carry_lips(flow: torch.Tensor, moved: torch.Tensor, rest: torch.Tensor, ux: np.ndarray, uy: np.ndarray):
    """(``flow`` (2 x h x w, sampled at the region's pixels) with the lips carried whole
    (``mouth.carry_lips``) in the window around them, which reaches the moved lips' whole height
    above and below them (the carrying fades out within one lip's band of them; a window of 1.3
    rest lip heights cut that fade short where a strong smile widened a band); that window and the
    opening's geometry there (``mouth._lens``), which ``_draw_mouth`` reads again, or None)."""
    from affectedit.mouth import _lens, carry_lips

    lip = float((moved[0, 57] - moved[0, 51]).norm())  # both lips and the opening: no lip's band (nor its fade) is taller
    win = _lip_window(moved, rest, ux, uy, reach=lip)
    if win is None:
        return flow, None
    out = flow.clone()
    inside = flow[:, win[0], win[1]]
    wx, wy = torch.from_numpy(ux[win]).float(), torch.from_numpy(uy[win]).float()
    lens = _lens(wx, wy, moved, rest)
    change = carry_lips(wx, wy, inside, moved, rest, lens) - inside
    if CARRY_SMOOTH > 0:  # the lips' bands meet at kinks, which the detail read at the nearest pixel turns into steps
        import cv2

        change = torch.from_numpy(cv2.GaussianBlur(change.permute(1, 2, 0).contiguous().numpy(), (0, 0), CARRY_SMOOTH,
                                                   borderType=cv2.BORDER_REPLICATE)).permute(2, 0, 1)
    out[:, win[0], win[1]] = inside + change
    return out, (win, lens)


# The lips' carrying (``_carry_lips``) is smoothed by a Gaussian of this many photo pixels (chosen on
# the calibration faces: unsmoothed, the small LFW photos' happy edits reached a face-box texture
# ratio of 1.150, the steps of a jagged lip edge; 1 px: 1.138 with the same fer agreement; 2 px:
# 1.136 with less; docs/report/calibration).
CARRY_SMOOTH = 1.0


def _draw_mouth(edited: torch.Tensor, region: torch.Tensor, moved: torch.Tensor, rest: torch.Tensor, t: np.ndarray, ux, uy,
                eyes: float | None = None, units: torch.Tensor | None = None, lips=None) -> torch.Tensor:
    """``edited`` (3 x h x w, 0-255) with the mouth's inside drawn at the photo's pixels (unit crop
    coordinates ux, uy), its brightness matched to the photo's light (``eyes``: the eye whites'
    brightness, :data:`TEETH_OVER_EYES`; without it, the skin around the mouth) and the photo's grain
    added (the same noise every time), so the new pixels are neither brighter nor smoother than the
    photo. ``units``: the face's coefficients (1 x (U + 1)), for the bared teeth (``mouth.render``);
    ``lips``: ``_carry_lips``' window and lens (a larger window than this one, holding it), read
    instead of computing the lens again. Only the window around the moved lips is computed."""
    from affectedit.mouth import MIN_LINE, OUTLINE_SOFT, TEETH, render

    win = _lip_window(moved, rest, ux, uy)
    if win is None:
        return edited
    pixel = float(np.sqrt(abs(np.linalg.det(t[:, :2]))))  # one photo pixel in unit crop coordinates
    lens = None
    if lips is not None:  # the carried lips' window holds this one (it reaches farther up and down)
        (rows, cols), whole = lips
        lens = whole.window(slice(win[0].start - rows.start, win[0].stop - rows.start),
                            slice(win[1].start - cols.start, win[1].stop - cols.start))
    mask, colour = render(torch.from_numpy(ux[win]).float(), torch.from_numpy(uy[win]).float(), moved, MOUTH_SOFT * pixel, rest,
                          OUTLINE_SOFT, MIN_LINE, units, lens)
    mask, colour = mask[0], (colour[0] + 1) * 127.5
    grey = (region[:, win[0], win[1]] * torch.tensor(LUMA).view(3, 1, 1)).sum(0)
    undrawn = mask[0] < 0.01  # the window's pixels the drawing leaves: lips and skin
    if eyes is not None:  # the teeth's brightest as bright as the light makes real teeth
        colour = colour * min(max(TEETH_OVER_EYES * eyes / (255.0 * float(np.dot(TEETH, LUMA))), 0.6), 1.15)
    else:
        skin = grey[undrawn]
        level = float(torch.quantile(skin[:: max(1, len(skin) // 4096)], 0.8)) if len(skin) else 185.0  # lit skin, not stubble
        colour = colour * min(max(level / 185.0, 0.7), 1.1)
    fine = (grey - F.avg_pool2d(grey[None, None], 3, 1, 1, count_include_pad=False)[0, 0])[undrawn]
    grain = min(float(fine.abs().median()) * 1.25, MAX_GRAIN) if len(fine) else 0.0  # (a beard is not grain)
    bright = (colour * torch.tensor(LUMA).view(3, 1, 1)).sum(0) / 170.0  # noise scales with the light: none in the dark
    noise = torch.randn(mask.shape[-2:], generator=torch.Generator().manual_seed(0)) * grain * bright
    out = edited.clone()
    out[:, win[0], win[1]] = (1 - mask) * edited[:, win[0], win[1]] + mask * (colour + noise)
    return out
