"""What the web server accepts (see ``affectedit.web.server``): the :class:`Limits` it enforces and
the :class:`HTTPError` that answers a request beyond them (or any other bad request)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from affectedit.errors import UserError
from affectedit.web import DEFAULT_MAX_UPLOAD_MB, MAX_PIXELS, MAX_UPLOAD_MB_LIMIT

#: Jobs allowed to wait for the model at once (queued + running); more are told to retry (503).
MAX_PENDING = 32
#: Photos kept for live editing (least recently used dropped first), and their pixels in all.
MAX_PHOTOS = 64
MAX_PHOTO_PIXELS = 100_000_000


class HTTPError(Exception):
    """An error answered to the client as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the request body was not read to its end: close the connection


@dataclass
class Limits:
    """What the server accepts; see the docstring of ``affectedit.web.server``."""

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
