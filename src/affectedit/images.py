"""Image reading, conversion and writing, apart from the model (as diffusers keeps its image
processor apart from the pipeline).

``load_image`` turns a path, a PIL image or an array into an upright 8-bit PIL image;
``normalize``/``denormalize`` convert between uint8 H x W x 3 and the networks' float tensors in
[-1, 1]; ``restore_mode`` gives an RGB result the input's mode back; ``save_like`` writes a result
in the input's format, quality and metadata.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from affectedit.errors import UserError
from affectedit.io import atomic_path

#: ITU-R BT.601 luma weights of R, G, B (PIL's RGB -> 'L' conversion): brightness wherever we need it.
LUMA = (0.299, 0.587, 0.114)

__all__ = ["denormalize", "load_image", "normalize", "open_image", "restore_mode", "save_like", "upright"]


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


def upright(img: Image.Image) -> Image.Image:
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


def load_image(image, what: str = "image") -> tuple[Image.Image, str]:
    """PIL image (upright, 8 bits per channel) and a name for messages, from a PIL image, an
    H x W x 3 uint8 RGB array or a path."""
    if isinstance(image, (str, os.PathLike)):
        return _eight_bit(upright(open_image(image))), str(image)
    if isinstance(image, Image.Image):
        return _eight_bit(upright(image)), getattr(image, "filename", "") or what
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"{what} array must be H x W x 3 uint8 (RGB), got {image.shape} {image.dtype}")
        return Image.fromarray(np.ascontiguousarray(image), "RGB"), what
    raise UserError(f"{what} must be a path, a PIL image or an H x W x 3 uint8 array, got {type(image).__name__}")


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


def save_like(result: Image.Image, source: Image.Image, path: Path, force: bool) -> None:
    """Save ``result`` to ``path`` in the format its suffix names (the source's format when the suffix
    is unknown), keeping the source's JPEG quantisation (its quality), EXIF (orientation reset to 1:
    pixels are upright now), ICC profile and DPI; atomically, refusing to overwrite without ``force``."""
    from PIL import JpegImagePlugin

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower()) or source.format or "PNG"
    kwargs = {}
    try:
        exif = source.getexif()
    except Exception:  # noqa: BLE001 - unreadable EXIF: save without it
        exif = None
    if exif is not None and len(exif):
        if 0x0112 in exif:
            exif[0x0112] = 1
        if fmt in ("JPEG", "PNG", "WEBP"):
            kwargs["exif"] = exif.tobytes()
    for key in ("icc_profile", "dpi"):
        if source.info.get(key):
            kwargs[key] = source.info[key]
    if fmt == "JPEG":
        if result.mode not in ("RGB", "L", "CMYK"):
            result = result.convert("RGB")
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
    with atomic_path(path, force=force) as tmp:
        result.save(tmp, format=fmt, **kwargs)
