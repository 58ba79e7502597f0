"""`affectedit serve`: the web page on this computer (see affectedit.web; needs `pip install 'affectedit[web]'`)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from affectedit.errors import UserError
from affectedit.web import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, MAX_UPLOAD_MB_LIMIT


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="open the editor as a local web page (upload, drag on a valence/arousal disc, download)",
        description="Serve a web page where you upload a photo, drag a point on a valence/arousal disc "
        "labelled with emotion words, watch the face follow while you drag, compare before and after and "
        "download the full-resolution edit. The model is loaded once; edits run one at a time. Listens on "
        "127.0.0.1 (this computer only); any other address needs --allow-remote.",
    )
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                   help="a training checkpoint (checkpoint.pt) to edit with (default: the bundled model)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}); one other computers can reach, "
                   "such as 0.0.0.0, needs --allow-remote")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --host to be an address other computers can reach (anyone who can reach it can upload photos)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest photo file accepted, in megabytes, at most {MAX_UPLOAD_MB_LIMIT:g} (default: {DEFAULT_MAX_UPLOAD_MB:g})")
    p.set_defaults(func=_serve)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    try:
        mb = float(args.max_upload_mb)
    except (TypeError, ValueError):
        mb = float("nan")
    if not (mb == mb and 0 < mb <= MAX_UPLOAD_MB_LIMIT):  # NaN, inf, 0, negative, absurd
        raise UserError(f"--max-upload-mb must be a number of megabytes in (0, {MAX_UPLOAD_MB_LIMIT:g}], got {args.max_upload_mb}")
    if not _loopback(args.host) and not args.allow_remote:
        raise UserError(f"--host {args.host} may be reachable from other computers; add --allow-remote if that is what you want "
                        f"(the default {DEFAULT_HOST} serves this computer only)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist; pass the checkpoint.pt a training run wrote")
    try:
        from affectedit.web import server as web
    except ImportError as e:
        raise UserError(f"the web page needs the web extra ({e.name} is missing): pip install 'affectedit[web]'") from None
    from affectedit.editor import Editor

    # Load the model before binding, so a bad checkpoint fails before the page is announced.
    editor = Editor.from_checkpoint(args.checkpoint) if args.checkpoint else Editor.from_pretrained()
    try:
        web.serve(editor, args.host, args.port, mb)
    except KeyboardInterrupt:
        pass
    print("affectedit: stopped", file=sys.stderr, flush=True)
    # The server has shut down in order (connections closed, the model thread joined). Leave
    # without the interpreter's teardown: native thread pools (OpenMP, oneDNN) destroyed while
    # the interpreter finalises have aborted the process now and then ("terminate called without
    # an active exception"), turning a clean Ctrl-C into SIGABRT.
    sys.stdout.flush()
    os._exit(0)
