"""Aligning one data-set image for the face cache (``cache.prepare`` runs ``align_sample`` in its
worker processes): the data set's own landmarks when it gives them, else the detected face (the one
in the data set's box, or the centred one for LFW and London).

AffectNet's 68 iBUG points provide dlib's 5 points exactly (indices 45, 42, 36, 39, 33); CelebA's 5
points (eye centres, nose tip, mouth corners) are aligned by the two eye centres onto the template's
eye centres. An AffectNet box without landmarks picks the detected face overlapping it.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["align_sample", "face_from_landmarks", "init_worker", "pick_face"]

# dlib 68-point (iBUG) indices of the 5 points of dlib's 5-point model, in its order
# (image-right eye outer, inner; image-left eye outer, inner; nose bottom).
_IBUG68_TO_DLIB5 = [45, 42, 36, 39, 33]


def face_from_landmarks(faces, lm: np.ndarray, box):
    """A faces.Face from data-set landmarks (68 iBUG points, or CelebA's 5: eye centres, nose,
    mouth corners)."""
    if len(lm) == 68:
        return faces.Face.from_landmarks(lm[_IBUG68_TO_DLIB5], box=box)
    if len(lm) == 5:
        # CelebA's eye centres -> the template's eye centres (midpoints of the eye corners); a
        # similarity transform is fixed by two points. Nose and mouth are not in dlib's template.
        t = faces.TEMPLATE
        dst = np.array([(t[2] + t[3]) / 2, (t[0] + t[1]) / 2])  # image-left eye, image-right eye
        m = faces.similarity_transform(lm[:2], dst)
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        lm5 = t @ inv[:, :2].T + inv[:, 2]
        if box is None:
            box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
        return faces.Face(tuple(float(v) for v in box), lm5, m, 0.0)
    return None


def pick_face(found, image_size, box=None, prefer_center=False):
    """The face of ``found`` (``faces.detect_faces`` order, largest first) a data set means: the one
    overlapping ``box`` most (None if none does), with ``prefer_center`` the one nearest the
    centre of a ``image_size`` photo among the big ones, else the largest."""
    if box is not None:  # the face overlapping the given box most
        def overlap(f):
            x0, y0 = max(f.box[0], box[0]), max(f.box[1], box[1])
            x1, y1 = min(f.box[2], box[2]), min(f.box[3], box[3])
            return max(0.0, x1 - x0) * max(0.0, y1 - y0)
        best = max(found, key=overlap)
        return best if overlap(best) > 0 else None
    if prefer_center and len(found) > 1:
        # LFW convention: the person of interest is centred; among faces at least half as big as
        # the largest, take the one nearest the centre.
        area = lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])  # noqa: E731
        big = [f for f in found if area(f) >= 0.5 * area(found[0])]
        cx, cy = image_size[0] / 2, image_size[1] / 2
        return min(big, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)
    return found[0]


def init_worker():
    """A pool process of ``prepare``: one thread each, Ctrl-C left to the parent."""
    import signal

    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled (and the state saved) by the parent

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def align_sample(task):
    """(path, box, landmarks, size, prefer_center) -> (uint8 S x S x 3 or None, skip reason)."""
    from PIL import Image, UnidentifiedImageError

    from affectedit import faces
    from affectedit.images import to_rgb

    path, box, lm, size, prefer_center = task
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im)  # 16-bit, float, CMYK, palette and alpha alike (the editor's reading path)
    except FileNotFoundError:
        return None, "missing file"
    except UnidentifiedImageError:
        return None, "not an image"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"unreadable or truncated image ({e})"
    except Exception as e:  # noqa: BLE001 - never kill the run for one file
        return None, f"unreadable image ({type(e).__name__}: {e})"
    try:
        face = None
        if lm is not None:
            face = face_from_landmarks(faces, np.asarray(lm, dtype=np.float64), box)
        if face is None:
            found = faces.detect_faces(rgb)
            if not found:
                return None, "no face found"
            face = pick_face(found, rgb.size, box, prefer_center)
            if face is None:
                return None, "no face found in the given box"
        return np.asarray(faces.align_face(rgb, face, size), dtype=np.uint8), None
    except Exception as e:  # noqa: BLE001
        return None, f"alignment failed ({type(e).__name__}: {e})"
