"""Shapes, ranges, label conditioning and initialisation of the four networks (both configs)."""
import pytest
import torch

from affectedit.config import get_config
from affectedit.networks import build_models, tile_label


@pytest.fixture(params=["paper", "tiny"])
def cfg(request):
    return get_config(request.param).model


def test_shapes_and_ranges(cfg):
    torch.manual_seed(0)
    m = build_models(cfg)
    for net in m.values():
        net.eval()
    s = cfg.image_size
    x = torch.rand(3, 3, s, s) * 2 - 1
    y = torch.rand(3, 2) * 2 - 1
    with torch.no_grad():
        z = m["encoder"](x)
        assert z.shape == (3, cfg.z_dim) and z.abs().max() <= 1
        x_gen = m["generator"](z, y)
        assert x_gen.shape == x.shape and x_gen.abs().max() <= 1
        pz = torch.sigmoid(m["d_z"](z))
        pi = torch.sigmoid(m["d_img"](x, y))
    assert pz.shape == (3,) and pi.shape == (3,)
    assert ((pz > 0) & (pz < 1)).all() and ((pi > 0) & (pi < 1)).all()


def test_label_tiling_order():
    y = torch.tensor([[0.5, -0.25]])
    t = tile_label(y, 50)
    assert t.shape == (1, 100)
    assert (t[0, :50] == 0.5).all() and (t[0, 50:] == -0.25).all()


@pytest.mark.parametrize("every", [True, False])
def test_label_reaches_every_d_img_block(every):
    cfg = get_config("tiny", [f"model.d_img_label_every_block={every}"]).model
    d = build_models(cfg)["d_img"].eval()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    y1 = torch.tensor([[0.3, -0.2], [0.1, 0.9]])
    y2 = y1.clone()
    y2[:, 0] += 0.5  # perturb the label only
    with torch.no_grad():
        _, in1 = d(x, y1, return_block_inputs=True)
        _, in2 = d(x, y2, return_block_inputs=True)
    changed = [not torch.equal(a, b) for a, b in zip(in1, in2)]
    # in1[i] is what follows block i: the input of block i+1 (or of the FC layers after the last block).
    assert all(changed)
    rep = cfg.d_img_label_repeat
    for i, h in enumerate(in2):
        has_label = every or i == 0
        assert h.shape[1] == cfg.d_img_channels[i] + (2 * rep if has_label else 0)
        if has_label:  # the appended channels are exactly the tiled label
            assert torch.equal(h[:, -2 * rep : -rep], y2[:, :1, None, None].expand(-1, rep, h.shape[2], h.shape[3]))
            assert torch.equal(h[:, -rep:], y2[:, 1:, None, None].expand(-1, rep, h.shape[2], h.shape[3]))


def test_label_changes_generator_output():
    cfg = get_config("tiny").model
    g = build_models(cfg)["generator"].eval()
    z = torch.rand(2, cfg.z_dim) * 2 - 1
    a = g(z, torch.zeros(2, 2))
    b = g(z, torch.ones(2, 2))
    assert not torch.allclose(a, b)


def test_init_is_paper_init():
    m = build_models(get_config("paper").model)
    w = m["encoder"].convs[0].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.003 and abs(float(w.mean())) < 0.003
    assert float(m["encoder"].convs[0].bias.detach().abs().max()) == 0.0


def test_bad_image_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_models(get_config("tiny", ["model.image_size=40"]).model)


# ---------------------------------------------------------------- the warp head


def test_warp_head_fields_bounded_and_start_as_no_change():
    from affectedit.networks import Fields, compose

    cfg = get_config("tiny", ["model.head=warp", "model.max_flow=0.1"]).model
    torch.manual_seed(0)
    m = build_models(cfg)
    s = cfg.image_size
    x = torch.rand(3, 3, s, s) * 2 - 1
    f = m["generator"](m["encoder"](x), torch.rand(3, 2) * 2 - 1)
    assert isinstance(f, Fields)
    assert f.flow.shape == (3, 2, s, s) and f.mask.shape == (3, 1, s, s) and f.colour.shape == (3, 3, s, s)
    # a fresh head moves nothing and paints almost nothing (mask sigmoid(-3))
    assert f.flow.abs().max() == 0 and f.mask.max() < 0.06
    out = compose(x, f)
    assert (out - x).abs().mean() < 0.06
    # trained weights are bounded by construction
    with torch.no_grad():
        for p in m["generator"].parameters():
            p.add_(torch.randn_like(p))
    f = m["generator"](m["encoder"](x), torch.rand(3, 2) * 2 - 1)
    assert f.flow.abs().max() <= 0.1 + 1e-6 and 0 <= f.mask.min() and f.mask.max() <= 1 and f.colour.abs().max() <= 1


def test_warp_image_moves_pixels_by_the_flow():
    from affectedit.networks import warp_image

    x = torch.arange(16.0).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    assert torch.equal(warp_image(x, flow), x)
    flow[:, 0] = 2.0 / 4  # one pixel to the right, in grid units (2 / width)
    shifted = warp_image(x, flow)
    assert torch.allclose(shifted[..., :, :3], x[..., :, 1:])  # p samples p + 1 px; the border repeats


def test_expression_targets_and_loss():
    from affectedit.losses import expression_loss, soft_expression_targets, total_variation

    anchors = torch.tensor([[0.0, 0.0], [0.83, 0.53], [-0.65, -0.27]])
    t = soft_expression_targets(torch.tensor([[0.83, 0.53], [0.0, 0.0]]), anchors, 0.08)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0].argmax() == 1 and t[1].argmax() == 0 and t[0, 1] > 0.9
    right = expression_loss(torch.tensor([[0.0, 5.0, 0.0]]), t[:1])
    wrong = expression_loss(torch.tensor([[5.0, 0.0, 0.0]]), t[:1])
    assert right < wrong
    assert total_variation(torch.ones(2, 1, 4, 4)).abs().max() == 0
    assert total_variation(torch.eye(4).view(1, 1, 4, 4)).item() > 0


@pytest.mark.parametrize("training", [False, True])
def test_basis_heads_skip_the_unused_pixel_layers_with_the_same_fields(training):
    # motion and appearance along fixed bases read everything from the FC trunk: the transposed
    # convolutions are not run, and the fields (and their gradients) are what running them gives
    cfg = get_config("tiny", ["model.head=warp", "model.motion=units", "model.appearance=basis", "model.mouth=open"]).model
    torch.manual_seed(0)
    m = build_models(cfg)
    g = m["generator"].train(training)
    assert not g.pixels_used
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.1 * torch.randn_like(p))
        g.motion_basis.normal_()
        g.basis.normal_()
        g.rest_landmarks.copy_(torch.rand(68, 2) * 0.5 + 0.25)
    s = cfg.image_size
    x = torch.rand(2, 3, s, s) * 2 - 1
    y = torch.tensor([[0.8, 0.5], [-0.6, 0.4]])
    code = m["encoder"](x).detach()
    calls = []
    hook = g.deconvs[0].register_forward_hook(lambda *a: calls.append(1))
    skipped = g(code, y)
    g.pixels_used = True
    full = g(code, y)
    hook.remove()
    assert len(calls) == 1  # only the run with pixels_used computed them
    for name in ("flow", "mask", "colour", "delta", "units", "mouth_flow"):
        a, b = getattr(skipped, name), getattr(full, name)
        assert a.shape == b.shape and torch.equal(a, b), name
    assert build_models(get_config("tiny", ["model.head=warp"]).model)["generator"].pixels_used
