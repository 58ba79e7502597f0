"""The warp head's fixed bases, measured on real training faces (affectedit.basis)."""
import numpy as np
import pytest
import torch

from affectedit.basis import LOWER, UPPER, appearance_basis, face_landmarks, motion_basis, rbf_flow
from affectedit.errors import UserError
from affectedit.networks import warp_image


def test_rbf_flow_carries_each_point_by_its_move_and_fades_away():
    points = np.array([[20.0, 40.0], [44.0, 40.0], [32.0, 20.0]])
    moves = np.array([[-2.0, -1.0], [2.0, -1.0], [0.0, 0.0]])  # a smile's corners; the nose stays
    flow = rbf_flow(points, moves, 64, sigma=4.0, ridge=1e-6)
    assert flow.shape == (2, 64, 64)
    px = flow * 32  # grid units -> pixels
    for (x, y), (mx, my) in zip(points + moves, moves):
        assert px[0, int(y), int(x)] == pytest.approx(-mx, abs=0.05)
        assert px[1, int(y), int(x)] == pytest.approx(-my, abs=0.05)
    assert np.abs(px[:, :5, :5]).max() < 1e-3  # far from every point: no motion
    # warp_image moves a dot at the left corner to where the move says
    img = torch.zeros(1, 1, 64, 64)
    img[0, 0, 40, 20] = 1.0
    moved = warp_image(img, torch.from_numpy(flow).float()[None])
    y, x = np.unravel_index(moved[0, 0].argmax().item(), (64, 64))
    assert (x, y) == (18, 39)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """64-pixel caches of real training faces: London (neutral and smiling pairs) and 400 LFW faces."""
    from affectedit.data.cache import prepare
    from conftest import LABELS, LFW, LONDON

    root = tmp_path_factory.mktemp("basis")
    prepare(LONDON, "london", root / "london", split="train", size=64, progress=False)
    prepare(LFW, "lfw", root / "lfw", labels=LABELS, split="train", size=64, limit=400, progress=False)
    return root / "lfw", root / "london"


@pytest.mark.slow
def test_appearance_basis_from_real_faces(caches):
    """One direction per expression, left-right symmetric; the smile's brightens the mouth (teeth)."""
    lfw, london = caches
    with pytest.raises(UserError, match="no surprise"):
        appearance_basis([london])  # London has smiles only
    b = appearance_basis([lfw, london])
    assert b.shape == (4, 3, 64, 64) and torch.isfinite(b).all()
    assert torch.allclose(b, b.flip(-1))
    mouth = b[0, :, 42:50, 24:40].mean()
    assert mouth > b[0].mean() + 0.02


@pytest.mark.slow
def test_motion_basis_from_real_faces(caches):
    """dlib finds the 68 landmarks on the aligned crops (eyes above nose above mouth); the smile's
    lower-face motion moves the mouth and not the eyes, its upper-face motion not the mouth; every
    field is smooth, left-right symmetric and a few pixels at most."""
    from affectedit.data.cache import FaceCache

    lfw, london = caches
    crops = np.asarray(FaceCache(london).images[:6])
    lm = face_landmarks(crops)
    assert not np.isnan(lm).any()
    eyes, nose, mouth = lm[:, 36:48, 1].mean(1), lm[:, 30, 1], lm[:, 48:68, 1].mean(1)
    assert (eyes < nose).all() and (nose < mouth).all()
    m = motion_basis([lfw, london])
    assert m.shape == (8, 2, 64, 64) and torch.isfinite(m).all()
    mirror = m.flip(-1)
    mirror[:, 0] *= -1
    assert torch.allclose(m, mirror, atol=1e-6)
    px = m.norm(dim=1) * 32  # pixels
    assert px.max() < 8
    mouth_rows, eye_rows = slice(int(mouth.mean()) - 4, int(mouth.mean()) + 5), slice(int(eyes.mean()) - 3, int(eyes.mean()) + 4)
    happy_upper, happy_lower = px[0], px[1]
    assert happy_lower[mouth_rows].max() > 0.5  # the smile widens the mouth ...
    # ... and leaves the eyes (their rows between the outer eye corners; the jaw's contour, which
    # the lower face includes, reaches eye height at the sides of the face)
    eye_cols = slice(int(np.floor(lm[:, 36, 0].mean())), int(np.ceil(lm[:, 45, 0].mean())) + 1)
    assert happy_lower[mouth_rows].max() > 4 * happy_lower[eye_rows, eye_cols].max()
    assert happy_upper[mouth_rows].max() < 0.25 * happy_lower[mouth_rows].max()
    assert len(UPPER) + len(LOWER) == 68 and not set(UPPER) & set(LOWER)


@pytest.mark.slow
def test_action_unit_basis_moves_each_unit_where_it_belongs(caches):
    """One smooth, symmetric field per action unit on the real faces' mean neutral landmarks: the
    brow units move the brows and not the mouth, the mouth units the mouth and not the eyes."""
    from affectedit.basis import ACTION_UNITS, action_unit_basis, rest_landmarks

    lfw, london = caches
    rest = rest_landmarks([lfw, london], limit=60)
    assert rest.shape == (68, 2) and rest[36:48, 1].mean() < rest[30, 1] < rest[48:68, 1].mean()
    u = action_unit_basis([lfw, london])
    assert u.shape == (len(ACTION_UNITS), 2, 64, 64) and torch.isfinite(u).all()
    mirror = u.flip(-1)
    mirror[:, 0] *= -1
    assert torch.allclose(u, mirror, atol=1e-6)
    px = u.norm(dim=1) * 32
    names = list(ACTION_UNITS)

    def at(unit, points):  # the field's largest move within 2 px of these landmarks
        out = 0.0
        for x, y in rest[list(points)]:
            out = max(out, float(px[names.index(unit), int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].max()))
        return out

    brows, eyes, mouth = range(17, 27), range(36, 48), range(48, 68)
    assert at("inner_brow_raise", brows) > 0.5 and at("inner_brow_raise", mouth) < 0.05
    assert at("lip_corner_pull", mouth) > 1.0 and at("lip_corner_pull", eyes) < 0.1
    assert at("lip_corner_depress", mouth) > 0.5 and at("lip_corner_depress", brows) < 0.05
