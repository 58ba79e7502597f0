"""`affectedit edit | grid | animate | emotions` end to end, with the tiny checkpoint of test_editor."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from affectedit.checkpoint import BUNDLED_DIR, WEIGHTS_NAME
from affectedit.cli import main
from affectedit.emotions import EMOTIONS
from test_editor import PORTRAIT, PORTRAIT2

pytestmark = pytest.mark.skipif(not PORTRAIT.is_file(), reason="../shared/data not available")


@pytest.fixture()
def ck(tiny_checkpoint):
    return ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]


def test_edit_one_photo_keeps_format_quality_and_refuses_to_overwrite(ck, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    assert main(["edit", str(PORTRAIT), "--valence", "0.8", "--arousal", "0.4", "-o", str(out), *ck]) == 0
    with Image.open(PORTRAIT) as src, Image.open(out) as res:
        assert res.format == "JPEG" and res.size == src.size and res.mode == src.mode
        assert res.quantization == src.quantization  # the input's JPEG quality
    before, inode = out.read_bytes(), out.stat().st_ino
    capsys.readouterr()
    assert main(["edit", str(PORTRAIT), "--emotion", "sad", "-o", str(out), *ck]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before and out.stat().st_ino == inode
    assert main(["edit", str(PORTRAIT), "--emotion", "Sad", "-o", str(out), "--force", *ck]) == 0
    assert out.stat().st_ino != inode  # replaced (atomically: a new file renamed over the old one)
    # an existing folder as -o: the photo goes inside under its own name
    assert main(["edit", str(PORTRAIT), "--emotion", "calm", "-o", str(tmp_path), *ck]) == 0
    assert (tmp_path / PORTRAIT.name).is_file()


def test_edit_png_and_exif_orientation_reset(ck, tmp_path):
    src = tmp_path / "in.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"  # Make: kept
    Image.open(PORTRAIT).transpose(Image.Transpose.ROTATE_90).save(src, quality=90, exif=exif.tobytes())
    out = tmp_path / "out.jpg"
    assert main(["edit", str(src), "--valence", "0", "--arousal", "0", "-o", str(out), *ck]) == 0
    with Image.open(out) as res:
        assert res.getexif().get(0x0112) == 1 and res.getexif().get(0x010F) == "TestCam"
    png = tmp_path / "in.png"
    Image.open(PORTRAIT).save(png)
    assert main(["edit", str(png), "--valence", "0", "--arousal", "0", "-o", str(tmp_path / "out.png"), *ck]) == 0
    assert Image.open(tmp_path / "out.png").format == "PNG"


def test_edit_folder_with_a_corrupt_file(ck, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PORTRAIT, folder / "a.jpg")
    shutil.copy(PORTRAIT2, folder / "sub" / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image, not counted")
    out = tmp_path / "out"
    assert main(["edit", str(folder), "--emotion", "happy", "-o", str(out), *ck]) == 2
    captured = capsys.readouterr()
    assert (out / "a.jpg").is_file() and (out / "sub" / "b.jpg").is_file()
    assert not (out / "broken.jpg").exists() and not (out / "notes.txt").exists()
    problems = [line for line in captured.err.splitlines() if "broken.jpg" in line]
    assert len(problems) == 1 and problems[0].startswith("affectedit: failed ") and "Traceback" not in captured.err
    assert "edited 2 of 3 photos" in captured.out and "failed 1" in captured.out
    # rerun: existing outputs are reported as skipped, not failed; the broken file fails again
    assert main(["edit", str(folder), "--emotion", "happy", "-o", str(out), *ck]) == 2
    captured = capsys.readouterr()
    assert "edited 0 of 3" in captured.out and "skipped 2" in captured.out and "failed 1" in captured.out
    assert sum("skipped" in line and "already exists" in line for line in captured.err.splitlines()) == 2
    (folder / "broken.jpg").unlink()
    assert main(["edit", str(folder), "--emotion", "happy", "-o", str(out), *ck]) == 0  # all there: nothing failed
    assert "skipped 2" in capsys.readouterr().out
    assert main(["edit", str(folder), "--emotion", "happy", "-o", str(out), "--force", *ck]) == 0
    assert "edited 2 of 2" in capsys.readouterr().out


def test_default_output_beside_the_input(ck, tmp_path, capsys):
    src = tmp_path / "photo.jpg"
    shutil.copy(PORTRAIT, src)
    assert main(["edit", str(src), "--emotion", "happy", *ck]) == 0
    assert (tmp_path / "photo.happy.jpg").is_file()
    assert "wrote " + str(tmp_path / "photo.happy.jpg") in capsys.readouterr().out
    before = (tmp_path / "photo.happy.jpg").read_bytes()
    assert main(["edit", str(src), "--emotion", "happy", *ck]) == 2  # never overwritten without --force
    assert "already exists" in capsys.readouterr().err and (tmp_path / "photo.happy.jpg").read_bytes() == before
    assert main(["edit", str(src), "--valence", "0.5", "--arousal", "-0.25", *ck]) == 0
    assert (tmp_path / "photo.v0.5_a-0.25.jpg").is_file()
    folder = tmp_path / "album"
    folder.mkdir()
    shutil.copy(PORTRAIT, folder / "a.jpg")
    assert main(["edit", str(folder), "--emotion", "sad", *ck]) == 0
    assert (tmp_path / "album.sad" / "a.jpg").is_file()
    assert main(["grid", str(src), "-n", "2", *ck]) == 0 and (tmp_path / "photo.grid.png").is_file()
    assert main(["animate", str(src), "--path", "0,0 1,0", "--fps", "2", "--size", "64", *ck]) == 0
    with Image.open(tmp_path / "photo.animation.gif") as gif:
        assert sum(gif.seek(i) or gif.info["duration"] for i in range(gif.n_frames)) == 3 * 500


def test_faces_found_and_edited_are_reported(ck, tmp_path, capsys):
    collage = Image.new("RGB", (1280, 640), (128, 128, 128))
    for i, p in enumerate([PORTRAIT, PORTRAIT2]):
        collage.paste(Image.open(p).convert("RGB").resize((640, 640)), (640 * i, 0))
    src = tmp_path / "two.png"
    collage.save(src)
    assert main(["edit", str(src), "--emotion", "happy", *ck]) == 0
    assert "(2 faces found and edited)" in capsys.readouterr().out
    assert main(["edit", str(src), "--emotion", "happy", "--max-faces", "1", "-o", str(tmp_path / "one.png"), *ck]) == 0
    assert "2 faces found, 1 edited (--max-faces 1)" in capsys.readouterr().out
    assert main(["edit", str(src), "--emotion", "happy", "--max-faces", "0", "-o", str(tmp_path / "x.png"), *ck]) == 2
    assert "--max-faces must be at least 1" in capsys.readouterr().err


def test_mp4_is_h264_and_every_frame_reads_back(ck, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # the video extra

    out = tmp_path / "a.mp4"
    assert main(["animate", str(PORTRAIT), "--path", "0,0 happy", "--fps", "4", "--size", "96", "-o", str(out), *ck]) == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert "h264" in meta["codec"] and meta["size"] == (96, 96)
    assert sum(1 for _ in reader) == 5
    import subprocess

    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "yuv420p" in info  # the pixel format browsers play


def test_edit_option_errors(ck, tmp_path, capsys):
    out = str(tmp_path / "x.jpg")
    assert main(["edit", str(PORTRAIT), "--emotion", "gleeful", "-o", out, *ck]) == 2
    err = capsys.readouterr().err
    assert "unknown emotion 'gleeful'" in err and "happy" in err and "disgusted" in err
    assert main(["edit", str(PORTRAIT), "--valence", "0.5", "-o", out, *ck]) == 2
    assert "--arousal" in capsys.readouterr().err
    assert main(["edit", str(PORTRAIT), "--valence", "1.5", "--arousal", "0", "-o", out, *ck]) == 2
    assert "valence must be in [-1, 1]" in capsys.readouterr().err
    assert main(["edit", str(PORTRAIT), "--emotion", "happy", "--valence", "1", "--arousal", "0", "-o", out, *ck]) == 2
    assert main(["edit", str(tmp_path / "missing.jpg"), "--emotion", "happy", "-o", out, *ck]) == 2
    assert "not found" in capsys.readouterr().err
    if not (BUNDLED_DIR / WEIGHTS_NAME).exists():
        assert main(["edit", str(PORTRAIT), "--emotion", "happy", "-o", out]) == 2
        assert "no bundled weights" in capsys.readouterr().err


def test_help_lists_emotions_and_emotions_command(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "disgusted" in capsys.readouterr().out
    assert main(["emotions"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["emotion", "valence", "arousal"] and len(lines) == len(EMOTIONS) + 1
    assert any(line.split()[0] == "happy" and float(line.split()[1]) == EMOTIONS["happy"][0] for line in lines[1:])


def test_grid_and_animate_commands(ck, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["grid", str(PORTRAIT), "-o", str(grid), *ck]) == 0
    assert Image.open(grid).width > 5 * 96
    assert main(["grid", str(PORTRAIT), "-o", str(grid), *ck]) == 2
    gif = tmp_path / "a.gif"
    assert main(["animate", str(PORTRAIT), "--path", "0,0 happy -0.6,-0.4", "--fps", "3", "--size", "160",
                 "-o", str(gif), *ck]) == 0
    with Image.open(gif) as im:
        assert max(im.size) <= 160
    assert main(["animate", str(PORTRAIT), "--path", "0,0", "-o", str(tmp_path / "b.gif"), *ck]) == 2
    assert main(["animate", str(PORTRAIT), "--path", "0,0 1,1", "-o", str(tmp_path / "b.avi"), *ck]) == 2


def test_edit_keeps_the_photos_colours_unless_asked(tmp_path):
    """The bundled model in residual mode: with colour "keep" (the default) only the brightness of
    the generator's change is applied, so R, G and B move together; --colour change applies its
    colour shifts too. (The warp mode moves the photo's own pixels and its new appearance is
    brightness only by construction.)"""
    import numpy as np

    outs = {}
    for name, extra in (("kept", []), ("colour", ["--colour", "change"])):
        out = tmp_path / f"{name}.png"
        assert main(["edit", str(PORTRAIT), "--valence", "0.9", "--arousal", "0.5", "-o", str(out), "--device", "cpu",
                     "--mode", "residual", *extra]) == 0
        with Image.open(out) as res, Image.open(PORTRAIT) as src:
            outs[name] = np.asarray(res.convert("RGB"), dtype=np.float64) - np.asarray(src.convert("RGB"), dtype=np.float64)
    spread = {}
    for name, d in outs.items():
        changed = np.abs(d).max(2) > 4
        assert changed.sum() > 1000  # a real edit of the face
        spread[name] = float(np.mean(np.abs(d[changed] - d[changed].mean(1, keepdims=True))))
    assert spread["kept"] < 0.5 * spread["colour"], spread


def test_zero_strength_changes_no_pixel(tmp_path):
    """The bundled model, --strength 0, a lossless output: every pixel of the example as it was."""
    import numpy as np

    example = Path(__file__).resolve().parents[1] / "examples" / "london_001_neutral.jpg"
    out = tmp_path / "same.png"
    assert main(["edit", str(example), "--emotion", "happy", "--strength", "0", "-o", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as res, Image.open(example) as src:
        assert np.array_equal(np.asarray(res.convert("RGB")), np.asarray(src.convert("RGB")))
