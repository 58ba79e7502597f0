"""The web page: upload a photo, drag a point on a valence/arousal disc, see and download the edit.

Stack: the standard library's ``ThreadingHTTPServer`` serving one HTML page (a canvas disc in
vanilla JavaScript, ``static/``) and one JSON/binary endpoint. Why not Gradio, the ML-demo
convention: the one widget that matters, a draggable 2-D disc labelled with emotion words, is
not a Gradio component, so it would be custom HTML/JS inside Gradio anyway, behind a large
dependency tree (FastAPI, uvicorn, pandas, httpx, ...) with its own upload handling, temp-file
cache and frequent breaking releases. Here the page is ~400 lines of HTML, CSS and JS we control,
the server adds no dependency, and the security-relevant parts (upload limit, image checks, which
files are served) are a few explicit lines that the tests exercise. Throughput is not the point: inference is
serialised behind one lock, so a thread per connection plus a bound on waiting requests
(``MAX_PENDING``, each holding at most one upload; the rest get 503) is all the concurrency a
local tool needs.

Endpoints (see :class:`Handler`):

- ``GET /``: the page; ``GET /static/NAME``: its assets (only the files of ``static/``, read
  once at start-up; any other path is 404, so nothing outside them can be reached).
- ``GET /api/info``: ``{"emotions": {word: [valence, arousal]}, "max_upload_bytes": N, ...}``.
- ``POST /api/edit?valence=V&arousal=A``: body = the image file's bytes (``Content-Type:
  image/...``), or ``multipart/form-data`` with fields ``image``, ``valence``, ``arousal`` (so
  ``curl -F image=@me.jpg -F valence=0.8 -F arousal=0.3`` works). Answers the edited photo at the
  input's size, JPEG for a JPEG input and PNG otherwise, or ``{"error": "..."}`` with 400 (not an
  image, bad values), 411 (no length), 413 (too large), 422 (no face), 503 (too many waiting).

This module imports no model code until a server is built; the model is loaded once by the caller
(``affectedit serve``) and shared by all requests.
"""
from __future__ import annotations

import email.parser
import email.policy
import io
import ipaddress
import json
import logging
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from affectedit.errors import UserError

__all__ = ["EditServer", "Handler", "make_server", "serve", "open_upload", "load_upload", "DEFAULT_PORT", "MAX_PIXELS"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest photo accepted, in pixels (explicit, so a decompression bomb is refused before decoding,
#: whatever PIL's global MAX_IMAGE_PIXELS is). 50 MP covers any phone or DSLR photo.
MAX_PIXELS = 50_000_000
#: Requests allowed to wait for the model at once; more are told to retry (503).
MAX_PENDING = 32
#: Formats decoded; anything else PIL recognises (PSD, EPS, ...) is refused as "not a photo".
ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF", "MPO": "JPEG"}
#: An oversize body is read and discarded up to this many bytes so the client sees the 413 (closing
#: mid-upload makes browsers report a network error instead); beyond it the connection is dropped.
DRAIN_LIMIT = 256 * 1024 * 1024

STATIC_DIR = Path(__file__).with_name("static")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
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

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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


def parse_dial(name: str, text: str | None) -> float:
    """A valence/arousal value from a request: a finite number in [-1, 1], else HTTP 400."""
    if text is None or not str(text).strip():
        raise HTTPError(400, f"missing {name}: send {name}=NUMBER in [-1, 1]")
    try:
        value = float(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number in [-1, 1], got {str(text)[:40]!r}") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise HTTPError(400, f"{name} must be in [-1, 1], got {value:g}")
    return value


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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
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
    """Decode an image from :func:`open_upload` to RGB, upright (EXIF orientation applied).
    A damaged or truncated file is HTTPError 400."""
    try:
        with image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError:
        raise HTTPError(400, "the image is too large to decode safely") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise HTTPError(400, "the image file is damaged or truncated; upload it again or export it anew") from None


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, "JPEG", quality=95, subsampling=0)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """Fields of a ``multipart/form-data`` body, name -> raw bytes (the standard library's email
    parser; the ``cgi`` module is gone from Python 3.13)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise HTTPError(400, "malformed multipart/form-data body")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


class EditServer(ThreadingHTTPServer):
    """The HTTP server: holds the one editor, its lock, the static table and the limits."""

    daemon_threads = True
    # Larger backlog than the default 5 so bursts of clients queue in the kernel, not get refused.
    request_queue_size = 64

    def __init__(self, address, editor, emotions: dict, max_upload_bytes: int,
                 max_pixels: int = MAX_PIXELS, max_pending: int = MAX_PENDING, quiet: bool = False):
        self.editor = editor
        self.emotions = {str(k): [float(v[0]), float(v[1])] for k, v in emotions.items()}
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.static = load_static()
        self.quiet = quiet
        if max_pending < 1:
            raise UserError(f"max_pending must be at least 1, got {max_pending}")
        # One model, one edit at a time (parallel CPU inference would only fight over the same
        # cores, and one decoded photo at a time bounds memory); at most max_pending requests
        # hold an upload in memory while they wait for it, the rest are answered 503.
        self.model_lock = threading.Lock()
        self.pending = threading.BoundedSemaphore(max_pending)
        super().__init__(address, Handler)
        host = self.server_address[0]
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"

    def handle_error(self, request, client_address):
        """A client that went away mid-answer (the page aborts an edit it no longer wants) is
        normal; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        log.exception("error while serving %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def edit(self, upload: Image.Image, valence: float, arousal: float) -> Image.Image:
        """Decode ``upload`` (from :func:`open_upload`) and edit it, under the model lock: one
        decoded photo in memory at a time, however many requests wait."""
        with self.model_lock:
            return self.editor.edit(load_upload(upload), valence, arousal)


class Handler(BaseHTTPRequestHandler):
    server: EditServer
    server_version = "affectedit"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # Seconds a connection may stall (slow uploads, idle keep-alive) before it is closed.
    timeout = 60

    # -- plumbing ------------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        if not self.server.quiet:
            log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None,
              close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj, close: bool = False) -> None:
        body = json.dumps(obj).encode()
        self._send(status, body, "application/json", {"Cache-Control": "no-store"}, close=close)

    def _send_error(self, error: HTTPError, close: bool = False) -> None:
        self._send_json(error.status, {"error": error.message}, close=close)

    def _host_ok(self) -> bool:
        """On a loopback address, answer only requests addressed to localhost: a web site that
        points its own name at 127.0.0.1 (DNS rebinding) must not be able to drive the server."""
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
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

    # -- routes --------------------------------------------------------------------------------

    def do_GET(self):
        if not self._host_ok():
            return self._send_error(HTTPError(403, "unexpected Host header; open the page via localhost"))
        path = urlsplit(self.path).path
        if path == "/api/info":
            return self._send_json(200, {
                "emotions": self.server.emotions,
                "max_upload_bytes": self.server.max_upload_bytes,
                "max_pixels": self.server.max_pixels,
            })
        if path in self.server.static:  # exact match against the table; no file-system lookups
            body, content_type = self.server.static[path]
            return self._send(200, body, content_type, {"Cache-Control": "no-cache"})
        return self._send_error(HTTPError(404, "not found"))

    do_HEAD = do_GET  # noqa: N815 - http.server's naming

    def do_POST(self):
        if not self._host_ok():
            return self._send_error(HTTPError(403, "unexpected Host header; open the page via localhost"), close=True)
        if urlsplit(self.path).path != "/api/edit":
            return self._send_error(HTTPError(404, "not found"), close=True)
        try:
            length = self._content_length()
        except HTTPError as e:
            return self._send_error(e, close=True)
        # A slot among the requests allowed to wait, taken before the body is read: at most
        # max_pending uploads are held in memory at once.
        if not self.server.pending.acquire(blocking=False):
            self._drain(length)
            return self._send_error(HTTPError(503, "the server is busy with other edits; try again in a moment"))
        t0 = time.perf_counter()
        try:
            try:
                body = self.rfile.read(length)
            except (TimeoutError, ConnectionError):  # the client stalled or left mid-upload
                self.close_connection = True
                return
            if len(body) != length:
                return self._send_error(HTTPError(400, "the upload was cut off; try again"), close=True)
            upload, out_format, valence, arousal = self._parse_edit(body)
            del body
            edited = self.server.edit(upload, valence, arousal)
            data = encode_image(edited, out_format)
            del edited
        except HTTPError as e:
            return self._send_error(e)
        except UserError as e:  # the editor's own message: no face found, and the like
            return self._send_json(422, {"error": str(e)})
        except Exception as e:
            log.exception("edit failed")
            return self._send_json(500, {"error": f"the edit failed: {type(e).__name__}: {e}"})
        finally:
            self.server.pending.release()
        mime = "image/jpeg" if out_format == "JPEG" else "image/png"
        self._send(200, data, mime, {
            "Cache-Control": "no-store",
            "X-Valence": f"{valence:.3f}",
            "X-Arousal": f"{arousal:.3f}",
            "Server-Timing": f"edit;dur={1000 * (time.perf_counter() - t0):.1f}",
        })

    # -- helpers -------------------------------------------------------------------------------

    def _content_length(self) -> int:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise HTTPError(411, "chunked uploads are not supported; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HTTPError(411, "missing Content-Length")
        try:
            length = int(length_text)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if length < 0:
            raise HTTPError(400, "bad Content-Length")
        limit = self.server.max_upload_bytes
        if length > limit:
            self._drain(length)
            raise HTTPError(413, f"the upload is too large ({length / 2**20:.1f} MB; the limit is "
                                 f"{limit / 2**20:g} MB): choose a smaller photo or restart the server "
                                 f"with a larger --max-upload-mb")
        return length

    def _drain(self, length: int) -> None:
        """Read and discard an oversize body (bounded) so the client gets to read the 413."""
        remaining = length if length <= DRAIN_LIMIT else 0
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _parse_edit(self, body: bytes):
        query = parse_qs(urlsplit(self.path).query)
        values = {k: v[-1] for k, v in query.items()}
        content_type = self.headers.get("Content-Type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            fields = parse_multipart(body, content_type)
            if "image" not in fields:
                raise HTTPError(400, "the form has no 'image' field; send the photo as image=@FILE")
            body = fields.pop("image")
            for key in ("valence", "arousal"):
                if key in fields:
                    values[key] = fields[key].decode("utf-8", "replace")
        valence = parse_dial("valence", values.get("valence"))
        arousal = parse_dial("arousal", values.get("arousal"))
        upload, out_format = open_upload(body, self.server.max_pixels)
        return upload, out_format, valence, arousal


def make_server(editor, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, emotions: dict | None = None,
                max_pixels: int = MAX_PIXELS, max_pending: int = MAX_PENDING, quiet: bool = False) -> EditServer:
    """Bind an :class:`EditServer` for ``editor`` (anything with ``edit(image, valence, arousal)``).

    ``port=0`` picks a free port (see ``server.url``). ``emotions`` (word -> (valence, arousal))
    labels the disc; by default ``affectedit.emotions.EMOTIONS``. Call ``serve_forever()`` on the
    result, and ``shutdown()`` / ``server_close()`` to stop it."""
    if max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if emotions is None:
        from affectedit.emotions import EMOTIONS

        emotions = EMOTIONS
    try:
        return EditServer((host, port), editor, emotions, int(max_upload_mb * 2**20),
                          max_pixels=max_pixels, max_pending=max_pending, quiet=quiet)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                        f"choose another --port or --host") from None


def serve(editor, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
    """Serve the page until Ctrl-C."""
    server = make_server(editor, host, port, max_upload_mb)
    print(f"affectedit: serving on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not server.loopback:
        print("affectedit: warning: this address is reachable from other machines; anyone who can reach it "
              "can upload photos to this computer", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
