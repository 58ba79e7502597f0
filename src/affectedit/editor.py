"""Edit the facial expression in a photo: ``Editor.from_pretrained().edit(photo, valence, arousal)``.

The pipeline of one edit (Lindt et al. 2019, Sec. III): detect every face (``faces.detect_faces``),
align it to the model's S x S crop, run x_gen = G(E(x), y) for all faces in ONE batched forward
pass, and blend each edited crop back into the ORIGINAL full-resolution photo (``faces.paste_back``:
pixels outside the feathered face ellipse stay byte-identical).

Two edit modes (``Editor(mode=...)``): "paper" replaces the face by G(E(x), y) as Lindt et al. do;
"residual" (default, ours) adds only the generator's change between the face's own expression and
the target, G(E(x), y) - G(E(x), y_x), to the sharp input, which keeps identity, detail and
background (see ``edit_crops``; the evaluation report compares the two).

Valence (unpleasant -1 .. pleasant +1) and arousal (calm -1 .. excited +1) are the paper's
continuous labels; ``EMOTIONS`` names points of that plane for people who think in words.

Weights: ``Editor.from_checkpoint(path)`` loads a training checkpoint (``runs/NAME/checkpoint.pt``)
or an exported weights file; ``Editor.from_pretrained()`` loads the bundled
``affectedit/weights/affectedit.pt`` after checking its sha256 against ``affectedit.json``.
``export_weights(checkpoint, out_dir)`` writes such a pair (E and G only, fp16).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from affectedit.errors import UserError
from affectedit.io import atomic_path

__all__ = [
    "EMOTIONS",
    "WEIGHTS_DIR",
    "WEIGHTS_JSON",
    "WEIGHTS_NAME",
    "Editor",
    "emotion",
    "emotion_table",
    "export_weights",
    "open_image",
    "parse_path",
]

# ----------------------------------------------------------------------------------- modes

#: "residual" (default, ours): apply only the generator's change between the face's own and the
#: target expression; "paper": regenerate the whole crop, x_gen = G(E(x), y), as Lindt et al.
MODES = ("residual", "paper")
#: Candidate labels for estimating the expression a face already shows (see estimate_labels).
LABEL_GRID = torch.tensor([[v, a] for v in (-0.6, 0.0, 0.4, 0.8) for a in (-0.3, 0.1, 0.5, 0.9)], dtype=torch.float32)
#: Largest side of the sharp face crop a residual edit is applied to before pasting back.
MAX_PASTE_SIDE = 512

# ----------------------------------------------------------------------------------- vocabulary

#: Emotion words as (valence, arousal) points of the circumplex, both in [-1, 1].
#:
#: Source: Russell, J. A. (1980), "A circumplex model of affect", J. Personality and Social
#: Psychology 39(6):1161-1178, Fig. 2 (direct circular scaling of 28 affect words, pleasure on the
#: x axis, arousal on the y axis).  Values are approximate readings of that figure, rounded to
#: 0.05; the words lie near the unit circle, so they are strong, near-extreme expressions.
#: Words not among Russell's 28: ``surprised`` is placed at his "astonished"; ``disgusted`` (not in
#: Russell's set) is placed as in Scherer's (2005) Geneva emotion wheel: clearly unpleasant, mildly
#: aroused; ``neutral`` is the origin.  Note that AffectNet's annotators (the model's training
#: labels) use the inner part of the plane more often, so |(v, a)| near 1 asks for the strongest
#: expressions the model has seen.
EMOTIONS: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    # pleasant, aroused
    "happy": (0.90, 0.15),
    "glad": (0.90, 0.10),
    "pleased": (0.90, 0.05),
    "delighted": (0.85, 0.35),
    "excited": (0.70, 0.70),
    "astonished": (0.15, 0.90),
    "surprised": (0.15, 0.90),
    # unpleasant, aroused
    "alarmed": (-0.10, 0.95),
    "tense": (-0.05, 0.90),
    "afraid": (-0.15, 0.80),
    "angry": (-0.40, 0.80),
    "annoyed": (-0.45, 0.75),
    "distressed": (-0.70, 0.55),
    "frustrated": (-0.60, 0.40),
    "disgusted": (-0.70, 0.35),
    # unpleasant, calm
    "miserable": (-0.80, -0.05),
    "sad": (-0.80, -0.40),
    "gloomy": (-0.85, -0.45),
    "depressed": (-0.80, -0.50),
    "bored": (-0.35, -0.80),
    "tired": (-0.05, -0.95),
    "sleepy": (0.0, -1.0),
    # pleasant, calm
    "calm": (0.75, -0.65),
    "relaxed": (0.70, -0.65),
    "serene": (0.80, -0.60),
    "content": (0.80, -0.55),
    "satisfied": (0.75, -0.60),
    "at ease": (0.85, -0.35),
}


def emotion(name: str) -> tuple[float, float]:
    """(valence, arousal) of an emotion word of ``EMOTIONS`` (case-insensitive; "at_ease" works for
    "at ease").  An unknown word is a UserError that lists the vocabulary."""
    key = " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())
    if key not in EMOTIONS:
        raise UserError(f"unknown emotion {name!r}; choose one of: {', '.join(EMOTIONS)} (or give --valence/--arousal)")
    return EMOTIONS[key]


def _check_label(valence, arousal) -> tuple[float, float]:
    out = []
    for name, value in (("valence", valence), ("arousal", arousal)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number in [-1, 1], got {value!r}") from None
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise UserError(f"{name} must be in [-1, 1], got {value!r}")
        out.append(v)
    return out[0], out[1]


def _check_labels(labels, n: int) -> torch.Tensor:
    """N x 2 float tensor from an N x 2 tensor/array or one (valence, arousal) pair (broadcast)."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32) if not torch.is_tensor(labels) else labels).float().cpu()
    if y.ndim == 1 and y.shape[0] == 2:
        y = y.expand(n, 2)
    if y.ndim != 2 or y.shape != (n, 2):
        raise ValueError(f"labels must be N x 2 (valence, arousal) with N = {n}, got shape {tuple(y.shape)}")
    bad = ~torch.isfinite(y) | (y.abs() > 1.0)
    if bad.any():
        i, j = (int(k) for k in bad.nonzero()[0])
        raise UserError(f"{('valence', 'arousal')[j]} must be in [-1, 1], got {float(y[i, j])!r} (label {i})")
    return y.contiguous()


# ----------------------------------------------------------------------------------- images


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file (not yet rotated by its EXIF orientation); any failure to read
    it is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found" if not path.exists() else f"{path} is not a file")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError:
        # Pillow refuses images over twice MAX_IMAGE_PIXELS before decoding a single pixel.
        limit = 2 * Image.MAX_IMAGE_PIXELS // 1_000_000
        raise UserError(f"{path} declares too many pixels to edit safely (over {limit} megapixels); resize it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise all three on damaged files
        raise UserError(f"cannot read {path}: not an image or damaged ({type(e).__name__})") from None
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation so that pixels are upright (a no-op without the tag)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop an edit
        return img
    return ImageOps.exif_transpose(img) if orientation not in (None, 1) else img


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale images as 8-bit "L" (Pillow's own conversion clips 16-bit
    values at 255, which turns a 16-bit portrait white)."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" and a.max(initial=0) <= 1.0 else 255.0 if a.max(initial=0) <= 255 else 65535.0
    return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def _as_image(image, what: str = "image") -> tuple[Image.Image, str]:
    """PIL image (upright, 8 bits per channel) and a name for messages, from a PIL image, an
    H x W x 3 uint8 array or a path."""
    if isinstance(image, (str, os.PathLike)):
        return _eight_bit(_upright(open_image(image))), str(image)
    if isinstance(image, Image.Image):
        return _eight_bit(_upright(image)), getattr(image, "filename", "") or what
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{what} array must be H x W x 3 uint8 (RGB), got {image.shape} {image.dtype}")
        return Image.fromarray(np.ascontiguousarray(image), "RGB"), what
    raise UserError(f"{what} must be a path, a PIL image or an H x W x 3 uint8 array, got {type(image).__name__}")


def _restore_mode(result: Image.Image, like: Image.Image) -> Image.Image:
    """Give the RGB ``result`` the mode of the input (alpha kept from the input)."""
    if like.mode == "RGB":
        return result
    if like.mode in ("RGBA", "LA"):
        out = result.convert(like.mode[:-1] if like.mode == "LA" else "RGB")
        out.putalpha(like.getchannel("A"))
        return out
    if like.mode in ("L", "CMYK"):
        return result.convert(like.mode)
    return result  # P, I, F, ...: an RGB edit is the faithful answer


# ----------------------------------------------------------------------------------- weights

#: Where the bundled weights live (package data) and their file names.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_NAME = "affectedit.pt"
WEIGHTS_JSON = "affectedit.json"
_WEIGHTS_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(pt: Path, meta: Path) -> None:
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{meta} is damaged (no sha256 inside); reinstall affectedit or export the weights again") from None
    actual = _sha256(pt)
    if actual != expected:
        raise UserError(
            f"checksum mismatch for {pt} (sha256 {actual[:12]}..., expected {expected[:12]}... from {meta.name}): "
            "the file is damaged or was replaced; reinstall affectedit or export the weights again"
        )


def _write_weights(encoder_sd: dict, generator_sd: dict, config: dict, out_dir, step: int | None, force: bool,
                   strength: float | None = None, label_range=None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": 1,  # the training checkpoint format: load_checkpoint reads this file too
        "weights_format": _WEIGHTS_FORMAT,
        "step": int(step or 0),
        "config": config,
        "models": {
            "encoder": {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu() for k, v in encoder_sd.items()},
            "generator": {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu() for k, v in generator_sd.items()},
        },
    }
    pt, meta = out_dir / WEIGHTS_NAME, out_dir / WEIGHTS_JSON
    if not force:
        for p in (pt, meta):
            if p.exists():
                raise UserError(f"{p} already exists; pass --force to overwrite it")
    with atomic_path(pt) as tmp:
        with open(tmp, "wb") as fh:  # a file object: the archive's inner folder is "archive", not the
            torch.save(state, fh)     # temporary name, so the same weights give the same bytes
    info = {
        "file": WEIGHTS_NAME,
        "sha256": _sha256(pt),
        "bytes": pt.stat().st_size,
        "step": int(step or 0),
        "dtype": "float16",
        "image_size": config["model"]["image_size"],
        "weights_format": _WEIGHTS_FORMAT,
    }
    if strength is not None:
        info["strength"] = _check_strength(strength)  # the default residual strength for these weights
    if label_range is not None:
        info["label_range"] = _check_label_range(label_range)  # the dial [-1, 1] maps onto this range
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return pt


def export_weights(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, force: bool = True,
                   strength: float | None = None, label_range=None) -> Path:
    """Write the inference weights of a training checkpoint to ``out_dir``: ``affectedit.pt`` (E and
    G in float16 plus the config; loadable with ``torch.load(weights_only=True)``) and
    ``affectedit.json`` (its sha256, size, step and, if given, ``strength``: the residual strength
    editors loading these weights use unless told otherwise, e.g. the one calibrated by
    ``affectedit evaluate``) and ``label_range`` (see ``Editor``; e.g. ``label_range(cache.labels)``
    of the training cache).  Both are written atomically.  Returns the .pt path."""
    from affectedit.train import load_checkpoint

    state = load_checkpoint(checkpoint)
    for name in ("encoder", "generator"):
        if name not in state["models"]:
            raise UserError(f"checkpoint {checkpoint} holds no {name} weights")
    return _write_weights(state["models"]["encoder"], state["models"]["generator"], state["config"], out_dir,
                          state.get("step"), force, strength, label_range)


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R BT.601 weights


def luma_change(delta: torch.Tensor) -> torch.Tensor:
    """An RGB change (... x 3 x H x W) reduced to its brightness part (BT.601 luma of the change,
    the same in the 3 channels): shading and shape survive, colour casts do not."""
    return (delta * _LUMA.to(delta.device, delta.dtype)).sum(-3, keepdim=True).expand_as(delta)


def label_range(labels, tail: float = 0.1) -> list[list[float]]:
    """The range of training labels a model has seen: [[valence low, high], [arousal low, high]],
    the ``tail`` and 100 - ``tail`` percentiles of N x 2 labels (robust to a few outliers), with
    low <= 0 <= high (the dial's 0 stays the label 0)."""
    a = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    a = a[np.isfinite(a).all(1)]
    if len(a) == 0:
        raise UserError("no finite valence/arousal labels to take a label range from")
    lo, hi = np.percentile(a, tail, axis=0), np.percentile(a, 100 - tail, axis=0)
    return [[round(float(min(lo[d], 0.0)), 4), round(float(max(hi[d], 0.0)), 4)] for d in range(2)]


def _check_label_range(value) -> list[list[float]] | None:
    if value is None:
        return None
    try:
        r = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        r = np.zeros(0)
    if r.shape != (2, 2) or not np.isfinite(r).all() or (r[:, 0] > 0).any() or (r[:, 1] < 0).any() \
            or (np.abs(r) > 1).any() or (r[:, 1] - r[:, 0] <= 0).any():
        raise UserError(f"label_range must be [[valence low, high], [arousal low, high]] with -1 <= low <= 0 <= high <= 1, "
                        f"got {value!r}")
    return r.tolist()


def _check_strength(strength) -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and 0 < value <= 4):
        raise UserError(f"strength must be in (0, 4], got {strength!r}")
    return value


# ----------------------------------------------------------------------------------- device


def _pick_device(device) -> torch.device:
    """CUDA, then Apple MPS, then CPU when ``device`` is None; otherwise the device asked for."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} asked for but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r} asked for but MPS is not available; use --device cpu")
    return dev


PRECISIONS = ("auto", "fp32", "bf16")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _ThreadPolicy:
    """How many torch threads one inference call on the CPU gets, when the Editor is not told.

    Measured on the 2-core machine this project is built on (benchmarks/run.py): while other jobs
    keep a core busy, 2 OpenMP threads run the networks 2-8x SLOWER than 1 thread (every parallel
    region waits for the thread the OS has descheduled), while on idle cores the second thread
    helps.  So the Editor uses the cores that are idle: the CPUs it may run on minus the load of
    OTHER processes, at least 1 and at most torch's current setting.  The load of others is the
    1-minute load average less this process's own share of it, an average of this process's CPU
    use with the same 1-minute time constant.  ``Editor(threads=N)`` fixes N instead."""

    TAU = 60.0  # seconds: the time constant of the kernel's 1-minute load average

    def __init__(self):
        import time

        self._t, self._cpu, self._own = time.monotonic(), time.process_time(), 0.0

    def __call__(self, ceiling: int) -> int:
        import time

        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return ceiling
        now, cpu = time.monotonic(), time.process_time()
        dt = now - self._t
        if dt > 0.5:
            w = math.exp(-dt / self.TAU)
            self._own = self._own * w + (cpu - self._cpu) / dt * (1 - w)
            self._t, self._cpu = now, cpu
        free = _cpu_count() - max(0.0, load - self._own)
        return max(1, min(ceiling, int(free + 0.5)))


_auto_threads = _ThreadPolicy()


# ----------------------------------------------------------------------------------- editor


class Editor:
    """The trained encoder E and generator G, and the photo-level editing around them.

    ``Editor.from_pretrained()`` or ``Editor.from_checkpoint(path)``; then ``edit(photo, valence,
    arousal)`` -> PIL image, ``grid(photo)`` (the paper's Fig. 3), ``animate(photo, path, out)``.
    Tensor-level: ``edit_crops(crops, labels)`` on aligned S x S crops (e.g. cache images).

    Speed (benchmarks/run.py): on the CPU the networks run in fp32 with the channels_last layout
    (``precision="auto"``; "fp32" is the same arithmetic, "bf16" is opt-in), with as many torch
    threads as there are idle cores (``threads=None``; see ``_ThreadPolicy``) or ``threads=N``."""

    def __init__(self, encoder: torch.nn.Module, generator: torch.nn.Module, config, device=None,
                 precision: str = "auto", batch_size: int = 64, mode: str = "residual", strength: float | None = None,
                 threads: int | None = None, label_range=None, keep_colour: bool = True):
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        # None: 1 (the change as generated); from_checkpoint fills in the weights' calibrated strength.
        self.strength = 1.0 if strength is None else _check_strength(strength)
        # Residual mode: apply only the brightness part of the generator's change (``luma_change``),
        # so the photo keeps its own colours; False applies the RGB change as generated.
        self.keep_colour = bool(keep_colour)
        # label_range [[v_lo, v_hi], [a_lo, a_hi]]: the labels the model was trained on. The dials'
        # [-1, 0] and [0, 1] map linearly onto [lo, 0] and [0, hi] before G sees them, so a target
        # the training data never reached (e.g. calm faces in LFW) asks for the nearest the model
        # knows instead of an extrapolation. None: labels go to G as given (the paper).
        self.label_range = _check_label_range(label_range)
        self._range = None if self.label_range is None else torch.tensor(self.label_range, dtype=torch.float32)
        self.device = _pick_device(device)
        self.precision = precision
        self.config = config
        self.image_size = int(config.model.image_size)
        self.batch_size = int(batch_size)
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise UserError(f"threads must be a positive integer (or None: the idle cores), got {threads!r}")
        self.threads = None if threads is None else int(threads)
        # channels_last (NHWC): oneDNN's fast layout for these convolutions and transposed
        # convolutions on the CPU, ~2x over NCHW at the same fp32 arithmetic (benchmarks/run.py).
        self.channels_last = self.device.type == "cpu"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.encoder = encoder.to(self.device).eval().to(memory_format=fmt)
        self.generator = generator.to(self.device).eval().to(memory_format=fmt)
        self.step = 0  # training step of the loaded weights (kept by save_pretrained)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device=None, precision: str = "auto", **options) -> Editor:
        """Load a training checkpoint (``runs/NAME/checkpoint.pt`` or its folder) or an exported
        weights file.  An exported file with its ``affectedit.json`` beside it is checksum-verified."""
        from affectedit.train import load_checkpoint, models_from_checkpoint

        path = Path(path)
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            info = {}
            with contextlib.suppress(OSError, ValueError, AttributeError):
                info = json.loads(meta.read_text())
            if isinstance(info, dict) and info.get("file") == path.name:
                _verify(path, meta)
                if options.get("strength") is None and info.get("strength") is not None:
                    options["strength"] = info["strength"]
                if "label_range" not in options and info.get("label_range") is not None:
                    options["label_range"] = info["label_range"]
        state = load_checkpoint(path)
        dev = _pick_device(device)
        cfg, models = models_from_checkpoint(state, ("encoder", "generator"), device=dev)
        editor = cls(models["encoder"], models["generator"], cfg, dev, precision, **options)
        editor.step = int(state.get("step", 0) or 0)
        return editor

    @classmethod
    def from_pretrained(cls, device=None, precision: str = "auto", weights_dir: str | os.PathLike | None = None, **options) -> Editor:
        """Load the bundled weights (``affectedit/weights/affectedit.pt``; ``weights_dir`` overrides the
        folder), after verifying their sha256 against ``affectedit.json``."""
        folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        pt, meta = folder / WEIGHTS_NAME, folder / WEIGHTS_JSON
        if not pt.is_file():
            raise UserError(
                f"no bundled weights at {pt}: this installation ships without a trained model; "
                "pass --checkpoint runs/NAME/checkpoint.pt, or export one with "
                "affectedit.editor.export_weights(checkpoint, folder)"
            )
        if not meta.is_file():
            raise UserError(f"{meta} is missing, so the weights {pt} cannot be verified; reinstall affectedit or export the weights again")
        _verify(pt, meta)
        return cls.from_checkpoint(pt, device=device, precision=precision, **options)

    def save_pretrained(self, out_dir: str | os.PathLike, force: bool = True) -> Path:
        """Write this editor's E and G as ``out_dir/affectedit.pt`` (fp16) + ``affectedit.json``
        (sha256), the pair ``from_pretrained(weights_dir=out_dir)`` loads."""
        return _write_weights(self.encoder.state_dict(), self.generator.state_dict(), self.config.to_dict(),
                              out_dir, self.step, force, self.strength if self.strength != 1.0 else None,
                              self.label_range)

    # ------------------------------------------------------------------ tensors

    def _autocast(self):
        """The one place that decides the numeric precision of inference.

        "auto" is fp32 (with the channels_last layout on the CPU, see __init__): it is the fastest
        path measured on the CPU we have (Xeon, AVX-512 without AVX512_BF16/AMX), where bf16 is
        emulated: a large convolution reached 13 GFLOP/s in bf16 against 50 in fp32, and the
        networks ran 1.3-3x slower under bf16 autocast.  A CPU with AMX or a GPU may well be faster
        in bf16, but that is unmeasured here; ask for it with precision="bf16"."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _threads(self):
        """torch's CPU thread count for one inference call (see ``_ThreadPolicy``); restored after."""
        if self.device.type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        n = self.threads if self.threads is not None else _auto_threads(before)
        if n == before:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _as_crops(self, crops) -> torch.Tensor:
        """N x 3 x S x S float in [-1, 1] from such a tensor or from uint8 N x S x S x 3 (cache images)."""
        if not torch.is_tensor(crops):
            a = np.asarray(crops)
            if a.dtype != np.uint8:
                raise ValueError(f"crop arrays must be uint8 N x S x S x 3, got {a.dtype}")
            from affectedit.data.cache import normalize

            crops = normalize(a[None] if a.ndim == 3 else a)
        x = crops.float()
        if x.ndim == 3:
            x = x[None]
        S = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"crops must be N x 3 x {S} x {S} (the model's size), got {tuple(x.shape)}")
        return x

    @torch.inference_mode()
    def encode(self, crops) -> torch.Tensor:
        """z = E(x): crops N x 3 x S x S in [-1, 1] (or uint8 N x S x S x 3) -> N x z_dim in [-1, 1] (CPU)."""
        x = self._as_crops(crops)
        out = []
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with self._threads():
            for i in range(0, len(x), self.batch_size):
                with self._autocast():
                    xi = x[i:i + self.batch_size].to(self.device).contiguous(memory_format=fmt)
                    out.append(self.encoder(xi).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.model.z_dim)

    @torch.inference_mode()
    def generate(self, z: torch.Tensor, labels) -> torch.Tensor:
        """x_gen = G(z, y): z N x z_dim, labels N x 2 (or one pair; dial values, mapped by
        ``model_labels``) -> N x 3 x S x S in [-1, 1] (CPU)."""
        y = self.model_labels(_check_labels(labels, len(z)))
        out = []
        with self._threads():
            for i in range(0, len(z), self.batch_size):
                with self._autocast():
                    g = self.generator(z[i:i + self.batch_size].to(self.device).float(), y[i:i + self.batch_size].to(self.device))
                out.append(g.float().clamp_(-1, 1).cpu().contiguous())
        S = self.image_size
        return torch.cat(out) if out else torch.zeros(0, 3, S, S)

    def model_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Dial labels (N x 2 in [-1, 1]) -> the labels G is given: unchanged without a
        ``label_range``; with one, [-1, 0] -> [lo, 0] and [0, 1] -> [0, hi] per dimension."""
        if self._range is None:
            return labels
        return torch.where(labels < 0, labels * -self._range[:, 0], labels * self._range[:, 1])

    @torch.inference_mode()
    def estimate_labels(self, crops, z: torch.Tensor | None = None) -> torch.Tensor:
        """The (valence, arousal) each face already shows, by analysis-by-synthesis: the label of
        ``LABEL_GRID`` whose generation G(E(x), y) is closest (L1) to the crop x. N x 2, CPU."""
        x = self._as_crops(crops)
        z = self.encode(x) if z is None else z
        k = len(LABEL_GRID)
        gen = self.generate(z.repeat_interleave(k, 0), LABEL_GRID.repeat(len(z), 1))
        return LABEL_GRID[_closest(gen.view(len(z), k, -1), x)]

    @torch.inference_mode()
    def edit_crops(self, crops, labels, mode: str | None = None, strength: float | None = None,
                   keep_colour: bool | None = None) -> torch.Tensor:
        """Edit aligned crops: N x 3 x S x S in [-1, 1] (or uint8 N x S x S x 3, as in a face cache),
        labels N x 2 (valence, arousal) in [-1, 1] or one pair for all. Returns N x 3 x S x S in
        [-1, 1] on the CPU; batched by ``batch_size``.

        mode "paper": x_gen = G(E(x), y), the paper's edit (the whole crop is regenerated).
        mode "residual" (default): x + strength * (G(E(x), y) - G(E(x), y_x)), where y_x is the label
        the face already shows (``estimate_labels``). Only the change the generator makes between
        the two expressions is applied, so the input's own detail, identity and background survive
        where the paper's reconstruction would blur them. With ``keep_colour`` (default: the
        editor's, True) only the brightness part of that change is applied (``luma_change``)."""
        mode = mode or self.mode
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        x = self._as_crops(crops)
        y = _check_labels(labels, len(x))
        z = self.encode(x)
        if mode == "paper":
            return self.generate(z, y)
        # One batched pass of G over the targets and every candidate own label (estimate_labels);
        # the source G(z, y_x) is the candidate that wins, so it is not generated again.
        n, k = len(x), len(LABEL_GRID)
        gen = self.generate(torch.cat([z, z.repeat_interleave(k, 0)]), torch.cat([y, LABEL_GRID.repeat(n, 1)]))
        target, cand = gen[:n], gen[n:].view(n, k, *gen.shape[1:])
        source = cand[torch.arange(n), _closest(cand.view(n, k, -1), x)]
        return self.apply_change(x, target, source, strength, keep_colour)

    def apply_change(self, x: torch.Tensor, target: torch.Tensor, source: torch.Tensor,
                     strength: float | None = None, keep_colour: bool | None = None) -> torch.Tensor:
        """The residual edit x + strength * (target - source), clamped to [-1, 1]; with
        ``keep_colour`` only the brightness of the change (``luma_change``). ``strength`` and
        ``keep_colour`` default to the editor's. Broadcasts (e.g. B x 1 x ... against B x L x ...)."""
        change = target - source
        if self.keep_colour if keep_colour is None else keep_colour:
            change = luma_change(change)
        return (x + (self.strength if strength is None else strength) * change).clamp_(-1, 1)

    def reconstruct(self, crops, labels) -> torch.Tensor:
        """G(E(x), y_x) with each crop's own label: the paper's reconstruction (L_rec, eq. 1).
        Same shapes and ranges as ``edit_crops``."""
        return self.edit_crops(crops, labels, mode="paper")

    # ------------------------------------------------------------------ photos

    def _faces(self, photo: Image.Image, name: str, face: int | None):
        from affectedit.faces import detect_faces

        found = detect_faces(photo)
        if not found:
            raise UserError(f"no face found in {name}; use a photo with a clearly visible, roughly frontal face")
        if face is None:
            return found
        if not isinstance(face, (int, np.integer)) or not 0 <= face < len(found):
            raise UserError(f"face {face!r} asked for but {len(found)} face(s) found in {name} (indices 0..{len(found) - 1}, largest first)")
        return [found[int(face)]]

    def _crops(self, photo: Image.Image, faces) -> torch.Tensor:
        from affectedit.data.cache import normalize
        from affectedit.faces import align_faces_batch

        return normalize(align_faces_batch(photo, faces, self.image_size))

    @staticmethod
    def _paste(photo: Image.Image, faces, edited: torch.Tensor) -> Image.Image:
        from affectedit.data.cache import denormalize
        from affectedit.faces import paste_back

        out = photo
        for f, crop in zip(faces, denormalize(edited)):
            out = paste_back(out, f, Image.fromarray(crop, "RGB"))
        return out

    def edit(self, image, valence: float, arousal: float, face: int | None = None) -> Image.Image:
        """The photo with every face (or only face ``face``, an index in ``detect_faces`` order:
        largest first) showing (valence, arousal), both in [-1, 1].

        ``image``: a PIL image, an H x W x 3 uint8 RGB array or a path; EXIF orientation is applied,
        so the result is upright.  Returns a new image of the (upright) input's size and mode; pixels
        outside the blended face regions are unchanged.  No face: UserError."""
        v, a = _check_label(valence, arousal)
        photo, name = _as_image(image)
        rgb = photo.convert("RGB") if photo.mode != "RGB" else photo
        faces = self._faces(rgb, name, face)
        x = self._crops(rgb, faces)
        return _restore_mode(self._paste_edits(rgb, faces, x, self.edit_crops(x, torch.tensor([v, a]))), photo)

    def _paste_edits(self, photo: Image.Image, faces, x: torch.Tensor, edited: torch.Tensor) -> Image.Image:
        """Blend the edited crops of ``faces`` (N x 3 x S x S, made from the crops ``x``) into ``photo``.

        Paper mode pastes the generated crops. Residual mode applies the change ``edited - x`` at
        the photo's own resolution: upsampled onto a sharp aligned crop of each face, so no detail
        is lost to the model's small resolution."""
        if self.mode == "paper":
            return self._paste(photo, faces, edited)
        from affectedit.faces import align_face, paste_back

        out = photo
        for f, delta in zip(faces, edited - x):
            side = int(min(max(round(1.0 / f.scale), self.image_size), MAX_PASTE_SIDE))
            sharp = np.asarray(align_face(photo, f, side), dtype=np.float32)
            up = torch.nn.functional.interpolate(delta[None], size=(side, side), mode="bilinear", align_corners=False)[0]
            crop = np.clip(sharp + up.permute(1, 2, 0).numpy() * 127.5, 0, 255).round().astype(np.uint8)
            out = paste_back(out, f, Image.fromarray(crop, "RGB"))
        return out

    def edit_aligned(self, crop, valence: float, arousal: float) -> Image.Image:
        """Edit an already aligned face crop (PIL image or H x W x 3 uint8 array, square, dlib
        face-chip geometry as ``faces.align_face`` makes it).  It is resized to the model's size and
        the result back to the crop's size."""
        from affectedit.data.cache import denormalize, normalize

        v, a = _check_label(valence, arousal)
        img, _ = _as_image(crop, "crop")
        img = img.convert("RGB")
        S = self.image_size
        small = img if img.size == (S, S) else img.resize((S, S), Image.BICUBIC, reducing_gap=2.0)
        out = Image.fromarray(denormalize(self.edit_crops(normalize(np.asarray(small))[None], torch.tensor([v, a])))[0], "RGB")
        return out if out.size == img.size else out.resize(img.size, Image.BICUBIC)

    # ------------------------------------------------------------------ figures

    def grid(self, image, face: int = 0, n: int = 5, cell: int | None = None) -> Image.Image:
        """The paper's Fig. 3: an n x n grid of edits of one face over [-1, 1]^2, arousal from high
        (left) to low (right), valence from high (top) to low (bottom), with axis labels and the
        aligned input beside it.  Cells are ``cell`` pixels (default max(S, 128)).  The layout is in
        ``result.info["grid"]``: {"n", "cell", "origin": (x, y) of the top-left cell, "input": box}."""
        if n < 2:
            raise UserError(f"a grid needs n >= 2 labels per axis, got {n}")
        photo, name = _as_image(image)
        rgb = photo.convert("RGB")
        faces = self._faces(rgb, name, face)
        x = self._crops(rgb, faces)
        levels = np.linspace(1.0, -1.0, n)
        labels = torch.tensor([[v, a] for v in levels for a in levels], dtype=torch.float32)  # row-major
        edited = self.edit_crops(x.expand(n * n, -1, -1, -1), labels)
        from affectedit.data.cache import denormalize

        tiles = denormalize(edited)
        cell = int(cell or max(self.image_size, 128))
        font = _font(max(11, cell // 9))
        small = _font(max(10, cell // 11))
        pad = max(6, cell // 16)
        # columns: [input] gap [valence title][row labels] [grid]
        title_h = _text_size(font, "arousal")[1] + pad
        collab_h = _text_size(small, "-1.0")[1] + pad
        rowlab_w = _text_size(small, "-1.00")[0] + pad
        vtitle_w = _text_size(font, "valence")[1] + pad
        input_w = cell + 2 * pad
        gx0 = input_w + pad + vtitle_w + rowlab_w
        gy0 = pad + title_h + collab_h
        W, H = gx0 + n * cell + pad, gy0 + n * cell + pad
        canvas = Image.new("RGB", (W, H), "white")
        draw = ImageDraw.Draw(canvas)
        # input, vertically centred beside the grid
        iy = gy0 + (n * cell - cell) // 2
        canvas.paste(Image.fromarray(denormalize(x)[0], "RGB").resize((cell, cell), Image.BICUBIC), (pad, iy))
        draw.text((pad + cell / 2, iy - pad / 2), "input", fill="black", font=small, anchor="md")
        for k, (v, a) in enumerate(labels.tolist()):
            r, c = divmod(k, n)
            tile = Image.fromarray(tiles[k], "RGB")
            canvas.paste(tile.resize((cell, cell), Image.BICUBIC) if cell != self.image_size else tile, (gx0 + c * cell, gy0 + r * cell))
        draw.text((gx0 + n * cell / 2, pad), "arousal (high to low)", fill="black", font=font, anchor="mt")
        for c, a in enumerate(levels):
            draw.text((gx0 + c * cell + cell / 2, gy0 - pad / 2), f"{a:.1f}" if n <= 11 else f"{a:.2f}", fill="black", font=small, anchor="md")
        for r, v in enumerate(levels):
            draw.text((gx0 - pad / 2, gy0 + r * cell + cell / 2), f"{v:.1f}" if n <= 11 else f"{v:.2f}", fill="black", font=small, anchor="rm")
        # the valence title, written horizontally and turned to read bottom-to-top
        tw, th = _text_size(font, "valence (high to low)")
        label = Image.new("RGB", (tw + 4, th + 4), "white")
        ImageDraw.Draw(label).text((2, 2), "valence (high to low)", fill="black", font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (input_w + pad, gy0 + (n * cell - label.height) // 2))
        canvas.info["grid"] = {"n": n, "cell": cell, "origin": (gx0, gy0), "input": (pad, iy, pad + cell, iy + cell)}
        return canvas

    def animate(
        self,
        image,
        path: Sequence[tuple[float, float]],
        out: str | os.PathLike,
        fps: int = 20,
        seconds_per_segment: float = 1.0,
        face: int | None = None,
        size: int | None = 512,
        force: bool = True,
    ) -> Path:
        """Write a video of the face(s) moving along ``path``, a list of (valence, arousal) points in
        [-1, 1] (at least 2), with smoothstep easing between consecutive points
        (``seconds_per_segment`` each, ``fps`` frames per second).  Frames are the full photo
        (paste-back), scaled so the longest side is at most ``size`` (None: original size).

        ``out`` ending in .gif: an animated GIF (Pillow, looping); .mp4: MPEG-4 (OpenCV's mp4v
        writer).  Written atomically; an existing ``out`` is overwritten only with ``force``.
        Returns the path."""
        out = Path(out)
        kind = out.suffix.lower()
        if kind not in (".gif", ".mp4"):
            raise UserError(f"animation output {out} must end in .gif or .mp4")
        points = [_check_label(v, a) for v, a in path]
        if len(points) < 2:
            raise UserError("an animation path needs at least 2 (valence, arousal) points")
        if fps < 1 or not math.isfinite(seconds_per_segment) or seconds_per_segment <= 0:
            raise UserError(f"fps must be >= 1 and seconds_per_segment > 0, got {fps} and {seconds_per_segment}")
        labels = torch.tensor(_path_labels(points, max(1, round(fps * seconds_per_segment))), dtype=torch.float32)
        photo, name = _as_image(image)
        rgb = photo.convert("RGB")
        faces = self._faces(rgb, name, face)
        x = self._crops(rgb, faces)
        z = self.encode(x)  # once per face: only the label changes
        # Residual mode: the face's own expression G(z, y_x) is generated once, too.
        source = None if self.mode == "paper" else self.generate(z, self.estimate_labels(x, z))
        F, T = len(faces), len(labels)
        # Paste into a copy already scaled to the frame size (cheaper than scaling every frame).
        scale = 1.0 if size is None else min(1.0, size / max(rgb.size))
        fsize = (max(2, round(rgb.width * scale)) // 2 * 2, max(2, round(rgb.height * scale)) // 2 * 2)  # even: codecs like it
        if fsize != rgb.size:
            sx, sy = fsize[0] / rgb.width, fsize[1] / rgb.height
            base = rgb.resize(fsize, Image.LANCZOS, reducing_gap=3.0)
            faces = [_scaled_face(f, sx, sy) for f in faces]
        else:
            base = rgb
        frames = []
        step = max(1, self.batch_size // F)
        for t0 in range(0, T, step):
            y = labels[t0:t0 + step]
            edited = self.generate(z.repeat(len(y), 1), y.repeat_interleave(F, 0))
            for k in range(len(y)):
                g = edited[k * F:(k + 1) * F]
                if source is not None:
                    g = self.apply_change(x, g, source)
                frames.append(self._paste_edits(base, faces, x, g))
        with atomic_path(out, force=force) as tmp:
            if kind == ".gif":
                _write_gif(tmp, frames, fps)
            else:
                _write_mp4(tmp, frames, fps)
        return out


def _closest(candidates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index (N) of the candidate (N x k x D) closest in mean absolute difference to each crop of x."""
    return (candidates - x.reshape(len(x), 1, -1)).abs().mean(2).argmin(1)


def _path_labels(points: list[tuple[float, float]], frames_per_segment: int) -> list[tuple[float, float]]:
    """Labels along a polyline in label space, smoothstep-eased per segment, ending on the last point."""
    labels = []
    for (v0, a0), (v1, a1) in itertools.pairwise(points):
        for k in range(frames_per_segment):
            t = k / frames_per_segment
            s = t * t * (3.0 - 2.0 * t)  # eases in and out: the face rests briefly at each point
            labels.append((v0 + s * (v1 - v0), a0 + s * (a1 - a0)))
    labels.append(points[-1])
    return labels


def _scaled_face(face, sx: float, sy: float):
    """The same face in a copy of the photo resized by (sx, sy) (pixel centres at integers)."""
    from affectedit.faces import Face

    lm = (np.asarray(face.landmarks, dtype=np.float64) + 0.5) * (sx, sy) - 0.5
    x0, y0, x1, y1 = face.box
    return Face.from_landmarks(lm, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), score=face.score)


def _write_gif(path: Path, frames: list[Image.Image], fps: int) -> None:
    """Animated GIF with one palette for all frames: no colour flicker, and ~20x faster than letting
    Pillow build a palette per frame.  The palette comes from the first, middle and last frames."""
    keys = [f.reduce(2) if min(f.size) >= 64 else f for f in (frames[0], frames[len(frames) // 2], frames[-1])]
    w, h = keys[0].size
    montage = Image.new("RGB", (w * len(keys), h))
    for i, f in enumerate(keys):
        montage.paste(f, (i * w, 0))
    palette = montage.quantize(256, method=Image.Quantize.MEDIANCUT)
    q = [f.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for f in frames]
    q[0].save(path, format="GIF", save_all=True, append_images=q[1:], duration=round(1000 / fps), loop=0)


def _write_mp4(path: Path, frames: list[Image.Image], fps: int) -> None:
    import cv2

    w, h = frames[0].size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise UserError("this OpenCV build cannot write MP4 video; write a .gif instead")
    try:
        for f in frames:
            writer.write(cv2.cvtColor(np.asarray(f), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    if path.stat().st_size == 0:
        raise UserError("OpenCV wrote an empty MP4 file; write a .gif instead")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return math.ceil(x1 - min(0, x0)), math.ceil(y1 - min(0, y0))


def parse_path(text: str) -> list[tuple[float, float]]:
    """An animation path from text: points separated by spaces (or ';'), each "valence,arousal" or an
    emotion word of ``EMOTIONS`` (e.g. "0,0 0.8,0.5 sad"; write "at_ease" for "at ease")."""
    points = []
    for token in text.replace(";", " ").split():
        if "," in token:
            parts = token.split(",")
            if len(parts) != 2:
                raise UserError(f"path point {token!r} must be valence,arousal (e.g. 0.8,-0.5) or an emotion word")
            points.append(_check_label(*parts))
        else:
            points.append(emotion(token))
    if len(points) < 2:
        raise UserError(f"--path {text!r} needs at least 2 points, e.g. \"0,0 0.8,0.5 -0.6,-0.4\"")
    return points


def emotion_table(emotions: Iterable[str] | None = None) -> str:
    """The vocabulary as a text table: word, valence, arousal."""
    names = list(emotions or EMOTIONS)
    w = max(len("emotion"), *(len(n) for n in names))
    lines = [f"{'emotion':<{w}}  valence  arousal"]
    lines += [f"{n:<{w}}  {EMOTIONS[n][0]:>7.2f}  {EMOTIONS[n][1]:>7.2f}" for n in names]
    return "\n".join(lines)
