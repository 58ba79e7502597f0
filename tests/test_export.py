"""`affectedit export`: the ONNX graph of the whole crop edit computes what ``Editor.edit_crops``
computes in PyTorch (the bundled warp model by default, and the tiny residual-mode checkpoint).

Tolerance: outputs lie in [-1, 1]; the ONNX Runtime result must match the fp32 PyTorch result to
1e-4 (max absolute difference) on real aligned faces, for batch 1 and a larger (dynamic) batch.
Measured differences are ~1e-6 (the same fp32 arithmetic in another summation order).
onnxruntime and onnx are the optional `export` dependencies: without them these tests FAIL with
the command that installs them (they are part of what is shipped, so they are not skipped).
"""
from __future__ import annotations

from pathlib import Path

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


def _check_graph(path, S: int):
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"image": ["N", 3, S, S], "label": ["N", 2], "strength": ["N"]}
    return {p.key: p.value for p in model.metadata_props}


def _compare(sess, editor, faces: torch.Tensor, seed: int = 0, changes: bool = True) -> float:
    """Largest |ONNX - Editor.edit_crops| over batches 1 and all, two strengths."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in (1, len(faces)):
        x = faces[:n]
        y = torch.from_numpy(rng.uniform(-0.9, 0.9, (n, 2)).astype(np.float32))
        for s in (1.0, 0.6):
            (got,) = sess.run(None, {"image": x.numpy(), "label": y.numpy(), "strength": np.full(n, s, np.float32)})
            want = editor.edit_crops(x, y, strength=s).numpy()
            assert got.shape == want.shape == tuple(x.shape)
            assert not changes or np.abs(want - x.numpy()).max() > 1e-2  # the edit changes something
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


def test_onnx_of_the_bundled_model_matches_the_editor(ort, tmp_path, monkeypatch):
    """`affectedit export` with no --checkpoint and no -o: the bundled (warp) model's whole crop edit."""
    from PIL import Image

    from affectedit.editor import Editor
    from affectedit.export import ort_session
    from affectedit.faces import align_faces_batch, detect_faces

    monkeypatch.chdir(tmp_path)
    assert main(["export"]) == 0
    meta = _check_graph(tmp_path / "affectedit.onnx", 64)
    editor = Editor.from_pretrained(device="cpu", precision="fp32")
    assert meta["mode"] == editor.edit_config.mode == "warp" and float(meta["default_strength"]) == editor.edit_config.strength
    root = Path(__file__).resolve().parents[1] / "examples"
    crops = []
    for name in ("london_001_neutral.jpg", "london_011_neutral.jpg"):
        photo = Image.open(root / name).convert("RGB")
        crops.append(align_faces_batch(photo, detect_faces(photo)[:1], 64))
    faces = normalize(np.concatenate(crops))
    worst = _compare(ort_session(tmp_path / "affectedit.onnx"), editor, faces)
    assert worst <= ATOL, worst


def test_onnx_matches_the_editor_in_residual_mode(ort, tiny_run, tiny_cache, tmp_path):
    from affectedit.editor import Editor
    from affectedit.export import ort_session

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "-o", str(out)]) == 0
    meta = _check_graph(out, 32)
    editor = Editor.from_checkpoint(tiny_run, device="cpu", precision="fp32")
    assert meta["mode"] == editor.edit_config.mode == "residual"
    faces = normalize(np.asarray(FaceCache(tiny_cache).images))  # real aligned LFW faces
    worst = _compare(ort_session(out), editor, faces, changes=False)  # a 2-step model's residual change is ~1e-5
    assert worst <= ATOL, worst
    # The other settings a pixels-head model can be exported with (the graph builds them in).
    from affectedit.export import edit_onnx_bytes

    for options in ({"colour": "change"}, {"mode": "paper"}):
        variant = Editor.from_checkpoint(tiny_run, device="cpu", precision="fp32", **options)
        worst = _compare(ort_session(edit_onnx_bytes(variant)), variant, faces, changes=options.get("mode") == "paper")
        assert worst <= ATOL, (options, worst)


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
    # the warp head's dead zone can be stored with the weights; the pixel generator has none
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "weights", "-o", str(tmp_path / "g"),
                 "--gate-from", "0.2"]) == 2
    assert "warp head only" in capsys.readouterr().err
    assert main(["export", "--format", "weights", "-o", str(tmp_path / "bundled"), "--gate-from", "0.2"]) == 0
    gated = Editor.from_pretrained(tmp_path / "bundled", device="cpu")
    assert gated.generator.gate_from == 0.2 and gated.config.model.gate_from == 0.2
    assert gated.edit_config == Editor.from_pretrained(device="cpu").edit_config
