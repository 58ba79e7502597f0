"""Image reading, conversion and writing, apart from the model (as diffusers keeps its image
processor apart from the pipeline). The ONE reading path of the CLI, the Python API and the web page:

- ``read_image(source)``: a path, bytes, a file object or a PIL image -> upright uint8 RGB numpy
  array H x W x 3. Any decodable mode is accepted alike (16-bit and 32-bit greyscale, float TIFF,
  CMYK, palette, alpha flattened on white, bilevel, YCbCr, LAB); a damaged EXIF block only skips the
  orientation; anything unreadable is one ``UserError`` line naming the file.
- ``read_photo(source)``: the same as a PIL image that keeps its mode where an edit can give it back
  (L, RGBA, LA, CMYK), with a name for messages; ``open_image`` decodes without rotating.
- ``encode_image(image, fmt)``: bytes in ``fmt``, the image first converted to a mode ``fmt`` can
  hold (CMYK -> PNG is RGB, RGBA -> JPEG is flattened on white, 16-bit -> JPEG is 8-bit).
- ``write_image(image, path)`` / ``save_like(result, source, path)``: the same, written atomically
  and verified (``io.write_bytes``: every byte, the size on disk, a decode of the written file,
  fsync) before it replaces anything.

``normalize``/``denormalize`` convert between uint8 H x W x 3 and the networks' float tensors in
[-1, 1]; ``restore_mode`` gives an RGB result the input's mode back.
"""
from __future__ import annotations

import io as _io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from affectedit.errors import UserError
from affectedit.io import write_bytes

#: ITU-R BT.601 luma weights of R, G, B (PIL's RGB -> 'L' conversion): brightness wherever we need it.
LUMA = (0.299, 0.587, 0.114)

__all__ = ["FORMAT_MODES", "denormalize", "encode_image", "fit_mode", "load_image", "normalize", "open_image", "read_image",
           "read_photo", "restore_mode", "save_like", "to_rgb", "upright", "write_image"]

#: Modes each output format can hold (anything else is converted by ``fit_mode``).
FORMAT_MODES = {
    "JPEG": ("L", "RGB", "CMYK"),
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "GIF": ("L", "P"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
}


def normalize(image) -> torch.Tensor:
    """uint8 image(s) H x W x 3 or N x H x W x 3 (numpy array or PIL image) -> float32 tensor
    3 x H x W or N x 3 x H x W in [-1, 1] (x / 127.5 - 1)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"normalize expects uint8 images, got {a.dtype}")
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # e.g. a row of the read-only memmap; torch wants writable memory
        a = a.copy()
    t = torch.from_numpy(a)
    t = t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float().div_(127.5).sub_(1.0).contiguous()


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """float tensor 3 x H x W or N x 3 x H x W in [-1, 1] -> uint8 numpy H x W x 3 / N x H x W x 3
    (values outside [-1, 1] are clipped; rounded to nearest)."""
    t = tensor.detach().to("cpu", torch.float32)
    t = ((t + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    t = t.permute(1, 2, 0) if t.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()


# --------------------------------------------------------------------------------------------- reading


def _name(source, what: str) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "filename", "") or getattr(source, "name", "") or what)


def open_image(source, what: str = "image") -> Image.Image:
    """Open and fully decode an image (not yet rotated by its EXIF orientation) from a path, bytes,
    a binary file object or a PIL image. Any failure to read it is one UserError line naming it
    (decoders of damaged files raise OSError, ValueError, SyntaxError, TypeError, struct.error, ...)."""
    if isinstance(source, Image.Image):
        img = source
    else:
        name = _name(source, what)
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise UserError(f"{path} not found" if not path.exists() else f"{path} is not a file")
            fp = path
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if not len(source):
                raise UserError(f"cannot read {name}: empty (0 bytes)")
            fp = _io.BytesIO(bytes(source))
        elif hasattr(source, "read"):
            fp = source
        else:
            raise UserError(f"{what} must be a path, bytes, a file object, a PIL image or an H x W x 3 uint8 array, "
                            f"got {type(source).__name__}")
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError:
            raise _bomb(name) from None
        except Exception as e:  # noqa: BLE001 - PIL's identify step raises many types on junk
            raise UserError(f"cannot read {name}: not an image or damaged ({type(e).__name__})") from None
    try:
        with warnings.catch_warnings():  # damaged tags: Pillow warns and skips them; the pixels decide
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            img.load()
    except Image.DecompressionBombError:
        raise _bomb(_name(img, what)) from None
    except Exception as e:  # noqa: BLE001 - damaged data: OSError, ValueError, SyntaxError, TypeError, struct.error, ...
        raise UserError(f"cannot read {_name(img, what) if isinstance(source, Image.Image) else _name(source, what)}: "
                        f"not an image or damaged ({type(e).__name__})") from None
    return img


def _bomb(name: str) -> UserError:
    # Pillow refuses images over twice MAX_IMAGE_PIXELS before decoding a single pixel.
    limit = 2 * Image.MAX_IMAGE_PIXELS // 1_000_000
    return UserError(f"{name} declares too many pixels to edit safely (over {limit} megapixels); resize it first")


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation so that pixels are upright (a no-op without the tag). A damaged
    EXIF block (a mistyped tag makes Pillow raise struct.error, TypeError, ...) only skips the
    orientation: the photo is used as stored, never refused for it."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop an edit
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - e.g. struct.error re-writing a mistyped tag: turn the pixels ourselves
        method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
        try:
            if method is None:
                return img
            out = img.transpose(method)
        except Exception:  # noqa: BLE001
            return img
        # the pixels are upright now: drop the (damaged) EXIF block that still says "rotate", so that
        # reading this image again (the web page hands its decoded upload to Editor.edit) does not turn it twice
        for key in ("exif", "Raw profile type exif", "XML:com.adobe.xmp"):
            out.info.pop(key, None)
        return out


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale images as 8-bit "L" (Pillow's own conversion clips 16-bit
    values at 255, which turns a 16-bit portrait white). Float images: [0, 1] -> [0, 255]; other
    ranges are stretched from their finite minimum and maximum; NaN is black."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    lo = float(a[finite].min()) if finite.any() else 0.0
    hi = float(a[finite].max()) if finite.any() else 0.0
    if img.mode == "F" and lo >= 0 and hi <= 1.0:
        out = a * 255.0
    elif lo >= 0 and hi <= 255 and img.mode == "F":
        out = a
    elif lo >= 0 and hi <= 65535 and img.mode != "F":
        out = a * (255.0 / (255.0 if hi <= 255 else 65535.0))
    else:  # negative values or beyond 16 bits: stretch the range that is there
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    out = np.where(finite, out, 0.0)
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def _flatten(img: Image.Image) -> Image.Image:
    """An image with alpha composited on white, as RGB."""
    rgba = img.convert("RGBA")
    bg = Image.new("RGB", img.size, (255, 255, 255))
    bg.paste(rgba, mask=rgba.getchannel("A"))
    return bg


def _editable(img: Image.Image) -> Image.Image:
    """8 bits per channel in a mode an edit can give back (L, RGB, RGBA, LA, CMYK); others -> RGB(A)."""
    img = _eight_bit(img)
    if img.mode in ("L", "RGB", "RGBA", "LA", "CMYK"):
        return img
    if _has_alpha(img):
        return img.convert("RGBA")
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (alpha composited on white; 16-bit and float scaled, not clipped)."""
    img = _eight_bit(img)
    if img.mode == "RGB":
        return img
    return _flatten(img) if _has_alpha(img) else img.convert("RGB")


def read_photo(source, what: str = "image") -> tuple[Image.Image, str]:
    """(upright 8-bit PIL image in L, RGB, RGBA, LA or CMYK, a name for messages) from a path,
    bytes, a file object, a PIL image or an H x W x 3 uint8 RGB array. UserError for anything that
    is not a readable image."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise UserError(f"{what} array must be H x W x 3 uint8 (RGB), got {source.shape} {source.dtype}")
        return Image.fromarray(np.ascontiguousarray(source), "RGB"), what
    name = _name(source, what)
    img = open_image(source, what)
    try:
        return _editable(upright(img)), name
    except Exception as e:  # noqa: BLE001 - a mode Pillow cannot convert (damaged palette, odd raw mode, ...)
        raise UserError(f"cannot read {name}: unsupported or damaged image data ({img.mode}, {type(e).__name__})") from None


def read_image(source, what: str = "image") -> np.ndarray:
    """THE image reader: upright uint8 RGB numpy array H x W x 3 from a path, bytes, a binary file
    object, a PIL image or such an array. 16-bit/32-bit greyscale and float images are scaled (not
    clipped), CMYK and palette converted, alpha composited on white; a damaged EXIF block skips
    the orientation. Anything unreadable: one UserError line naming the source."""
    photo, name = read_photo(source, what)
    try:
        return np.ascontiguousarray(np.asarray(to_rgb(photo), dtype=np.uint8))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read {name}: unsupported or damaged image data ({type(e).__name__})") from None


def load_image(image, what: str = "image") -> tuple[Image.Image, str]:
    """The older name of ``read_photo``."""
    return read_photo(image, what)


def restore_mode(result: Image.Image, like: Image.Image) -> Image.Image:
    """Give the RGB ``result`` the mode of the input ``like`` (alpha kept from the input)."""
    if like.mode == "RGB":
        return result
    if like.mode in ("RGBA", "LA"):
        out = result.convert(like.mode[:-1] if like.mode == "LA" else "RGB")
        out.putalpha(like.getchannel("A"))
        return out
    if like.mode in ("L", "CMYK"):
        return result.convert(like.mode)
    return result  # P, I, F, ...: an RGB edit is the faithful answer


# --------------------------------------------------------------------------------------------- writing


def format_for(path: str | os.PathLike, default: str | None = None) -> str:
    """The Pillow format a file name's suffix names (``default`` when unknown; UserError without one)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower()) or default
    if fmt is None:
        raise UserError(f"cannot tell the image format of {path} from its suffix; use .png or .jpg")
    return fmt


def fit_mode(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` converted to a mode ``fmt`` can hold (unchanged when it can): alpha is kept where
    the format has it and composited on white where not; greyscale stays greyscale where possible;
    16-bit and float become 8-bit where the format has no such mode; CMYK becomes RGB outside JPEG/TIFF."""
    allowed = FORMAT_MODES.get(fmt.upper())
    if allowed is None or image.mode in allowed:
        return image
    grey = image.mode in ("1", "L", "LA", "La", "I", "F") or image.mode.startswith("I;16")
    if grey:
        img = _eight_bit(image)
        if img.mode in allowed:
            return img
        if img.mode == "LA" and "RGBA" in allowed:
            return img.convert("RGBA")
        if "L" in allowed:
            return _flatten(img).convert("L") if _has_alpha(img) else img.convert("L")
    if _has_alpha(image):
        return image.convert("RGBA") if "RGBA" in allowed else _flatten(image)
    return to_rgb(image) if "RGB" in allowed else to_rgb(image).convert(allowed[0])


def encode_image(image, fmt: str, **params) -> bytes:
    """``image`` (PIL, or uint8 H x W x 3 RGB array) encoded as ``fmt`` ("PNG", "JPEG", ...), after
    ``fit_mode``. JPEG and WEBP default to quality 95. Returns the bytes (for HTTP answers)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8, copy=False)), "RGB")
    fmt = fmt.upper()
    img = fit_mode(image, fmt)
    if fmt in ("JPEG", "WEBP") and "quality" not in params and "qtables" not in params:
        params["quality"] = 95
    buf = _io.BytesIO()
    try:
        img.save(buf, format=fmt, **params)
    except (OSError, ValueError, KeyError, TypeError):
        # a mode this Pillow build cannot write after all, or metadata it refuses: RGB(A), no extras
        buf = _io.BytesIO()
        plain = {k: v for k, v in params.items() if k in ("quality", "lossless", "subsampling", "qtables")}
        to_rgb(img).save(buf, format=fmt, **plain)
    return buf.getvalue()


def decode_check(path: str | os.PathLike, size: tuple[int, int] | None = None) -> None:
    """Raise unless ``path`` decodes completely as an image (of ``size``, when given)."""
    with Image.open(path) as im:
        im.load()
        if size is not None and im.size != tuple(size):
            raise ValueError(f"decoded size {im.size} is not {tuple(size)}")


def write_image(image, path: str | os.PathLike, force: bool = True, fmt: str | None = None, **params) -> Path:
    """Write ``image`` to ``path`` in ``fmt`` (default: the format its suffix names), converted to
    what that format can hold, atomically and verified (every byte, the size on disk, a full decode
    of the written file, fsync) before it replaces an existing file (only with ``force``)."""
    path = Path(path)
    fmt = (fmt or format_for(path)).upper()
    data = encode_image(image, fmt, **params)
    size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    return write_bytes(path, data, force, check=lambda tmp: decode_check(tmp, size))


def save_like(result: Image.Image, source: Image.Image, path: Path, force: bool) -> Path:
    """Save ``result`` to ``path`` in the format its suffix names (the source's format when the suffix
    is unknown), converted to what that format holds, keeping the source's JPEG quantisation (its
    quality), EXIF (orientation reset to 1: pixels are upright now), ICC profile (when the colour
    space is unchanged) and DPI; atomic and verified (``write_image``), refusing to overwrite
    without ``force``."""
    from PIL import JpegImagePlugin

    path = Path(path)
    fmt = format_for(path, source.format or "PNG")
    out = fit_mode(result, fmt)
    kwargs = {}
    try:
        exif = source.getexif()
        if len(exif) and fmt in ("JPEG", "PNG", "WEBP"):
            if 0x0112 in exif:
                exif[0x0112] = 1
            kwargs["exif"] = exif.tobytes()
    except Exception:  # noqa: BLE001 - unreadable EXIF: save without it
        pass
    space = {"CMYK": "CMYK", "L": "L", "LA": "L", "1": "L"}
    if source.info.get("icc_profile") and space.get(source.mode, "RGB") == space.get(out.mode, "RGB"):
        kwargs["icc_profile"] = source.info["icc_profile"]  # a CMYK profile on an RGB file would be wrong
    if source.info.get("dpi"):
        kwargs["dpi"] = source.info["dpi"]
    if fmt == "JPEG":
        qtables = getattr(source, "quantization", None) if source.format == "JPEG" else None
        if qtables:  # what quality="keep" does, for an image that is no longer the decoded file
            kwargs["qtables"] = qtables
            sampling = JpegImagePlugin.get_sampling(source)
            if sampling != -1:
                kwargs["subsampling"] = sampling
        else:
            kwargs["quality"] = 95
    elif fmt == "WEBP":
        kwargs["lossless"] = bool(source.info.get("lossless", False)) if source.format == "WEBP" else False
        kwargs["quality"] = 95
    return write_image(out, path, force, fmt, **kwargs)


# --------------------------------------------------------------------------------------------- animations


def write_animation(path: str | os.PathLike, frames: list, fps: int, force: bool = True) -> Path:
    """Frames (PIL RGB images of one size) as an animated GIF (``path`` ending in .gif; Pillow,
    looping, one palette) or an H.264 MP4 (.mp4; yuv420p with the index at the front, which browsers
    play; written by the ffmpeg that the imageio-ffmpeg package ships). Atomic and verified: the
    written file must hold every frame before it replaces anything."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise UserError(f"animation output {path} must end in .gif or .mp4")
    if not frames:
        raise UserError("an animation needs at least one frame")
    from affectedit.io import atomic_path

    if suffix == ".gif":
        from affectedit.figures import write_animation as write_gif

        def check(tmp: Path) -> None:  # every frame decodes; equal neighbours are merged by Pillow, so count time
            total = 0
            with Image.open(tmp) as im:
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    im.load()
                    total += int(im.info.get("duration", 0))
            want = len(frames) * round(1000 / fps)
            if abs(total - want) > 10 * len(frames):  # GIF keeps durations in 1/100 s
                raise ValueError(f"{total} of {want} ms of frames read back")
            with open(tmp, "rb") as f:  # Pillow decodes a GIF cut before its trailer byte without a word
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b";":
                    raise ValueError("no GIF trailer: the file is cut short")

        with atomic_path(path, force, check=check) as tmp:
            write_gif(tmp, frames, fps)
        return path

    ffmpeg = _ffmpeg()
    with atomic_path(path, force, check=lambda tmp: _check_video(ffmpeg, tmp, len(frames))) as tmp:
        _write_mp4(ffmpeg, tmp, frames, fps)
    return path


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError('writing MP4 needs the video extra: pip install "affectedit[video]" (imageio-ffmpeg); or write a .gif') from None
    return imageio_ffmpeg


def _write_mp4(ffmpeg, path: Path, frames: list, fps: int) -> None:
    w, h = frames[0].size
    writer = ffmpeg.write_frames(str(path), (w, h), fps=float(fps), codec="libx264", pix_fmt_out="yuv420p",
                                 quality=None, macro_block_size=2, ffmpeg_log_level="error",
                                 output_params=["-crf", "18", "-preset", "medium", "-movflags", "+faststart"])
    writer.send(None)  # start ffmpeg
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(np.asarray(f.convert("RGB") if f.mode != "RGB" else f, dtype=np.uint8)))
    except (OSError, RuntimeError) as e:  # ffmpeg stopped: a full disk is the usual cause
        writer.close()
        raise OSError(getattr(e, "errno", None) or 0, f"ffmpeg failed ({type(e).__name__})") from None
    try:
        writer.close()
    except RuntimeError as e:
        raise OSError(0, f"ffmpeg failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _check_video(ffmpeg, path: Path, n: int) -> None:
    _check_boxes(path)
    frames, _ = ffmpeg.count_frames_and_secs(str(path))
    if frames != n:
        raise ValueError(f"{frames} of {n} frames read back")


def _check_boxes(path: Path) -> None:
    """Raise unless the MP4's top-level boxes (ftyp, moov, mdat, ...) add up to exactly the file's
    size: a file cut anywhere, even inside the last frame, fails."""
    size, pos, kinds = os.path.getsize(path), 0, set()
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                raise ValueError("cut inside a box header")
            n, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if n == 1:
                if len(head) < 16:
                    raise ValueError("cut inside a box header")
                n = int.from_bytes(head[8:16], "big")
            elif n == 0:
                n = size - pos
            if n < 8 or pos + n > size:
                raise ValueError(f"box {kind!r} runs past the end of the file")
            kinds.add(kind)
            pos += n
    if not {b"moov", b"mdat"} <= kinds:
        raise ValueError("no moov/mdat box")
