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

Modules: ``server`` (this one: uvicorn, the socket, ``make_server`` and ``serve``), ``app`` (the
routes and handlers, the page's files, the Host guard), ``uploads`` (reading bodies, checking and
decoding photos), ``engine`` (the model's work and the photos kept), ``jobs`` (the worker thread's
queue) and ``limits`` (``Limits``, ``HTTPError``).
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading

from affectedit.errors import UserError
from affectedit.web import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, MAX_PIXELS
from affectedit.web.app import create_app, parse_dial
from affectedit.web.jobs import JobQueue
from affectedit.web.limits import MAX_PENDING, HTTPError, Limits, check_upload_mb
from affectedit.web.uploads import load_upload, open_upload

__all__ = ["HTTPError", "Limits", "WebServer", "create_app", "load_upload", "make_server", "open_upload", "parse_dial", "serve"]


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
