"""Bad input, interruptions and full disks: every failure is one line and a non-zero exit, nothing is lost.

The catalogue of inputs below is the table of docs/troubleshooting.md; keep the two in step.
Most cases call the CLI in-process (`affectedit.cli.main`: the same code as `python -m affectedit`, a
traceback would fail the test); `test_real_command_line` runs a few through the real executable.
"""
from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectedit.cli import main
from affectedit.errors import UserError
from test_editor import PORTRAIT

pytestmark = pytest.mark.skipif(not PORTRAIT.is_file(), reason="../shared/data not available")

LONDON = PORTRAIT.parents[1]
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- inputs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _collage(paths: list[Path]) -> Image.Image:
    """2 x 2 portraits of different people, each 320 x 320."""
    out = Image.new("RGB", (640, 640))
    for i, p in enumerate(paths):
        out.paste(Image.open(p).convert("RGB").resize((320, 320), Image.LANCZOS), ((i % 2) * 320, (i // 2) * 320))
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Every kind of file people feed the editor, written once for the module."""
    d = tmp_path_factory.mktemp("bad-inputs")
    portrait = Image.open(PORTRAIT).convert("RGB")
    f = {}

    def put(name, write):
        f[name] = d / name
        write(f[name])

    put("text.jpg", lambda p: p.write_text("a shopping list, not a photo\n"))
    put("empty.jpg", lambda p: p.write_bytes(b""))
    put("truncated.jpg", lambda p: p.write_bytes(PORTRAIT.read_bytes()[: PORTRAIT.stat().st_size // 2]))
    # A valid PNG header declaring 100000 x 100000 RGB pixels (30 GB decoded) and almost no data.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    put("bomb.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b"")))
    rgb16 = np.asarray(portrait).astype(np.uint16) * 257
    put("grey16.png", lambda p: Image.fromarray(rgb16[..., 0]).save(p))  # mode I;16
    put("rgb16.png", lambda p: __import__("cv2").imwrite(str(p), rgb16[..., ::-1].copy()))
    put("cmyk.jpg", lambda p: portrait.convert("CMYK").save(p))
    put("palette.png", lambda p: portrait.convert("P").save(p))
    rgba = portrait.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(portrait.size))
    put("rgba.png", lambda p: rgba.save(p))
    put("grey.jpg", lambda p: portrait.convert("L").save(p))
    # Not square, so that a wrong orientation shows in the size: stored turned, EXIF says "rotate 90 CW".
    upright = portrait.crop((0, 0, 675, 560))
    f["upright"] = upright
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif6.jpg", lambda p: upright.transpose(Image.Transpose.ROTATE_90).save(p, quality=95, exif=exif.tobytes()))
    put("noface.jpg", lambda p: Image.new("RGB", (400, 300), (120, 160, 200)).save(p))
    put("collage.png", lambda p: _collage(sorted((LONDON / "neutral_front").glob("*.jpg"))[:4]).save(p))
    put("tinyface.png", lambda p: portrait.resize((84, 84), Image.LANCZOS).save(p))  # a face ~40 px wide
    small_on_big = Image.new("RGB", (900, 900), (200, 200, 200))
    small_on_big.paste(portrait.resize((100, 100), Image.LANCZOS), (400, 400))  # a ~50 px face in a big photo
    put("tinyface_in_big.png", lambda p: small_on_big.save(p))
    put("halfface.jpg", lambda p: portrait.crop((338, 0, 675, 675)).save(p))  # the left half of the face is gone
    put("chin_cut.jpg", lambda p: portrait.crop((0, 0, 675, 470)).save(p))  # the bottom of the face is gone
    put("edge_face.jpg", lambda p: portrait.crop((120, 0, 675, 675)).save(p))  # the face touches the left border

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    put("random.pt", lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)))
    put("truncated.pt", lambda p: p.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2]))
    other = dict(state, config={**state["config"], "model": {**state["config"]["model"], "z_dim": 20}})
    put("other-config.pt", lambda p: torch.save(other, p))
    broken = dict(state, config={**state["config"], "model": {**state["config"]["model"], "no_such_key": 1}})
    put("bad-config.pt", lambda p: torch.save(broken, p))
    from affectedit.regressor import Regressor, save_regressor

    put("regressor.pt", lambda p: save_regressor(Regressor("valence", 0.25, 32), p))
    put("tensor.pt", lambda p: torch.save(torch.zeros(3), p))
    return f


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *words: str) -> str:
    """Non-zero exit, exactly one stderr line `affectedit: error: ...` holding ``words``."""
    lines = err.strip().splitlines()
    assert rc != 0, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("affectedit: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def ck(tiny_checkpoint):
    return ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]


# ----------------------------------------------------------------------------------- refused inputs

REFUSED = [
    ("text.jpg", ["cannot read", "not an image or damaged"]),
    ("empty.jpg", ["cannot read", "not an image or damaged"]),
    ("truncated.jpg", ["cannot read", "damaged"]),
    ("bomb.png", ["too many pixels", "resize it first"]),
    ("noface.jpg", ["no face found"]),
    ("halfface.jpg", ["no face found"]),
    ("tinyface_in_big.png", ["no face found"]),
    ("missing.jpg", ["not found"]),
]


@pytest.mark.parametrize("name,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_photo_is_one_line_error(bad, ck, tmp_path, capsys, name, words):
    src = bad.get(name, tmp_path / name)
    out = tmp_path / "out.png"
    rc, _, err = cli(capsys, "edit", src, "--valence", "0.5", "--arousal", "0.2", "-o", out, *ck)
    assert rc == 2
    assert_one_line_error(rc, err, *words, str(src))
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("command", ["grid", "animate"])
def test_grid_and_animate_refuse_bad_photos_too(bad, ck, tmp_path, capsys, command):
    extra = ["--path", "0,0 0.5,0.5", "--fps", "2"] if command == "animate" else []
    suffix = ".gif" if command == "animate" else ".png"
    for name, words in [("truncated.jpg", ["damaged"]), ("bomb.png", ["too many pixels"]), ("noface.jpg", ["no face"])]:
        rc, _, err = cli(capsys, command, bad[name], *extra, "-o", tmp_path / f"out{suffix}", *ck)
        assert_one_line_error(rc, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_api_raises_user_error_for_bad_photos(bad, tiny_checkpoint):
    from affectedit.editor import Editor

    editor = Editor.from_checkpoint(tiny_checkpoint, device="cpu")
    for src in (bad["text.jpg"], bad["bomb.png"], np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), 42):
        with pytest.raises(UserError):
            editor.edit(src, 0.5, 0.5)


# ----------------------------------------------------------------------------------- accepted inputs

ACCEPTED = ["grey16.png", "rgb16.png", "cmyk.jpg", "palette.png", "rgba.png", "grey.jpg", "tinyface.png"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_unusual_image_modes_are_edited(bad, ck, tmp_path, capsys, name):
    out = tmp_path / f"out{bad[name].suffix}"
    rc, stdout, err = cli(capsys, "edit", bad[name], "--valence", "0.8", "--arousal", "0.5", "-o", out, *ck)
    assert rc == 0 and err == "" and f"wrote {out}" in stdout
    with Image.open(bad[name]) as src, Image.open(out) as res:
        assert res.size == src.size
        if src.mode in ("RGBA", "L", "CMYK"):
            assert res.mode == src.mode  # alpha, greyscale and CMYK are kept
        if src.mode == "RGBA":
            assert res.getchannel("A").tobytes() == src.getchannel("A").tobytes()
        # the photo is still the photo (a 16-bit file must not turn white or black)
        diff = np.abs(np.asarray(res.convert("L"), np.float32) - np.asarray(_eight(src).convert("L"), np.float32))
        assert diff.mean() < 12


def _eight(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    return img


def test_exif_rotated_photo_comes_out_upright(bad, ck, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    rc, _, err = cli(capsys, "edit", bad["exif6.jpg"], "--emotion", "happy", "-o", out, *ck)
    assert rc == 0, err
    upright = bad["upright"]
    with Image.open(out) as res:
        assert res.size == upright.size and res.getexif().get(0x0112) == 1
        diff = np.abs(np.asarray(res, np.float32) - np.asarray(upright, np.float32)).mean()
        assert diff < 12  # the same picture, the same way up


def _changed_quadrants(a: Path, b: Path) -> list[bool]:
    x, y = np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB"))
    return [bool((x[r:r + 320, c:c + 320] != y[r:r + 320, c:c + 320]).any()) for r in (0, 320) for c in (0, 320)]


def test_many_faces_all_edited_or_one_picked(bad, ck, tmp_path, capsys):
    everyone, one = tmp_path / "all.png", tmp_path / "one.png"
    paper = ["--mode", "paper"]  # the 2-step model's residual change is too small to show in 8 bits
    assert cli(capsys, "edit", bad["collage.png"], "--valence", "-0.8", "--arousal", "0.8", "-o", everyone, *paper, *ck)[0] == 0
    assert _changed_quadrants(bad["collage.png"], everyone) == [True] * 4
    assert cli(capsys, "edit", bad["collage.png"], "--valence", "-0.8", "--arousal", "0.8", "--face", "1", "-o", one,
               *paper, *ck)[0] == 0
    assert sum(_changed_quadrants(bad["collage.png"], one)) == 1
    rc, _, err = cli(capsys, "edit", bad["collage.png"], "--emotion", "sad", "--face", "7", "-o", tmp_path / "x.png", *ck)
    assert_one_line_error(rc, err, "face 7 asked for but 4 face(s) found")


@pytest.mark.parametrize("name", ["chin_cut.jpg", "edge_face.jpg", "halfface.jpg"])
def test_face_cut_by_the_border_does_not_crash(bad, ck, tmp_path, capsys, name):
    out = tmp_path / "out.jpg"
    rc, _, err = cli(capsys, "edit", bad[name], "--emotion", "happy", "-o", out, *ck)
    if rc == 0:
        assert Image.open(out).size == Image.open(bad[name]).size
    else:
        assert_one_line_error(rc, err, "no face found")


# ----------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("valence,arousal,what", [("2", "0", "valence"), ("nan", "0", "valence"),
                                                   ("0", "inf", "arousal"), ("0", "-1.5", "arousal")])
def test_labels_outside_the_square_are_refused(ck, tmp_path, capsys, valence, arousal, what):
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--valence", valence, "--arousal", arousal, "-o", tmp_path / "x.jpg", *ck)
    assert_one_line_error(rc, err, f"{what} must be in [-1, 1]")
    rc, _, err = cli(capsys, "animate", PORTRAIT, "--path", f"0,0 {valence},{arousal}", "-o", tmp_path / "x.gif", *ck)
    assert_one_line_error(rc, err, f"{what} must be in [-1, 1]")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- checkpoints

CHECKPOINTS = [
    ("missing.pt", ["not found"]),
    ("random.pt", ["corrupt or not an affectedit checkpoint"]),
    ("truncated.pt", ["corrupt or not an affectedit checkpoint"]),
    ("other-config.pt", ["do not fit the config stored with them", "size mismatch"]),
    ("bad-config.pt", ["config stored in the checkpoint is not valid", "no_such_key"]),
    ("regressor.pt", ["regressor, not an editing model"]),
    ("tensor.pt", ["not an affectedit checkpoint"]),
    ("photo", ["corrupt or not an affectedit checkpoint"]),
]


@pytest.mark.parametrize("name,words", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_bad_checkpoint_is_one_line_error(bad, tmp_path, capsys, name, words):
    path = PORTRAIT if name == "photo" else bad.get(name, tmp_path / name)
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "x.jpg", "--checkpoint", path)
    assert rc == 2
    assert_one_line_error(rc, err, *words)
    assert not (tmp_path / "x.jpg").exists()


# ----------------------------------------------------------------------------------- outputs


def test_unwritable_outputs_are_one_line_errors(ck, tmp_path, capsys):
    # Tests run as root, so a chmod-ed folder would still be writable: use places nobody can write.
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", "/proc/affectedit-out.jpg", *ck)
    assert_one_line_error(rc, err, "cannot write to /proc", "choose another output path")
    rc, _, err = cli(capsys, "grid", PORTRAIT, "-o", "/proc/affectedit-grid.png", *ck)
    assert_one_line_error(rc, err, "cannot write to /proc")
    rc, _, err = cli(capsys, "grid", PORTRAIT, "-o", tmp_path / "no" / "such" / "g.png", *ck)
    assert_one_line_error(rc, err, "does not exist")
    rc, _, err = cli(capsys, "animate", PORTRAIT, "--path", "0,0 1,0", "-o", tmp_path / "nope" / "a.gif", *ck)
    assert_one_line_error(rc, err, "does not exist")
    (tmp_path / "folder.png").mkdir()
    rc, _, err = cli(capsys, "grid", PORTRAIT, "-o", tmp_path / "folder.png", "--force", *ck)
    assert_one_line_error(rc, err, "is a folder")
    # a file where a folder should be
    (tmp_path / "file").write_text("x")
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "file" / "x.jpg", *ck)
    assert_one_line_error(rc, err)
    # edit makes a missing output folder (grid and animate ask for it)
    assert cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "new" / "x.jpg", *ck)[0] == 0


@pytest.mark.parametrize("command", ["edit", "grid", "animate"])
def test_existing_output_is_not_overwritten_without_force(ck, tmp_path, capsys, command):
    out = tmp_path / ("out.gif" if command == "animate" else "out.png")
    out.write_bytes(b"precious")
    extra = {"edit": ["--emotion", "sad"], "grid": ["-n", "2"], "animate": ["--path", "0,0 1,0", "--fps", "2"]}[command]
    rc, _, err = cli(capsys, command, PORTRAIT, *extra, "-o", out, *ck)
    assert_one_line_error(rc, err, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert cli(capsys, command, PORTRAIT, *extra, "-o", out, "--force", *ck)[0] == 0
    assert out.read_bytes() != b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]


@pytest.mark.parametrize("where", ["rename", "write"])
@pytest.mark.parametrize("command", ["edit", "grid", "animate"])
def test_full_disk_keeps_the_old_file(ck, tmp_path, capsys, monkeypatch, command, where):
    out = tmp_path / ("out.gif" if command == "animate" else "out.png")
    out.write_bytes(b"the old result")
    extra = {"edit": ["--emotion", "sad"], "grid": ["-n", "2"], "animate": ["--path", "0,0 1,0", "--fps", "2"]}[command]
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "rename":
        def replace(src, dst):
            raise full
        monkeypatch.setattr(os, "replace", replace)
    else:
        real_save = Image.Image.save

        def save(self, fp, *args, **kwargs):
            real_save(self, fp, *args, **kwargs)  # half the bytes reach the disk, then it is full
            Path(fp).write_bytes(Path(fp).read_bytes()[:100])
            raise full
        monkeypatch.setattr(Image.Image, "save", save)
    rc, _, err = cli(capsys, command, PORTRAIT, *extra, "-o", out, "--force", *ck)
    assert_one_line_error(rc, err, "disk full", "free some space")
    assert out.read_bytes() == b"the old result" and _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------------- crash safety


def _boom(*args, **kwargs):
    raise RuntimeError("killed mid-write")


def test_checkpoint_and_exported_weights_survive_a_crash_mid_write(tiny_checkpoint, tmp_path, monkeypatch):
    from affectedit.checkpoint import export_weights, load_checkpoint, models_from_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    cfg, models = models_from_checkpoint(state, ("encoder", "generator", "d_z", "d_img"))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    save_checkpoint(ckpt, models, {}, 7, cfg)
    weights = export_weights(ckpt, tmp_path / "weights")
    before = {p: p.read_bytes() for p in (ckpt, weights)}
    real_save, real_write = torch.save, Path.write_bytes

    def half_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        Path(f.name).write_bytes(Path(f.name).read_bytes()[:1000])
        raise RuntimeError("killed mid-write")

    def write_half_then_die(self, data):
        real_write(self, data[: len(data) // 2])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(RuntimeError):
        save_checkpoint(ckpt, models, {}, 8, cfg)
    monkeypatch.setattr(Path, "write_bytes", write_half_then_die)
    with pytest.raises(RuntimeError):
        export_weights(ckpt, tmp_path / "weights", force=True)
    monkeypatch.undo()
    assert all(p.read_bytes() == b for p, b in before.items())
    assert _no_temp_files(ckpt.parent) and _no_temp_files(weights.parent)
    assert load_checkpoint(ckpt)["step"] == 7


def test_prepared_cache_survives_a_crash_while_finishing(tmp_path, monkeypatch, shared_data):
    import contextlib

    from affectedit import io as io_mod
    from affectedit.data import cache as cache_mod

    out = tmp_path / "cache"
    lfw = shared_data / "lfw-expressions"
    labels = ROOT / "data" / "lfw-expressions-va.csv"
    real_atomic = io_mod.atomic_path
    for victim in ("images.npy", "labels.npy", "meta.json"):  # the order prepare writes the finished cache in

        @contextlib.contextmanager
        def dying(path, force=True, victim=victim):
            with real_atomic(path, force) as tmp:
                yield tmp
                if Path(path).name == victim:  # written in full, killed before the rename
                    raise RuntimeError("killed mid-write")
        monkeypatch.setattr(io_mod, "atomic_path", dying)
        with pytest.raises(RuntimeError, match="killed"):
            cache_mod.prepare(lfw, "lfw", out, labels=labels, split="train", size=32, limit=4, progress=False)
        monkeypatch.undo()
        # unfinished, so nothing claims to be a cache; no temporary file is left
        assert not (out / "meta.json").exists() and _no_temp_files(out)
        with pytest.raises(UserError, match="unfinished prepare run"):
            cache_mod.FaceCache(out)
    cache_mod.prepare(lfw, "lfw", out, labels=labels, split="train", size=32, limit=4, progress=False)  # finishes
    c = cache_mod.FaceCache(out)
    assert len(c.images) == len(c.labels) > 0


def test_sigkill_mid_write_leaves_the_old_file(tmp_path):
    """A real kill (no clean-up runs): the target keeps its old bytes; only a hidden temporary file remains."""
    target = tmp_path / "result.png"
    target.write_bytes(b"old")
    script = (
        "import sys, time\n"
        "from affectedit.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'wb') as f:\n"
        "        f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".result.png.")]


# ----------------------------------------------------------------------------------- the real command


@pytest.mark.parametrize("case", ["text", "bomb", "checkpoint"])
def test_real_command_line(bad, tiny_checkpoint, tmp_path, case):
    src = {"text": bad["text.jpg"], "bomb": bad["bomb.png"]}.get(case, PORTRAIT)
    ckpt = bad["truncated.pt"] if case == "checkpoint" else tiny_checkpoint
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "affectedit", "edit", str(src), "--emotion", "happy", "-o",
                        str(tmp_path / "x.jpg"), "--checkpoint", str(ckpt), "--device", "cpu"],
                       check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert_one_line_error(r.returncode, r.stderr)
    assert time.perf_counter() - t < 120
