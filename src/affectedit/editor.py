"""Edit the facial expression in a photo: ``Editor.from_pretrained().edit(photo, valence, arousal)``.

The pipeline of one edit (Lindt et al. 2019, Sec. III): detect every face (``faces.detect_faces``),
align it to the model's S x S crop, run the networks on all faces in one batched pass, which gives
the change of each crop as a ``warp.CropEdit`` (``Editor.crop_edit``, the one edit function), and
apply that change straight to the ORIGINAL photo at its full resolution (``warp.apply_to_photo``:
blended with a feathered face ellipse; pixels outside it stay byte-identical, and a zero change
changes no pixel at all).

Edit modes (``EditConfig.mode``): "residual" (default, ours) adds the generator's change between
the face's own expression and the target, G(E(x), y) - G(E(x), y_x), to the sharp input, which
keeps identity, detail and background; "paper" replaces the face by G(E(x), y) as Lindt et al. do;
"warp" (generators with the warp head, ``model.head = "warp"``) moves the photo's own pixels by
the predicted flow and repaints where the predicted mask says. ``strength`` scales every mode's
change (0 = no change).

The edit settings (``EditConfig``, ``label_range``) and the checks of target labels live in
``edit_settings`` (importable from here too); images, emotion words, weights files and figures in
``images``, ``emotions``, ``checkpoint`` and ``figures``; device, precision and threads in ``runtime``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from affectedit import checkpoint, runtime
from affectedit.edit_settings import MODES, EditConfig, check_labels, label_range, target_label
from affectedit.emotions import check_label, path_labels
from affectedit.errors import UserError
from affectedit.images import normalize, read_photo, restore_mode
from affectedit.warp import CropEdit, apply_to_photo, compose, luma_change

__all__ = ["LABEL_GRID", "MAX_FACES", "MODES", "EditConfig", "EditResult", "Editor", "FaceCodes", "label_range"]

#: Default bound on the faces edited in one photo (the largest first); ``max_faces=None`` lifts it.
MAX_FACES = 100
#: Devices the networks can run on (``torch.device("meta")`` and the like hold no data).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

#: Candidate labels for estimating the expression a face already shows (see estimate_labels).
LABEL_GRID = torch.tensor([[v, a] for v in (-0.6, 0.0, 0.4, 0.8) for a in (-0.3, 0.1, 0.5, 0.9)], dtype=torch.float32)


@dataclass
class FaceCodes:
    """Aligned crops run through E once: ``x`` N x 3 x S x S in [-1, 1], ``z`` = E(x), and, for the
    residual mode, ``source`` = G(E(x), y_x), the face's own expression as G draws it (or None)."""

    x: torch.Tensor
    z: torch.Tensor
    source: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index) -> FaceCodes:
        """The faces ``index`` (an index tensor repeats faces, e.g. one per label of a grid)."""
        return FaceCodes(self.x[index], self.z[index], None if self.source is None else self.source[index])


@dataclass
class EditResult:
    """One edited photo with what happened to it: ``faces_found`` faces were detected,
    ``faces_edited`` of them edited (fewer when ``face`` picked one or ``max_faces`` bounded them)."""

    image: Image.Image
    faces_found: int
    faces_edited: int
    source: str = ""


def _check_finite(t: torch.Tensor, what: str) -> None:
    if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise UserError(f"the model's {what} holds NaN or infinite values: the weights are damaged or do not suit "
                        "this device/precision; reinstall affectedit, restore the weights, or try --fp32")


# --------------------------------------------------------------------------------------------- the editor


class Editor:
    """The trained encoder E and generator G, and the photo-level editing around them.

    ``Editor.from_pretrained()`` (the bundled weights, a folder or a Hub repo id) or
    ``Editor.from_checkpoint(path)``; then ``edit(photo, valence, arousal)`` -> PIL image,
    ``grid(photo)`` (the paper's Fig. 3), ``animate(photo, path, out)``. Tensor-level: ``crop_edit``
    (the change of aligned crops) and ``edit_crops`` (the edited crops).

    ``precision``: "auto" (``runtime.pick_precision``), "fp32" or "bf16"; ``threads``: torch CPU
    threads per call (None: ``runtime.ThreadPolicy``); ``edit_config`` and the EditConfig fields
    as keywords (``mode=...``): how to edit. On the CPU the networks run with the channels_last
    layout (oneDNN's fast layout for these convolutions, ~2x over NCHW, benchmarks/run.py).
    ``all_faces`` (attribute, False): look for small faces even in a portrait (``faces.detect_faces``'
    ``portrait``; 4-5x slower detection)."""

    all_faces: bool = False

    def __init__(self, encoder: torch.nn.Module, generator: torch.nn.Module, config, device=None,
                 precision: str = "auto", batch_size: int = 64, threads: int | None = None,
                 edit_config: EditConfig | None = None, **edit):
        self.config = config
        self.image_size = int(config.model.image_size)
        self.edit_config = (edit_config or EditConfig.defaults(getattr(generator, "head", "pixels"))).update(**edit)
        self.device = _check_device(runtime.pick_device(device))
        self.precision = runtime.pick_precision(precision, self.device)
        self.batch_size = int(batch_size)
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise UserError(f"threads must be a positive integer (or None: the idle cores), got {threads!r}")
        self.threads = None if threads is None else int(threads)
        self._policy = runtime.ThreadPolicy()
        self.channels_last = self.device.type == "cpu"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.encoder = encoder.to(self.device).eval().to(memory_format=fmt)
        self.generator = generator.to(self.device).eval().to(memory_format=fmt)
        self.step = 0  # training step of the loaded weights (kept by save_pretrained)
        if precision == "auto" and self.precision == "bf16" and self.device.type == "cpu":
            # a CPU with native bf16 that runs convolutions faster in it may still run THESE networks
            # on one face (the usual edit) faster in fp32: measure them (a few passes, milliseconds)
            self.precision = "bf16" if runtime.bf16_measures_faster(self._one_face) else "fp32"

    def _one_face(self, precision: str) -> None:
        """One (blank) face through E and G in ``precision``: the workload auto precision measures."""
        chosen, self.precision = self.precision, precision
        try:
            self.crop_edit(torch.zeros(1, 3, self.image_size, self.image_size), (0.5, 0.5))
        finally:
            self.precision = chosen

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device=None, precision: str = "auto", **edit) -> Editor:
        """Load a training checkpoint (``runs/NAME/checkpoint.pt`` or its folder) or exported weights.
        ``edit``: EditConfig fields; None or left out = the settings stored with the weights."""
        dev = _check_device(runtime.pick_device(device))
        state = checkpoint.load_checkpoint(path)
        cfg, models = checkpoint.models_from_checkpoint(state, device=dev)
        editor = cls(models["encoder"], models["generator"], cfg, dev, precision, edit_config=EditConfig.stored(state), **edit)
        editor.step = int(state.get("step", 0) or 0)
        return editor

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device=None, precision: str = "auto",
                        **edit) -> Editor:
        """Load exported weights in the Hugging Face manner: no argument = the bundled model; a folder
        holding ``model.safetensors`` (offline); or a Hub repo id ("owner/name"), fetched through
        huggingface_hub's cache. ``edit``: as in ``from_checkpoint``."""
        return cls.from_checkpoint(checkpoint.resolve_weights(name_or_path), device, precision, **edit)

    def save_pretrained(self, folder: str | os.PathLike, force: bool = True) -> Path:
        """Write E and G (fp16), the model config and this editor's EditConfig as
        ``folder/model.safetensors``, which ``from_pretrained(folder)`` loads. Returns the path."""
        return checkpoint.save_weights(folder, {"encoder": self.encoder, "generator": self.generator},
                                       self.config.to_dict(), dataclasses.asdict(self.edit_config), self.step, force)

    # ------------------------------------------------------------------ networks

    def _as_crops(self, crops) -> torch.Tensor:
        """N x 3 x S x S float in [-1, 1] from such a tensor or from uint8 N x S x S x 3 (cache images)."""
        if not torch.is_tensor(crops):
            a = np.asarray(crops)
            if a.dtype != np.uint8:
                raise ValueError(f"crop arrays must be uint8 N x S x S x 3, got {a.dtype}")
            crops = normalize(a[None] if a.ndim == 3 else a)
        x = crops.float()
        x = x[None] if x.ndim == 3 else x
        S = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"crops must be N x 3 x {S} x {S} (the model's size), got {tuple(x.shape)}")
        return x

    def _run(self, net, *inputs) -> list:
        """``net`` on the inputs in batches of ``batch_size``, in this editor's precision, threads and
        memory layout; outputs (tensors, or the warp head's Fields) as float32 on the CPU."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = []
        with torch.inference_mode(), self._policy.threads(self.device, self.threads):
            for i in range(0, len(inputs[0]), self.batch_size):
                args = [t[i:i + self.batch_size].to(self.device) for t in inputs]
                args[0] = args[0].contiguous(memory_format=fmt) if args[0].ndim == 4 else args[0]
                with runtime.autocast(self.precision, self.device):
                    o = net(*args)
                o = (type(o)(*(None if t is None else t.float().cpu().contiguous() for t in o)) if isinstance(o, tuple)
                     else o.float().cpu().contiguous())
                for t in (o if isinstance(o, tuple) else (o,)):  # NaN weights give NaN outputs: never a black face
                    _check_finite(t, "output")
                out.append(o)
        return out

    def encode(self, crops) -> torch.Tensor:
        """z = E(x): crops N x 3 x S x S in [-1, 1] (or uint8 N x S x S x 3) -> N x z_dim in [-1, 1] (CPU)."""
        out = self._run(self.encoder, self._as_crops(crops))
        return torch.cat(out) if out else torch.zeros(0, self.config.model.z_dim)

    def model_labels(self, labels: torch.Tensor, label_range=None) -> torch.Tensor:
        """Dial labels (N x 2 in [-1, 1]) -> the labels G is given (see ``EditConfig.label_range``;
        default the editor's)."""
        r = self.edit_config.label_range if label_range is None else label_range
        if r is None:
            return labels
        r = torch.tensor(r, dtype=labels.dtype)
        return torch.where(labels < 0, labels * -r[:, 0], labels * r[:, 1])

    def generate(self, z: torch.Tensor, labels, label_range=None):
        """G(z, y): z N x z_dim, labels N x 2 dial values (or one pair; mapped by ``model_labels``).
        Returns N x 3 x S x S images in [-1, 1], or the warp head's ``Fields`` (CPU)."""
        y = self.model_labels(check_labels(labels, len(z)), label_range)
        out = self._run(self.generator, z.float(), y)
        if not out:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        if isinstance(out[0], tuple):
            return type(out[0])(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*out)))
        return torch.cat(out).clamp_(-1, 1)

    @staticmethod
    def _images(x: torch.Tensor, generated) -> torch.Tensor:
        """x_gen from G's output: the images themselves, or the warp head's fields applied to x."""
        return generated if torch.is_tensor(generated) else compose(x, generated)

    def estimate_labels(self, crops, z: torch.Tensor | None = None) -> torch.Tensor:
        """The (valence, arousal) each face already shows, by analysis-by-synthesis: the label of
        ``LABEL_GRID`` whose generation G(E(x), y) is closest (L1) to the crop x. N x 2, CPU."""
        x = self._as_crops(crops)
        return LABEL_GRID[self._own(x, self.encode(x) if z is None else z)[0]]

    def _own(self, x: torch.Tensor, z: torch.Tensor, label_range=None):
        """(index into LABEL_GRID, G's image for it): each face's own label and expression."""
        n, k = len(x), len(LABEL_GRID)
        xs = x.repeat_interleave(k, 0)
        cand = self._images(xs, self.generate(z.repeat_interleave(k, 0), LABEL_GRID.repeat(n, 1), label_range))
        cand = cand.view(n, k, *x.shape[1:])
        best = (cand - x[:, None]).abs().flatten(2).mean(2).argmin(1)
        return best, cand[torch.arange(n), best]

    def encode_faces(self, crops, own: bool = False) -> FaceCodes:
        """E(x) of aligned crops, and with ``own`` G's image of each face's own expression (what the
        residual mode subtracts; computed once for many labels)."""
        x = self._as_crops(crops)
        codes = FaceCodes(x, self.encode(x))
        if own:
            codes.source = self._own(x, codes.z)[1]
        return codes

    # ------------------------------------------------------------------ the edit

    def crop_edit(self, faces, labels, target=None, **edit) -> CropEdit:
        """THE edit: the change that takes aligned crops to the target labels, as a CropEdit at the
        model's resolution (apply it with ``warp.compose`` to crops or ``warp.apply_to_photo`` to the
        photo). ``faces``: crops (N x 3 x S x S in [-1, 1], or uint8 N x S x S x 3) or their
        ``FaceCodes``; ``labels``: N x 2 (valence, arousal) in [-1, 1] or one pair for all;
        ``target``: G's output for these faces and labels, if the caller already has it;
        ``edit``: EditConfig fields for this call (None = the editor's).

        paper: CropEdit(mask = min(strength, 1), colour = G(E(x), y)).
        residual: CropEdit(delta = strength * (G(E(x), y) - G(E(x), y_x))), y_x the label the face
            already shows (``estimate_labels``); only the brightness of the change with colour "keep".
        warp: the warp head's fields, CropEdit(flow = s * flow, mask = clamp(s * mask), colour)."""
        settings = self.edit_config.update(**edit)
        codes = faces if isinstance(faces, FaceCodes) else self.encode_faces(faces)
        y = check_labels(labels, len(codes))
        s = settings.strength
        warp_head = getattr(self.generator, "head", "pixels") == "warp"
        if settings.mode == "warp" and not warp_head:
            raise UserError("mode 'warp' needs weights whose generator has the warp head (model.head = warp); "
                            "use mode residual or paper")
        generated = self.generate(codes.z, y, settings.label_range) if target is None else target
        if settings.mode == "warp":
            return CropEdit.from_fields(generated, s)
        image = self._images(codes.x, generated)
        if settings.mode == "paper":
            return CropEdit(mask=torch.full((len(codes), 1, *image.shape[-2:]), min(s, 1.0)), colour=image)
        source = codes.source if codes.source is not None else self._own(codes.x, codes.z, settings.label_range)[1]
        change = image - source
        return CropEdit(delta=s * (luma_change(change) if settings.colour == "keep" else change))

    def edit_crops(self, crops, labels, **edit) -> torch.Tensor:
        """Edited aligned crops: ``compose(x, crop_edit(x, labels))``, N x 3 x S x S in [-1, 1] (CPU).
        Arguments as in ``crop_edit``."""
        codes = self.encode_faces(crops)
        return compose(codes.x, self.crop_edit(codes, labels, **edit))

    def reconstruct(self, crops, labels) -> torch.Tensor:
        """G(E(x), y_x) with each crop's own label: the paper's reconstruction (L_rec, eq. 1)."""
        return self.edit_crops(crops, labels, mode="paper", strength=1.0)

    # ------------------------------------------------------------------ photos

    def _faces(self, photo: Image.Image, name: str, face: int | None, max_faces: int | None = MAX_FACES):
        """(faces to edit, number found): every face (the largest ``max_faces``), or face ``face``."""
        from affectedit.faces import PORTRAIT_SHARE, detect_faces

        if max_faces is not None and (isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 1):
            raise UserError(f"max_faces must be a positive integer (or None: no bound), got {max_faces!r}")
        found = detect_faces(photo, portrait=None if self.all_faces else PORTRAIT_SHARE)
        if not found:
            raise UserError(f"no face found in {name}; use a photo with a clearly visible, roughly frontal face")
        if face is None:
            return (found if max_faces is None else found[: int(max_faces)]), len(found)
        if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or not 0 <= face < len(found):
            raise UserError(f"face {face!r} asked for but {len(found)} face(s) found in {name} (indices 0..{len(found) - 1}, largest first)")
        return [found[int(face)]], len(found)

    def _photo_faces(self, image, face: int | None, max_faces: int | None = MAX_FACES):
        """(upright input, its RGB version, the faces to edit, their S x S crops in [-1, 1], faces found, name)."""
        from affectedit.faces import align_faces_batch

        photo, name = read_photo(image)
        rgb = photo.convert("RGB") if photo.mode != "RGB" else photo
        faces, found = self._faces(rgb, name, face, max_faces)
        return photo, rgb, faces, normalize(align_faces_batch(rgb, faces, self.image_size)), found, name

    def _apply(self, rgb: Image.Image, faces, change: CropEdit) -> Image.Image:
        with self._policy.threads(self.device, self.threads):
            return apply_to_photo(rgb, faces, change)

    def edit(self, image, valence=None, arousal=None, face: int | None = None, *, emotion: str | None = None,
             max_faces: int | None = MAX_FACES, report: bool = False, **edit):
        """The photo with every face (or only face ``face``, an index in ``detect_faces`` order:
        largest first) showing (valence, arousal), both in [-1, 1], or the emotion word ``emotion``
        ("happy"; a word as ``valence`` works too); ``edit``: EditConfig fields.

        ``image``: a path, bytes, a file object, a PIL image or an H x W x 3 uint8 RGB array (read by
        ``images.read_photo``: EXIF orientation applied, 16-bit/float/CMYK/palette/alpha handled), or a
        list of them: all their faces go through the networks in one batch and a list comes back.
        ``max_faces``: edit at most the largest N faces of each photo (None: every face).
        Returns a new image of the (upright) input's size and mode (pixels outside the blended face
        regions are unchanged), or with ``report`` an ``EditResult`` (image, faces found and edited).
        No face, an unreadable image: UserError."""
        v, a = target_label(valence, arousal, emotion)
        many = isinstance(image, (list, tuple))
        images = list(image) if many else [image]
        photos = [self._photo_faces(im, face, max_faces) for im in images]
        x = torch.cat([p[3] for p in photos]) if photos else torch.zeros(0, 3, self.image_size, self.image_size)
        change = self.crop_edit(x, torch.tensor([v, a]), **edit) if len(x) else None
        results, k = [], 0
        for photo, rgb, faces, _, found, name in photos:
            edited = restore_mode(self._apply(rgb, faces, change[k:k + len(faces)]), photo)
            k += len(faces)
            results.append(EditResult(edited, found, len(faces), name) if report else edited)
        return results if many else results[0]

    def edit_aligned(self, crop, valence, arousal=None, **edit) -> Image.Image:
        """Edit an already aligned face crop (PIL image or H x W x 3 uint8 array, square, dlib
        face-chip geometry as ``faces.align_face`` makes it) at its own size: the networks see it at
        the model's size, the change is applied at the crop's."""
        v, a = target_label(valence, arousal)
        img = read_photo(crop, "crop")[0].convert("RGB")
        S = self.image_size
        small = img if img.size == (S, S) else img.resize((S, S), Image.BICUBIC, reducing_gap=2.0)
        change = self.crop_edit(normalize(np.asarray(small))[None], torch.tensor([v, a]), **edit)
        from affectedit.images import denormalize

        return Image.fromarray(denormalize(compose(normalize(np.asarray(img))[None], change))[0], "RGB")

    # ------------------------------------------------------------------ figures

    def grid(self, image, face: int = 0, n: int = 5, cell: int | None = None, progress: bool = False) -> Image.Image:
        """The paper's Fig. 3: an n x n grid of edits of one face over [-1, 1]^2, arousal from high
        (left) to low (right), valence from high (top) to low (bottom), with axis labels and the
        aligned input beside it (``figures.edit_grid``). Cells are ``cell`` pixels (default max(S, 128)).
        ``progress``: a progress bar (tqdm, on stderr) over the rows."""
        from tqdm import tqdm

        from affectedit.figures import edit_grid
        from affectedit.images import denormalize

        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= 33:
            raise UserError(f"a grid needs n in [2, 33] labels per axis, got {n!r}")
        if cell is not None and (not isinstance(cell, (int, np.integer)) or not 16 <= cell <= 1024):
            raise UserError(f"grid cells must be 16..1024 pixels, got {cell!r}")
        x = self._photo_faces(image, face)[3]
        levels = np.linspace(1.0, -1.0, n)
        labels = torch.tensor([[v, a] for v in levels for a in levels], dtype=torch.float32)  # row-major
        codes = self.encode_faces(x, own=self.edit_config.mode == "residual")[torch.zeros(n, dtype=torch.long)]
        tiles = []
        for r in tqdm(range(n), desc="grid", unit="row", disable=not progress, file=sys.stderr, dynamic_ncols=True):
            y = labels[r * n:(r + 1) * n]
            tiles.append(denormalize(compose(codes.x, self.crop_edit(codes, y))))
        return edit_grid(denormalize(x)[0], np.concatenate(tiles), levels, int(cell or max(self.image_size, 128)))

    def animate(self, image, path: Sequence[tuple[float, float]], out: str | os.PathLike, fps: int = 20,
                seconds_per_segment: float = 1.0, face: int | None = None, size: int | None = 512,
                force: bool = True, max_faces: int | None = MAX_FACES, progress: bool = False) -> Path:
        """Write a video of the face(s) moving along ``path``, a list of (valence, arousal) points in
        [-1, 1] (at least 2), with smoothstep easing between consecutive points
        (``seconds_per_segment`` each, ``fps`` frames per second). Frames are the full photo, scaled
        so the longest side is at most ``size`` (None: original size).

        ``out`` ending in .gif: an animated GIF (Pillow, looping); .mp4: H.264 video (yuv420p, plays in
        browsers; ``images.write_animation`` through imageio-ffmpeg's own ffmpeg). Written atomically
        and verified (every frame reads back); an existing ``out`` is overwritten only with ``force``.
        ``progress``: a progress bar (tqdm, on stderr) over the frames."""
        from tqdm import tqdm

        from affectedit.images import write_animation

        out = Path(out)
        if out.suffix.lower() not in (".gif", ".mp4"):
            raise UserError(f"animation output {out} must end in .gif or .mp4")
        points = [check_label(v, a) for v, a in path]
        if len(points) < 2:
            raise UserError("an animation path needs at least 2 (valence, arousal) points")
        if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 120:
            raise UserError(f"fps must be a whole number in [1, 120], got {fps!r}")
        try:
            seconds_per_segment = float(seconds_per_segment)
        except (TypeError, ValueError):
            seconds_per_segment = math.nan
        if not (math.isfinite(seconds_per_segment) and 0 < seconds_per_segment <= 60):
            raise UserError(f"seconds per segment must be in (0, 60], got {seconds_per_segment!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096):
            raise UserError(f"the frame size must be 16..4096 pixels (or None/0: the photo's size), got {size!r}")
        per = max(1, round(fps * seconds_per_segment))
        if per * (len(points) - 1) + 1 > 10_000:
            raise UserError(f"that animation would have {per * (len(points) - 1) + 1} frames; at most 10000 (lower fps, seconds or path)")
        labels = torch.tensor(path_labels(points, per), dtype=torch.float32)
        _, rgb, faces, x, _, _ = self._photo_faces(image, face, max_faces)
        codes = self.encode_faces(x, own=self.edit_config.mode == "residual")  # once: only the label changes
        # Frames are made from a copy already scaled to the frame size (cheaper than scaling every frame).
        scale = 1.0 if size is None else min(1.0, size / max(rgb.size))
        fsize = (max(2, round(rgb.width * scale)) // 2 * 2, max(2, round(rgb.height * scale)) // 2 * 2)  # even: codecs like it
        if fsize != rgb.size:
            sx, sy = fsize[0] / rgb.width, fsize[1] / rgb.height
            rgb = rgb.resize(fsize, Image.LANCZOS, reducing_gap=3.0)
            faces = [f.scaled(sx, sy) for f in faces]
        F, frames = len(faces), []
        step = max(1, self.batch_size // F)
        with tqdm(total=len(labels), desc="animate", unit="frame", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for t0 in range(0, len(labels), step):
                y = labels[t0:t0 + step]
                change = self.crop_edit(codes[torch.arange(F).repeat(len(y))], y.repeat_interleave(F, 0))
                frames += [self._apply(rgb, faces, change[k * F:(k + 1) * F]) for k in range(len(y))]
                bar.update(len(y))
        return write_animation(out, frames, fps, force=force)


def _check_device(device: torch.device) -> torch.device:
    if device.type not in DEVICE_TYPES:
        raise UserError(f"device {str(device)!r} cannot run the model (it holds no data); use cpu, cuda, cuda:N or mps")
    return device
