"""The web server: a Starlette app on uvicorn in front of one Editor (see ``affectedit.web``).

Endpoints (all answers carry the security headers below; errors are ``{"error": "..."}``):

- ``GET /``, ``GET /static/NAME``: the page and its assets (only the files of ``static/``, read
  once at start-up into a table; any other path is 404, so nothing else can be reached).
- ``GET /api/info``: ``{"emotions": {word: [valence, arousal]}, "max_upload_bytes": N, ...}``.
- ``POST /api/photos``: body = a photo (raw bytes or ``multipart/form-data`` field ``image``).
  The server decodes it, finds the faces and encodes them once, and keeps it for live editing
  (a bounded number of photos, least recently used dropped first). Answers ``{"id", "width",
  "height", "faces": [{"box": [x0, y0, x1, y1]}, ...] (largest first), "preview": [w, h]}``.
- ``GET /api/photos/ID/original``: the photo unedited, at preview size (JPEG).
- ``GET /api/photos/ID/preview?valence=V&arousal=A[&strength=S][&face=K]``: the edited photo at
  preview size (longest side ``PREVIEW_SIDE``), JPEG: what the page shows while the dial moves.
- ``GET /api/photos/ID/edit?...``: the same edit at the photo's full resolution, JPEG for a JPEG
  input and PNG otherwise (what the page shows on release and downloads).
- ``POST /api/edit?valence=V&arousal=A[&strength=S][&face=K]`` or ``?emotion=happy``: one-shot
  edit, nothing kept; body as for ``/api/photos`` (so ``curl -F image=@me.jpg -F emotion=happy``
  works). Answers the edited photo at full resolution.

Status codes: 400 (not an image, bad values), 403 (foreign Host header on a loopback server),
404 (unknown path or photo), 408 (upload stalled or too slow), 413 (too large), 422 (no face),
503 (too many jobs waiting or too many bytes in flight; retry).

Limits, all enforced by the server: the upload size (``Content-Length`` checked before reading,
the bytes counted while reading, chunked bodies included); body-read timeouts (a stall longer
than ``idle_timeout`` or a body slower than ``body_timeout`` in all is 408); a header timeout (a
connection that has not sent a request line and headers within ``header_timeout`` is closed);
at most ``max_connections`` connections (uvicorn answers 503 beyond); at most ``max_buffered``
bytes of request bodies held in memory at once. Bodies are read asynchronously, so slow clients
hold a socket and a few kB, never a thread: they cannot starve the others. The model runs one job
at a time in one worker thread (parallel CPU inference would only fight over the same cores),
behind a bounded queue (``max_pending`` jobs; more are told to retry with 503), previews first
within a small slack (earliest deadline first: a preview is a few milliseconds of model time and
the person dragging the dial is waiting for it, but no edit waits for ever behind newer previews).
Decoding an upload and finding its faces (PIL and dlib, which release the GIL) run on a second
thread with its own bounded queue, so that on a 2-core machine a new upload does not stall
everyone's previews.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import ipaddress
import itertools
import logging
import math
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from affectedit.errors import UserError
from affectedit.web import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, MAX_PIXELS, MAX_UPLOAD_MB_LIMIT

__all__ = ["HTTPError", "Limits", "WebServer", "create_app", "load_upload", "make_server", "open_upload", "parse_dial", "serve"]

log = logging.getLogger(__name__)

#: Jobs allowed to wait for the model at once (queued + running); more are told to retry (503).
MAX_PENDING = 32
#: Longest side of the live preview, in pixels.
PREVIEW_SIDE = 640
#: Photos kept for live editing (least recently used dropped first), and their pixels in all.
MAX_PHOTOS = 64
MAX_PHOTO_PIXELS = 100_000_000
#: Formats decoded; anything else PIL recognises (PSD, EPS, ...) is refused as "not a photo".
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF", "MPO": "JPEG"}
#: An oversize body is read and discarded up to this many bytes so the client sees the 413 (closing
#: mid-upload makes browsers report a network error instead); beyond it the connection is dropped.
DRAIN_LIMIT = 256 * 1024 * 1024
#: Small multipart fields (valence, ...) are at most this long.
MAX_FIELD_BYTES = 1024

STATIC_DIR = Path(__file__).with_name("static")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the request body was not read to its end: close the connection


@dataclass
class Limits:
    """What the server accepts; see the module docstring."""

    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_pixels: int = MAX_PIXELS
    max_pending: int = MAX_PENDING
    max_connections: int = 200
    max_buffered: int = 0  # bytes of bodies in memory at once; 0: max(256 MB, 4 uploads)
    header_timeout: float = 20.0
    idle_timeout: float = 20.0
    body_timeout: float = 120.0
    max_photos: int = MAX_PHOTOS

    def __post_init__(self):
        if self.max_pending < 1:
            raise UserError(f"max_pending must be at least 1, got {self.max_pending}")
        if not self.max_buffered:
            self.max_buffered = max(256 * 2**20, 4 * self.max_upload_bytes)


def check_upload_mb(value) -> float:
    """--max-upload-mb: a finite number in (0, MAX_UPLOAD_MB_LIMIT], else a one-line UserError."""
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = math.nan
    if not (math.isfinite(mb) and 0 < mb <= MAX_UPLOAD_MB_LIMIT):
        raise UserError(f"--max-upload-mb must be a number of megabytes in (0, {MAX_UPLOAD_MB_LIMIT:g}], got {value}")
    return mb


# --------------------------------------------------------------------------------------------- values


def load_static(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """Read the page's assets once: ``{"/static/name": (bytes, content type)}`` plus ``"/"``.

    Serving from this fixed table (never from the file system at request time) is what makes path
    traversal impossible: a request path either is one of these keys or is 404."""
    table = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _CONTENT_TYPES:
            table[f"/static/{path.name}"] = (path.read_bytes(), _CONTENT_TYPES[path.suffix])
    if "/static/index.html" not in table:
        raise UserError(f"the web page's files are missing from {folder}; reinstall affectedit")
    table["/"] = table["/static/index.html"]
    return table


def parse_dial(name: str, text: str | None, low: float = -1.0, high: float = 1.0, default: float | None = None) -> float:
    """A number from a request: finite and in [low, high], else HTTP 400 (missing: ``default``)."""
    if text is None or not str(text).strip():
        if default is not None:
            return default
        raise HTTPError(400, f"missing {name}: send {name}=NUMBER in [{low:g}, {high:g}]")
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number in [{low:g}, {high:g}], got {str(text)[:40]!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise HTTPError(400, f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return value


def parse_face(text: str | None) -> int | None:
    if text is None or not str(text).strip() or str(text).strip() == "all":
        return None
    try:
        face = int(text)
    except ValueError:
        raise HTTPError(400, f"face must be a face number (0 = the largest) or 'all', got {str(text)[:40]!r}") from None
    if face < 0:
        raise HTTPError(400, f"face must be 0 or more, got {face}")
    return face


def parse_target(values, emotions: dict) -> tuple[float, float]:
    """(valence, arousal) from ``valence`` and ``arousal``, or from an ``emotion`` word."""
    word = (values.get("emotion") or "").strip().lower()
    if word and values.get("valence") is None and values.get("arousal") is None:
        if word not in emotions:
            raise HTTPError(400, f"unknown emotion {word[:40]!r}; known: {', '.join(sorted(emotions))}")
        return tuple(emotions[word])
    return parse_dial("valence", values.get("valence")), parse_dial("arousal", values.get("arousal"))


def open_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """Check an uploaded file from its header alone: an accepted format, at most ``max_pixels``
    pixels (so a decompression bomb is refused before a single pixel is decoded).

    Returns the not yet decoded image (see :func:`load_upload`) and the format to answer in
    ("JPEG" or "PNG"). Raises HTTPError 400 with a message for the user."""
    if not data:
        raise HTTPError(400, "the upload is empty; choose a photo (JPEG, PNG or WebP)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise HTTPError(400, f"the image is too large (more than {max_pixels:,} pixels)") from None
    except Exception:  # noqa: BLE001 - a fuzzed header makes Pillow raise TypeError, struct.error, ...: not an image
        raise HTTPError(400, "this file is not an image; upload a photo (JPEG, PNG or WebP)") from None
    if image.format not in ACCEPTED_FORMATS:
        raise HTTPError(400, f"{image.format} images are not supported; upload a JPEG, PNG or WebP photo")
    w, h = image.size
    if w < 1 or h < 1:
        raise HTTPError(400, "the image has no pixels")
    if w * h > max_pixels:
        raise HTTPError(400, f"the image is too large ({w} x {h} pixels; at most {max_pixels:,} pixels)")
    return image, "JPEG" if ACCEPTED_FORMATS[image.format] == "JPEG" else "PNG"


def load_upload(image: Image.Image) -> Image.Image:
    """Decode an image from :func:`open_upload` with the project's one image reader
    (``images.read_photo``: upright, 8 bits per channel, L/RGB/RGBA/LA/CMYK). An image that cannot
    be decoded is HTTPError 400."""
    from affectedit.images import read_photo

    try:
        with image:
            return read_photo(image, "the upload")[0].copy()
    except Image.DecompressionBombError:
        raise HTTPError(400, "the image is too large to decode safely") from None
    except (UserError, OSError, ValueError, SyntaxError, EOFError):
        raise HTTPError(400, "the image file is damaged or truncated; upload it again or export it anew") from None


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """The answer's bytes (``images.encode_image``: the mode fitted to the format)."""
    from affectedit.images import encode_image as encode

    if fmt == "JPEG":
        return encode(image, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return encode(image, "PNG", compress_level=3)


# --------------------------------------------------------------------------------------------- the model side


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


def _scaled_face(face, sx: float, sy: float):
    """The same face in a copy of the photo resized by (sx, sy) (pixel centres at integers)."""
    import numpy as np

    from affectedit.faces import Face

    lm = (np.asarray(face.landmarks, dtype=np.float64) + 0.5) * (sx, sy) - 0.5
    x0, y0, x1, y1 = face.box
    return Face.from_landmarks(lm, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), score=face.score)


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
            small_faces = [_scaled_face(f, sx, sy) for f in faces]
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


# Job kinds and their slack in seconds (see JobQueue): the person dragging the dial waits for a
# preview; a full edit may wait a little longer; uploads are the slowest jobs.
PREVIEW, EDIT, UPLOAD = 0, 1, 2
SLACK = {PREVIEW: 0.0, EDIT: 0.25, UPLOAD: 0.5}


class JobQueue:
    """One worker thread runs the jobs one at a time, earliest deadline first: a job's deadline is
    its arrival time plus the slack of its kind (``SLACK[priority]``), so a preview overtakes an
    edit that arrived less than a quarter of a second before it, but nothing waits behind newer
    jobs for ever. At most ``max_pending`` jobs queued or running."""

    def __init__(self, max_pending: int, name: str = "affectedit-model"):
        self.max_pending = int(max_pending)
        self.pending = 0  # touched only on the event loop's thread
        self.most_at_once = 0
        self._heap: list = []
        self._count = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, priority: int, fn, *args):
        if self.pending >= self.max_pending:
            raise HTTPError(503, "the server is busy with other edits; try again in a moment")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending += 1
        try:
            with self._cv:
                if self._closed:
                    raise HTTPError(503, "the server is shutting down")
                deadline = time.monotonic() + SLACK.get(priority, 0.0)
                heapq.heappush(self._heap, (deadline, next(self._count), loop, future, fn, args))
                self._cv.notify()
            return await future
        finally:
            self.pending -= 1

    def _work(self):
        running = 0
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if self._closed and not self._heap:
                    return
                _, _, loop, future, fn, args = heapq.heappop(self._heap)
            if future.cancelled():
                continue
            running += 1
            self.most_at_once = max(self.most_at_once, running)
            try:
                result, error = fn(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                result, error = None, e
            finally:
                running -= 1
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _settle(future, result, error):
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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


# --------------------------------------------------------------------------------------------- reading bodies


@dataclass
class Upload:
    data: bytes = b""
    fields: dict = field(default_factory=dict)


class BodyReader:
    """Reads request bodies with the size limit, the timeouts and the memory budget enforced."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.buffered = 0  # bytes of bodies being read or waiting for the model, all requests

    @contextlib.asynccontextmanager
    async def read(self, request: Request):
        held = [0]
        try:
            yield await self._read(request, held)
        finally:
            self.buffered -= held[0]

    def _take(self, held: list, n: int) -> None:
        if self.buffered + n > self.limits.max_buffered:
            raise HTTPError(503, "the server is receiving too many uploads at once; try again in a moment", close=True)
        self.buffered += n
        held[0] += n

    async def _read(self, request: Request, held: list) -> Upload:
        limit = self.limits.max_upload_bytes
        length_text = request.headers.get("content-length")
        length = None
        if length_text is not None:
            try:
                length = int(length_text)
            except ValueError:
                raise HTTPError(400, "bad Content-Length", close=True) from None
            if length < 0:
                raise HTTPError(400, "bad Content-Length", close=True)
            if length > limit:
                await self._drain(request, length)
                raise HTTPError(413, self._too_large(length), close=length > DRAIN_LIMIT)
        content_type = request.headers.get("content-type") or ""
        parser = _Multipart(content_type) if content_type.lower().startswith("multipart/form-data") else None
        chunks: list[bytes] = []
        total = 0
        async for chunk in self._chunks(request):
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, self._too_large(total, more=True), close=True)
            if parser is not None:
                self._take(held, parser.feed(chunk))
            else:
                self._take(held, len(chunk))
                chunks.append(chunk)
        if length is not None and total != length:
            raise HTTPError(400, "the upload was cut off; try again", close=True)
        if parser is None:
            return Upload(b"".join(chunks))
        return parser.finish()

    def _too_large(self, n: int, more: bool = False) -> str:
        limit = self.limits.max_upload_bytes
        return (f"the upload is too large ({'over ' if more else ''}{n / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB): "
                f"choose a smaller photo or restart the server with a larger --max-upload-mb")

    async def _chunks(self, request: Request):
        """The body's chunks; HTTPError 408 when it stalls for ``idle_timeout`` or takes longer
        than ``body_timeout`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        stream = request.stream().__aiter__()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise HTTPError(408, f"the upload took longer than {self.limits.body_timeout:g} s; try again on a faster connection",
                                close=True)
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), min(left, self.limits.idle_timeout))
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                if deadline - loop.time() <= 0:
                    continue  # the total deadline: answered at the top of the loop
                raise HTTPError(408, f"the upload stalled for {self.limits.idle_timeout:g} s; try again", close=True) from None
            if chunk:
                yield chunk

    async def _drain(self, request: Request, length: int) -> None:
        """Read and discard an oversize body (bounded) so that the client gets to read the 413."""
        if length > DRAIN_LIMIT:
            return
        with contextlib.suppress(HTTPError, ClientDisconnect):
            async for _ in self._chunks(request):
                pass


class _Multipart:
    """A streaming ``multipart/form-data`` parser (python-multipart) that keeps the ``image`` part's
    bytes and small text fields, and nothing else."""

    def __init__(self, content_type: str):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._options = parse_options_header
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise HTTPError(400, "malformed multipart/form-data: no boundary", close=True)
        self.fields: dict[str, str] = {}
        self.image: list[bytes] | None = None
        self._name = None
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""
        self._part: list[bytes] = []
        self._part_size = 0
        callbacks = {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: setattr(self, "_header_field", self._header_field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_header_value", self._header_value + d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks)
        self._kept = 0

    def _begin(self):
        self._name, self._disposition, self._part, self._part_size = None, b"", [], 0

    def _header_end(self):
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
            _, params = self._options(self._header_value)
            self._name = params.get(b"name", b"").decode("utf-8", "replace")
        self._header_field = self._header_value = b""

    def _data(self, data, start, end):
        n = end - start
        self._part_size += n
        if self._name == "image":
            self._part.append(bytes(data[start:end]))
            self._kept += n
        elif self._part_size <= MAX_FIELD_BYTES:
            self._part.append(bytes(data[start:end]))
            self._kept += n

    def _end(self):
        if self._name == "image":
            if self.image is not None:
                raise HTTPError(400, "the form has more than one 'image' field", close=True)
            self.image = self._part
        elif self._name and self._part_size <= MAX_FIELD_BYTES:
            self.fields[self._name] = b"".join(self._part).decode("utf-8", "replace")
        self._part = []

    def feed(self, chunk: bytes) -> int:
        """Parse a chunk; returns how many bytes of it are kept in memory."""
        before = self._kept
        try:
            self._parser.write(chunk)
        except HTTPError:
            raise
        except Exception as e:  # noqa: BLE001 - python-multipart's errors: a malformed body
            raise HTTPError(400, f"malformed multipart/form-data body ({type(e).__name__})", close=True) from None
        return self._kept - before

    def finish(self) -> Upload:
        try:
            self._parser.finalize()
        except Exception as e:  # noqa: BLE001
            raise HTTPError(400, f"malformed multipart/form-data body ({type(e).__name__})") from None
        if self.image is None:
            raise HTTPError(400, "the form has no 'image' field; send the photo as image=@FILE")
        return Upload(b"".join(self.image), self.fields)


# --------------------------------------------------------------------------------------------- the app


def _host_ok(host: str) -> bool:
    """On a loopback address, answer only requests addressed to localhost: a web site that points
    its own name at 127.0.0.1 (DNS rebinding) must not be able to drive the server."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: the Host check of a loopback server and the security headers on every answer."""

    def __init__(self, app, loopback: bool):
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        if self.loopback:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not _host_ok(host):
                response = _error_response(HTTPError(403, "unexpected Host header; open the page via localhost", close=True))
                return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def _error_response(error: HTTPError) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if error.close:
        headers["Connection"] = "close"
    if error.status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


def _image_response(data: bytes, fmt: str, valence: float, arousal: float, t0: float) -> Response:
    return Response(data, media_type="image/jpeg" if fmt == "JPEG" else "image/png", headers={
        "Cache-Control": "no-store",
        "X-Valence": f"{valence:.3f}",
        "X-Arousal": f"{arousal:.3f}",
        "Server-Timing": f"edit;dur={1000 * (time.perf_counter() - t0):.1f}",
    })




def create_app(editor, emotions: dict | None = None, limits: Limits | None = None, loopback: bool = True) -> Starlette:
    """The ASGI app serving ``editor`` (anything with ``edit(image, valence, arousal)``; live
    editing needs an ``affectedit.Editor``). ``app.state`` holds the job queue and the photos."""
    if emotions is None:
        from affectedit.emotions import EMOTIONS

        emotions = EMOTIONS
    emotions = {str(k): [float(v[0]), float(v[1])] for k, v in emotions.items()}
    limits = limits or Limits()
    static = load_static()
    engine = Engine(editor, limits)
    jobs = JobQueue(limits.max_pending)
    # Decoding and face finding (dlib, PIL: they release the GIL) run on a second thread, so that
    # on a 2-core machine a new upload does not hold up the previews of everyone else.
    prep = JobQueue(limits.max_pending, name="affectedit-prepare")
    photos = PhotoStore(limits.max_photos)
    reader = BodyReader(limits)

    def strength_of(values) -> float | None:
        text = values.get("strength")
        return None if text is None or not str(text).strip() else parse_dial("strength", text, 0.0, 4.0)

    async def index(request: Request) -> Response:
        body, content_type = static["/"]
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-cache"})

    async def asset(request: Request) -> Response:
        entry = static.get("/static/" + request.path_params["name"])
        if entry is None:  # exact match against the table; no file-system lookups
            raise HTTPError(404, "not found")
        return Response(entry[0], media_type=entry[1], headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse({
            "emotions": emotions,
            "max_upload_bytes": limits.max_upload_bytes,
            "max_pixels": limits.max_pixels,
            "strength": engine.default_strength(),
            "live": engine.live,
            "preview_side": PREVIEW_SIDE,
            "example": "/static/example.jpg" if "/static/example.jpg" in static else None,
        }, headers={"Cache-Control": "no-store"})

    async def edit(request: Request) -> Response:
        t0 = time.perf_counter()
        async with reader.read(request) as upload:
            values = {**request.query_params, **upload.fields}
            valence, arousal = parse_target(values, emotions)
            strength, face = strength_of(values), parse_face(values.get("face"))
            data, fmt = await jobs.run(EDIT, engine.edit_once, upload.data, valence, arousal, strength, face)
        return _image_response(data, fmt, valence, arousal, t0)

    async def upload_photo(request: Request) -> Response:
        async with reader.read(request) as upload:
            entry = await prep.run(0, engine.find_faces, upload.data, secrets.token_urlsafe(12))
        entry = await jobs.run(PREVIEW, engine.encode_faces, entry)  # a few ms: do not queue it behind edits
        photos.add(entry)
        return JSONResponse({
            "id": entry.id,
            "width": entry.rgb.width,
            "height": entry.rgb.height,
            "format": entry.fmt,
            "faces": [{"box": [round(float(v), 1) for v in f.box]} for f in entry.faces],
            "preview": [entry.small.width, entry.small.height],
        }, headers={"Cache-Control": "no-store"})

    async def original(request: Request) -> Response:
        entry = photos.get(request.path_params["id"])
        return Response(entry.original, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def render_route(preview: bool):
        async def render(request: Request) -> Response:
            t0 = time.perf_counter()
            entry = photos.get(request.path_params["id"])
            values = request.query_params
            valence, arousal = parse_target(values, emotions)
            strength, face = strength_of(values), parse_face(values.get("face"))
            data, fmt = await jobs.run(PREVIEW if preview else EDIT, engine.render, entry, valence, arousal, strength, face, preview)
            return _image_response(data, fmt, valence, arousal, t0)

        return render

    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return _error_response(exc)

    async def on_user_error(request: Request, exc: UserError) -> Response:
        return _error_response(HTTPError(422, str(exc)))

    async def on_not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error_response(HTTPError(status, "not found" if status == 404 else "method not allowed"))

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400, headers={"Connection": "close"})  # nobody reads it

    app = Starlette(routes=[
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/edit", edit, methods=["POST"]),
        Route("/api/photos", upload_photo, methods=["POST"]),
        Route("/api/photos/{id}/original", original, methods=["GET"]),
        Route("/api/photos/{id}/preview", render_route(True), methods=["GET"]),
        Route("/api/photos/{id}/edit", render_route(False), methods=["GET"]),
    ], exception_handlers={HTTPError: on_http_error, UserError: on_user_error, 404: on_not_found, 405: on_not_found,
                           ClientDisconnect: on_disconnect, Exception: _on_crash})
    app.state.jobs, app.state.prep, app.state.photos, app.state.reader = jobs, prep, photos, reader
    app.state.engine, app.state.limits = engine, limits
    return Guard(app, loopback)


async def _on_crash(request: Request, exc: Exception) -> Response:
    log.error("edit failed", exc_info=exc)
    return _error_response(HTTPError(500, f"the edit failed: {type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------------------------- the server


def _protocol_class(header_timeout: float):
    """uvicorn's h11 protocol with a header timeout: a connection that has not started a request
    within ``header_timeout`` seconds of opening is closed (uvicorn itself only times out idle
    keep-alive connections, so a client trickling its request line would hold a connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _header_timeout(self):
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc):
            self._header_timer.cancel()
            super().connection_lost(exc)

    return Protocol


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class WebServer:
    """uvicorn serving the app on a socket bound at construction (so ``url`` is known at once and
    connections queue before ``serve_forever`` runs). ``serve_forever()`` (in the main thread it
    stops on Ctrl-C/SIGTERM), ``shutdown()`` from another thread, ``server_close()``."""

    def __init__(self, editor, host: str, port: int, limits: Limits, emotions: dict | None = None, quiet: bool = False):
        import uvicorn

        self.loopback = _is_loopback(host)
        self.app = create_app(editor, emotions, limits, loopback=self.loopback)
        self.limits = limits
        self.sock = _bind(host, port)
        self.server_address = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=not quiet, log_level="warning" if quiet else "info",
            limit_concurrency=limits.max_connections, timeout_keep_alive=5, timeout_graceful_shutdown=5,
            http=_protocol_class(limits.header_timeout), ws="none", server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._done = threading.Event()
        self._done.set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    @property
    def jobs(self) -> JobQueue:
        return self.app.app.state.jobs

    def serve_forever(self) -> None:
        self._done.clear()
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self.app.app.state.prep.close()
        self.jobs.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}); choose another --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def make_server(editor, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                emotions: dict | None = None, max_pixels: int = MAX_PIXELS, max_pending: int = MAX_PENDING,
                quiet: bool = False, **limits) -> WebServer:
    """Bind a :class:`WebServer` for ``editor`` (an ``affectedit.Editor``; anything with
    ``edit(image, valence, arousal)`` serves the one-shot ``/api/edit``).

    ``port=0`` picks a free port (see ``server.url``). ``emotions`` (word -> (valence, arousal))
    labels the disc; by default ``affectedit.emotions.EMOTIONS``. ``limits``: further
    :class:`Limits` fields (timeouts, max_connections, ...). Call ``serve_forever()`` on the
    result, and ``shutdown()`` / ``server_close()`` to stop it."""
    mb = check_upload_mb(max_upload_mb)
    return WebServer(editor, host, port, Limits(max_upload_bytes=int(mb * 2**20), max_pixels=max_pixels,
                                               max_pending=max_pending, **limits), emotions, quiet)


def serve(editor, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          **limits) -> None:
    """Serve the page until Ctrl-C or SIGTERM (in the main thread)."""
    server = make_server(editor, host, port, max_upload_mb, **limits)
    print(f"affectedit: serving on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not server.loopback:
        print("affectedit: warning: this address is reachable from other machines; anyone who can reach it "
              "can upload photos to this computer", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
