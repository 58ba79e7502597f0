"""The Editor on real portraits with a tiny checkpoint (trained 2 steps in this session)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import editor as ed
from affectedit import faces as F
from affectedit.editor import EMOTIONS, Editor, emotion, export_weights
from affectedit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LONDON = DATA / "london-portraits" / "images"
PORTRAIT = LONDON / "neutral_front" / "001_03.jpg"
PORTRAIT2 = LONDON / "smiling_front" / "001_08.jpg"

pytestmark = pytest.mark.skipif(not PORTRAIT.is_file(), reason="../shared/data not available")


@pytest.fixture(scope="module")
def editor(tiny_checkpoint) -> Editor:
    return Editor.from_checkpoint(tiny_checkpoint, device="cpu")


class LabelColour(torch.nn.Module):
    """A stand-in generator whose output shows its label: red = valence, green = arousal."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, z, y):
        out = torch.full((len(z), 3, self.size, self.size), -1.0)
        out[:, 0] = y[:, 0, None, None]
        out[:, 1] = y[:, 1, None, None]
        return out


@pytest.fixture()
def colour_editor(tiny_checkpoint) -> Editor:
    # paper mode: the output is the generator's own image, whose colour encodes the label
    e = Editor.from_checkpoint(tiny_checkpoint, device="cpu", mode="paper")
    e.generator = LabelColour(e.image_size)
    return e


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    img = Image.open(PORTRAIT)
    img.load()
    return img


def _outside(photo: Image.Image, editor: Editor, margin: int = 3) -> np.ndarray:
    """Boolean H x W: pixels certainly outside every face's blend region (warped mask, dilated)."""
    H, W = photo.height, photo.width
    S = editor.image_size
    alpha = np.zeros((H, W), np.float32)
    for f in F.detect_faces(photo):
        warped = cv2.warpAffine(np.ascontiguousarray(F.face_mask(S)), f.matrix(S), (W, H),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0)
        alpha = np.maximum(alpha, warped)
    inside = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8))
    return inside == 0


# ----------------------------------------------------------------------------------- vocabulary


def test_emotions_vocabulary():
    for word in ("happy", "excited", "delighted", "calm", "relaxed", "content", "sad", "depressed", "bored",
                 "tired", "angry", "afraid", "tense", "surprised", "disgusted", "neutral"):
        assert word in EMOTIONS
    for v, a in EMOTIONS.values():
        assert -1 <= v <= 1 and -1 <= a <= 1
    assert EMOTIONS["neutral"] == (0.0, 0.0)
    assert EMOTIONS["happy"][0] > 0.5 and EMOTIONS["sad"][0] < -0.5
    assert EMOTIONS["excited"][1] > 0.5 and EMOTIONS["tired"][1] < -0.5
    assert emotion("  Happy ") == EMOTIONS["happy"] and emotion("at_ease") == EMOTIONS["at ease"]
    with pytest.raises(UserError, match="unknown emotion 'gleeful'.*happy.*sad"):
        emotion("gleeful")


def test_parse_path():
    assert ed.parse_path("0,0 0.8,0.5;-0.6,-0.4") == [(0.0, 0.0), (0.8, 0.5), (-0.6, -0.4)]
    assert ed.parse_path("neutral happy") == [(0.0, 0.0), EMOTIONS["happy"]]
    for bad in ("0,0", "0,0 2,0", "0,0 1,2,3", "0,0 gleeful"):
        with pytest.raises(UserError):
            ed.parse_path(bad)


# ----------------------------------------------------------------------------------- edit


def test_edit_keeps_size_mode_and_background(editor, portrait):
    out = editor.edit(portrait, 0.8, 0.5)
    assert out.size == portrait.size and out.mode == portrait.mode
    a, b = np.asarray(portrait), np.asarray(out)
    outside = _outside(portrait, editor)
    assert outside.mean() > 0.5  # the test means something: most of a portrait is not face
    assert np.array_equal(a[outside], b[outside])
    # a border band and the far corners, explicitly
    band = 20
    for sl in (np.s_[:band], np.s_[-band:], np.s_[:, :band], np.s_[:, -band:]):
        assert np.array_equal(a[sl], b[sl])
    changed = (a != b).any(2)
    assert changed[~outside].mean() > 0.2
    assert np.asarray(portrait).sum() == a.sum()  # the input is not modified


def test_edit_accepts_path_array_and_pil(editor, portrait):
    by_pil = np.asarray(editor.edit(portrait, -0.5, 0.3))
    by_path = np.asarray(editor.edit(PORTRAIT, -0.5, 0.3))
    by_array = np.asarray(editor.edit(np.asarray(portrait.convert("RGB")), -0.5, 0.3))
    assert np.array_equal(by_pil, by_path) and np.array_equal(by_pil, by_array)
    grey = editor.edit(portrait.convert("L"), -0.5, 0.3)
    assert grey.mode == "L" and grey.size == portrait.size
    with pytest.raises(UserError, match="H x W x 3 uint8"):
        editor.edit(np.zeros((10, 10), np.float32), 0, 0)


def test_exif_rotated_photo_comes_back_upright(editor, portrait, tmp_path):
    upright = portrait.convert("RGB").crop((0, 40, 675, 640))  # 675 x 600: rotation swaps the sides
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    out = editor.edit(path, 0.5, 0.5)  # the HOG detector finds no sideways face: success means upright
    assert out.size == upright.size
    top = np.asarray(out)[:60].astype(int) - np.asarray(upright)[:60].astype(int)
    assert np.abs(top).mean() < 5  # JPEG noise only
    # PIL input with the tag behaves the same
    assert np.array_equal(np.asarray(editor.edit(Image.open(path), 0.5, 0.5)), np.asarray(out))


@pytest.mark.parametrize("valence, arousal, word", [(1.5, 0, "valence"), (0, -1.01, "arousal"), (float("nan"), 0, "valence"),
                                                    (0, float("inf"), "arousal"), ("high", 0, "valence")])
def test_bad_labels_are_user_errors(editor, portrait, valence, arousal, word):
    with pytest.raises(UserError, match=word):
        editor.edit(portrait, valence, arousal)


def test_no_face_and_bad_face_index(editor, portrait):
    background = portrait.crop((0, 0, 200, 200)).resize((400, 400))
    with pytest.raises(UserError, match="no face found"):
        editor.edit(background, 0, 0)
    with pytest.raises(UserError, match="1 face"):
        editor.edit(portrait, 0, 0, face=1)
    assert editor.edit(portrait, 0, 0, face=0).size == portrait.size
    with pytest.raises(UserError, match="not found"):
        editor.edit("no/such/photo.jpg", 0, 0)


def test_edit_crops_on_cache_images(editor, tiny_cache):
    from affectedit.data.cache import FaceCache

    cache = FaceCache(tiny_cache)
    imgs = np.asarray(cache.images[:5])
    labels = np.asarray(cache.labels[:5], dtype=np.float32)
    out = editor.reconstruct(imgs, labels)
    S = editor.image_size
    assert out.shape == (5, 3, S, S) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # batching does not change results; one label pair broadcasts
    editor.batch_size, bs = 2, editor.batch_size
    try:
        assert torch.allclose(editor.reconstruct(imgs, labels), out, atol=1e-5)
    finally:
        editor.batch_size = bs
    assert editor.edit_crops(imgs, (0.5, -0.5)).shape == (5, 3, S, S)
    with pytest.raises(ValueError, match="N x 2"):
        editor.edit_crops(imgs, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=f"N x 3 x {S} x {S}"):
        editor.edit_crops(torch.zeros(1, 3, S + 1, S + 1), (0, 0))
    with pytest.raises(UserError, match="arousal"):
        editor.edit_crops(imgs, (0, 3))
    crop = F.align_face(Image.open(PORTRAIT), F.detect_faces(Image.open(PORTRAIT))[0], 80)
    assert editor.edit_aligned(crop, 0.3, 0.3).size == (80, 80)


def test_precision_and_device(tiny_checkpoint, editor):
    x = torch.rand(3, 3, editor.image_size, editor.image_size) * 2 - 1
    bf16 = Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="bf16")
    assert torch.allclose(bf16.edit_crops(x, (0.2, 0.2)), editor.edit_crops(x, (0.2, 0.2)), atol=0.05)
    with pytest.raises(UserError, match="precision"):
        Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp8")
    with pytest.raises(UserError, match="device"):
        Editor.from_checkpoint(tiny_checkpoint, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            Editor.from_checkpoint(tiny_checkpoint, device="cuda")


# ----------------------------------------------------------------------------------- figures


def test_grid_is_5x5_with_arousal_across_and_valence_down(colour_editor):
    g = colour_editor.grid(PORTRAIT)
    info = g.info["grid"]
    n, cell, (x0, y0) = info["n"], info["cell"], info["origin"]
    assert n == 5 and cell >= 96
    assert g.width >= x0 + 5 * cell and g.height >= y0 + 5 * cell
    a = np.asarray(g).astype(int)
    levels = np.linspace(1, -1, 5)
    for r in range(5):
        for c in range(5):
            red, green = a[y0 + r * cell + cell // 2, x0 + c * cell + cell // 2, :2]
            assert abs(red - (levels[r] + 1) * 127.5) <= 1  # valence high to low, top to bottom
            assert abs(green - (levels[c] + 1) * 127.5) <= 1  # arousal high to low, left to right
    # the input sits beside the grid, and the labels are drawn (dark pixels above the grid)
    ix0, iy0, ix1, iy1 = info["input"]
    assert ix1 <= x0 and np.asarray(g)[iy0:iy1, ix0:ix1].std() > 10
    assert (a[:y0, x0:] < 100).any() and (a[y0:, ix1:x0] < 100).any()


def test_animate_gif_and_mp4(colour_editor, tmp_path):
    out = colour_editor.animate(PORTRAIT, [(0, 0), (0.8, 0.5), (-0.6, -0.4)], tmp_path / "a.gif", fps=5,
                                seconds_per_segment=1.0, size=200)
    with Image.open(out) as gif:
        assert gif.n_frames == 2 * 5 + 1
        assert max(gif.size) <= 200
    with pytest.raises(UserError, match="already exists"):
        colour_editor.animate(PORTRAIT, [(0, 0), (1, 1)], out, force=False)
    with pytest.raises(UserError, match=r"\.gif or \.mp4"):
        colour_editor.animate(PORTRAIT, [(0, 0), (1, 1)], tmp_path / "a.avi")
    mp4 = colour_editor.animate(PORTRAIT, [(0, 0), (1, 1)], tmp_path / "a.mp4", fps=4, size=128)
    cap = cv2.VideoCapture(str(mp4))
    try:
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    finally:
        cap.release()
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


# ----------------------------------------------------------------------------------- weights


def test_export_and_from_pretrained_round_trip(tiny_checkpoint, editor, tmp_path):
    pt = export_weights(tiny_checkpoint, tmp_path / "w")
    meta = json.loads((tmp_path / "w" / ed.WEIGHTS_JSON).read_text())
    assert pt.name == ed.WEIGHTS_NAME and meta["sha256"] == ed._sha256(pt) and meta["step"] == 2
    state = torch.load(pt, weights_only=True)
    assert set(state["models"]) == {"encoder", "generator"}
    assert all(v.dtype == torch.float16 for v in state["models"]["generator"].values() if v.is_floating_point())
    loaded = Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w")
    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 2 - 1
    assert torch.allclose(loaded.edit_crops(x, (0.5, 0.5)), editor.edit_crops(x, (0.5, 0.5)), atol=2e-2)
    # save_pretrained writes the same kind of pair
    loaded.save_pretrained(tmp_path / "w2")
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w2").step == 2
    with pytest.raises(UserError, match="already exists"):
        export_weights(tiny_checkpoint, tmp_path / "w", force=False)
    # the same weights give the same bytes (no temporary file name inside the archive)
    assert ed._sha256(export_weights(tiny_checkpoint, tmp_path / "again")) == meta["sha256"]
    # a calibrated strength stored with the weights becomes the editors' default; an explicit one wins
    assert loaded.strength == 1.0 and "strength" not in meta
    export_weights(tiny_checkpoint, tmp_path / "w3", strength=1.2)
    assert json.loads((tmp_path / "w3" / ed.WEIGHTS_JSON).read_text())["strength"] == 1.2
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w3").strength == 1.2
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w3", strength=0.5).strength == 0.5
    Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w3", strength=1.5).save_pretrained(tmp_path / "w4")
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w4").strength == 1.5
    with pytest.raises(UserError, match="strength must be in"):
        export_weights(tiny_checkpoint, tmp_path / "w5", strength=0)
    # a damaged file fails the checksum, both ways of loading it
    with open(pt, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(UserError, match="checksum mismatch"):
        Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w")
    with pytest.raises(UserError, match="checksum mismatch"):
        Editor.from_checkpoint(pt, device="cpu")
    (tmp_path / "w" / ed.WEIGHTS_JSON).unlink()
    with pytest.raises(UserError, match="cannot be verified"):
        Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w")
    with pytest.raises(UserError, match="no bundled weights"):
        Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "nothing")


def test_residual_mode_adds_the_generators_change(tiny_checkpoint, editor):
    """x + (G(z, y) - G(z, y_x)): with the target equal to the estimated own label nothing changes;
    otherwise the change equals the difference of the two generations."""
    from affectedit.data.cache import FaceCache  # noqa: F401 - the cache module provides normalize

    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 1.6 - 0.8
    own = editor.estimate_labels(x)
    assert own.shape == (2, 2) and own.abs().max() <= 1
    same = editor.edit_crops(x, own, mode="residual")
    assert torch.allclose(same, x, atol=1e-5)
    target = torch.tensor([0.9, 0.5])
    out = editor.edit_crops(x, target, mode="residual", keep_colour=False)
    z = editor.encode(x)
    change = editor.generate(z, target) - editor.generate(z, own)
    assert torch.allclose(out, (x + change).clamp(-1, 1), atol=1e-5)
    # by default only the brightness (BT.601 luma) of the change: equal in R, G and B
    kept = editor.edit_crops(x, target, mode="residual")
    luma = (0.299 * change[:, 0] + 0.587 * change[:, 1] + 0.114 * change[:, 2])[:, None].expand_as(change)
    assert torch.allclose(kept, (x + luma).clamp(-1, 1), atol=1e-5)
    inside = (x + luma).abs().amax(1) < 0.99  # away from clamping, R, G and B move together
    d = kept - x
    assert torch.allclose(d[:, 0][inside], d[:, 1][inside], atol=1e-5) and torch.allclose(d[:, 0][inside], d[:, 2][inside], atol=1e-5)
    with pytest.raises(UserError, match="mode"):
        editor.edit_crops(x, target, mode="magic")


def test_label_range_maps_the_dials_onto_the_trained_labels(tiny_checkpoint, editor, tmp_path):
    from affectedit.editor import label_range

    rng = np.random.default_rng(0)
    labels = np.stack([rng.uniform(-0.5, 0.8, 1000), rng.uniform(-0.2, 0.9, 1000)], 1)
    r = label_range(labels)
    assert r[0][0] == pytest.approx(-0.5, abs=0.01) and r[1][1] == pytest.approx(0.9, abs=0.01)
    assert label_range(np.full((10, 2), 0.5)) == [[0.0, 0.5], [0.0, 0.5]]  # 0 stays inside
    ranged = Editor.from_checkpoint(tiny_checkpoint, device="cpu", label_range=r)
    y = torch.tensor([[1.0, -1.0], [-0.5, 0.5], [0.0, 0.0]])
    expect = torch.tensor([[r[0][1], r[1][0]], [-0.5 * -r[0][0], 0.5 * r[1][1]], [0.0, 0.0]])
    assert torch.allclose(ranged.model_labels(y), expect)
    z = editor.encode(torch.rand(3, 3, editor.image_size, editor.image_size) * 2 - 1)
    assert torch.allclose(ranged.generate(z, y), editor.generate(z, expect), atol=1e-6)
    assert torch.equal(editor.model_labels(y), y)  # no range: the paper's labels as given
    # stored with exported weights and picked up when loading them
    export_weights(tiny_checkpoint, tmp_path / "w", label_range=r)
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w").label_range == r
    assert Editor.from_pretrained(device="cpu", weights_dir=tmp_path / "w", label_range=None).label_range is None
    for bad in ([[0.2, 0.8], [-0.2, 0.9]], [[-0.5, 0.8]], [[-2, 0.8], [-0.2, 0.9]], "wide"):
        with pytest.raises(UserError, match="label_range"):
            Editor.from_checkpoint(tiny_checkpoint, device="cpu", label_range=bad)
