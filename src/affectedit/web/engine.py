"""The model side of the web server: the photos kept for live editing (:class:`Photo`,
:class:`PhotoStore`) and the :class:`Engine` whose methods run on the worker threads (decoding,
face finding, the edits, encoding the answers)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from affectedit.errors import UserError
from affectedit.web.limits import MAX_PHOTO_PIXELS, MAX_PHOTOS, HTTPError, Limits
from affectedit.web.uploads import load_upload, open_upload

#: Longest side of the live preview, in pixels.
PREVIEW_SIDE = 640


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """The answer's bytes (``images.encode_image``: the mode fitted to the format)."""
    from affectedit.images import encode_image as encode

    if fmt == "JPEG":
        return encode(image, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return encode(image, "PNG", compress_level=3)


@dataclass(eq=False)
class Photo:
    """An uploaded photo kept for live editing: decoded once, faces found and encoded once."""

    id: str
    photo: Image.Image        # upright, 8-bit, the upload's own mode
    rgb: Image.Image
    fmt: str                  # "JPEG" or "PNG": the answer's format
    faces: list
    codes: object             # editor.FaceCodes of all faces (their aligned crops until encoded)
    small: Image.Image        # RGB, longest side <= PREVIEW_SIDE
    small_faces: list
    original: bytes = b""     # the unedited small copy, JPEG

    @property
    def pixels(self) -> int:
        return self.rgb.width * self.rgb.height


class Engine:
    """What runs on the model thread: decoding, face finding, the edits, encoding the answers."""

    def __init__(self, editor, limits: Limits):
        self.editor = editor
        self.limits = limits
        # Live editing needs the Editor's crop-level API; any object with edit() serves /api/edit.
        self.live = all(hasattr(editor, k) for k in ("encode_faces", "crop_edit", "image_size"))

    def default_strength(self) -> float:
        config = getattr(self.editor, "edit_config", None)
        return float(getattr(config, "strength", 1.0))

    def decode(self, data: bytes) -> tuple[Image.Image, str]:
        image, fmt = open_upload(data, self.limits.max_pixels)
        return load_upload(image), fmt

    def edit_once(self, data: bytes, valence: float, arousal: float, strength: float | None, face: int | None):
        """One-shot edit (POST /api/edit): decode, edit, encode; nothing kept."""
        photo, fmt = self.decode(data)
        del data
        options = {k: v for k, v in (("strength", strength), ("face", face)) if v is not None}
        edited = self.editor.edit(photo, valence, arousal, **options)
        return encode_image(edited, fmt), fmt

    def find_faces(self, data: bytes, photo_id: str) -> Photo:
        """Decode an upload, find and align its faces, make the preview-size copy (no model: runs
        on the preparation thread, beside the model's). ``codes`` is still the aligned crops."""
        if not self.live:
            raise HTTPError(501, "this editor supports only POST /api/edit")
        from affectedit.faces import align_faces_batch, detect_faces
        from affectedit.images import normalize

        photo, fmt = self.decode(data)
        del data
        rgb = photo.convert("RGB") if photo.mode != "RGB" else photo
        faces = detect_faces(rgb)
        if not faces:
            raise UserError("no face found in this photo; use a photo with a clearly visible, roughly frontal face")
        x = normalize(align_faces_batch(rgb, faces, self.editor.image_size))
        scale = min(1.0, PREVIEW_SIDE / max(rgb.size))
        if scale < 1.0:
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            small = rgb.resize(size, Image.BILINEAR, reducing_gap=2.0)
            sx, sy = size[0] / rgb.width, size[1] / rgb.height
            small_faces = [f.scaled(sx, sy) for f in faces]
        else:
            small, small_faces = rgb, faces
        entry = Photo(photo_id, photo, rgb, fmt, faces, x, small, small_faces)
        entry.original = encode_image(small, "JPEG", quality=88)
        return entry

    def encode_faces(self, entry: Photo) -> Photo:
        """E(x) of the photo's aligned faces, once (the model thread)."""
        import torch

        residual = getattr(getattr(self.editor, "edit_config", None), "mode", "") == "residual"
        with torch.inference_mode():
            entry.codes = self.editor.encode_faces(entry.codes, own=residual)
        return entry

    def prepare(self, data: bytes, photo_id: str) -> Photo:
        """``find_faces`` then ``encode_faces``, in the calling thread."""
        return self.encode_faces(self.find_faces(data, photo_id))

    def render(self, entry: Photo, valence: float, arousal: float, strength: float | None, face: int | None,
               preview: bool) -> tuple[bytes, str]:
        """The edit of a kept photo: preview size (JPEG) or full resolution (the input's format)."""
        import torch

        from affectedit.images import restore_mode
        from affectedit.warp import apply_to_photo

        n = len(entry.faces)
        if face is not None and face >= n:
            raise HTTPError(400, f"face {face} asked for but the photo has {n} face(s) (0..{n - 1}, largest first)")
        index = torch.arange(n) if face is None else torch.tensor([face])
        options = {} if strength is None else {"strength": strength}
        change = self.editor.crop_edit(entry.codes[index], torch.tensor([valence, arousal]), **options)
        pick = (lambda fs: fs) if face is None else (lambda fs: [fs[face]])
        if preview:
            out = apply_to_photo(entry.small, pick(entry.small_faces), change)
            return encode_image(out, "JPEG", quality=85), "JPEG"
        out = restore_mode(apply_to_photo(entry.rgb, pick(entry.faces), change), entry.photo)
        return encode_image(out, entry.fmt), entry.fmt


class PhotoStore:
    """The photos kept for live editing: at most ``max_photos`` and ``max_pixels`` in all; the
    least recently used are dropped first (the page uploads again when told 404)."""

    def __init__(self, max_photos: int = MAX_PHOTOS, max_pixels: int = MAX_PHOTO_PIXELS):
        self.max_photos, self.max_pixels = int(max_photos), int(max_pixels)
        self._photos: OrderedDict[str, Photo] = OrderedDict()

    def add(self, photo: Photo) -> None:
        self._photos[photo.id] = photo
        while len(self._photos) > self.max_photos or (
                len(self._photos) > 1 and sum(p.pixels for p in self._photos.values()) > self.max_pixels):
            self._photos.popitem(last=False)

    def get(self, photo_id: str) -> Photo:
        photo = self._photos.get(photo_id)
        if photo is None:
            raise HTTPError(404, "this photo is no longer on the server; upload it again")
        self._photos.move_to_end(photo_id)
        return photo

    def __len__(self) -> int:
        return len(self._photos)
