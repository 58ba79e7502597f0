"""Every fast inference path stays close to the plain fp32 (NCHW, eager) computation on real faces.

Model: the `cpu` preset (the bundled model's 64x64 architecture) with random He-initialised weights
(not the paper's N(0, 0.02), whose tiny activations would make any path look exact: here the
outputs spread over [-0.9, 0.9] with std ~0.2), on real LFW faces aligned to 64x64.  Outputs lie in [-1, 1].  Stated tolerances:

    channels_last (the default on the CPU)    max |diff| <= 1e-4  (measured ~1e-6: same fp32 math, other order)
    threads (1 vs torch's count)              max |diff| <= 1e-4
    ONNX Runtime (affectedit export)          max |diff| <= 1e-4
    bf16 autocast ("auto" where the CPU has   mean |diff| <= 0.02, max |diff| <= 0.15
      native bf16 and measures it faster)
    residual edit (batched G passes)          equal to x + G(z, y) - G(z, y_x) computed separately, 1e-4
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from affectedit.config import get_config
from affectedit.data.cache import FaceCache, normalize
from affectedit.editor import LABEL_GRID, Editor
from affectedit.networks import build_models

FP32_ATOL = 1e-4


@pytest.fixture(scope="module")
def faces64(tmp_path_factory, shared_data) -> torch.Tensor:
    """8 real LFW faces aligned to 64x64, N x 3 x 64 x 64 in [-1, 1]."""
    from affectedit.data.cache import prepare

    out = tmp_path_factory.mktemp("fast") / "lfw-64"
    prepare(shared_data / "lfw-expressions", "lfw", out, split="all", size=64, limit=8, progress=False)
    return normalize(np.asarray(FaceCache(out).images))


@pytest.fixture(scope="module")
def nets():
    cfg = get_config("cpu")
    torch.manual_seed(0)
    m = build_models(cfg.model)
    for net in (m["encoder"], m["generator"]):
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # O(1) activations, outputs not saturated
    return cfg, m["encoder"].eval(), m["generator"].eval()


def _editor(nets, precision="fp32", **kw) -> Editor:
    cfg, e, g = nets
    return Editor(copy.deepcopy(e), copy.deepcopy(g), cfg, "cpu", precision, **kw)


def _reference(nets, x, y) -> torch.Tensor:
    """fp32, NCHW, eager, torch's own thread count: the plain computation."""
    _, e, g = nets
    with torch.inference_mode():
        return g(e(x), y).clamp(-1, 1)


def _labels(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (n, 2)).astype(np.float32))


def test_default_path_is_channels_last(nets):
    ed = _editor(nets, precision="auto")
    assert ed.precision in ("fp32", "bf16") and ed.channels_last
    assert next(ed.encoder.parameters()).dtype == torch.float32
    conv = next(m for m in ed.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_matches_fp32(nets, faces64):
    y = _labels(len(faces64))
    want = _reference(nets, faces64, y)
    assert want.std() > 0.1  # the outputs are far from constant, so the tolerance means something
    for n in (1, len(faces64)):
        got = _editor(nets).edit_crops(faces64[:n], y[:n], mode="paper")
        assert got.is_contiguous()
        assert (got - want[:n]).abs().max() <= FP32_ATOL


def test_thread_counts_agree(nets, faces64):
    y = _labels(len(faces64))
    one = _editor(nets, threads=1).edit_crops(faces64, y, mode="paper")
    many = _editor(nets, threads=max(2, torch.get_num_threads())).edit_crops(faces64, y, mode="paper")
    assert (one - many).abs().max() <= FP32_ATOL
    before = torch.get_num_threads()
    _editor(nets).edit_crops(faces64[:1], y[:1])
    assert torch.get_num_threads() == before  # the thread choice is undone after each call
    with pytest.raises(Exception, match="threads"):
        _editor(nets, threads=0)


def test_onnx_runtime_matches_fp32(nets, faces64):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.fail("onnxruntime is not installed: pip install 'affectedit[export]'")
    from affectedit.export import onnx_bytes, ort_session

    cfg, e, g = nets
    sess = ort_session(onnx_bytes(e, g, cfg.model.image_size))
    y = _labels(len(faces64))
    want = _reference(nets, faces64, y).numpy()
    for n in (1, len(faces64)):
        (got,) = sess.run(None, {"image": faces64[:n].numpy(), "label": y[:n].numpy()})
        assert np.abs(np.clip(got, -1, 1) - want[:n]).max() <= FP32_ATOL


def test_bf16_autocast_is_close(nets, faces64):
    y = _labels(len(faces64))
    want = _reference(nets, faces64, y)
    got = _editor(nets, precision="bf16").edit_crops(faces64, y, mode="paper")
    diff = (got - want).abs()
    assert diff.mean() <= 0.02 and diff.max() <= 0.15


def test_residual_edit_equals_the_separate_passes(nets, faces64):
    ed = _editor(nets)
    y = _labels(len(faces64))
    got = ed.edit_crops(faces64, y, mode="residual", colour="change", strength=1)
    own = ed.estimate_labels(faces64)
    assert set(map(tuple, own.tolist())) <= set(map(tuple, LABEL_GRID.tolist()))
    z = ed.encode(faces64)
    want = (faces64 + ed.generate(z, y) - ed.generate(z, own)).clamp(-1, 1)
    assert (got - want).abs().max() <= FP32_ATOL
    # and against the plain fp32 NCHW networks
    _, e, g = nets
    with torch.inference_mode():
        z0 = e(faces64)
        plain = (faces64 + g(z0, y).clamp(-1, 1) - g(z0, own).clamp(-1, 1)).clamp(-1, 1)
    assert (got - plain).abs().max() <= FP32_ATOL
