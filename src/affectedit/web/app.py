"""The ASGI app (:func:`create_app`): the page's files, the routes and their handlers (the
endpoints are listed in ``affectedit.web.server``), the request values, the error answers, and
the guard that checks the Host header and adds the security headers to every answer."""
from __future__ import annotations

import ipaddress
import logging
import math
import secrets
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from affectedit.errors import UserError
from affectedit.web.engine import PREVIEW_SIDE, Engine, PhotoStore
from affectedit.web.jobs import EDIT, PREVIEW, JobQueue
from affectedit.web.limits import HTTPError, Limits
from affectedit.web.uploads import BodyReader

# Named for the server, as it was before the split into modules (log configurations name it).
log = logging.getLogger("affectedit.web.server")

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
