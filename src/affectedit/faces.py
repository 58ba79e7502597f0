"""Face detection, alignment and paste-back, offline, from registry-package weights.

Detection uses dlib's HOG frontal-face detector (ships inside ``dlib``) on a downscaled working copy
of the photo, then dlib's 5-point shape predictor (``shape_predictor_5_face_landmarks.dat`` from the
``face-recognition-models`` package) on the full-resolution photo.  Nothing is downloaded.

Alignment is a similarity transform (rotation, uniform scale, translation; least squares, Umeyama)
from the 5 landmarks to a canonical template: the geometry of dlib's face chip with padding 0.25
(``dlib.get_face_chip(img, shape5, size, 0.25)``), so an aligned crop resized to 150 x 150 is what
dlib's face-recognition ResNet expects.  The face is centred on the nose area and all faces have the
same size in the crop.

Coordinates: pixel centres are at integer coordinates (the convention of dlib and OpenCV).
``Face.transform`` maps photo pixels to the unit square [0, 1]^2 of the aligned crop;
``Face.matrix(size)`` maps photo pixels to pixels of a ``size`` x ``size`` crop
(``size * transform - 0.5``: the unit square covers the whole crop), which reproduces dlib's
``get_face_chip`` geometry: mean absolute difference < 1 grey level when the crop does not shrink
the face (e.g. 256 px from a 675 px portrait), ~2-3 grey levels when it does (150 or 96 px), where
dlib's pyramid and our anti-aliasing filter differ slightly.

The affine maths lives in ``affine``, the feathered face ellipse that paste-back blends with
(``face_mask``, ``ellipse_alpha``, ``blend_region``) in ``ellipse``; both are importable from here.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from affectedit.affine import apply_affine, invert_affine, similarity_transform
from affectedit.ellipse import blend_region, ellipse_alpha, face_mask
from affectedit.errors import UserError

__all__ = [
    "Face",
    "TEMPLATE",
    "CHIP_PADDING",
    "dlib_model_file",
    "detect_faces",
    "align_face",
    "align_faces_batch",
    "blend_region",
    "ellipse_alpha",
    "face_mask",
    "paste_back",
    "similarity_transform",
    "landmarks_transform",
]

# dlib's 5-point face-chip template (dlib/image_transforms/interpolation.h, get_face_chip_details),
# in dlib's 5-point order: 0 = outer corner of the eye on the image's right, 1 = its inner corner,
# 2 = outer corner of the eye on the image's left, 3 = its inner corner, 4 = bottom of the nose.
_DLIB_5PT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)
CHIP_PADDING = 0.25
#: Canonical landmark positions in the unit square of the aligned crop (dlib chip, padding 0.25).
TEMPLATE = (_DLIB_5PT + CHIP_PADDING) / (2 * CHIP_PADDING + 1)

# Anti-aliased (triangle filter, widened by the reduction factor) pre-shrink for align_face.
_RESAMPLE = Image.BILINEAR

#: Longest side of the working copy the detector runs on (faster; faces are found at >= ~80/400 of it).
DETECT_SIZE = 400
# A face spanning this share of the shorter side makes a photo a portrait (see detect_faces).
PORTRAIT_SHARE = 0.3
# Longest side of a first, quick look for a portrait's face (about half the cost of DETECT_SIZE).
QUICK_SIZE = 240


def dlib_model_file(name: str) -> pathlib.Path:
    """Path of a model file shipped by the ``face-recognition-models`` package (e.g.
    ``shape_predictor_5_face_landmarks.dat``, ``dlib_face_recognition_resnet_model_v1.dat``).

    The package is located without importing it (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The face-recognition-models package is not installed; it provides the dlib face models. "
            "Install it with: pip install face-recognition-models"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise UserError(
            f"dlib model file {name!r} not found at {path}; reinstall it with: "
            "pip install --force-reinstall face-recognition-models"
        )
    return path


def _dlib():
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - dependency is declared
        raise UserError("dlib is not installed; install it with: pip install dlib-bin") from e
    return dlib


# dlib objects are not documented as thread-safe: detector and predictor calls are serialised.
_LOCK = threading.Lock()


@functools.cache
def _hog_detector():
    return _dlib().get_frontal_face_detector()


@functools.cache
def _shape_predictor():
    return _dlib().shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))


@dataclass(eq=False)  # holds arrays: compare faces by their fields, not with ==
class Face:
    """One detected face.

    box: x0, y0, x1, y1 in photo pixels (the detector's box).
    landmarks: 5 x 2 float, photo pixels, dlib 5-point order.
    transform: 2 x 3 float64 affine, photo pixel (x, y, 1) -> aligned coordinates in the unit square.
    score: detector confidence (HOG SVM margin; > 0 is a detection)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    transform: np.ndarray
    score: float

    def matrix(self, size: int) -> np.ndarray:
        """2 x 3 affine photo pixel -> pixel of a ``size`` x ``size`` aligned crop.

        The unit square covers the whole crop (pixel centres at integers): crop pixel =
        size * unit coordinate - 0.5.  This reproduces dlib's ``get_face_chip`` sampling."""
        m = np.asarray(self.transform, dtype=np.float64) * float(size)
        m[:, 2] -= 0.5
        return m

    @property
    def scale(self) -> float:
        """Unit-square units per photo pixel (the uniform scale of ``transform``)."""
        t = np.asarray(self.transform, dtype=np.float64)
        return float(np.sqrt(abs(np.linalg.det(t[:, :2]))))

    @classmethod
    def from_landmarks(cls, landmarks, box=None, score: float = 0.0) -> "Face":
        """A Face from 5 landmarks (photo pixels, dlib order); the box defaults to their extent."""
        lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        if box is None:
            box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
        return cls(tuple(float(v) for v in box), lm, landmarks_transform(lm), float(score))

    def scaled(self, sx: float, sy: float) -> "Face":
        """The same face in a copy of the photo resized by (sx, sy) (pixel centres at integers)."""
        lm = (np.asarray(self.landmarks, dtype=np.float64) + 0.5) * (sx, sy) - 0.5
        x0, y0, x1, y1 = self.box
        return Face.from_landmarks(lm, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), score=self.score)


def landmarks_transform(landmarks: np.ndarray) -> np.ndarray:
    """Photo -> unit-square transform of 5 landmarks, exactly as dlib computes a face chip: the
    least-squares similarity from the template to the landmarks (dlib fits chip -> image), inverted."""
    return invert_affine(similarity_transform(TEMPLATE, landmarks))


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        bg = Image.new("RGB", image.size, (255, 255, 255))
        bg.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return bg
    return image.convert("RGB")


def _landmarks(rgb: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
    """Run the 5-point predictor at full resolution on a crop around ``box`` (photo pixels)."""
    dlib = _dlib()
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    W, H = rgb.size
    cx0 = int(max(0, np.floor(x0 - 0.5 * w)))
    cy0 = int(max(0, np.floor(y0 - 0.5 * h)))
    cx1 = int(min(W, np.ceil(x1 + 0.5 * w)))
    cy1 = int(min(H, np.ceil(y1 + 0.5 * h)))
    arr = np.ascontiguousarray(np.asarray(rgb.crop((cx0, cy0, cx1, cy1))))
    rect = dlib.rectangle(
        int(round(x0 - cx0)), int(round(y0 - cy0)), int(round(x1 - cx0)), int(round(y1 - cy0))
    )
    with _LOCK:
        shape = _shape_predictor()(arr, rect)
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    pts += (cx0, cy0)
    return pts


def _working_copy(rgb: Image.Image, side: int | None) -> Image.Image:
    """Greyscale copy with longest side at most ``side`` (None: full resolution)."""
    W, H = rgb.size
    if side is not None and max(W, H) > side:
        scale = side / max(W, H)
        size = (max(1, round(W * scale)), max(1, round(H * scale)))
        return rgb.convert("L").resize(size, Image.BILINEAR, reducing_gap=2.0) if max(W, H) < 2 * side \
            else rgb.resize(size, Image.BILINEAR, reducing_gap=2.0).convert("L")
    return rgb.convert("L")


def detect_faces(
    image: Image.Image,
    upsample: int | None = None,
    *,
    detect_size: int | None = DETECT_SIZE,
    threshold: float = 0.0,
    max_faces: int | None = None,
    portrait: float | None = PORTRAIT_SHARE,
) -> list[Face]:
    """Detect frontal faces; returns them largest first (by box area), [] when none.

    The HOG detector runs on a copy whose longest side is at most ``detect_size`` (None: full
    resolution); boxes are mapped back and the 5-point landmarks are found on the full-resolution
    photo.  ``upsample=None`` (auto) runs every pass and merges what they find (no early stop, so
    a group photo loses no face that one pass sees): the working copy as it is, then either the
    working copy upsampled once (faces down to ~40 px in it, i.e. 1/10 of the longest side) or,
    for photos larger than twice ``detect_size``, a copy at 4 x ``detect_size`` (faces down to
    1/20 of the longest side, e.g. the ~100 px faces of a 30-face collage).  A face seen by several passes is kept once, as
    the first pass saw it.  An integer ``upsample`` runs exactly that one pass.  ``threshold`` is
    the HOG score threshold (higher: fewer false positives).  ``max_faces`` keeps the largest N
    (None: all).  ``portrait``: when the first pass finds a face at least this share of the photo's
    shorter side, the photo is a portrait and the small-face pass (4-5x the cost of the first) is
    skipped: a face it alone could see would be under a fifth of the longer side, beside a face
    of a third of the shorter one (None: always every pass, e.g. ``affectedit edit --all-faces``).
    With ``portrait`` and automatic passes, a quick first look at a copy of longest side
    :data:`QUICK_SIZE` that already finds such a face is taken alone (about half the detection
    time of a portrait); otherwise it is dropped and the passes run as described.
    Accepts any PIL mode."""
    if max_faces is not None and (not isinstance(max_faces, (int, np.integer)) or max_faces < 1):
        raise UserError(f"max_faces must be a positive integer (or None: every face), got {max_faces!r}")
    rgb = _rgb(image)
    W, H = rgb.size
    if upsample is not None:
        passes = [(detect_size, int(upsample))]
    else:
        passes = [(detect_size, 0), (detect_size, 1)]
        if detect_size is not None and max(W, H) > 2 * detect_size:
            # large photo: small faces, at 4x the resolution (this pass sees every face the upsampled
            # pass of the small copy would, down to 1/20 of the longest side instead of 1/10)
            passes[1] = (4 * detect_size, 0)
    boxes: list[tuple[tuple[float, float, float, float], float]] = []
    copies: dict = {}
    if upsample is None and portrait is not None and detect_size is not None and max(W, H) > QUICK_SIZE > 0:
        # a portrait's face is large: a quick look at a small copy finds it (else that look is
        # dropped and the passes below run as usual)
        quick = _detect_pass(rgb, QUICK_SIZE, 0, threshold, [], {})
        if quick and _is_portrait(quick, W, H, portrait):
            boxes, passes = quick, []
    for i, (side, up) in enumerate(passes):
        if i and portrait is not None and boxes and _is_portrait(boxes, W, H, portrait):
            break
        _detect_pass(rgb, side, up, threshold, boxes, copies)
    boxes.sort(key=lambda bs: -(bs[0][2] - bs[0][0]) * (bs[0][3] - bs[0][1]))
    if max_faces is not None:
        boxes = boxes[: int(max_faces)]
    faces = []
    for box, s in boxes:
        lm = _landmarks(rgb, box)
        faces.append(Face(box, lm, landmarks_transform(lm), s))
    return faces


def _detect_pass(rgb: Image.Image, side: int | None, up: int, threshold: float, boxes: list, copies: dict) -> list:
    """One HOG pass on the working copy of longest side ``side`` (kept in ``copies``), upsampled
    ``up`` times; appends the faces not in ``boxes`` yet ((box in photo pixels, score)) and returns ``boxes``."""
    W, H = rgb.size
    if side not in copies:
        copies[side] = _working_copy(rgb, side)
    small = copies[side]
    with _LOCK:
        rects, scores, _ = _hog_detector().run(np.asarray(small), up, float(threshold))
    sx, sy = W / small.size[0], H / small.size[1]
    for r, s in zip(rects, scores):
        box = (
            max(0.0, r.left() * sx),
            max(0.0, r.top() * sy),
            min(float(W), (r.right() + 1) * sx),
            min(float(H), (r.bottom() + 1) * sy),
        )
        if box[2] > box[0] and box[3] > box[1] and not any(_same_face(box, b) for b, _ in boxes):
            boxes.append((box, float(s)))
    return boxes


def _is_portrait(boxes, W: int, H: int, share: float) -> bool:
    """Whether a face found so far spans at least ``share`` of the photo's shorter side."""
    return any(min(b[2] - b[0], b[3] - b[1]) >= share * min(W, H) for b, _ in boxes)


def _same_face(a, b) -> bool:
    """Two detector boxes of one face: intersection over union above 0.3, or the centre of one
    inside the other (passes at different scales draw slightly different boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union > 0 and inter / union > 0.3:
        return True
    for p, q in ((a, b), (b, a)):
        cx, cy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
        if q[0] <= cx <= q[2] and q[1] <= cy <= q[3]:
            return True
    return False


def _crop_rect(m_inv: np.ndarray, size: int, W: int, H: int, margin: float = 2.0):
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64) - 0.5
    pts = apply_affine(m_inv, corners)
    x0 = int(max(0, np.floor(pts[:, 0].min() - margin)))
    y0 = int(max(0, np.floor(pts[:, 1].min() - margin)))
    x1 = int(min(W, np.ceil(pts[:, 0].max() + margin + 1)))
    y1 = int(min(H, np.ceil(pts[:, 1].max() + margin + 1)))
    return x0, y0, x1, y1


def align_face(image: Image.Image, face: Face, size: int = 96) -> Image.Image:
    """The aligned ``size`` x ``size`` RGB crop of ``face`` (dlib face-chip geometry, padding 0.25).

    Only the region the crop covers is read; when the crop shrinks the face by more than 2x the
    region is first shrunk with an anti-aliasing filter (like dlib's pyramid) and then warped
    bilinearly (cv2.warpAffine) with replicated borders."""
    import cv2

    rgb = _rgb(image)
    W, H = rgb.size
    m = face.matrix(size)
    x0, y0, x1, y1 = _crop_rect(invert_affine(m), size, W, H, margin=4.0)
    if x1 <= x0 or y1 <= y0:  # crop entirely outside the photo: replicate the nearest edge
        x0, y0 = min(max(x0, 0), W - 1), min(max(y0, 0), H - 1)
        x1, y1 = x0 + 1, y0 + 1
    # photo -> region coordinates
    m = m.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    s = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # crop pixels per photo pixel
    if s < 0.5:
        # anti-aliased shrink straight from the photo (PIL resize of a box: no full-size copy)
        rw, rh = max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))
        fx, fy = (x1 - x0) / rw, (y1 - y0) / rh
        region = np.asarray(rgb.resize((rw, rh), _RESAMPLE, box=(x0, y0, x1, y1)))
        # resized pixel (u, v) <-> region pixel ((u + .5) * fx - .5, (v + .5) * fy - .5)
        up = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]], dtype=np.float64)
        m = m @ up
    else:
        region = np.asarray(rgb.crop((x0, y0, x1, y1)))
    out = cv2.warpAffine(
        np.ascontiguousarray(region), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return Image.fromarray(out, "RGB")


def align_faces_batch(image: Image.Image, faces: list[Face], size: int = 96) -> np.ndarray:
    """Aligned crops of several faces of one photo as a uint8 array N x size x size x 3."""
    if not faces:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    rgb = _rgb(image)
    return np.stack([np.asarray(align_face(rgb, f, size)) for f in faces])


def _poisson(src: np.ndarray, dst: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``src`` made to agree with ``dst`` at the border of the mask core (gradient-domain clone)."""
    import cv2

    core = (alpha >= 0.5).astype(np.uint8) * 255
    core[:2, :] = core[-2:, :] = 0  # seamlessClone needs the mask off the image border
    core[:, :2] = core[:, -2:] = 0
    ys, xs = np.nonzero(core)
    if len(xs) < 16:
        return src
    bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    # the clone is centred on the mask's bounding box; with an odd-sized box the centre is exact
    bx1 += (bx1 - bx0) % 2 == 0
    by1 += (by1 - by0) % 2 == 0
    if bx1 >= src.shape[1] - 1 or by1 >= src.shape[0] - 1:
        return src
    sub = (slice(by0, by1), slice(bx0, bx1))
    center = (int((bx0 + bx1) // 2), int((by0 + by1) // 2))
    try:
        cloned = cv2.seamlessClone(
            np.ascontiguousarray(src[sub]), dst, np.ascontiguousarray(core[sub]), center, cv2.NORMAL_CLONE
        )
    except cv2.error:  # pragma: no cover - degenerate masks
        return src
    out = src.copy()
    out[sub] = cloned[sub]
    return out


def paste_back(
    photo: Image.Image,
    face: Face,
    edited: Image.Image,
    *,
    feather: float = 0.2,
    method: str = "alpha",
) -> Image.Image:
    """Warp the edited aligned crop back into a copy of ``photo`` and blend it in.

    The crop (any square size) is mapped with the inverse of ``face.matrix(size)`` (bilinear) and
    alpha-blended with the warped ``face_mask`` (feathered ellipse).  ``method="poisson"`` first
    runs OpenCV's gradient-domain ``seamlessClone`` on the core of the mask (alpha >= 0.5), which
    removes colour/brightness offsets of the edited crop, and then feathers that in the same way;
    it costs ~10-50 ms more on a portrait (much more on very large faces).

    Only the bounding rectangle of the mask's support is read and written; every pixel outside the
    warped mask's support (alpha == 0) is byte-identical to the photo.  Returns a new RGB image of
    the photo's size (the photo is not modified)."""
    import cv2

    if method not in ("alpha", "poisson"):
        raise ValueError(f"method must be 'alpha' or 'poisson', got {method!r}")
    rgb = _rgb(photo)
    ed = np.ascontiguousarray(np.asarray(_rgb(edited)))
    size = ed.shape[0]
    if ed.shape[1] != size:
        raise ValueError(f"edited crop must be square, got {ed.shape[1]}x{ed.shape[0]}")
    W, H = rgb.size
    m = face.matrix(size)
    mask = face_mask(size, feather)
    ys, xs = np.nonzero(mask > 0)
    out = rgb.copy() if rgb is photo else rgb  # _rgb already made a new image otherwise
    if len(xs) == 0:
        return out
    # bounding rectangle of the mask's support, in photo pixels
    sup = np.array(
        [[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1], [xs.min() - 1, ys.max() + 1], [xs.max() + 1, ys.max() + 1]],
        dtype=np.float64,
    )
    pts = apply_affine(invert_affine(m), sup)
    x0 = int(max(0, np.floor(pts[:, 0].min()) - 1))
    y0 = int(max(0, np.floor(pts[:, 1].min()) - 1))
    x1 = int(min(W, np.ceil(pts[:, 0].max()) + 2))
    y1 = int(min(H, np.ceil(pts[:, 1].max()) + 2))
    if x1 <= x0 or y1 <= y0:
        return out
    # region pixel (u, v) -> crop pixel: m @ (u + x0, v + y0, 1)
    mr = m.copy()
    mr[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    dsize = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(ed, mr, dsize, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(np.ascontiguousarray(mask), mr, dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    region = np.ascontiguousarray(np.asarray(rgb.crop((x0, y0, x1, y1))))
    if method == "poisson":
        warped = _poisson(warped, region, alpha)
    # region * (1 - alpha) + warped * alpha, rounded; where alpha == 0 this is exactly region
    res = cv2.blendLinear(region, warped, 1.0 - alpha, alpha)
    out.paste(Image.fromarray(res, "RGB"), (x0, y0))
    return out
