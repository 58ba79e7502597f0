"""The core install (`pip install .`, no extras) edits: nothing on the editing path imports a
package that only the extras bring (train, eval, web, video, export)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ["accelerate", "tensorboard", "matplotlib", "torchmetrics", "h5py", "starlette", "uvicorn",
               "python_multipart", "imageio_ffmpeg", "onnx", "onnxruntime", "selenium"]

# Runs in a fresh interpreter in which importing any of EXTRAS_ONLY fails, as in a core install.
SCRIPT = f"""
import importlib.machinery as m
import sys
BLOCKED = {EXTRAS_ONLY!r}
class Hide(m.PathFinder):  # the standard finder, blind to the extras' packages: "not installed"
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in BLOCKED else m.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hide if f is m.PathFinder else f for f in sys.meta_path]
import io, contextlib
from affectedit.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
import affectedit
editor = affectedit.Editor.from_pretrained()
out = editor.edit(sys.argv[1], 0.8, 0.3)
assert out.size == (675, 675), out.size
grid = editor.grid(sys.argv[1], n=2)
print("core ok", out.size, grid.size)
"""


def test_core_install_edits_without_extras():
    photo = ROOT / "examples" / "london_001_neutral.jpg"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(photo)], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and "core ok" in run.stdout, run.stderr[-2000:]


def test_serve_without_web_extra_says_what_to_install():
    script = SCRIPT.split("import io, contextlib")[0] + "from affectedit.cli import main\nsys.exit(main(['serve', '--port', '0']))\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "pip install 'affectedit[web]'" in run.stderr, run.stderr[-1000:]
