"""Uploads: request bodies read with the size limit, the timeouts and the memory budget enforced
(raw bytes or streamed ``multipart/form-data``), and the photo checked from its header, then decoded."""
from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass, field

from PIL import Image
from starlette.requests import ClientDisconnect, Request

from affectedit.errors import UserError
from affectedit.web import MAX_PIXELS
from affectedit.web.limits import HTTPError, Limits

#: Formats decoded; anything else PIL recognises (PSD, EPS, ...) is refused as "not a photo".
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF", "MPO": "JPEG"}
#: An oversize body is read and discarded up to this many bytes so the client sees the 413 (closing
#: mid-upload makes browsers report a network error instead); beyond it the connection is dropped.
DRAIN_LIMIT = 256 * 1024 * 1024
#: Small multipart fields (valence, ...) are at most this long.
MAX_FIELD_BYTES = 1024


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
