"""The web page: upload a photo, drag a point on a valence/arousal disc, watch the face follow live,
compare before/after and download the full-resolution edit.

Stack: Starlette (routing, requests, responses) on uvicorn (the ASGI server), python-multipart
for ``multipart/form-data`` uploads; the page is ~600 lines of vanilla HTML/CSS/JS in ``static/``
(no build step). Why not Gradio: the one widget that matters, a draggable 2-D disc labelled with
emotion words and a live preview while dragging, is not a Gradio component, so it would be custom
HTML/JS inside Gradio anyway, behind a much larger dependency tree (FastAPI, pandas, httpx, ...)
with its own upload cache and queue; Starlette gives the same server-side guarantees (an
asynchronous server that slow clients cannot block, streaming multipart) with a few small
dependencies and less code. See ``affectedit.web.server`` for the endpoints and the limits.

This package's ``__init__`` imports nothing heavy (the CLI reads the defaults below while it builds
``--help``); ``make_server`` and ``serve`` load the server module on first use. Install the server
with ``pip install 'affectedit[web]'``.
"""
from __future__ import annotations

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_UPLOAD_MB", "DEFAULT_PORT", "MAX_PIXELS", "MAX_UPLOAD_MB_LIMIT",
           "make_server", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
#: The largest --max-upload-mb accepted: a photo file beyond this is no photo.
MAX_UPLOAD_MB_LIMIT = 1024.0
#: Largest photo accepted, in pixels (explicit, so a decompression bomb is refused before decoding,
#: whatever PIL's global MAX_IMAGE_PIXELS is). 50 MP covers any phone or DSLR photo.
MAX_PIXELS = 50_000_000


def __getattr__(name):
    if name in ("make_server", "serve", "WebServer", "create_app", "HTTPError", "open_upload", "load_upload", "parse_dial"):
        from affectedit.web import server

        return getattr(server, name)
    raise AttributeError(f"module 'affectedit.web' has no attribute {name!r}")
