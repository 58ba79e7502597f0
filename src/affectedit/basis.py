"""Expression directions measured on the training faces, for the warp head's fixed bases.

``appearance_basis``: for each expression of ``networks.BASIS_EMOTIONS``, the mean aligned face
showing it minus the same people's neutral face (teeth, folds, shading; brightness only).

``motion_basis``: how the face's shape moves for each expression: dlib's 68 landmarks on every
aligned training face, each person's mean expression landmarks minus their mean neutral ones,
averaged over people, then spread into a smooth dense flow (Gaussian radial basis functions through
the landmarks, left-right symmetric), separately for the upper face (brows, eyes, nose) and the
lower face (mouth, jaw) so that G can mix, say, a smile's mouth with surprise's brows. The warp
head then moves pixels only along these real expression motions (``model.motion="basis"``): a
per-face combination of average human expression geometry can exaggerate or soften an
expression, never twist an eyelid.

Both are computed once, before training, from the training caches, and stored in the model as
buffers (so the bundled weights carry them)."""
from __future__ import annotations

import numpy as np
import torch

from affectedit.errors import UserError

__all__ = ["ACTION_UNITS", "EXPRESSION_UNITS", "LOW_AROUSAL", "LOWER", "UPPER", "action_unit_basis", "appearance_basis", "eye_distance", "expression_units", "face_landmarks",
           "motion_basis", "prior_prototypes", "rbf_flow", "unit_moves"]

# dlib's 68 points: the upper face (brows 17-26, nose 27-35, eyes 36-47) and the lower face (jaw 0-16, mouth 48-67).
UPPER = tuple(range(17, 48))
LOWER = tuple(range(0, 17)) + tuple(range(48, 68))
_UPSCALE = 4  # the 68-point predictor works on the aligned crop enlarged 4x (256 px for 64 px faces)


def _paired_means(values: dict, emotions, min_pairs: int, what: str) -> list:
    """For each emotion: the mean over people of (their mean with it - their neutral mean); over all
    faces when fewer than ``min_pairs`` people have both. ``values``: {(identity, emotion): (sum, count)}."""
    means = {k: t / c for k, (t, c) in values.items()}
    out = []
    for emo in emotions:
        pairs = [means[(ident, emo)] - means[(ident, "neutral")] for ident, e in means if e == emo and (ident, "neutral") in means]
        if len(pairs) >= min_pairs:
            out.append(sum(pairs) / len(pairs))
            continue
        pos = [m for (ident, e), m in means.items() if e == emo]
        neu = [m for (ident, e), m in means.items() if e == "neutral"]
        if not pos or not neu:
            raise UserError(f"the training data has no {emo} or no neutral faces, which the {what} basis needs")
        out.append(sum(pos) / len(pos) - sum(neu) / len(neu))
    return out


def appearance_basis(caches, min_pairs: int = 10) -> torch.Tensor:
    """The appearance directions of the warp head's "basis" appearance: for each expression of
    ``networks.BASIS_EMOTIONS``, the mean aligned face showing it minus the neutral face of the same
    people (averaged over the identities that have both, so that who they are cancels; over all
    faces when fewer than ``min_pairs`` identities have both), made left-right symmetric, reduced to
    its brightness (BT.601 luma, equal in R, G, B) and centred on 0. K x 3 x S x S in [-1, 1] units."""
    from affectedit.data.cache import FaceCache
    from affectedit.networks import BASIS_EMOTIONS
    from affectedit.warp import luma_change

    sums: dict = {}
    for path in caches:
        cache = FaceCache(path)
        for i, (emo, ident) in enumerate(zip(cache.emotions, cache.identities)):
            key = (ident, emo)
            img = torch.from_numpy(np.asarray(cache.images[i], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
            total, count = sums.get(key, (0, 0))
            sums[key] = (total + img, count + 1)
    out = []
    for d in _paired_means(sums, BASIS_EMOTIONS, min_pairs, "appearance"):
        d = (d + d.flip(-1)) / 2
        # brightness only, without its mean: the photos of one expression are on average darker or
        # warmer than others (a bias of the data set, not of the face); the local structure stays
        d = luma_change(d)
        out.append(d - d.mean())
    return torch.stack(out)


def face_landmarks(crops: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks (N x 68 x 2, crop pixels, NaN where no face was found) of aligned face
    crops (N x S x S x 3 uint8), found on the crop enlarged 4x with dlib's frontal detector."""
    from PIL import Image

    from affectedit.faces import _hog_detector
    from affectedit.photo_metrics import _model

    detector, predictor = _hog_detector(), _model("sp68")  # loaded once per process
    out = np.full((len(crops), 68, 2), np.nan)
    for i, crop in enumerate(crops):
        size = crop.shape[0] * _UPSCALE
        big = np.asarray(Image.fromarray(np.asarray(crop)).resize((size, size), Image.BICUBIC).convert("L"))
        found = detector(big, 0)
        if not len(found):
            continue
        shape = predictor(big, found[0])
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        out[i] = (pts + 0.5) / _UPSCALE - 0.5  # enlarged-crop pixel centres -> crop pixels
    return out


def rbf_flow(points: np.ndarray, moves: np.ndarray, size: int, sigma: float = 4.0, ridge: float = 1e-2) -> np.ndarray:
    """A smooth backward flow (2 x size x size, grid_sample units) that carries the content at
    ``points`` (K x 2, crop pixels, where it starts) by ``moves`` (K x 2 pixels): Gaussian radial basis
    functions of width ``sigma`` pixels centred where the points arrive, solved so that the flow there
    is -move (``warp_image`` reads x at p + flow(p)), with a small ridge; it fades to 0 far from them."""
    centres = points + moves
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    gram = np.exp(-d2 / (2 * sigma**2))
    weights = np.linalg.solve(gram + ridge * np.eye(len(centres)), -moves)  # K x 2
    # the Gaussian is separable: kernel(p, c) = gx(p_x, c_x) gy(p_y, c_y), so each component of
    # the flow is the product of a size x K and a K x size matrix
    axis = np.arange(size, dtype=np.float64)
    kx = np.exp(-((axis[:, None] - centres[None, :, 0]) ** 2) / (2 * sigma**2))  # x x K
    ky = np.exp(-((axis[:, None] - centres[None, :, 1]) ** 2) / (2 * sigma**2))  # y x K
    flow = np.stack([(ky * weights[:, c]) @ kx.T for c in range(2)])  # 2 x y x x, pixels
    return flow * (2.0 / size)  # grid_sample units (align_corners=False)


def _symmetric(flow: np.ndarray) -> np.ndarray:
    """Left-right symmetric flow: the mean of the field and its mirror image (x component negated)."""
    mirror = flow[:, :, ::-1].copy()
    mirror[0] *= -1
    return (flow + mirror) / 2


def motion_basis(caches, min_pairs: int = 10, sigma: float = 4.0) -> torch.Tensor:
    """The motion directions of the warp head's "basis" motion: for each expression of
    ``networks.BASIS_EMOTIONS`` (in order) the upper-face then the lower-face flow of its mean
    landmark movement from the same people's neutral face (see the module's docstring).
    2K x 2 x S x S, grid_sample units."""
    from affectedit.data.cache import FaceCache
    from affectedit.networks import BASIS_EMOTIONS

    wanted = {*BASIS_EMOTIONS, "neutral"}
    sums: dict = {}
    size = None
    for path in caches:
        cache = FaceCache(path)
        size = cache.size
        idx = [i for i, e in enumerate(cache.emotions) if e in wanted]
        lms = face_landmarks(np.asarray(cache.images[idx]) if idx else np.zeros((0, size, size, 3), np.uint8))
        for i, lm in zip(idx, lms):
            if np.isnan(lm).any():
                continue
            key = (cache.identities[i], cache.emotions[i])
            total, count = sums.get(key, (0, 0))
            sums[key] = (total + lm, count + 1)
    if size is None:
        raise UserError("no training cache given for the motion basis")
    neutral = [t / c for (ident, e), (t, c) in sums.items() if e == "neutral"]
    if not neutral:
        raise UserError("the training data has no neutral faces with landmarks, which the motion basis needs")
    rest = np.mean(neutral, 0)  # the mean neutral face's landmarks: where the moves start
    out = []
    for move in _paired_means(sums, BASIS_EMOTIONS, min_pairs, "motion"):
        for part in (UPPER, LOWER):
            pinned = move.copy()
            pinned[[i for i in range(68) if i not in part]] = 0.0  # the other part stays where it is
            out.append(_symmetric(rbf_flow(rest, pinned, size, sigma)))
    return torch.from_numpy(np.stack(out)).float()


# The face's elementary movements (FACS action units, Ekman & Friesen), as moves of dlib's 68
# landmarks in units of the distance between the eye centres, given for the points on the image's
# left (the subject's right) and the midline; the other side is the mirror image. Each is a
# moderate movement: G scales each by a coefficient in [-UNIT_RANGE, UNIT_RANGE] (see
# ``networks.WarpGenerator``; a negative one moves the other way, e.g. drooping lids for AU 5).
# Typical expressions: happiness 6+12, sadness 1+4+15(+17), anger 4+5+7+10+16+25, surprise 1+2+5(+26).
# No jaw drop (AU 26) here: it is affectedit.mouth's opening, which draws the mouth's inside where
# the lips part (moving pixels alone stretches the lips into streaks where the dark mouth and teeth
# should appear); lip_bare's parted lips are drawn the same way.
ACTION_UNITS: dict[str, dict[int, tuple[float, float]]] = {
    "inner_brow_raise": {21: (0.0, -0.10), 20: (0.0, -0.06), 19: (0.0, -0.025)},                  # AU 1
    "outer_brow_raise": {17: (0.0, -0.09), 18: (0.0, -0.09), 19: (0.0, -0.06), 20: (0.0, -0.03)},  # AU 2
    "brow_lower": {21: (0.05, 0.08), 20: (0.03, 0.07), 19: (0.01, 0.05), 18: (0.0, 0.03), 17: (0.0, 0.015)},  # AU 4
    "upper_lid_raise": {37: (0.0, -0.045), 38: (0.0, -0.045)},                                     # AU 5
    "lower_lid_raise": {40: (0.0, -0.03), 41: (0.0, -0.03)},                                       # AU 6/7
    "nose_wrinkle": {31: (0.0, -0.04), 32: (0.0, -0.04), 33: (0.0, -0.03), 50: (0.0, -0.025),
                     51: (0.0, -0.025), 61: (0.0, -0.02), 62: (0.0, -0.02)},                       # AU 9/10
    # (raising the upper lip 1.8x as far here, as LFW's real smiles raise it, with a smaller jaw drop
    # for happiness, made a closed-lipped smile that both classifiers read as happy less often: tried
    # for 0.13 and not kept, docs/report/calibration "The lifted smile")
    "lip_corner_pull": {48: (-0.075, -0.09), 60: (-0.07, -0.08), 49: (-0.03, -0.05), 59: (-0.035, -0.04),
                        50: (-0.01, -0.025), 51: (0.0, -0.03), 58: (-0.012, -0.01), 61: (-0.02, -0.03),
                        62: (0.0, -0.035), 67: (-0.018, -0.02)},  # AU 12
    "lip_corner_depress": {48: (0.01, 0.07), 60: (0.01, 0.06), 49: (0.0, 0.025), 59: (0.0, 0.03),
                           61: (0.0, 0.02), 67: (0.0, 0.02)},                                      # AU 15
    "chin_raise": {57: (0.0, -0.05), 58: (0.0, -0.045), 59: (0.0, -0.02), 66: (0.0, -0.03),
                   67: (0.0, -0.025), 8: (0.0, -0.04), 7: (0.0, -0.03)},                           # AU 17
    # bared teeth (AU 10+16+25, the bite closed): the upper lip raised and the lower lip lowered
    # across most of their width (a square opening, unlike a jaw drop's oval), the corners a little
    # apart; the chin stays (the jaw is clenched). The parted lips are drawn as teeth (affectedit.mouth).
    "lip_bare": {49: (0.0, -0.045), 50: (0.0, -0.06), 51: (0.0, -0.06), 61: (0.0, -0.06), 62: (0.0, -0.06),
                 59: (0.0, 0.10), 58: (0.0, 0.12), 57: (0.0, 0.12), 67: (0.0, 0.11), 66: (0.0, 0.12),
                 48: (-0.015, 0.0), 60: (-0.01, 0.0)},                                             # AU 10+16+25
}

# Which action units each expression class of the FER-2013 model shows, and how strongly (G's raw
# coefficients, before the edit strength; "open" is the mouth's opening, affectedit.mouth): the
# prototypes of EMFACS (Ekman & Friesen; Matsumoto & Ekman), happiness 6+12(+25), sadness
# 1+4+15+17 with drooping lids, anger 4+5+7+10+16+25 (teeth bared), surprise 1+2+5+26, fear 1+2+4+5+26,
# disgust 9/10+15+17. ``loss.units_prior`` pulls G's coefficients for a target label toward the
# mix of these that the label asks for: without it the expression model alone is free to use any
# movement it responds to (it widened smiling eyes, wrinkled surprised noses and opened angry
# mouths under raised lids, which people read as surprise).
EXPRESSION_UNITS: dict[str, dict[str, float]] = {
    # anger's shout with bared teeth (4+5+7+10+16+25+26): the lips pressed (0.6) read as mild
    # annoyance, and the jaw dropped alone (26; 0.5-0.8) as surprise, whose mouth is the same dark
    # oval; the bared lips (lip_bare) square the opening and show the lower teeth as well; the brows
    # lowered (1.5), the lids tightened and the nose wrinkled (1.0) lowered the inner brows twice as
    # far as LFW's real angry faces and crowded the eyes (docs/report/calibration)
    "angry": {"brow_lower": 0.8, "upper_lid_raise": 0.4, "lower_lid_raise": 0.7, "nose_wrinkle": 0.7,
              "lip_bare": 0.8, "open": 0.5},
    "disgust": {"brow_lower": 0.5, "lower_lid_raise": 0.5, "nose_wrinkle": 1.2, "lip_corner_depress": 0.8,
                "chin_raise": 0.5},
    "fear": {"inner_brow_raise": 1.0, "outer_brow_raise": 0.7, "brow_lower": 0.5, "upper_lid_raise": 0.6, "open": 0.4},
    # happiness opens the lips 0.5 (0.3 before 0.12: the edit's inner opening half LFW's real smiles')
    "happy": {"lower_lid_raise": 0.8, "lip_corner_pull": 1.2, "open": 0.5},
    "sad": {"inner_brow_raise": 1.4, "brow_lower": 0.8, "upper_lid_raise": -0.6, "lip_corner_depress": 1.4,
            "chin_raise": 0.6},
    "surprise": {"inner_brow_raise": 1.0, "outer_brow_raise": 1.0, "upper_lid_raise": 0.5, "open": 0.9},
    "neutral": {},
    # not FER-2013 classes: the low-arousal faces of ``loss.units_prior_calm`` (LOW_AROUSAL), at
    # their labels in affectedit.emotions: relaxed lids and a faint smile, and drowsy lids
    "calm": {"upper_lid_raise": -0.4, "lip_corner_pull": 0.35},
    "tired": {"upper_lid_raise": -0.9},
}

# The prototypes ``loss.units_prior_calm`` adds to the FER classes' (at the labels
# ``affectedit.emotions`` gives these names): without them a calm or tired label is nearest the
# neutral class, and the arousal dial's low half moves nothing (issue 12: relaxed lids for low arousal).
LOW_AROUSAL = ("calm", "tired")


def expression_units(classes, mouth: bool = True) -> torch.Tensor:
    """K x U (+1 with ``mouth``): :data:`EXPRESSION_UNITS` of ``classes`` (FER-2013 class names, or :data:`LOW_AROUSAL`'s) in
    :data:`ACTION_UNITS` order, the opening last (left out without ``mouth``)."""
    names = [*ACTION_UNITS, *(["open"] if mouth else [])]
    for c in classes:
        unknown = set(EXPRESSION_UNITS[c]) - {*ACTION_UNITS, "open"}
        if unknown:
            raise ValueError(f"EXPRESSION_UNITS[{c!r}] names units the model lacks: {sorted(unknown)}")
    return torch.tensor([[EXPRESSION_UNITS[c].get(n, 0.0) for n in names] for c in classes])


def prior_prototypes(calm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss.units_prior``'s prototypes (K x U+1, :func:`expression_units`) and where they sit on
    the circumplex (K x 2): the FER-2013 classes at their anchors, and with ``calm``
    (``loss.units_prior_calm``) also :data:`LOW_AROUSAL`'s faces at their labels in affectedit.emotions."""
    from affectedit.emotions import emotion
    from affectedit.expression import FER_ANCHORS, FER_CLASSES

    names, anchors = list(FER_CLASSES), list(FER_ANCHORS)
    if calm:
        names, anchors = names + list(LOW_AROUSAL), anchors + [emotion(n) for n in LOW_AROUSAL]
    return expression_units(names), torch.tensor(anchors)


# How far below 0 each unit's coefficient may go, as a share of UNIT_RANGE (the rest: 0.2, enough to
# undo a face's own slight movement). A unit is a contraction: lids may droop, but no muscle pulls
# the lower lid down or the inner brow below where brow_lower takes it.
# (A third of it for the lip corner puller, to stop G dropping angry and surprised corners 2.6-3x
# as far as LFW's real faces do, was tried for 0.13: the corners dropped 0.073 instead of 0.087 eye
# distances against the real 0.033, and fer read anger less often; not kept, docs/report/calibration.)
UNIT_NEGATIVE = {"upper_lid_raise": 0.67}
UNIT_NEGATIVE_DEFAULT = 0.2

# dlib's 68 points: each point's mirror image (jaw, brows, nose, eyes, outer and inner lips).
_MIRROR = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
           + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
           + [64, 63, 62, 61, 60, 67, 66, 65])


def rest_landmarks(caches, limit: int = 400) -> np.ndarray:
    """The mean landmarks (68 x 2, crop pixels) of up to ``limit`` neutral training faces, made
    left-right symmetric: where the action units' moves start."""
    from affectedit.data.cache import FaceCache

    found, size = [], None
    for path in caches:
        cache = FaceCache(path)
        size = cache.size
        idx = [i for i, e in enumerate(cache.emotions) if e == "neutral"][: max(0, limit - len(found))]
        if idx:
            lms = face_landmarks(np.asarray(cache.images[idx]))
            found += [lm for lm in lms if not np.isnan(lm).any()]
    if not found:
        raise UserError("the training data has no neutral faces with landmarks, which the action-unit motion needs")
    rest = np.mean(found, 0)
    mirrored = rest[_MIRROR].copy()
    mirrored[:, 0] = (size - 1) - mirrored[:, 0]
    return (rest + mirrored) / 2


def action_unit_basis(caches, sigma: float = 4.0, mouth: bool = False, rest: np.ndarray | None = None) -> torch.Tensor:
    """The motion fields of ``model.motion="units"``: one smooth, left-right symmetric flow per
    action unit of :data:`ACTION_UNITS` (in order; with ``mouth`` the opening of
    ``affectedit.mouth.MOUTH_OPEN`` last), moving the mean neutral training face's landmarks
    (``rest``, computed when None) as the unit says and pinning every other landmark.
    U x 2 x S x S, grid_sample units."""
    from affectedit.data.cache import FaceCache
    from affectedit.mouth import MOUTH_OPEN

    size = FaceCache(caches[0]).size
    rest = rest_landmarks(caches) if rest is None else rest
    scale = eye_distance(rest)
    out = [_symmetric(rbf_flow(rest, unit_moves(moves) * scale, size, sigma))
           for moves in [*ACTION_UNITS.values(), *([MOUTH_OPEN] if mouth else [])]]
    return torch.from_numpy(np.stack(out)).float()


def unit_moves(unit: dict[int, tuple[float, float]]) -> np.ndarray:
    """68 x 2: the moves of one unit (in inter-ocular distances) given for the image-left points
    and the midline, with the mirrored points moved as their mirror image; every other point 0."""
    move = np.zeros((68, 2))
    for i, (dx, dy) in unit.items():
        move[i] = (dx, dy)
        j = _MIRROR[i]
        if j != i:
            move[j] = (-dx, dy)
    return move


def eye_distance(points: np.ndarray) -> float:
    """The distance between the eye centres of dlib's 68 landmarks (68 x 2), in their units."""
    return float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))
