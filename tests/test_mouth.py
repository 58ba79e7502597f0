"""The opening mouth (affectedit.mouth, model.mouth = "open"): its motion, the drawn inside, and its
path through G, CropEdit and the photo, on a real portrait's own landmarks."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import faces as F
from affectedit.basis import ACTION_UNITS, rbf_flow, unit_moves
from affectedit.mouth import MOUTH_OPEN, flow_for, render, warped_landmarks
from affectedit.photo_metrics import landmarks68
from affectedit.warp import CropEdit, apply_to_photo, compose

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "london_001_neutral.jpg"  # 675 x 675, one face, closed mouth
U = len(ACTION_UNITS) + 1


@pytest.fixture(scope="module")
def portrait():
    img = Image.open(EXAMPLE).convert("RGB")
    face = F.detect_faces(img)[0]
    lm = landmarks68(img, face)
    t = np.asarray(face.transform)
    unit = torch.from_numpy(lm @ t[:, :2].T + t[:, 2]).float()  # unit crop coordinates
    return img, face, lm, unit


def _units(opening: float, **units) -> torch.Tensor:
    u = torch.zeros(1, U)
    for name, v in units.items():
        u[0, list(ACTION_UNITS).index(name)] = v
    u[0, -1] = opening
    return u


def _moved(unit: torch.Tensor, opening: float, **units) -> torch.Tensor:
    """The landmarks (1 x 68 x 2) where the opening and the named units' flows (at 64 px, from
    these landmarks) carry them."""
    size = 64
    points = unit.numpy() * size - 0.5
    scale = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    flow = opening * flow_for(points, size)
    for name, v in units.items():
        flow = flow + v * rbf_flow(points, unit_moves(ACTION_UNITS[name]) * scale, size)
    return warped_landmarks(unit[None], torch.from_numpy(flow).float()[None], _units(opening, **units))


def _grid(size: int):
    p = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    uy, ux = torch.meshgrid(p, p, indexing="ij")
    return ux, uy


def test_closed_mouth_draws_nothing_and_an_open_one_draws_between_the_lips(portrait):
    _, _, _, unit = portrait
    ux, uy = _grid(256)
    closed, _ = render(ux, uy, _moved(unit, 0.0), 0.5 / 256, unit[None])
    assert closed.max() < 0.05
    lm = _moved(unit, 1.0)
    mask, colour = render(ux, uy, lm, 0.5 / 256, unit[None])
    assert mask.shape == (1, 1, 256, 256) and colour.shape == (1, 3, 256, 256)
    assert colour.min() >= -1 and colour.max() <= 1
    # the lower lip moved down; the mask covers the middle between the moved inner lips...
    assert (lm[0, 66, 1] - unit[66, 1]) > 0.2 * (unit[45, 0] - unit[36, 0])
    centre = ((lm[0, 62] + lm[0, 66]) / 2 * 256).long()
    assert mask[0, 0, centre[1], centre[0]] > 0.9
    # ...and nothing at the nose tip or the chin
    for point in (30, 8):
        x, y = (unit[point] * 256).long()
        assert mask[0, 0, y, x] < 0.01
    # teeth under the upper lip are bright, the cavity below them dark
    below_lip = ((lm[0, 62] * 0.85 + lm[0, 66] * 0.15) * 256).long()
    assert colour[0, :, below_lip[1], below_lip[0]].mean() > 0.3
    assert colour[0, :, centre[1] + 2, centre[0]].mean() < -0.3


def test_a_grins_small_opening_is_all_teeth_and_a_dropped_jaw_shows_the_dark_mouth(portrait):
    """While the lips part by less than the two rows of teeth (a grin, bared teeth: the bite is
    closed) the opening is teeth from lip to lip, upper and lower; a dropped jaw (a shout, surprise)
    shows the upper teeth above a dark cavity, the lower teeth sunk behind the lower lip."""
    _, _, _, unit = portrait
    ux, uy = _grid(256)

    def column(opening):  # the drawn colour's brightness down the middle of the opening
        lm = _moved(unit, opening, lip_corner_pull=1.2)
        mask, colour = render(ux, uy, lm, 0.5 / 256, unit[None])
        x = int(((lm[0, 62, 0] + lm[0, 66, 0]) / 2 * 256).round())
        rows = (mask[0, 0, :, x] > 0.3).nonzero()[:, 0]
        return colour[0, :, rows, x].mean(0), len(rows)

    grin, n_grin = column(0.5)  # the lips part by 0.17 of the eyes' distance: less than both rows of teeth
    assert n_grin >= 4, n_grin
    assert grin[-max(1, n_grin // 4):].mean() > 0.2  # the lower teeth above the lower lip: bright
    assert (grin > 0.0).float().mean() > 0.7  # teeth nearly everywhere (the biting edge's shadow aside)
    shout, n_shout = column(1.0)
    assert n_shout > 1.5 * n_grin
    assert shout[:max(1, n_shout // 5)].mean() > 0.2  # the upper teeth under the upper lip
    assert shout[n_shout // 2:].mean() < -0.3  # dark below them: no lower teeth


def test_bared_teeth_open_square_and_all_teeth_where_a_dropped_jaw_opens_an_oval(portrait):
    """The opening follows the lips: lip_bare (upper lip up, lower lip down across most of their
    width, the jaw clenched) parts them into a square of teeth, nearly as tall 0.8 of the way to the corners
    as at the middle; the jaw drop's opening narrows toward the corners like an oval."""
    _, _, _, unit = portrait
    ux, uy = _grid(256)

    def heights(**units):  # the drawn opening's height at the middle and halfway to the inner corners
        lm = _moved(unit, units.pop("opening", 0.0), **units)
        mask, colour = render(ux, uy, lm, 0.5 / 256, unit[None])
        left, right = unit[60, 0], unit[64, 0]
        out = []
        for x in ((left + right) / 2, 0.9 * left + 0.1 * right):
            col = int((x * 256).round())
            rows = (mask[0, 0, :, col] > 0.3).nonzero()[:, 0]
            out.append((len(rows), colour[0, :, rows, col].mean(0)))
        return out

    (bare_mid, teeth), (bare_side, _) = heights(lip_bare=1.0)
    assert bare_mid >= 5 and bare_side > 0.75 * bare_mid, (bare_mid, bare_side)
    assert (teeth > 0.0).float().mean() > 0.7  # teeth from lip to lip (the bite closed)
    (drop_mid, _), (drop_side, _) = heights(opening=0.6)
    assert drop_side < 0.75 * drop_mid and drop_side / drop_mid < bare_side / bare_mid - 0.1, (drop_mid, drop_side, bare_mid, bare_side)


def test_bared_lips_keep_the_lower_teeth_uncovered_when_the_jaw_drops(portrait):
    """A shout with bared lips (the opening and lip_bare) shows both rows of teeth around the dark
    mouth; the same gap from a jaw drop alone (a surprised mouth) sinks the lower teeth."""
    _, _, _, unit = portrait
    ux, uy = _grid(256)

    def column(opening, **units):  # the drawn colour's brightness down the middle of the opening
        lm = _moved(unit, opening, **units)
        mask, colour = render(ux, uy, lm, 0.5 / 256, unit[None], units=_units(opening, **units))
        x = int(((lm[0, 62, 0] + lm[0, 66, 0]) / 2 * 256).round())
        rows = (mask[0, 0, :, x] > 0.3).nonzero()[:, 0]
        return colour[0, :, rows, x].mean(0)

    shout = column(0.7, lip_bare=1.1)
    n = len(shout)
    assert shout[:n // 6].mean() > 0.2 and shout[-max(1, n // 8):].mean() > 0.2  # upper and lower teeth
    assert shout[2 * n // 5:3 * n // 5].mean() < -0.3  # the dark mouth between them
    drop = column(1.1)
    assert drop[-max(1, len(drop) // 8):].mean() < -0.3  # no lower teeth


def test_photo_draws_bared_teeth_without_the_opening(portrait):
    """lip_bare alone (the opening's coefficient 0) still draws the mouth's inside on a photo: bright
    teeth between the parted lips where the photo shows the closed mouth's seam."""
    img, face, lm, unit = portrait
    size = 64
    points = unit.numpy() * size - 0.5
    scale = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    flow = torch.from_numpy(1.1 * rbf_flow(points, unit_moves(ACTION_UNITS["lip_bare"]) * scale, size)).float()[None]
    edit = CropEdit(flow=flow, units=_units(0.0, lip_bare=1.1), landmarks=unit[None], mouth_flow=torch.zeros_like(flow))
    out = np.asarray(apply_to_photo(img, [face], edit)).astype(float)
    src = np.asarray(img).astype(float)
    cx, cy = ((lm[62] + lm[66]) / 2).round().astype(int)
    patch = (slice(cy - 2, cy + 3), slice(cx - 3, cx + 4))
    assert out[patch].mean() > src[patch].mean() + 30  # teeth where the dark seam was
    plain = np.asarray(apply_to_photo(img, [face], CropEdit(flow=flow))).astype(float)
    assert np.abs(out - plain).max() > 60  # drawn, not just moved


def test_render_gradients_stay_finite_at_the_openings_corners():
    """A pixel exactly at the opening's inner corner (|t| = 1: the ellipse's height there is 0) gives
    finite gradients: sqrt and the arch's power have infinite slope at 0, which once turned a
    training step's gradients into NaN (and the next step's grid_sample into a segfault)."""
    rest = torch.full((1, 68, 2), 0.5)
    rest[0, 48], rest[0, 54] = torch.tensor([0.25, 0.5]), torch.tensor([0.75, 0.5])  # outer corners: half width 0.25
    rest[0, 60], rest[0, 64] = torch.tensor([0.3125, 0.5]), torch.tensor([0.6875, 0.5])  # inset 0.75: inner half width 0.1875
    for i, x in zip((49, 50, 51, 52, 53), (0.34, 0.42, 0.5, 0.58, 0.66)):  # the lips' outer edges
        rest[0, i] = torch.tensor([x, 0.47])
        rest[0, 108 - i] = torch.tensor([x, 0.53])  # 59, 58, 57, 56, 55
    for i, x in zip((61, 62, 63), (0.4, 0.5, 0.6)):  # the seam
        rest[0, i] = rest[0, 128 - i] = torch.tensor([x, 0.5])  # 67, 66, 65
    rest[0, 36:42] = torch.tensor([0.3, 0.35])  # eyes, for the teeth's scale
    rest[0, 42:48] = torch.tensor([0.7, 0.35])
    lm = rest.clone()
    lm[0, 56:59, 1] += 0.05  # the lower lip down: an opening
    lm.requires_grad_(True)
    ux = torch.tensor([[0.6875, 0.5, 0.3125]])  # the right inner corner (t = 1 exactly), the centre, the left one
    uy = torch.full_like(ux, 0.5)
    mask, colour = render(ux, uy, lm, 0.01, rest)
    assert mask[0, 0, 0, 1] > 0.2  # the centre is open
    (mask.sum() + colour.sum()).backward()
    assert torch.isfinite(lm.grad).all()


def test_a_smile_widens_the_opening_with_the_corners(portrait):
    _, _, _, unit = portrait
    ux, uy = _grid(256)
    plain, _ = render(ux, uy, _moved(unit, 0.4), 0.5 / 256, unit[None])
    smile, _ = render(ux, uy, _moved(unit, 0.4, lip_corner_pull=1.2), 0.5 / 256, unit[None])
    width = lambda m: (m[0, 0].amax(0) > 0.5).sum()  # noqa: E731 - columns the opening spans
    assert width(smile) > width(plain) * 1.1


def test_opening_flow_carries_the_lower_lip_down(portrait):
    _, _, _, unit = portrait
    size = 64
    points = unit.numpy() * size - 0.5
    flow = flow_for(points, size)  # backward: the edited crop at p samples p + flow(p)
    scale = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    arrive = points[66] + np.array(MOUTH_OPEN[66]) * scale
    x, y = np.round(arrive).astype(int)
    assert flow[1, y, x] * size / 2 < -0.5 * MOUTH_OPEN[66][1] * scale  # it reads from above
    x, y = np.round(points[30]).astype(int)
    assert abs(flow[1, y, x]) * size / 2 < 0.3  # the nose stays


def _mouth_generator(*overrides):
    from affectedit.config import get_config
    from affectedit.networks import build_models

    cfg = get_config("tiny", ["model.head=warp", "model.motion=units", "model.appearance=basis", "model.mouth=open", *overrides]).model
    g = build_models(cfg)["generator"]
    return g, cfg


def test_appearance_basis_stays_off_the_drawn_mouth(portrait):
    """model.appearance_mouth = False: the appearance basis changes nothing over the mouth of the
    rest landmarks (the drawing carries it) and all of it at the eyes and brows; True (the 0.4
    model's training) keeps the whole basis."""
    from affectedit.mouth import appearance_keep

    _, _, _, unit = portrait
    size = 64
    ux, uy = _grid(size)
    keep = appearance_keep(unit, ux, uy)
    at = lambda i: keep[int(unit[i, 1] * size), int(unit[i, 0] * size)]  # noqa: E731
    assert at(62) < 0.02 and at(66) < 0.02 and at(48) < 0.5  # the lips' middle and corners
    assert at(37) > 0.99 and at(19) > 0.99 and at(30) > 0.9  # eyes, brows, the nose's tip
    deltas = {}
    for flag in ("true", "false"):
        g, cfg = _mouth_generator(f"model.appearance_mouth={flag}")
        with torch.no_grad():
            g.rest_landmarks.copy_(unit)
            g.basis.fill_(0.1)
            g.alpha.weight.zero_()
            g.alpha.bias.fill_(5.0)  # every direction at its largest
        code = torch.randn(2, cfg.z_dim + 2)
        deltas[flag] = g(code, code[:, cfg.z_dim:] + 0.8).delta
    small = appearance_keep(unit, g.pixel_grid[0], g.pixel_grid[1])  # at the tiny model's resolution
    assert torch.allclose(deltas["false"], deltas["true"] * small, atol=1e-6)
    assert deltas["true"].abs().min() > 0.1


def test_generator_opening_is_one_more_unit_gated_like_the_others(portrait):
    from affectedit.mouth import OPEN_RANGE

    _, _, _, unit = portrait
    g, cfg = _mouth_generator()
    assert g.beta.out_features == U == g.motion_basis.shape[0]
    with torch.no_grad():
        g.rest_landmarks.copy_(unit)
        g.motion_basis.normal_(0, 0.01)
        size = cfg.image_size
        g.motion_basis[-1].copy_(torch.from_numpy(flow_for(unit.numpy() * size - 0.5, size)))
        g.beta.weight[-1].zero_()
        g.beta.bias[-1] = 20.0  # fully open
    code = torch.randn(3, cfg.z_dim + 2)
    y = code[:, cfg.z_dim:]
    own = g(code, y)  # the face's own label: nothing opens, nothing is drawn
    assert own.units.abs().max() == 0 and own.mask.max() == 0 and own.flow.abs().max() == 0
    f = g(code, y + 0.8)
    assert f.units.shape == (3, U) and f.landmarks.shape == (3, 68, 2)
    assert torch.allclose(f.units[:, -1], torch.full((3,), OPEN_RANGE), atol=1e-3)
    assert f.mask.max() > 0.5  # drawn at the model's resolution for training
    assert torch.allclose(f.mouth_flow, f.units[:, -1, None, None, None] * g.motion_basis[-1], atol=1e-6)


def test_mouth_needs_unit_motion_and_basis_appearance():
    from affectedit.config import get_config
    from affectedit.networks import build_models

    with pytest.raises(ValueError, match="model.mouth"):
        build_models(get_config("tiny", ["model.head=warp", "model.mouth=open"]).model)


def test_crop_edit_draws_the_mouth_at_the_crops_resolution(portrait):
    _, _, _, unit = portrait
    x = torch.zeros(1, 3, 128, 128)
    own = torch.from_numpy(flow_for(unit.numpy() * 64 - 0.5, 64)).float()[None]
    edit = CropEdit(flow=own, units=_units(1.0), landmarks=unit[None], mouth_flow=own)
    out = compose(x, edit)
    assert out.shape == x.shape and out.min() < -0.6  # the dark cavity on the grey crop
    # the units say open but the flow does not move the lips: at most a faint line is drawn
    still = compose(x, CropEdit(flow=torch.zeros(1, 2, 64, 64), units=_units(1.0), landmarks=unit[None],
                                mouth_flow=torch.zeros(1, 2, 64, 64)))
    assert still.abs().max() < 0.1


def test_photo_gets_an_open_mouth_drawn_at_its_own_resolution(portrait):
    img, face, lm, unit = portrait
    size = 64
    own = torch.from_numpy(flow_for(unit.numpy() * size - 0.5, size)).float()[None]
    edit = CropEdit(flow=own.clone(), units=_units(1.0), landmarks=unit[None], mouth_flow=own.clone())
    out = np.asarray(apply_to_photo(img, [face], edit)).astype(float)
    src = np.asarray(img).astype(float)
    # between the lips, where the photo shows closed lips, the edit shows the dark mouth
    scale = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    cx, cy = ((lm[62] + lm[66]) / 2 + np.array([0, 0.15 * scale])).round().astype(int)
    patch = (slice(cy - 2, cy + 3), slice(cx - 2, cx + 3))
    assert out[patch].mean() < src[patch].mean() - 40
    # the photo's grain is kept inside the drawn mouth (not a flat fill)
    assert out[patch].std() > 0.5
    # pixels far from the face are untouched
    assert np.array_equal(out[:20], src[:20])
    # an opening below MIN_OPENING draws nothing: the same as the plain flow edit
    tiny = CropEdit(flow=own * 0.01, units=_units(0.01), landmarks=unit[None], mouth_flow=own * 0.01)
    assert np.array_equal(np.asarray(apply_to_photo(img, [face], tiny)), np.asarray(apply_to_photo(img, [face], CropEdit(flow=own * 0.01))))


def test_warm_start_keeps_the_old_units_when_the_head_gains_the_opening(tmp_path):
    from affectedit.checkpoint import save_weights, warm_start
    from affectedit.config import get_config
    from affectedit.networks import build_models

    old_cfg = get_config("tiny", ["model.head=warp", "model.motion=units", "model.appearance=basis"])
    old = build_models(old_cfg.model)
    save_weights(tmp_path / "old", {"encoder": old["encoder"], "generator": old["generator"]}, old_cfg.to_dict())
    new, _ = _mouth_generator()
    models = {"encoder": build_models(old_cfg.model)["encoder"], "generator": new}
    copied = warm_start(models, tmp_path / "old")
    assert "generator.beta.weight[:10]" in copied
    assert torch.equal(new.beta.weight[:-1], old["generator"].beta.weight.half().float())  # weights are stored in fp16
    assert not new.motion_basis.any()  # the fields are measured again, with the opening


def test_warm_start_keeps_the_codes_unit_ranges(tmp_path):
    """The units' negative ranges (basis.UNIT_NEGATIVE) are the code's after a warm start, whatever
    the old weights stored, like the units' fields."""
    from affectedit.basis import UNIT_NEGATIVE, UNIT_NEGATIVE_DEFAULT
    from affectedit.checkpoint import save_weights, warm_start
    from affectedit.config import get_config
    from affectedit.networks import build_models

    cfg = get_config("tiny", ["model.head=warp", "model.motion=units", "model.appearance=basis", "model.mouth=open"])
    old = build_models(cfg.model)
    with torch.no_grad():
        old["generator"].motion_negative.fill_(0.9)
        old["generator"].beta.weight.normal_()
    save_weights(tmp_path / "old", {"encoder": old["encoder"], "generator": old["generator"]}, cfg.to_dict())
    new = build_models(cfg.model)
    copied = warm_start(new, tmp_path / "old")
    old, new = old["generator"], new["generator"]
    assert "generator.beta.weight" in copied and not any("motion_negative" in c for c in copied)
    code = [UNIT_NEGATIVE.get(n, UNIT_NEGATIVE_DEFAULT) for n in ACTION_UNITS]
    assert new.motion_negative.tolist() == pytest.approx(code)  # not the old weights' 0.9
    assert torch.equal(new.beta.weight, old.beta.weight.half().float())


def test_editor_opens_the_mouth_of_a_real_photo_end_to_end(portrait, tmp_path):
    """Editor.edit -> crop_edit -> CropEdit.from_fields -> apply_to_photo with a (tiny, untrained)
    mouth model whose opening is forced fully open: the photo comes back with a dark mouth; the
    weights round-trip with the mouth's buffers."""
    from affectedit.config import get_config
    from affectedit.editor import Editor
    from affectedit.networks import build_models

    img, face, lm, unit = portrait
    cfg = get_config("tiny", ["model.head=warp", "model.motion=units", "model.appearance=basis", "model.mouth=open"])
    models = build_models(cfg.model)
    g = models["generator"]
    with torch.no_grad():
        g.rest_landmarks.copy_(unit)  # as if this face were the mean training face
        size = cfg.model.image_size
        g.motion_basis[-1].copy_(torch.from_numpy(flow_for(unit.numpy() * size - 0.5, size)))
        g.beta.weight.zero_()
        g.beta.bias.zero_()
        g.beta.bias[-1] = 20.0
        g.alpha.weight.zero_()
        g.alpha.bias.zero_()
    editor = Editor(models["encoder"], g, cfg, precision="fp32", strength=1.0)
    out = np.asarray(editor.edit(img, emotion="surprised")).astype(float)
    src = np.asarray(img).astype(float)
    scale = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    cx, cy = ((lm[62] + lm[66]) / 2 + np.array([0, 0.12 * scale])).round().astype(int)
    assert out[cy - 2:cy + 3, cx - 2:cx + 3].mean() < src[cy - 2:cy + 3, cx - 2:cx + 3].mean() - 40
    saved = editor.save_pretrained(tmp_path / "m")
    again = Editor.from_pretrained(saved.parent if saved.is_file() else saved, precision="fp32", strength=1.0)
    assert torch.equal(again.generator.rest_landmarks, g.rest_landmarks.half().float())


def test_expression_units_prototypes_follow_facs():
    """basis.EXPRESSION_UNITS in ACTION_UNITS order: a smile raises the cheeks and pulls the corners
    without widening the eyes; surprise lifts both brows and opens the mouth; anger lowers the brows,
    tightens the lids, raises the upper lip and opens the mouth less than surprise, never lifting the
    brows, and bares its teeth instead of dropping the jaw; neutral asks for nothing."""
    from affectedit.basis import EXPRESSION_UNITS, expression_units
    from affectedit.expression import FER_CLASSES

    p = expression_units(FER_CLASSES)
    assert p.shape == (len(FER_CLASSES), U)
    row = dict(zip(FER_CLASSES, p))
    col = {n: i for i, n in enumerate([*ACTION_UNITS, "open"])}
    assert row["happy"][col["lip_corner_pull"]] > 1 and row["happy"][col["lower_lid_raise"]] > 0
    assert row["happy"][col["upper_lid_raise"]] == 0
    assert row["surprise"][col["inner_brow_raise"]] > 0 and row["surprise"][col["outer_brow_raise"]] > 0
    assert row["surprise"][col["open"]] > 0.5 and row["surprise"][col["nose_wrinkle"]] == 0
    assert row["angry"][col["brow_lower"]] > 0.5 and row["angry"][col["lower_lid_raise"]] > 0 and row["angry"][col["nose_wrinkle"]] > 0
    assert row["angry"][col["lip_bare"]] > 0 and row["angry"][col["open"]] < row["surprise"][col["open"]]  # teeth bared, jaw not dropped
    assert row["angry"][col["inner_brow_raise"]] == 0 and row["angry"][col["outer_brow_raise"]] == 0
    assert not row["neutral"].any()
    assert expression_units(FER_CLASSES, mouth=False).shape == (len(FER_CLASSES), U - 1)
    EXPRESSION_UNITS["fear"]["wink"] = 1.0
    try:
        with pytest.raises(ValueError, match="wink"):
            expression_units(FER_CLASSES)
    finally:
        del EXPRESSION_UNITS["fear"]["wink"]


def test_units_prior_loss_is_zero_at_the_asked_mix_and_pulls_toward_it():
    from affectedit.basis import expression_units
    from affectedit.expression import FER_ANCHORS, FER_CLASSES
    from affectedit.losses import soft_expression_targets, units_prior_loss

    p = expression_units(FER_CLASSES)
    y = torch.tensor([FER_ANCHORS[FER_CLASSES.index("happy")], [0.0, 0.0], [0.3, -0.2]])
    mix = soft_expression_targets(y, torch.tensor(FER_ANCHORS), 0.03)
    want = mix @ p
    assert units_prior_loss(want, mix, p).abs().max() < 1e-6
    assert torch.allclose(want[0], p[FER_CLASSES.index("happy")], atol=0.02)  # on the anchor: that class's units
    units = torch.zeros(3, U, requires_grad=True)
    loss = units_prior_loss(units, mix, p)
    assert loss[0] > 0.1 and loss[1] < 1e-3  # the neutral label asks for no movement
    loss.sum().backward()
    assert units.grad[0, list(ACTION_UNITS).index("lip_corner_pull")] < 0  # descent raises the smile's unit
    w = torch.ones(U)
    w[-1] = 5.0  # the opening weighed 5x: its term grows 5x, the others stay
    err = (units.detach() - want).pow(2)
    assert torch.allclose(units_prior_loss(units.detach(), mix, p, w), (err.sum(1) + 4 * err[:, -1]) / U)


def test_low_arousal_prototypes_relax_the_lids_at_their_labels():
    """loss.units_prior_calm's extra prototypes: at the calm label the prior asks for lowered lids
    and a faint smile, at the tired label for drooping lids; without them both labels ask for the
    neutral face's nothing, and the prototypes of the FER classes do not change."""
    from affectedit.basis import prior_prototypes
    from affectedit.emotions import emotion
    from affectedit.expression import FER_CLASSES
    from affectedit.losses import soft_expression_targets

    lid, smile = list(ACTION_UNITS).index("upper_lid_raise"), list(ACTION_UNITS).index("lip_corner_pull")
    y = torch.tensor([emotion("calm"), emotion("tired"), emotion("surprised")])
    fer_only, anchors_fer = prior_prototypes()
    with_calm, anchors = prior_prototypes(calm=True)
    plain = soft_expression_targets(y, anchors_fer, 0.01) @ fer_only
    want = soft_expression_targets(y, anchors, 0.01) @ with_calm
    assert plain[:2].abs().max() < 0.05  # the neutral class is nearest both
    assert want[0, lid] < -0.3 and want[0, smile] > 0.2
    assert want[1, lid] < -0.8 and abs(want[1, smile]) < 1e-3
    assert want[1, lid] < want[0, lid]  # drowsier than relaxed
    assert torch.allclose(want[2], plain[2], atol=1e-3)  # high arousal: as before
    assert torch.equal(with_calm[: len(FER_CLASSES)], fer_only) and torch.equal(anchors[: len(FER_CLASSES)], anchors_fer)


def test_units_prior_trains_the_mouth_model(tiny_cache, tmp_path):
    """A tiny action-unit model with the opening trains with loss.units_prior; the prior is refused
    for a model without action units."""
    from affectedit.checkpoint import save_weights
    from affectedit.config import get_config
    from affectedit.errors import UserError
    from affectedit.networks import build_models
    from affectedit.train import train

    base = ["loss.identity=0", "model.head=warp", "train.steps=1", "loss.expression=1", "loss.units_prior=1"]
    cfg = get_config("tiny", [*base, "model.motion=units", "model.appearance=basis", "model.mouth=open"])
    start = build_models(cfg.model)  # the tiny cache has no surprised faces to measure the appearance basis on
    with torch.no_grad():
        start["generator"].basis.normal_(0, 0.01)
    save_weights(tmp_path / "start", {"encoder": start["encoder"], "generator": start["generator"]}, cfg.to_dict())
    cfg = get_config("tiny", [*base, "model.motion=units", "model.appearance=basis", "model.mouth=open",
                              f"train.init_from={tmp_path / 'start'}"])
    logs = train(cfg, tiny_cache, tmp_path / "units", progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    calm = train(replace(cfg, loss=replace(cfg.loss, units_prior_calm=True)), tiny_cache, tmp_path / "calm", progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in calm.values())
    smile = train(replace(cfg, loss=replace(cfg.loss, units_prior_smile=4.0)), tiny_cache, tmp_path / "smile", progress=False)
    assert smile["warp_reg"] > logs["warp_reg"]  # same seed and step: the corner puller's term weighs 4x
    without = train(replace(cfg, loss=replace(cfg.loss, units_prior=0.0)), tiny_cache, tmp_path / "without", progress=False)
    assert logs["warp_reg"] > without["warp_reg"] + 1e-4  # same seed, same step: the prior's share of the regulariser
    with pytest.raises(UserError, match="units_prior"):
        train(get_config("tiny", base), tiny_cache, tmp_path / "free", progress=False)


def _column_reads(portrait, carry: bool, opening: float = 1.0):
    """Along the mouth's centre column of the portrait (photo rows), the row of the input each
    output row reads with the opening's own flow (optionally with ``carry_lips``), and the
    landmarks where the flow put the lips."""
    from affectedit.mouth import carry_lips

    img, face, lm, unit = portrait
    size = 64
    own = opening * torch.from_numpy(flow_for(unit.numpy() * size - 0.5, size)).float()[None]
    moved = warped_landmarks(unit[None], own, _units(opening))
    t = np.asarray(face.transform)
    cx = lm[[51, 57, 62, 66], 0].mean()
    rows = np.arange(int(lm[51, 1]) - 20, int(lm[8, 1]) + 40, dtype=np.float64)
    ux = torch.from_numpy(t[0, 0] * cx + t[0, 1] * rows + t[0, 2]).float()[:, None]
    uy = torch.from_numpy(t[1, 0] * cx + t[1, 1] * rows + t[1, 2]).float()[:, None]
    flow = torch.nn.functional.grid_sample(own, torch.stack([2 * ux - 1, 2 * uy - 1], -1)[None], align_corners=False)[0]
    if carry:
        flow = carry_lips(ux, uy, flow, moved, unit[None])
    read = np.stack([ux[:, 0].numpy(), uy[:, 0].numpy()], -1) + flow[:, :, 0].T.numpy() / 2
    read_rows = (read - t[:, 2]) @ np.linalg.inv(t[:, :2]).T  # unit crop -> photo pixels
    moved_px = (moved[0].numpy() - t[:, 2]) @ np.linalg.inv(t[:, :2]).T
    return rows, read_rows[:, 1], moved_px


def test_carry_lips_moves_the_lower_lip_whole_where_the_plain_flow_stretches_it(portrait):
    """A smile's opening (0.4): the smooth flow stretches the lower lip (its band of the output reads
    about half as many input rows); carry_lips makes the band read the input's whole lip, seam to
    outer edge, nearly one row per row. A wide opening (1.0): the smooth flow folds over (reads go
    back up: the lip is mirrored), carry_lips' reads only go down. Far above and below the lips
    nothing changes."""
    _, _, lm, _ = portrait
    lip = lm[57, 1] - lm[66, 1]
    slopes = {}
    for carry in (False, True):
        rows, reads, moved = _column_reads(portrait, carry, 0.4)
        band = (rows > moved[57, 1] - 0.8 * lip) & (rows < moved[57, 1] - 1)
        slopes[carry] = np.polyfit(rows[band], reads[band], 1)[0]  # input rows per output row
        if carry:
            assert abs(np.interp(moved[57, 1], rows, reads) - lm[57, 1]) < 1.5  # the outer edge reads the outer edge
    assert slopes[False] < 0.65 and slopes[True] > 0.8
    rows, plain, moved = _column_reads(portrait, False, 1.0)
    carried = _column_reads(portrait, True, 1.0)[1]
    assert np.diff(plain).min() < -0.2 and np.diff(carried).min() > -1e-3
    far = (rows < lm[51, 1] - 18) | (rows > moved[57, 1] + 1.5 * lip)
    assert far.sum() >= 20 and np.allclose(plain[far], carried[far], atol=1e-4)


def test_carry_lips_changes_nothing_beyond_the_mouth_corners(portrait):
    from affectedit.mouth import carry_lips

    _, _, lm, unit = portrait
    own = torch.from_numpy(flow_for(unit.numpy() * 64 - 0.5, 64)).float()[None]
    moved = warped_landmarks(unit[None], own, _units(1.0))
    ux, uy = _grid(256)
    flow = torch.nn.functional.grid_sample(own, torch.stack([2 * ux - 1, 2 * uy - 1], -1)[None], align_corners=False)[0]
    out = carry_lips(ux, uy, flow, moved, unit[None])
    outside = (ux < moved[0, 48, 0] - 0.01) | (ux > moved[0, 54, 0] + 0.01)
    assert torch.equal(out[:, outside], flow[:, outside])
    assert (out - flow).abs().max() > 0.01  # and it does act inside


def test_drawn_teeth_follow_the_eye_whites_not_the_skin(portrait):
    """The drawn inside's brightness follows the light (the eye whites), whatever the skin's."""
    from affectedit.warp import _draw_mouth, _eye_whites

    img, face, lm, unit = portrait
    src = np.asarray(img)
    whites = _eye_whites(src, lm)
    assert whites is not None and 100 < whites < 255
    assert _eye_whites(src, lm * 0.05) is None  # a tiny face: fewer than 30 eye pixels
    own = torch.from_numpy(flow_for(unit.numpy() * 64 - 0.5, 64)).float()[None]
    moved = warped_landmarks(unit[None], own, _units(1.0))
    t = np.asarray(face.transform)
    px, py = np.meshgrid(np.arange(675, dtype=np.float64), np.arange(675, dtype=np.float64))
    ux, uy = t[0, 0] * px + t[0, 1] * py + t[0, 2], t[1, 0] * px + t[1, 1] * py + t[1, 2]

    def teeth(skin, eyes):  # the drawing's brightest (the teeth) on a flat photo of this grey
        flat = torch.full((3, 675, 675), skin)
        out = _draw_mouth(flat, flat, moved, unit[None], t, ux, uy, eyes=eyes)
        drawn = (out - flat).abs().amax(0) > 3
        assert drawn.sum() > 100
        return float(torch.quantile(out.mean(0)[drawn], 0.98))

    bright = [teeth(100.0, w) for w in (120.0, 150.0)]
    assert bright[1] / bright[0] == pytest.approx(1.25, rel=0.06)
    assert teeth(60.0, 150.0) == pytest.approx(bright[1], rel=0.03)  # the same light on darker skin: as bright
    assert teeth(100.0, None) < 0.8 * teeth(180.0, None)  # without the eyes, the skin decides
