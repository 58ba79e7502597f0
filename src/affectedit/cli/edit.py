"""`affectedit edit | grid | animate | emotions`: change the expression in photos."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from affectedit.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def register(sub: argparse._SubParsersAction) -> None:
    from affectedit.emotions import EMOTIONS

    words = ", ".join(EMOTIONS)

    p = sub.add_parser(
        "edit",
        help="give every face in a photo (or a folder of photos) a new expression",
        description="Edit the facial expression in a photo, or in every photo of a folder (a folder in, a "
        "folder out, same file names and formats). Say the expression as valence (unpleasant -1 .. "
        "pleasant 1) and arousal (calm -1 .. excited 1), or as an emotion word. Existing outputs are "
        "never overwritten without --force.",
    )
    p.add_argument("input", metavar="PHOTO_OR_FOLDER", help="an image file, or a folder of images (searched recursively)")
    p.add_argument("--valence", type=float, help="target valence in [-1, 1] (unpleasant .. pleasant)")
    p.add_argument("--arousal", type=float, help="target arousal in [-1, 1] (calm .. excited)")
    p.add_argument("--emotion", metavar="NAME", help=f"an emotion word instead of --valence/--arousal: {words} "
                   "(`affectedit emotions` shows their coordinates)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (for a photo; an existing folder puts it inside with the same name) or output folder (for a folder)")
    p.add_argument("--face", type=int, default=None, metavar="N",
                   help="edit only face N (0 = largest); default: every face")
    _model_args(p)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run_edit)

    p = sub.add_parser(
        "grid",
        help="a 5x5 grid of edits over valence and arousal (the paper's Fig. 3)",
        description="Write an n x n grid of edits of one face: arousal from 1 to -1 left to right, valence from "
        "1 to -1 top to bottom, with the aligned input beside it.",
    )
    p.add_argument("input", metavar="PHOTO")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="image file to write (.png, .jpg, ...)")
    p.add_argument("--face", type=int, default=0, metavar="N", help="which face (0 = largest)")
    p.add_argument("-n", type=int, default=5, help="labels per axis")
    _model_args(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run_grid)

    p = sub.add_parser(
        "animate",
        help="a GIF/MP4 of a face moving through valence/arousal space",
        description="Animate the face(s) of a photo along a path of (valence, arousal) points, easing smoothly "
        "from point to point. Output .gif (Pillow) or .mp4 (OpenCV).",
    )
    p.add_argument("input", metavar="PHOTO")
    p.add_argument("--path", required=True,
                   help='points "valence,arousal" or emotion words separated by spaces, e.g. "0,0 0.8,0.5 -0.6,-0.4" or "neutral happy sad"')
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="out.gif or out.mp4")
    p.add_argument("--fps", type=int, default=20, help="frames per second")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds from one point of the path to the next")
    p.add_argument("--size", type=int, default=512, help="longest side of the frames in pixels (0: the photo's size)")
    p.add_argument("--face", type=int, default=None, metavar="N", help="animate only face N (0 = largest); default: every face")
    _model_args(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run_animate)

    p = sub.add_parser("emotions", help="list the emotion words and their valence/arousal",
                       description="The emotion words --emotion accepts, with their (valence, arousal) "
                       "coordinates (Russell 1980's circumplex; see affectedit.emotions).")
    p.set_defaults(func=run_emotions)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a training checkpoint (runs/NAME/checkpoint.pt) or exported weights; default: the bundled model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU)")
    p.add_argument("--fp32", action="store_true", help="compute in float32 even where a faster precision is the default")
    p.add_argument("--mode", choices=["residual", "paper", "warp"], default=None,
                   help="residual: apply only the generator's change between the face's own and the target expression "
                   "to the sharp photo (keeps identity and detail); paper: replace the face by G(E(x), y) as Lindt et al.; "
                   "warp: move the photo's own pixels (weights with the warp head). Default: the mode stored with the weights")
    p.add_argument("--strength", type=float, default=None,
                   help="scale of the change, in [0, 4] (0 = no change, 1 = as generated; default: the strength stored "
                   "with the weights, e.g. the one calibrated for the bundled model)")
    p.add_argument("--colour", choices=["keep", "change"], default=None,
                   help="residual mode: keep = apply only the brightness of the generator's change, so the photo keeps "
                   "its colours; change = its colour change too (default: as stored with the weights)")


def _load_editor(args: argparse.Namespace):
    from affectedit.editor import Editor

    precision = "fp32" if args.fp32 else "auto"
    options = {"mode": args.mode, "strength": args.strength, "colour": args.colour}
    if args.checkpoint:
        return Editor.from_checkpoint(args.checkpoint, device=args.device, precision=precision, **options)
    return Editor.from_pretrained(device=args.device, precision=precision, **options)


# ----------------------------------------------------------------------------------- edit


def _target(args: argparse.Namespace) -> tuple[float, float]:
    from affectedit.emotions import check_label, emotion

    if args.emotion is not None:
        if args.valence is not None or args.arousal is not None:
            raise UserError("give either --emotion or --valence and --arousal, not both")
        return emotion(args.emotion)
    if args.valence is None or args.arousal is None:
        raise UserError("say the target expression: --valence V --arousal A (each in [-1, 1]) or --emotion NAME")
    return check_label(args.valence, args.arousal)


def _images_in(folder: Path, exclude: Path) -> list[Path]:
    exclude = exclude.resolve()
    files = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if exclude == p.resolve().parent or exclude in p.resolve().parents:
            continue  # an output folder inside the input folder: do not edit our own results
        files.append(p)
    return files


def _edit_one(editor, src: Path, dst: Path, label, face, force: bool) -> None:
    from affectedit.images import open_image, save_like

    if dst.exists() and not force:
        raise UserError(f"{dst} already exists; pass --force to overwrite it")
    source = open_image(src)
    result = editor.edit(source, label[0], label[1], face=face)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_like(result, source, dst, force)


def run_edit(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    label = _target(args)
    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise UserError(f"{src} not found")
    if src.is_dir():
        if out.exists() and not out.is_dir():
            raise UserError(f"{src} is a folder, so -o must be a folder too, but {out} is a file")
        files = _images_in(src, out)
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {src}")
        jobs = [(f, out / f.relative_to(src)) for f in files]
        out.mkdir(parents=True, exist_ok=True)
    else:
        jobs = [(src, out / src.name if out.is_dir() else out)]
    if not args.force:
        clash = [str(d) for _, d in jobs if d.exists()]
        if len(jobs) == 1 and clash:
            raise UserError(f"{clash[0]} already exists; pass --force to overwrite it")
    editor = _load_editor(args)
    failed = 0
    bar = tqdm(jobs, desc="edit", unit="photo", disable=len(jobs) < 2 or None, dynamic_ncols=True, file=sys.stderr)
    for s, d in bar:
        try:
            _edit_one(editor, s, d, label, args.face, args.force)
        except (UserError, OSError, ValueError, Image.DecompressionBombError) as e:
            if len(jobs) == 1:
                raise UserError(str(e)) from None
            failed += 1
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            bar.write(f"affectedit: skipped {s}: {msg}", file=sys.stderr)
    done = len(jobs) - failed
    if len(jobs) == 1:
        print(f"wrote {jobs[0][1]}")
    else:
        print(f"edited {done} of {len(jobs)} photos into {out}" + (f"; {failed} failed (see above)" if failed else ""))
    return 1 if failed else 0


# ----------------------------------------------------------------------------------- grid, animate, emotions


def run_grid(args: argparse.Namespace) -> int:
    from affectedit.io import atomic_path

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    from PIL import Image

    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the image format of {out} from its suffix; use .png or .jpg")
    editor = _load_editor(args)
    img = editor.grid(args.input, face=args.face, n=args.n)
    with atomic_path(out, force=args.force) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    print(f"wrote {out}")
    return 0


def run_animate(args: argparse.Namespace) -> int:
    from affectedit.emotions import parse_path

    out = Path(args.output)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"-o {out} must end in .gif or .mp4")
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    points = parse_path(args.path)
    editor = _load_editor(args)
    editor.animate(args.input, points, out, fps=args.fps, seconds_per_segment=args.seconds, face=args.face,
                   size=args.size or None, force=args.force)
    print(f"wrote {out}")
    return 0


def run_emotions(args: argparse.Namespace) -> int:
    from affectedit.emotions import emotion_table

    print(emotion_table())
    return 0
