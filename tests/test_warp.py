"""Applying a change (affectedit.warp): to crops (compose) and straight to the photo (apply_to_photo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import faces as F
from affectedit.images import normalize
from affectedit.warp import CropEdit, Fields, apply_to_photo, compose, warp_image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "london_001_neutral.jpg"  # 675 x 675, one face


@pytest.fixture(scope="module")
def photo():
    img = Image.open(EXAMPLE).convert("RGB")
    return img, F.detect_faces(img)


def test_compose_terms():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    c = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(compose(x, CropEdit()), x)
    assert torch.equal(compose(x, CropEdit(flow=torch.zeros(2, 2, 16, 16), delta=torch.zeros_like(x))), x)
    m = torch.rand(2, 1, 16, 16)
    assert torch.allclose(compose(x, CropEdit(mask=m, colour=c)), (1 - m) * x + m * c)
    assert torch.allclose(compose(x, CropEdit(delta=torch.full_like(x, 0.1))), (x + 0.1).clamp(-1, 1))
    # Fields of a warp head work as an edit directly
    assert torch.allclose(compose(x, Fields(torch.zeros(2, 2, 16, 16), m, c)), (1 - m) * x + m * c)


def test_flow_is_a_backward_displacement_in_grid_units():
    """A horizontal ramp moved by a constant flow: the edit at p shows the input at p + flow."""
    S = 32
    ramp = ((torch.arange(S) + 0.5) / S * 2 - 1).view(1, 1, 1, S).expand(1, 3, S, S)  # value = grid x
    flow = torch.zeros(1, 2, S, S)
    flow[:, 0] = 0.25
    out = warp_image(ramp, flow)
    inner = out[..., : S - 5]  # away from the border, where the border is replicated
    assert torch.allclose(inner, ramp[..., : S - 5] + 0.25, atol=1e-5)


def test_compose_resamples_the_fields_to_the_crop():
    x = torch.zeros(1, 3, 64, 64)
    delta = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(compose(x, CropEdit(delta=delta)), torch.full_like(x, 0.25))


def test_zero_change_is_byte_identical(photo):
    img, faces = photo
    S = 64
    zero = CropEdit(flow=torch.zeros(1, 2, S, S), mask=torch.zeros(1, 1, S, S), colour=torch.rand(1, 3, S, S),
                    delta=torch.zeros(1, 3, S, S))
    for edit in (zero, CropEdit(), CropEdit(delta=torch.zeros(1, 3, S, S))):
        assert np.array_equal(np.asarray(apply_to_photo(img, faces, edit)), np.asarray(img))


def test_only_the_face_region_changes(photo):
    img, faces = photo
    S = 64
    out = np.asarray(apply_to_photo(img, faces, CropEdit(delta=torch.full((1, 3, S, S), 0.5))))
    changed = (out != np.asarray(img)).any(2)
    x0, y0, x1, y1 = F.blend_region(faces[0], img.width, img.height)
    assert changed.sum() > 10000 and not changed[:y0].any() and not changed[y1:].any()
    assert not changed[:, :x0].any() and not changed[:, x1:].any()


def test_paper_edit_blends_like_paste_back(photo):
    """mask 1 and colour = a crop: the same blend paste_back makes of that crop (rounding aside)."""
    img, faces = photo
    crop = F.align_face(img, faces[0], 256)
    out = apply_to_photo(img, faces, CropEdit(mask=torch.ones(1, 1, 256, 256), colour=normalize(np.asarray(crop))[None]))
    ref = F.paste_back(img, faces[0], crop)
    d = np.abs(np.asarray(out).astype(int) - np.asarray(ref).astype(int))
    assert d.max() <= 1 and d.mean() < 0.01


def test_flow_moves_the_photos_own_pixels(photo):
    """On a photo that is a linear ramp, a constant crop flow f samples the ramp at P + d, d the
    flow in photo pixels: A^-1 f / 2 (A the linear part of the face's transform)."""
    img, faces = photo
    face = faces[0]
    W, H = img.size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    ramp = 40 + 0.2 * xx + 0.1 * yy
    arr = np.repeat(ramp[..., None], 3, axis=2).round().astype(np.uint8)
    S = 64
    flow = torch.zeros(1, 2, S, S)
    flow[:, 0], flow[:, 1] = 0.05, -0.03
    out = np.asarray(apply_to_photo(arr, [face], CropEdit(flow=flow))).astype(np.float64)
    d = np.linalg.inv(np.asarray(face.transform)[:, :2]) @ np.array([0.05, -0.03]) / 2
    assert np.abs(d).max() > 5  # a real move, several pixels
    ux = face.transform[0, 0] * xx + face.transform[0, 1] * yy + face.transform[0, 2]
    uy = face.transform[1, 0] * xx + face.transform[1, 1] * yy + face.transform[1, 2]
    core = F.ellipse_alpha(ux, uy) == 1
    want = 40 + 0.2 * (xx + d[0]) + 0.1 * (yy + d[1])
    assert core.sum() > 10000 and np.abs(out[..., 0][core] - want[core]).max() <= 1.0


def test_sub_pixel_flow_keeps_the_photos_fine_texture(photo, monkeypatch):
    """A flow of a third of a pixel on the real portrait: the face keeps its fine texture (mean
    |Laplacian| in the face box) with the detail band read whole; reading the whole photo bicubically
    (DETAIL_SIGMA = 0) loses 5-10% of it."""
    import affectedit.warp as W
    from affectedit.photo_metrics import texture_ratio

    img, faces = photo
    face = faces[0]
    d = np.array([1 / 3, 1 / 3])  # photo pixels
    f = np.asarray(face.transform)[:, :2] @ d * 2  # grid units of the crop
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0], flow[:, 1] = float(f[0]), float(f[1])
    kept = texture_ratio(apply_to_photo(img, [face], CropEdit(flow=flow)), img, face)
    monkeypatch.setattr(W, "DETAIL_SIGMA", 0.0)
    blurred = texture_ratio(apply_to_photo(img, [face], CropEdit(flow=flow)), img, face)
    assert 0.97 < kept < 1.05 and blurred < kept - 0.04


def test_edit_count_must_match_faces(photo):
    img, faces = photo
    with pytest.raises(ValueError, match="faces"):
        apply_to_photo(img, faces, CropEdit(delta=torch.zeros(2, 3, 8, 8)))


def test_sample_targets_draws_the_negative_anchors_more_often_when_asked():
    import torch

    from affectedit.train import RARE_ANCHORS, TARGET_ANCHORS, sample_targets

    def share_near_negative(**kw):
        y = sample_targets(20000, torch.Generator().manual_seed(0), **kw)
        anchors = torch.tensor(TARGET_ANCHORS)
        nearest = torch.cdist(y, anchors).argmin(1)
        return sum((nearest == i).float().mean().item() for i in RARE_ANCHORS)

    plain, rare = share_near_negative(anchor_share=1.0), share_near_negative(anchor_share=1.0, rare=3.0)
    assert 0.35 < plain < 0.65  # 4 of 8 anchors (jitter blurs the nearest-anchor count a little)
    assert rare > plain + 0.15  # 12 of 16 weights -> ~0.75
    # the defaults draw as before (same generator, same numbers)
    a = sample_targets(64, torch.Generator().manual_seed(1))
    b = sample_targets(64, torch.Generator().manual_seed(1), 0.5, 1.0)
    assert torch.equal(a, b)


def _motion_generator(overrides: list[str], beta_std: float):
    """A tiny warp generator with random motion fields and coefficient weights of ``beta_std``."""
    import torch

    from affectedit.config import get_config
    from affectedit.networks import build_models

    cfg = get_config("tiny", ["model.head=warp", "model.motion=basis", *overrides]).model
    g = build_models(cfg)["generator"]
    k, s = g.motion_basis.shape[0], cfg.image_size
    with torch.no_grad():
        g.motion_basis.copy_(torch.randn(k, 2, s, s, generator=torch.Generator().manual_seed(0)) * 0.01)
        torch.nn.init.normal_(g.beta.weight, 0, beta_std)
    return g, cfg


def _coefficients(g, flow):
    """Per-face coefficients (N x K) of ``flow`` in the generator's motion fields (least squares)."""
    import torch

    return torch.linalg.lstsq(g.motion_basis.flatten(1).T, flow.flatten(1).T).solution.T


def test_basis_motion_moves_only_along_the_basis_and_not_at_the_own_label():
    import torch

    from affectedit.networks import MOTION_RANGE

    g, cfg = _motion_generator(["model.appearance=basis"], 0.05)
    code = torch.randn(4, cfg.z_dim + 2)
    y = code[:, cfg.z_dim:].clone()
    assert g(code, y).flow.abs().max() == 0  # asking a face for its own label: no motion
    flow = g(code, y + 0.5).flow.detach()
    assert flow.abs().max() > 0
    # the flow is a combination of the basis fields with coefficients within the range
    coef = _coefficients(g, flow)
    assert torch.allclose(torch.einsum("nk,kd->nd", coef, g.motion_basis.flatten(1)), flow.flatten(1), atol=1e-6)
    assert coef.abs().max() <= MOTION_RANGE + 1e-4


def test_basis_motion_peak_bounds_how_far_each_field_moves():
    import torch

    g, cfg = _motion_generator(["model.motion_peak=0.05"], 5.0)  # saturated coefficients
    code = torch.randn(8, cfg.z_dim + 2)
    flow = g(code, code[:, cfg.z_dim:] + 0.6).flow.detach()
    coef = _coefficients(g, flow)  # N x K
    peak = g.motion_basis.norm(dim=1).flatten(1).amax(1)  # each field's largest move, grid units
    moved = coef.abs() * peak  # how far each field's peak moves
    assert moved.max() <= 2 * 0.05 + 1e-4  # 5% of the side = 0.1 grid units
    assert moved.max() > 0.09  # saturated coefficients reach the bound


def test_hybrid_motion_frees_the_flow_only_below_the_nose():
    import torch

    from affectedit.config import get_config
    from affectedit.networks import build_models

    cfg = get_config("tiny", ["model.head=warp", "model.motion=hybrid"]).model
    g = build_models(cfg)["generator"]
    s = cfg.image_size
    with torch.no_grad():  # no basis motion; a free flow everywhere
        g.beta.weight.zero_()
        g.beta.bias.zero_()
        torch.nn.init.normal_(g.coarse.weight, 0, 0.5)
        g.coarse.bias.fill_(1.0)
    code = torch.randn(4, cfg.z_dim + 2)
    flow = g(code, code[:, cfg.z_dim:] + 0.6).flow.detach()
    upper, lower = flow[:, :, : int(0.4 * s)], flow[:, :, int(0.62 * s):]
    assert upper.abs().max() < 0.01 * lower.abs().max()  # eyes and brows: only the basis may move them
    assert lower.abs().max() > 0.05


def test_unit_motion_has_one_field_per_action_unit_within_its_range():
    import torch

    from affectedit.basis import ACTION_UNITS
    from affectedit.networks import UNIT_RANGE

    g, cfg = _motion_generator(["model.motion=units"], 5.0)  # saturated coefficients
    assert g.motion_basis.shape[0] == len(ACTION_UNITS) == g.beta.out_features
    code = torch.randn(4, cfg.z_dim + 2)
    coef = _coefficients(g, g(code, code[:, cfg.z_dim:] + 0.6).flow.detach())
    assert coef.max() <= UNIT_RANGE + 1e-3 and coef.max() > 0.9 * UNIT_RANGE
    # contractions: each unit goes below 0 only by its allowed share (the lids may droop)
    floor = -UNIT_RANGE * g.motion_negative
    assert (coef >= floor - 1e-3).all() and (coef.min(0).values < 0.9 * floor).any()
    assert g.motion_negative[list(ACTION_UNITS).index("upper_lid_raise")] > g.motion_negative[0]


def test_gate_from_leaves_small_label_changes_alone():
    """model.gate_from: asking for a label within gate_from of the face's own changes nothing;
    further away the edit fades in as without it, shifted by gate_from."""
    import torch

    from affectedit.networks import GATE

    g0, cfg = _motion_generator(["model.appearance=basis"], 0.05)
    g1, _ = _motion_generator(["model.appearance=basis", "model.gate_from=0.12"], 0.05)
    g1.load_state_dict(g0.state_dict())
    code = torch.randn(4, cfg.z_dim + 2)
    y = code[:, cfg.z_dim:]
    near = y + torch.tensor([0.08, 0.0])  # 0.08 < 0.12
    assert g0(code, near).flow.abs().max() > 0
    assert g1(code, near).flow.abs().max() == 0 and g1(code, near).delta.abs().max() == 0
    far = y + torch.tensor([0.12 + GATE + 0.2, 0.0])  # both gates fully open: the same edit
    assert torch.allclose(g0(code, far).flow, g1(code, far).flow)
