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
from test_editor import PORTRAIT, PORTRAIT2

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
        from affectedit import io as io_mod

        real_verify = io_mod._verify

        def verify(tmp, path, size, check):  # 100 bytes reached the disk, then it was full
            with open(tmp, "r+b") as f:
                f.truncate(100)
            raise full
        monkeypatch.setattr(io_mod, "_verify", verify)
        assert real_verify
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
    real_save = torch.save

    def half_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        Path(f.name).write_bytes(Path(f.name).read_bytes()[:1000])
        raise RuntimeError("killed mid-write")

    def write_half_then_die(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(RuntimeError):
        save_checkpoint(ckpt, models, {}, 8, cfg)
    from affectedit import io as io_mod

    monkeypatch.setattr(io_mod, "_write", write_half_then_die)
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
        def dying(path, force=True, victim=victim, **kwargs):
            with real_atomic(path, force, **kwargs) as tmp:
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


# ----------------------------------------------------------------------------------- issue 16: verified writes
#
# A nearly full disk does not always raise: Pillow's C encoders ignore a short write() and leave a
# truncated file without an error. Two injections cover both kinds, at many "free space" levels:
# - silent: every byte beyond N never reached the disk, and nobody said so (the temporary file is
#   cut to N bytes after its writer returned, before the checks);
# - loud: the os.write seam of affectedit.io writes at most N bytes, shortly, then fails with ENOSPC.


def _silently_cut_at(monkeypatch, level):
    """Cut every written temporary file to ``level(size)`` bytes before it is checked."""
    from affectedit import io as io_mod

    real_verify = io_mod._verify

    def verify(tmp, path, size, check):
        n = os.path.getsize(tmp)
        with open(tmp, "r+b") as f:
            f.truncate(max(0, min(n - 1, level(n))))
        return real_verify(tmp, path, size, check)
    monkeypatch.setattr(io_mod, "_verify", verify)


def _disk_with_room(monkeypatch, room: int):
    """os.write of affectedit.io on a disk with ``room`` bytes left: short writes, then ENOSPC."""
    from affectedit import io as io_mod

    left = [room]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), left[0], 4093)  # short writes of odd sizes
        left[0] -= n
        return os.write(fd, bytes(data[:n]))
    monkeypatch.setattr(io_mod, "_write", write)


LEVELS = [lambda n: 0, lambda n: 1, lambda n: 64, lambda n: n // 10, lambda n: n // 2, lambda n: n * 9 // 10,
          lambda n: n - 2, lambda n: n - 1]
SILENT = {"edit-jpg": ("edit", ["--emotion", "sad"], "out.jpg"), "edit-png": ("edit", ["--emotion", "sad"], "out.png"),
          "grid": ("grid", ["-n", "2"], "out.png"), "gif": ("animate", ["--path", "0,0 1,0", "--fps", "2", "--size", "64"], "out.gif"),
          "mp4": ("animate", ["--path", "0,0 1,0", "--fps", "2", "--size", "64"], "out.mp4")}


@pytest.mark.parametrize("case", list(SILENT))
def test_silently_short_write_never_replaces_the_file(ck, tmp_path, capsys, monkeypatch, case):
    if case == "mp4":
        pytest.importorskip("imageio_ffmpeg")  # the video extra
    command, extra, name = SILENT[case]
    out = tmp_path / name
    for i, level in enumerate(LEVELS):
        out.write_bytes(b"the old result")
        with monkeypatch.context() as m:
            _silently_cut_at(m, level)
            rc, stdout, err = cli(capsys, command, PORTRAIT, *extra, "-o", out, "--force", *ck)
        line = assert_one_line_error(rc, err, str(out), "the old file is untouched")
        assert rc == 2 and "wrote" not in stdout, (i, line)
        assert out.read_bytes() == b"the old result" and _no_temp_files(tmp_path), i
    assert cli(capsys, command, PORTRAIT, *extra, "-o", out, "--force", *ck)[0] == 0  # and without the fault it works
    assert out.read_bytes() != b"the old result"


@pytest.mark.parametrize("room", [0, 1, 100, 4096, 20_000, 60_000, 200_000])
def test_loudly_full_disk_never_replaces_the_file(ck, tmp_path, capsys, monkeypatch, room):
    out = tmp_path / "out.png"
    out.write_bytes(b"the old result")
    _disk_with_room(monkeypatch, room)
    rc, stdout, err = cli(capsys, "edit", PORTRAIT, "--emotion", "sad", "-o", out, "--force", *ck)
    assert_one_line_error(rc, err, "disk full", "free some space", "the old file is untouched")
    assert rc == 2 and out.read_bytes() == b"the old result" and _no_temp_files(tmp_path)


def test_full_disk_in_a_folder_edit_keeps_every_old_file(ck, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for k in range(3):
        Image.open(PORTRAIT).save(src / f"p{k}.jpg", quality=90)
        (out / f"p{k}.jpg").write_bytes(b"old %d" % k)
    _silently_cut_at(monkeypatch, lambda n: n // 3)
    rc, stdout, err = cli(capsys, "edit", src, "--emotion", "happy", "-o", out, "--force", *ck)
    assert rc == 2 and "edited 0 of 3" in stdout and "failed 3" in stdout and "Traceback" not in err
    assert all((out / f"p{k}.jpg").read_bytes() == b"old %d" % k for k in range(3)) and _no_temp_files(out)


@pytest.mark.parametrize("room", [0, 100, 5000, 100_000])
def test_full_disk_while_saving_a_checkpoint_or_weights(tiny_checkpoint, tmp_path, monkeypatch, room):
    from affectedit.checkpoint import load_checkpoint, models_from_checkpoint, save_checkpoint, save_weights

    state = load_checkpoint(tiny_checkpoint)
    cfg, models = models_from_checkpoint(state, ("encoder", "generator", "d_z", "d_img"))
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"old checkpoint")
    real_save = torch.save

    class Limited:  # a file on a disk with `room` bytes left: Python raises ENOSPC, torch wraps it
        def __init__(self, f):
            self.f, self.left = f, room

        def write(self, b):
            if len(b) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    with monkeypatch.context() as m:
        m.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, Limited(f), *a, **k))
        with pytest.raises(UserError, match="disk full while writing .*checkpoint.pt; free some space"):
            save_checkpoint(ckpt, models, {}, 3, cfg)
    with monkeypatch.context() as m:
        _silently_cut_at(m, lambda n: room)
        with pytest.raises(UserError, match="could not write .*checkpoint.pt completely"):
            save_checkpoint(ckpt, models, {}, 3, cfg)
    assert ckpt.read_bytes() == b"old checkpoint" and _no_temp_files(tmp_path)
    weights = tmp_path / "w" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"old weights")
    with monkeypatch.context() as m:
        _disk_with_room(m, room)
        with pytest.raises(UserError, match="disk full"):
            save_weights(weights.parent, models, state["config"])
    assert weights.read_bytes() == b"old weights" and _no_temp_files(weights.parent)


def test_full_disk_during_training_is_one_line(tiny_cache, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from OSError(errno.ENOSPC, "full")
    monkeypatch.setattr(torch, "save", full)
    rc, _, err = cli(capsys, "train", "--config", "tiny", "--data", tiny_cache, "--out", tmp_path / "run", "--steps", "1",
                     "--set", "loss.identity=0", "--no-progress")
    assert_one_line_error(rc, err, "disk full while writing", "checkpoint.pt")
    assert rc == 2 and real_save


# ----------------------------------------------------------------------------------- issue 16: folders and odd files


def _broken_exif_jpeg(path: Path, image: Image.Image) -> None:
    """A JPEG whose EXIF says "rotate 90 CW" and holds a mistyped tag (ResolutionUnit, a SHORT, stored
    as ASCII): Pillow's ImageOps.exif_transpose raises struct.error re-writing it."""
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x0128, 2, 4, b"abc\x00")]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, ty, c) + v for t, ty, c, v in entries)
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    image.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)


def _fuzzed_tiff(path: Path) -> str:
    """A TIFF of a real face with a few bytes of its header flipped, chosen so that Pillow raises
    something other than OSError (TypeError, ValueError, ...). Returns that exception's name."""
    import io as _io

    base = _io.BytesIO()
    Image.open(PORTRAIT).convert("RGB").resize((64, 64)).save(base, "TIFF")
    base = base.getvalue()
    off = int.from_bytes(base[4:8], "little")
    import warnings

    warnings.simplefilter("ignore")  # Pillow warns about each damaged tag (inside pytest's per-test catch)
    for seed in range(5000):
        r = np.random.default_rng(seed)
        d = bytearray(base)
        for _ in range(4):
            d[int(r.integers(off, min(len(d), off + 200)))] = int(r.integers(0, 256))
        try:
            with Image.open(_io.BytesIO(bytes(d))) as im:
                im.load()
                im.getexif()
                im.convert("RGB")
        except (OSError, Image.DecompressionBombError):
            continue
        except Exception as e:  # noqa: BLE001 - the kind of failure we want
            path.write_bytes(bytes(d))
            return type(e).__name__
    pytest.skip("no fuzzed TIFF that makes Pillow raise a non-OSError found")


def test_the_odd_files_fail_in_plain_pillow(tmp_path):
    """What the CLI used to trip over (status 1, `error: required argument is not an integer`)."""
    import struct as _struct

    from PIL import ImageOps

    _broken_exif_jpeg(tmp_path / "exif.jpg", Image.open(PORTRAIT).convert("RGB"))
    with Image.open(tmp_path / "exif.jpg") as im, pytest.raises(_struct.error):
        ImageOps.exif_transpose(im)
    assert _fuzzed_tiff(tmp_path / "fuzz.tif") not in ("OSError", "UnidentifiedImageError")


def test_folder_with_broken_exif_and_fuzzed_tiff_edits_every_other_file(ck, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    portrait = Image.open(PORTRAIT).convert("RGB")
    portrait.save(src / "a.jpg", quality=90)
    _broken_exif_jpeg(src / "b_broken_exif.jpg", portrait.crop((0, 0, 675, 600)))
    Image.open(PORTRAIT2).convert("RGB").save(src / "c.png")
    kind = _fuzzed_tiff(src / "d_fuzzed.tif")
    portrait.convert("L").save(src / "e_grey.jpg")
    (src / "f_empty.jpg").write_bytes(b"")
    portrait.save(src / "g.webp")
    rc, stdout, err = cli(capsys, "edit", src, "--emotion", "happy", "-o", out, "--mode", "paper", *ck)
    assert rc == 2 and "Traceback" not in err, err
    failed = sorted(line.split(": ")[1].split("/")[-1] for line in err.splitlines() if line.startswith("affectedit: failed "))
    assert failed == ["d_fuzzed.tif", "f_empty.jpg"], (kind, err)
    assert "edited 5 of 7 photos" in stdout and "failed 2" in stdout
    for name in ("a.jpg", "b_broken_exif.jpg", "c.png", "e_grey.jpg", "g.webp"):
        assert (out / name).is_file(), name
    with Image.open(out / "b_broken_exif.jpg") as res:  # upright although its EXIF block is damaged
        assert res.size == (675, 600)
    # the single-file command: one line, status 2, for the fuzzed TIFF; the broken EXIF photo edits
    rc, _, err = cli(capsys, "edit", src / "d_fuzzed.tif", "--emotion", "happy", "-o", tmp_path / "x.tif", *ck)
    assert rc == 2
    assert_one_line_error(rc, err, "cannot read", "d_fuzzed.tif")
    assert cli(capsys, "edit", src / "b_broken_exif.jpg", "--emotion", "happy", "-o", tmp_path / "y.jpg", *ck)[0] == 0
    # a rerun reports the existing outputs as skipped, not failed
    rc, stdout, err = cli(capsys, "edit", src, "--emotion", "happy", "-o", out, *ck)
    assert "edited 0 of 7" in stdout and "skipped 5" in stdout and "failed 2" in stdout


# ----------------------------------------------------------------------------------- issue 16: every face


def _collage30() -> tuple[Image.Image, list[tuple[int, int]]]:
    """1536 x 1280: 30 real portraits (London set) in 256 px tiles, faces ~100 px wide."""
    paths = sorted((LONDON / "neutral_front").glob("*.jpg"))[:15] + sorted((LONDON / "smiling_front").glob("*.jpg"))[:15]
    out, tiles = Image.new("RGB", (1536, 1280), (128, 128, 128)), []
    for i, p in enumerate(paths):
        xy = ((i % 6) * 256, (i // 6) * 256)
        out.paste(Image.open(p).convert("RGB").resize((256, 256), Image.LANCZOS), xy)
        tiles.append(xy)
    return out, tiles


def test_collage_of_30_faces_gets_30_faces_edited(ck, tmp_path, capsys, tiny_checkpoint):
    from affectedit.editor import Editor

    collage, tiles = _collage30()
    src, out = tmp_path / "group.png", tmp_path / "out.png"
    collage.save(src)
    t = time.perf_counter()
    rc, stdout, err = cli(capsys, "edit", src, "--valence", "-0.8", "--arousal", "0.8", "--mode", "paper", "-o", out, *ck)
    assert rc == 0, err
    assert "(30 faces found and edited)" in stdout
    a, b = np.asarray(collage), np.asarray(Image.open(out).convert("RGB"))
    changed = [bool((a[y:y + 256, x:x + 256] != b[y:y + 256, x:x + 256]).any()) for x, y in tiles]
    assert sum(changed) == 30, changed
    assert time.perf_counter() - t < 60
    # the API says so too, and --max-faces / max_faces bound it (largest first)
    editor = Editor.from_checkpoint(tiny_checkpoint, device="cpu", mode="paper")
    r = editor.edit(collage, emotion="sad", report=True)
    assert (r.faces_found, r.faces_edited) == (30, 30)
    r = editor.edit(collage, emotion="sad", max_faces=12, report=True)
    assert (r.faces_found, r.faces_edited) == (30, 12)
    rc, stdout, _ = cli(capsys, "edit", src, "--emotion", "sad", "--max-faces", "5", "-o", tmp_path / "five.png", *ck)
    assert rc == 0 and "30 faces found, 5 edited (--max-faces 5)" in stdout


# ----------------------------------------------------------------------------------- issue 16: one reading path


def test_one_reading_path_for_every_mode_and_source(bad, tmp_path):
    import io as _io

    from affectedit.images import read_image

    ref = np.asarray(Image.open(PORTRAIT).convert("RGB"), np.float32)
    grey = Image.open(PORTRAIT).convert("L")
    floats = tmp_path / "float.tif"
    Image.fromarray(np.asarray(grey, np.float32) / 255.0, "F").save(floats)
    for name in ("grey16.png", "rgb16.png", "cmyk.jpg", "palette.png", "grey.jpg"):
        for source in (bad[name], bad[name].read_bytes(), _io.BytesIO(bad[name].read_bytes()), Image.open(bad[name])):
            a = read_image(source)
            assert a.dtype == np.uint8 and a.shape == ref.shape, name
            assert np.abs(a.astype(np.float32).mean(2) - ref.mean(2)).mean() < 12, name  # never white, never black
    a = read_image(floats.read_bytes())
    assert np.abs(a[..., 0].astype(np.float32) - np.asarray(grey, np.float32)).max() <= 1
    rgba = read_image(bad["rgba.png"])  # alpha composited on white
    assert rgba.shape == ref.shape
    for junk in (b"", b"junk", bad["text.jpg"], bad["truncated.jpg"]):
        with pytest.raises(UserError, match="cannot read"):
            read_image(junk)


def test_16_bit_grey_upload_edits_like_the_cli(bad, tiny_checkpoint):
    """What the web page receives (bytes) goes through the same reader: a 16-bit grey PNG is a face."""
    from affectedit.editor import Editor

    editor = Editor.from_checkpoint(tiny_checkpoint, device="cpu")
    r = editor.edit(bad["grey16.png"].read_bytes(), 0.8, 0.5, report=True)
    assert r.faces_edited == 1 and r.image.mode == "L"
    assert abs(np.asarray(r.image, np.float32).mean() - np.asarray(Image.open(PORTRAIT).convert("L"), np.float32).mean()) < 12


@pytest.mark.parametrize("name,suffix,mode", [("cmyk.jpg", ".png", "RGB"), ("rgba.png", ".jpg", "RGB"), ("grey16.png", ".jpg", "L"),
                                              ("palette.png", ".webp", "RGB"), ("cmyk.jpg", ".jpg", "CMYK"), ("rgba.png", ".bmp", "RGB")])
def test_output_converted_to_what_its_format_holds(bad, ck, tmp_path, capsys, name, suffix, mode):
    out = tmp_path / f"out{suffix}"
    rc, _, err = cli(capsys, "edit", bad[name], "--emotion", "happy", "-o", out, *ck)
    assert rc == 0, err
    with Image.open(out) as res:
        res.load()
        assert res.mode == mode and res.size == Image.open(bad[name]).size


# ----------------------------------------------------------------------------------- issue 16: finite weights and outputs


def _nan_weights(tiny_checkpoint, folder: Path) -> Path:
    from affectedit.checkpoint import load_checkpoint, save_weights

    state = load_checkpoint(tiny_checkpoint)
    gen = dict(state["models"]["generator"])
    key = next(k for k, v in gen.items() if v.is_floating_point() and v.ndim > 1)
    gen[key] = torch.full_like(gen[key], float("nan"))
    return save_weights(folder, {"encoder": state["models"]["encoder"], "generator": gen}, state["config"])  # a matching checksum


def test_nan_weights_with_a_matching_checksum_are_refused(tiny_checkpoint, tmp_path, capsys):
    weights = _nan_weights(tiny_checkpoint, tmp_path / "w")
    out = tmp_path / "x.png"
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", out, "--checkpoint", weights, "--device", "cpu")
    assert rc == 2
    assert_one_line_error(rc, err, "generator weights hold NaN")
    assert not out.exists()


def test_non_finite_network_output_is_refused(tiny_checkpoint):
    from affectedit.editor import Editor

    editor = Editor.from_checkpoint(tiny_checkpoint, device="cpu")
    real = editor.generator.forward
    editor.generator.forward = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        editor.edit(PORTRAIT, 0.5, 0.5)


def test_config_asking_for_a_huge_layer_is_refused_before_allocation(tiny_checkpoint, tmp_path, capsys):
    import resource

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    for key, value in [("generator_fc_channels", 2_000_000), ("encoder_channels", [8, 2_000_000]), ("image_size", 65536),
                       ("z_dim", -3), ("kernel_size", 10**9)]:
        huge = dict(state, config={**state["config"], "model": {**state["config"]["model"], key: value}})
        path = tmp_path / f"{key}.pt"
        torch.save(huge, path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "x.png", "--checkpoint", path, "--device", "cpu")
        assert rc == 2 and time.perf_counter() - t < 20
        assert_one_line_error(rc, err, f"model.{key}", "outside sane bounds")
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB: no 19 GB attempt


# ----------------------------------------------------------------------------------- issue 16: one clear line each


def _cache_copy(tiny_cache: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(tiny_cache, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _train(capsys, cache, out):
    return cli(capsys, "train", "--config", "tiny", "--data", cache, "--out", out, "--steps", "1", "--set", "loss.identity=0",
               "--no-progress")


@pytest.mark.parametrize("damage,words", [
    ("truncated images.npy", ["images.npy is damaged or cut short"]),
    ("corrupt meta.json", ["meta.json", "is damaged (JSONDecodeError)"]),
    ("meta.json not an object", ["meta.json", "not a JSON object"]),
    ("label 50", ["valence 50 for face 3", "outside [-1, 1]"]),
    ("label 1e30", ["arousal 1e+30", "outside [-1, 1]"]),
    ("label inf", ["outside [-1, 1]"]),
    ("labels of another size", ["labels.npy holds"]),
])
def test_damaged_training_cache_is_one_line(tiny_cache, tmp_path, capsys, damage, words):
    cache = _cache_copy(tiny_cache, tmp_path / "cache")
    if damage == "truncated images.npy":
        data = (cache / "images.npy").read_bytes()
        (cache / "images.npy").write_bytes(data[: len(data) // 2])
    elif damage == "corrupt meta.json":
        (cache / "meta.json").write_text((cache / "meta.json").read_text()[:-40])
    elif damage == "meta.json not an object":
        (cache / "meta.json").write_text("[1, 2, 3]")
    elif damage == "labels of another size":
        np.save(cache / "labels.npy", np.zeros((3, 2), np.float32))
    else:
        labels = np.load(cache / "labels.npy")
        labels[3, 0 if damage == "label 50" else 1] = {"label 50": 50.0, "label 1e30": 1e30, "label inf": np.inf}[damage]
        np.save(cache / "labels.npy", labels)
    rc, _, err = _train(capsys, cache, tmp_path / "run")
    assert rc == 2
    assert_one_line_error(rc, err, *words)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("odd", [{"config": "[1, 2]"}, {"edit": "[]"}, {"edit": '{"strength": [1]}'}, {"step": "abc"},
                                 {"format_version": "x"}, {"config": "null"}, {"edit": '{"1": 2}'}])
def test_odd_weights_metadata_is_one_line(tiny_checkpoint, tmp_path, capsys, odd):
    import json

    from affectedit.checkpoint import export_weights

    weights = export_weights(tiny_checkpoint, tmp_path / "w")
    blob = weights.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"].update(odd)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    weights.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n:])  # the tensors (and their checksum) unchanged
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "x.png", "--checkpoint", weights, "--device", "cpu")
    assert rc == 2, err
    assert_one_line_error(rc, err)


def test_device_meta_and_bad_animation_sizes_are_one_line(ck, tmp_path, capsys):
    rc, _, err = cli(capsys, "edit", PORTRAIT, "--emotion", "happy", "-o", tmp_path / "x.png", *ck[:2], "--device", "meta")
    assert rc == 2
    assert_one_line_error(rc, err, "device 'meta' cannot run the model")
    for option, value, words in [("--size", "-5", "--size must be 16..4096"), ("--size", "3", "--size must be 16..4096"),
                                 ("--fps", "0", "--fps must be in [1, 120]"), ("--seconds", "nan", "seconds per segment"),
                                 ("--seconds", "1e9", "seconds per segment")]:
        rc, _, err = cli(capsys, "animate", PORTRAIT, "--path", "0,0 1,0", option, value, "-o", tmp_path / "a.gif", *ck)
        assert rc == 2
        assert_one_line_error(rc, err, words)
    assert not (tmp_path / "a.gif").exists()


def test_nan_stop_does_not_claim_a_checkpoint_that_does_not_exist(tiny_cache, tmp_path, capsys, monkeypatch):
    from affectedit import train as train_mod

    real = train_mod.reconstruction_loss
    monkeypatch.setattr(train_mod, "reconstruction_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    rc, _, err = _train(capsys, tiny_cache, tmp_path / "run")
    line = assert_one_line_error(rc, err, "NaN or infinite at step 0", "no checkpoint was saved yet")
    assert rc == 2 and "step 0) is kept" not in line and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A real 2 MB tmpfs (needs root with CAP_SYS_ADMIN; skipped elsewhere), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_real_nearly_full_tmpfs_never_gets_a_truncated_jpeg(ck, tmp_path, capsys, small_tmpfs):
    """The issue's reproduction on a real file system: with free space just short of the JPEG's size
    Pillow's encoder writes the first 64 KB block, the last write() comes back short and nobody
    notices. Every level from 48 KB below the output's size to just above it: either the complete
    new file, or the old file untouched with one line and status 2."""
    args = ["edit", PORTRAIT, "--emotion", "happy", "--mode", "paper", *ck]
    assert cli(capsys, *args, "-o", tmp_path / "ref.jpg")[0] == 0
    size = (tmp_path / "ref.jpg").stat().st_size
    old = PORTRAIT2.read_bytes()
    out, filler = small_tmpfs / "out.jpg", small_tmpfs / "filler"
    outcomes = []
    for free in range(size - 48 * 1024, size + 8 * 1024, 4096):
        filler.unlink(missing_ok=True)
        out.write_bytes(old)
        st = os.statvfs(small_tmpfs)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - max(free, 0)))
        rc, stdout, err = cli(capsys, *args, "-o", out, "--force")
        if rc == 0:
            assert out.read_bytes() == (tmp_path / "ref.jpg").read_bytes(), free  # complete, never cut
            outcomes.append("new")
        else:
            assert_one_line_error(rc, err, "disk full", "the old file is untouched")
            assert rc == 2 and out.read_bytes() == old and "wrote" not in stdout, free
            outcomes.append("old kept")
        assert not [p for p in small_tmpfs.iterdir() if p.name.startswith(".")]
    assert "old kept" in outcomes and outcomes[-1] == "new", outcomes
