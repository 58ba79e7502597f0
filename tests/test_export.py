"""`affectedit export`: the ONNX graph G(E(image), label) computes what PyTorch computes.

Tolerance: outputs lie in [-1, 1]; the ONNX Runtime result must match the fp32 PyTorch result to
1e-4 (max absolute difference) on real aligned faces, for batch 1 and a larger (dynamic) batch.
Measured differences are ~1e-6 (the same fp32 arithmetic in another summation order).
onnxruntime and onnx are the optional `export` dependencies: without them these tests FAIL with
the command that installs them (they are part of what is shipped, so they are not skipped).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from affectedit.cli import main
from affectedit.data.cache import FaceCache, normalize

ATOL = 1e-4


@pytest.fixture(scope="session")
def ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        pytest.fail(f"{e.name} is not installed: the ONNX export needs `pip install 'affectedit[export]'` (onnx, onnxruntime)")
    return onnxruntime


@pytest.fixture(scope="session")
def tiny_run(tiny_checkpoint):
    return tiny_checkpoint  # the session's 2-step tiny model (conftest)


def _reference(checkpoint, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    from affectedit.checkpoint import load_checkpoint, models_from_checkpoint

    _, m = models_from_checkpoint(load_checkpoint(checkpoint))
    with torch.inference_mode():
        return m["generator"](m["encoder"](x), y).numpy()


def test_onnx_matches_pytorch_on_real_faces(ort, tiny_run, tiny_cache, tmp_path):
    import onnx

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "-o", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"image": ["N", 3, 32, 32], "label": ["N", 2]}

    from affectedit.export import ort_session

    sess = ort_session(out)
    cache = FaceCache(tiny_cache)
    faces = normalize(np.asarray(cache.images))  # real aligned LFW faces
    rng = np.random.default_rng(0)
    for n in (1, len(faces)):
        x = faces[:n]
        y = torch.from_numpy(rng.uniform(-1, 1, (n, 2)).astype(np.float32))
        (got,) = sess.run(None, {"image": x.numpy(), "label": y.numpy()})
        want = _reference(tiny_run, x, y)
        assert got.shape == want.shape == (n, 3, 32, 32)
        assert np.abs(got - want).max() <= ATOL


def test_export_weights_and_errors(tiny_run, tiny_cache, tmp_path, capsys):
    from affectedit.editor import EditConfig, Editor

    folder = tmp_path / "weights"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(folder)]) == 0
    assert [p.name for p in folder.iterdir()] == ["model.safetensors"]  # everything inside one file
    loaded = Editor.from_pretrained(folder, device="cpu")
    assert loaded.image_size == 32 and loaded.edit_config == EditConfig()
    # an existing export is not overwritten without --force
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(folder)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(folder), "--force"]) == 0
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(folder), "--force",
                 "--strength", "1.3", "--colour", "change", "--mode", "paper"]) == 0
    assert Editor.from_pretrained(folder, device="cpu").edit_config == EditConfig("paper", 1.3, "change")
    # exporting exported weights keeps their settings unless told otherwise
    again = tmp_path / "again"
    assert main(["export", "--checkpoint", str(folder), "--format", "weights", "-o", str(again), "--strength", "0.5"]) == 0
    assert Editor.from_pretrained(again, device="cpu").edit_config == EditConfig("paper", 0.5, "change")
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(folder), "--force",
                 "--label-range-from", str(tiny_cache)]) == 0
    r = Editor.from_pretrained(folder, device="cpu").edit_config.label_range
    assert r is not None and all(lo <= 0 <= hi for lo, hi in r)
    assert main(["export", "--checkpoint", str(tiny_run), "-o", str(tmp_path / "m.onnx"), "--strength", "2"]) == 2
    assert "--format weights only" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(tmp_path / "w5"),
                 "--strength", "9"]) == 2
    assert "strength must be in [0, 4]" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "-o", str(tmp_path / "model.bin")]) == 2
    assert ".onnx" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
