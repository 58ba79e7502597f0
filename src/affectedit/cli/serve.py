"""`affectedit serve`: the web page on this computer (see affectedit.web)."""
from __future__ import annotations

import argparse
from pathlib import Path

from affectedit.errors import UserError


def register(subparsers) -> None:
    from affectedit.web import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    p = subparsers.add_parser(
        "serve",
        help="open the editor as a local web page (upload, drag on a valence/arousal disc, download)",
        description="Serve a web page where you upload a photo, drag a point on a valence/arousal disc "
        "labelled with emotion words, see the edited photo and download it. The model is loaded once; "
        "edits run one at a time. Listens on 127.0.0.1 (this computer only) unless --host says otherwise.",
    )
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                   help="a training checkpoint (checkpoint.pt) to edit with (default: the bundled model)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on; 0.0.0.0 exposes the page to your network (default: {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest photo accepted, in megabytes (default: {DEFAULT_MAX_UPLOAD_MB:g})")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from affectedit import web
    from affectedit.editor import Editor

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UserError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist; pass the checkpoint.pt a training run wrote")
    # Load the model before binding, so a bad checkpoint fails before the page is announced.
    editor = Editor.from_checkpoint(args.checkpoint) if args.checkpoint else Editor.from_pretrained()
    try:
        web.serve(editor, args.host, args.port, args.max_upload_mb)
    except KeyboardInterrupt:
        print("affectedit: stopped")
    return 0
