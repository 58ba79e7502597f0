"""The Editor on real portraits with a tiny checkpoint (trained 2 steps in this session) and with
the bundled model."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from affectedit import faces as F
from affectedit.checkpoint import WEIGHTS_NAME, export_weights, read_weights
from affectedit.editor import EditConfig, Editor, FaceCodes, label_range
from affectedit.emotions import emotion
from affectedit.errors import UserError
from affectedit.warp import CropEdit, Fields, compose, luma_change

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LONDON = DATA / "london-portraits" / "images"
PORTRAIT = LONDON / "neutral_front" / "001_03.jpg"
PORTRAIT2 = LONDON / "smiling_front" / "001_08.jpg"
EXAMPLE = ROOT / "examples" / "london_001_neutral.jpg"  # 675 x 675

pytestmark = pytest.mark.skipif(not PORTRAIT.is_file(), reason="../shared/data not available")


@pytest.fixture(scope="module")
def editor(tiny_checkpoint) -> Editor:
    return Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")


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


class WarpStub(torch.nn.Module):
    """A stand-in warp-head generator: flow = (valence, arousal) / 10 everywhere, mask 0.5, grey."""

    head = "warp"

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, z, y):
        n, s = len(z), self.size
        flow = (y / 10)[:, :, None, None].expand(n, 2, s, s).contiguous()
        return Fields(flow, torch.full((n, 1, s, s), 0.5), torch.zeros(n, 3, s, s))


@pytest.fixture()
def colour_editor(tiny_checkpoint) -> Editor:
    # paper mode: the output is the generator's own image, whose colour encodes the label
    e = Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", mode="paper", strength=1)
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


# ----------------------------------------------------------------------------------- edit


def test_edit_keeps_size_mode_and_background(editor, portrait):
    before = np.array(portrait)  # a copy: the input must not be modified
    out = editor.edit(portrait, 0.8, 0.5, mode="paper")  # the 2-step model's residual change is ~0
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
    assert np.array_equal(np.asarray(portrait), before)


def test_zero_change_leaves_every_pixel_of_the_photo(editor):
    """strength 0 is no change in every mode (the bundled model's own, warp, too): the 675 x 675
    example (London 001_03 of ../shared/data) comes back byte-identical."""
    src = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    bundled = Editor.from_pretrained(device="cpu")
    assert bundled.edit_config.mode == "warp"
    for ed in (bundled, editor):
        for mode in ("residual", "paper") + (("warp",) if ed is bundled else ()):
            out = np.asarray(ed.edit(EXAMPLE, 0.8, 0.5, mode=mode, strength=0))
            assert out.shape == src.shape and np.array_equal(out, src), (mode, int((out != src).any(2).sum()))
    # and an edit that is not zero does change the face
    assert (np.asarray(bundled.edit(EXAMPLE, 0.8, 0.5)) != src).any(2).sum() > 1000


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
    assert np.array_equal(np.asarray(editor.edit_aligned(crop, 0.3, 0.3, strength=0)), np.asarray(crop))


def test_precision_and_device(tiny_checkpoint, editor):
    x = torch.rand(3, 3, editor.image_size, editor.image_size) * 2 - 1
    bf16 = Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and editor.precision == "fp32"
    assert torch.allclose(bf16.edit_crops(x, (0.2, 0.2)), editor.edit_crops(x, (0.2, 0.2)), atol=0.05)
    assert Editor.from_checkpoint(tiny_checkpoint, device="cpu").precision in ("fp32", "bf16")  # auto
    with pytest.raises(UserError, match="precision"):
        Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp8")
    with pytest.raises(UserError, match="device"):
        Editor.from_checkpoint(tiny_checkpoint, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            Editor.from_checkpoint(tiny_checkpoint, device="cuda")


# ----------------------------------------------------------------------------------- modes


def test_residual_mode_adds_the_generators_change(editor):
    """x + (G(z, y) - G(z, y_x)): with the target equal to the estimated own label nothing changes;
    otherwise the change equals the difference of the two generations."""
    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 1.6 - 0.8
    own = editor.estimate_labels(x)
    assert own.shape == (2, 2) and own.abs().max() <= 1
    assert torch.allclose(editor.edit_crops(x, own, mode="residual"), x, atol=1e-5)
    target = torch.tensor([0.9, 0.5])
    z = editor.encode(x)
    change = editor.generate(z, target) - editor.generate(z, own)
    out = editor.edit_crops(x, target, mode="residual", colour="change", strength=1)
    assert torch.allclose(out, (x + change).clamp(-1, 1), atol=1e-5)
    # colour "keep" (the default): only the brightness (BT.601 luma) of the change, equal in R, G and B
    luma = (0.299 * change[:, 0] + 0.587 * change[:, 1] + 0.114 * change[:, 2])[:, None].expand_as(change)
    assert torch.allclose(luma, luma_change(change), atol=1e-6)
    kept = editor.edit_crops(x, target, mode="residual", strength=1)
    assert torch.allclose(kept, (x + luma).clamp(-1, 1), atol=1e-5)
    # the strength scales the change; 0 is no change at all
    assert torch.allclose(editor.edit_crops(x, target, strength=2.5), (x + 2.5 * luma).clamp(-1, 1), atol=1e-5)
    assert torch.equal(editor.edit_crops(x, target, strength=0), x)
    with pytest.raises(UserError, match="mode"):
        editor.edit_crops(x, target, mode="magic")
    with pytest.raises(UserError, match="strength"):
        editor.edit_crops(x, target, strength=4.5)


def test_paper_mode_pastes_the_generated_face(editor):
    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 2 - 1
    y = torch.tensor([[0.3, -0.2], [-0.7, 0.6]])
    g = editor.generate(editor.encode(x), y)
    change = editor.crop_edit(x, y, mode="paper", strength=3)  # the mask saturates at 1
    assert torch.equal(change.mask, torch.ones_like(change.mask)) and change.delta is None
    assert torch.equal(compose(x, change), g)
    half = compose(x, editor.crop_edit(x, y, mode="paper", strength=0.5))
    assert torch.allclose(half, (x + g) / 2, atol=1e-6)


def test_one_face_code_serves_many_labels(editor):
    """crop_edit on repeated FaceCodes equals crop_edit on repeated crops (E and y_x run once)."""
    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 2 - 1
    codes = editor.encode_faces(x, own=True)
    assert isinstance(codes, FaceCodes) and codes.source.shape == x.shape
    rows = torch.tensor([0, 0, 1, 1, 1])
    y = torch.tensor([[0.5, 0.5], [-0.5, 0.1], [0.9, -0.9], [0.0, 0.0], [-1.0, 1.0]])
    a = compose(x[rows], editor.crop_edit(codes[rows], y))
    b = editor.edit_crops(x[rows], y)
    assert torch.allclose(a, b, atol=1e-5)


def test_warp_head_fields_become_the_edit(tiny_checkpoint, editor, portrait):
    """A generator with the warp head: its Fields, scaled by the strength, are the CropEdit."""
    warp = Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    warp.generator = WarpStub(warp.image_size)
    S = warp.image_size
    x = torch.rand(2, 3, S, S) * 2 - 1
    y = torch.tensor([[0.5, -1.0], [0.0, 0.2]])
    change = warp.crop_edit(x, y, mode="warp", strength=2)
    assert torch.allclose(change.flow[:, :, 0, 0], 2 * y / 10) and torch.allclose(change.mask, torch.ones_like(change.mask))
    assert change.delta is None and torch.equal(change.colour, torch.zeros(2, 3, S, S))
    assert torch.equal(compose(x, warp.crop_edit(x, y, mode="warp", strength=0)), x)
    # an Editor built around a warp-head generator defaults to the warp mode
    assert Editor(editor.encoder, WarpStub(S), editor.config, "cpu").edit_config.mode == "warp"
    src = np.asarray(portrait.convert("RGB"))
    assert np.array_equal(np.asarray(warp.edit(portrait, 0.5, 0.5, mode="warp", strength=0)), src)
    assert (np.asarray(warp.edit(portrait, 0.5, 0.5, mode="warp")) != src).any()
    with pytest.raises(UserError, match="warp head"):
        editor.crop_edit(x, y, mode="warp")


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
    try:
        import imageio_ffmpeg  # noqa: F401 - the video extra
    except ImportError:
        with pytest.raises(UserError, match="video extra"):
            colour_editor.animate(PORTRAIT, [(0, 0), (1, 1)], tmp_path / "a.mp4", fps=4, size=128)
        return
    mp4 = colour_editor.animate(PORTRAIT, [(0, 0), (1, 1)], tmp_path / "a.mp4", fps=4, size=128)
    cap = cv2.VideoCapture(str(mp4))
    try:
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    finally:
        cap.release()
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


def test_animation_frames_are_the_edits_of_the_photo(editor, tmp_path, monkeypatch):
    """Each frame is the photo edited to the frame's label, by the same edit as ``edit``."""
    from affectedit import images

    frames = []
    monkeypatch.setattr(images, "write_animation", lambda path, f, fps, force=True: frames.extend(f))
    photo = Image.open(PORTRAIT).convert("RGB").crop((0, 0, 674, 674))  # even sides: the frames' own size
    editor.animate(photo, [(0.8, 0.5), (-0.5, 0.2)], tmp_path / "a.gif", fps=1, size=None)
    assert len(frames) == 2
    for frame, (v, a) in zip(frames, [(0.8, 0.5), (-0.5, 0.2)]):
        assert np.array_equal(np.asarray(frame), np.asarray(editor.edit(photo, v, a)))


# ----------------------------------------------------------------------------------- weights and settings


def test_bundled_weights_are_one_safetensors_file():
    """The bundled model loads from model.safetensors alone: no JSON (nor a 0.1 .pt bundle) beside it,
    and everything the Editor needs (config, edit settings, step) is read from inside the file."""
    from affectedit.checkpoint import BUNDLED_DIR, resolve_weights

    files = sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_file())
    assert WEIGHTS_NAME in files and not [n for n in files if n.endswith((".json", ".pt"))], files
    assert resolve_weights(None) == BUNDLED_DIR / WEIGHTS_NAME
    state = read_weights(BUNDLED_DIR / WEIGHTS_NAME)
    assert set(state["models"]) == {"encoder", "generator"} and state["config"]["model"]["head"] == "warp"
    assert EditConfig.stored(state) == Editor.from_pretrained(device="cpu").edit_config


def test_save_pretrained_and_from_pretrained_round_trip(tiny_checkpoint, editor, tmp_path):
    path = editor.save_pretrained(tmp_path / "w")
    assert path == tmp_path / "w" / WEIGHTS_NAME and sorted(p.name for p in (tmp_path / "w").iterdir()) == [WEIGHTS_NAME]
    state = read_weights(path)
    assert set(state["models"]) == {"encoder", "generator"} and state["step"] == 2
    assert all(v.dtype == torch.float16 for v in state["models"]["generator"].values() if v.is_floating_point())
    loaded = Editor.from_pretrained(tmp_path / "w", device="cpu", precision="fp32")
    assert loaded.edit_config == editor.edit_config and loaded.step == 2
    x = torch.rand(2, 3, editor.image_size, editor.image_size) * 2 - 1
    assert torch.allclose(loaded.edit_crops(x, (0.5, 0.5)), editor.edit_crops(x, (0.5, 0.5)), atol=2e-2)
    # a file path and from_checkpoint work too; the same weights give the same bytes
    assert Editor.from_pretrained(path, device="cpu").step == Editor.from_checkpoint(tmp_path / "w", device="cpu").step == 2
    assert loaded.save_pretrained(tmp_path / "again").read_bytes() == path.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        editor.save_pretrained(tmp_path / "w", force=False)
    with pytest.raises(UserError, match="no weights"):
        Editor.from_pretrained(tmp_path, device="cpu")


def test_edit_settings_are_stored_with_the_weights(tiny_checkpoint, tmp_path):
    """None (or left out) = the value stored with the weights, everywhere."""
    r = [[-0.5, 0.8], [-0.2, 0.9]]
    export_weights(tiny_checkpoint, tmp_path / "w", edit={"strength": 1.5, "colour": "change", "label_range": r})
    stored = Editor.from_pretrained(tmp_path / "w", device="cpu")
    assert stored.edit_config == EditConfig("residual", 1.5, "change", r)
    assert Editor.from_pretrained(tmp_path / "w", device="cpu", strength=None, mode=None).edit_config.strength == 1.5
    other = Editor.from_pretrained(tmp_path / "w", device="cpu", strength=0.5, label_range="off", mode="paper")
    assert other.edit_config == EditConfig("paper", 0.5, "change", None)
    other.save_pretrained(tmp_path / "w2")
    assert Editor.from_pretrained(tmp_path / "w2", device="cpu").edit_config == other.edit_config
    assert Editor.from_checkpoint(tiny_checkpoint, device="cpu").edit_config == EditConfig()  # training: defaults
    with pytest.raises(UserError, match="strength must be in"):
        Editor.from_checkpoint(tiny_checkpoint, device="cpu", strength=-1)
    with pytest.raises(UserError, match="colour"):
        EditConfig(colour="sepia")
    with pytest.raises(UserError, match="unknown edit option"):
        Editor.from_checkpoint(tiny_checkpoint, device="cpu", keep_colour=False)


def test_damaged_weights_and_the_old_bundle(tiny_checkpoint, editor, tmp_path):
    import hashlib
    import json

    path = editor.save_pretrained(tmp_path / "w")
    with open(path, "r+b") as fh:  # flip one byte of the tensor data
        fh.seek(-10, 2)
        byte = fh.read(1)
        fh.seek(-10, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    for load in (lambda: Editor.from_pretrained(tmp_path / "w", device="cpu"), lambda: Editor.from_checkpoint(path, device="cpu")):
        with pytest.raises(UserError, match="checksum mismatch"):
            load()
    # The 0.1 bundle (affectedit.pt + affectedit.json) still loads, with a FutureWarning.
    state = torch.load(tiny_checkpoint, weights_only=True)
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"format_version": 1, "weights_format": 1, "step": 2, "config": state["config"],
                "models": {k: {n: t.half() for n, t in state["models"][k].items()} for k in ("encoder", "generator")}},
               old / "affectedit.pt")
    digest = hashlib.sha256((old / "affectedit.pt").read_bytes()).hexdigest()
    (old / "affectedit.json").write_text(json.dumps({"file": "affectedit.pt", "sha256": digest, "strength": 1.2}))
    with pytest.warns(FutureWarning, match="0.1 weights bundle"):
        legacy = Editor.from_pretrained(old, device="cpu")
    assert legacy.edit_config == EditConfig(strength=1.2) and legacy.step == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        converted = legacy.save_pretrained(tmp_path / "new")
        with open(old / "affectedit.pt", "ab") as fh:
            fh.write(b"\0")
        with pytest.raises(UserError, match="checksum mismatch"):
            Editor.from_checkpoint(old / "affectedit.pt", device="cpu")
    assert Editor.from_pretrained(converted.parent, device="cpu").edit_config.strength == 1.2


def test_from_pretrained_resolves_a_hub_repo_id(editor, tmp_path, monkeypatch):
    import huggingface_hub

    path = editor.save_pretrained(tmp_path / "hub")
    asked = {}

    def fake_download(repo_id, filename, **kwargs):
        asked.update(repo_id=repo_id, filename=filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.chdir(tmp_path)
    assert Editor.from_pretrained("someone/affectedit-small", device="cpu").step == 2
    assert asked == {"repo_id": "someone/affectedit-small", "filename": WEIGHTS_NAME}

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: offline())
    with pytest.raises(UserError, match="Hugging Face Hub"):
        Editor.from_pretrained("someone/missing", device="cpu")


def test_label_range_maps_the_dials_onto_the_trained_labels(tiny_checkpoint, editor, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.stack([rng.uniform(-0.5, 0.8, 1000), rng.uniform(-0.2, 0.9, 1000)], 1)
    r = label_range(labels)
    assert r[0][0] == pytest.approx(-0.5, abs=0.01) and r[1][1] == pytest.approx(0.9, abs=0.01)
    assert label_range(np.full((10, 2), 0.5)) == [[0.0, 0.5], [0.0, 0.5]]  # 0 stays inside
    ranged = Editor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", label_range=r)
    y = torch.tensor([[1.0, -1.0], [-0.5, 0.5], [0.0, 0.0]])
    expect = torch.tensor([[r[0][1], r[1][0]], [-0.5 * -r[0][0], 0.5 * r[1][1]], [0.0, 0.0]])
    assert torch.allclose(ranged.model_labels(y), expect)
    z = editor.encode(torch.rand(3, 3, editor.image_size, editor.image_size) * 2 - 1)
    assert torch.allclose(ranged.generate(z, y), editor.generate(z, expect), atol=1e-6)
    assert torch.equal(editor.model_labels(y), y)  # no range: the paper's labels as given
    export_weights(tiny_checkpoint, tmp_path / "w", edit={"label_range": r})
    assert Editor.from_pretrained(tmp_path / "w", device="cpu").edit_config.label_range == r
    assert Editor.from_pretrained(tmp_path / "w", device="cpu", label_range="off").edit_config.label_range is None
    for bad in ([[0.2, 0.8], [-0.2, 0.9]], [[-0.5, 0.8]], [[-2, 0.8], [-0.2, 0.9]], "wide"):
        with pytest.raises(UserError, match="label_range"):
            Editor.from_checkpoint(tiny_checkpoint, device="cpu", label_range=bad)


def test_crop_edit_is_a_crop_edit(editor):
    x = torch.rand(3, 3, editor.image_size, editor.image_size) * 2 - 1
    change = editor.crop_edit(x, (0.4, 0.4))
    assert isinstance(change, CropEdit) and len(change) == 3 and change.delta.shape == x.shape
    assert len(change[1:]) == 2 and len(change[torch.tensor([0, 0, 2, 2])]) == 4


# ----------------------------------------------------------------------------------- the API of issues 15 and 16


def test_edit_takes_a_list_and_emotion_words(editor, monkeypatch):
    """A list of photos goes through the networks in one batch and gives what one-by-one edits give;
    emotion words work as well as numbers; report=True says how many faces were found and edited."""
    photos = [PORTRAIT, Image.open(PORTRAIT2), np.asarray(Image.open(PORTRAIT).convert("RGB").crop((0, 0, 600, 675)))]
    calls = []
    real = editor.encode
    monkeypatch.setattr(editor, "encode", lambda x: calls.append(len(x)) or real(x))
    together = editor.edit(photos, emotion="happy")
    assert calls == [3]  # one batch for the three photos' faces
    monkeypatch.undo()
    v, a = emotion("happy")
    for photo, result in zip(photos, together):
        alone = editor.edit(photo, v, a)
        assert np.abs(np.asarray(result, np.int16) - np.asarray(alone, np.int16)).max() <= 1
    assert np.array_equal(np.asarray(editor.edit(PORTRAIT, "happy")), np.asarray(editor.edit(PORTRAIT, v, a)))
    reports = editor.edit(photos[:2], -0.5, 0.2, report=True)
    assert [(r.faces_found, r.faces_edited) for r in reports] == [(1, 1), (1, 1)] and reports[0].source == str(PORTRAIT)
    assert editor.edit([], 0.1, 0.1) == []
    with pytest.raises(UserError, match="unknown emotion"):
        editor.edit(PORTRAIT, emotion="gleeful")
    with pytest.raises(UserError, match="not both"):
        editor.edit(PORTRAIT, 0.5, 0.5, emotion="happy")
    with pytest.raises(UserError, match="max_faces"):
        editor.edit(PORTRAIT, "sad", max_faces=0)


def test_grid_and_animate_show_progress(editor, tmp_path, capsys):
    editor.grid(PORTRAIT, n=3, progress=True)
    assert "grid" in capsys.readouterr().err
    editor.animate(PORTRAIT, [(0, 0), (1, 1)], tmp_path / "a.gif", fps=2, size=64, progress=True)
    assert "animate" in capsys.readouterr().err
    editor.grid(PORTRAIT, n=2)
    assert capsys.readouterr().err == ""
