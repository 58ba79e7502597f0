"""`affectedit edit | grid | animate | emotions`: change the expression in photos."""
from __future__ import annotations

import argparse
import os
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
        "pleasant 1) and arousal (calm -1 .. excited 1), or as an emotion word. Without -o the result "
        "goes beside the input (photo.happy.jpg; a folder: FOLDER.happy/). Existing outputs are never "
        "overwritten without --force; in a folder they are skipped, and a file that cannot be read or "
        "edited is reported and skipped while the rest go on (exit status 2 if any failed).",
    )
    p.add_argument("input", metavar="PHOTO_OR_FOLDER", help="an image file, or a folder of images (searched recursively)")
    p.add_argument("--valence", type=float, help="target valence in [-1, 1] (unpleasant .. pleasant)")
    p.add_argument("--arousal", type=float, help="target arousal in [-1, 1] (calm .. excited)")
    p.add_argument("--emotion", metavar="NAME", help=f"an emotion word instead of --valence/--arousal: {words} "
                   "(`affectedit emotions` shows their coordinates)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="output file (for a photo; an existing folder puts it inside with the same name) or output folder "
                   "(for a folder); default: beside the input, named after the expression (photo.happy.jpg, FOLDER.happy/)")
    p.add_argument("--face", type=int, default=None, metavar="N",
                   help="edit only face N (0 = largest); default: every face")
    p.add_argument("--max-faces", type=int, default=None, metavar="N",
                   help="edit at most the N largest faces of each photo (default: 100); the number found and edited is reported")
    p.add_argument("--all-faces", action="store_true",
                   help="look for small faces even beside a large one (by default a photo with a face of a third of its "
                   "height is taken for a portrait and the slow small-face search is skipped)")
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
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="image file to write (.png, .jpg, ...); default: PHOTO.grid.png beside the photo")
    p.add_argument("--face", type=int, default=0, metavar="N", help="which face (0 = largest)")
    p.add_argument("-n", type=int, default=5, help="labels per axis")
    _model_args(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run_grid)

    p = sub.add_parser(
        "animate",
        help="a GIF/MP4 of a face moving through valence/arousal space",
        description="Animate the face(s) of a photo along a path of (valence, arousal) points, easing smoothly "
        "from point to point. Output .gif (Pillow) or .mp4 (H.264, through the ffmpeg of imageio-ffmpeg).",
    )
    p.add_argument("input", metavar="PHOTO")
    p.add_argument("--path", required=True,
                   help='points "valence,arousal" or emotion words separated by spaces, e.g. "0,0 0.8,0.5 -0.6,-0.4" or "neutral happy sad"')
    p.add_argument("-o", "--output", default=None, metavar="OUT", help="out.gif or out.mp4; default: PHOTO.animation.gif beside the photo")
    p.add_argument("--fps", type=int, default=20, help="frames per second")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds from one point of the path to the next")
    p.add_argument("--size", type=int, default=512, help="longest side of the frames in pixels, 16..4096 (0: the photo's size)")
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
        editor = Editor.from_checkpoint(args.checkpoint, device=args.device, precision=precision, **options)
    else:
        editor = Editor.from_pretrained(device=args.device, precision=precision, **options)
    editor.all_faces = bool(getattr(args, "all_faces", False))
    return editor


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


def _tag(args: argparse.Namespace, label) -> str:
    """The expression as a file-name tag: the emotion word, or v0.8_a-0.5."""
    if args.emotion is not None:
        return "_".join(str(args.emotion).strip().lower().replace("-", " ").split()) or "edit"
    return f"v{label[0]:g}_a{label[1]:g}"


def _default_output(src: Path, tag: str) -> Path:
    """photo.jpg -> photo.TAG.jpg beside it; a folder -> FOLDER.TAG beside it."""
    if src.is_dir():
        return src.parent / f"{src.resolve().name}.{tag}"
    return src.with_name(f"{src.stem}.{tag}{src.suffix}")


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


def _max_faces(args: argparse.Namespace):
    from affectedit.editor import MAX_FACES

    if args.max_faces is None:
        return MAX_FACES
    if args.max_faces < 1:
        raise UserError(f"--max-faces must be at least 1, got {args.max_faces}")
    return args.max_faces


def _edit_one(editor, src: Path, dst: Path, label, face, max_faces, force: bool):
    """Edit one photo into ``dst``; returns the editor's EditResult (faces found and edited)."""
    from affectedit.images import open_image, save_like

    if dst.exists() and not force:
        raise UserError(f"{dst} already exists; pass --force to overwrite it")
    source = open_image(src)
    result = editor.edit(source, label[0], label[1], face=face, max_faces=max_faces, report=True)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {dst.parent}: {e.strerror or type(e).__name__}") from None
    save_like(result.image, source, dst, force)
    return result


def _faces_note(r, max_faces) -> str:
    if r.faces_edited == r.faces_found:
        return f"{r.faces_found} face{'s' if r.faces_found != 1 else ''} found and edited"
    why = "--face" if r.faces_edited == 1 and max_faces != 1 else f"--max-faces {max_faces}"
    return f"{r.faces_found} faces found, {r.faces_edited} edited ({why})"


def run_edit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    label = _target(args)
    max_faces = _max_faces(args)
    src = Path(args.input)
    if not src.exists():
        raise UserError(f"{src} not found")
    out = Path(args.output) if args.output else _default_output(src, _tag(args, label))
    if src.is_dir():
        if out.exists() and not out.is_dir():
            raise UserError(f"{src} is a folder, so -o must be a folder too, but {out} is a file")
        files = _images_in(src, out)
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {src}")
        jobs = [(f, out / f.relative_to(src)) for f in files]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {out}: {e.strerror or type(e).__name__}") from None
    else:
        dst = out / src.name if out.is_dir() else out
        if not args.force and dst.exists():
            raise UserError(f"{dst} already exists; pass --force to overwrite it")
        editor = _load_editor(args)
        r = _edit_one(editor, src, dst, label, args.face, max_faces, args.force)
        print(f"wrote {dst} ({_faces_note(r, max_faces)})")
        return 0
    todo = [(s, d) for s, d in jobs if args.force or not d.exists()]
    skipped = [(s, d) for s, d in jobs if (s, d) not in todo]
    for s, d in skipped:
        print(f"affectedit: skipped {s}: {d} already exists (--force redoes it)", file=sys.stderr)
    edited = failed = faces = 0
    if todo:
        editor = _load_editor(args)
        debug = getattr(args, "debug", False) or os.environ.get("AFFECTEDIT_DEBUG") == "1"
        bar = tqdm(todo, desc="edit", unit="photo", disable=None, dynamic_ncols=True, file=sys.stderr)
        for s, d in bar:
            try:
                r = _edit_one(editor, s, d, label, args.face, max_faces, args.force)
            except UserError as e:
                failed += 1
                bar.write(f"affectedit: failed {s}: {_one_line(e)}", file=sys.stderr)
            except Exception as e:  # one bad file never stops a batch (--debug raises)
                if debug:
                    raise
                failed += 1
                bar.write(f"affectedit: failed {s}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
            else:
                edited += 1
                faces += r.faces_edited
                if r.faces_edited < r.faces_found:
                    bar.write(f"affectedit: {s}: {_faces_note(r, max_faces)}", file=sys.stderr)
    parts = [f"edited {edited} of {len(jobs)} photos into {out} ({faces} face{'s' if faces != 1 else ''})"]
    if skipped:
        parts.append(f"skipped {len(skipped)} (outputs exist; --force redoes them)")
    if failed:
        parts.append(f"failed {failed} (see above)")
    print("; ".join(parts))
    return 2 if failed else 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------- grid, animate, emotions


def _single_output(args: argparse.Namespace, suffix: str) -> Path:
    if args.output:
        return Path(args.output)
    src = Path(args.input)
    return src.with_name(f"{src.stem}{suffix}")


def _progress() -> bool:
    return sys.stderr.isatty()


def run_grid(args: argparse.Namespace) -> int:
    from affectedit.images import format_for, write_image

    out = _single_output(args, ".grid.png")
    if out.exists() and not args.force and not out.is_dir():
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    fmt = format_for(out)
    if not 2 <= args.n <= 33:
        raise UserError(f"-n must be in [2, 33], got {args.n}")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file name as the output")
    if not (out.parent if str(out.parent) else Path(".")).exists():
        raise UserError(f"output folder {out.parent} does not exist; create it first")
    editor = _load_editor(args)
    img = editor.grid(args.input, face=args.face, n=args.n, progress=_progress())
    write_image(img, out, args.force, fmt)
    print(f"wrote {out}")
    return 0


def run_animate(args: argparse.Namespace) -> int:
    from affectedit.emotions import parse_path

    out = _single_output(args, ".animation.gif")
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise UserError(f"-o {out} must end in .gif or .mp4")
    if out.exists() and not args.force and not out.is_dir():
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if args.size != 0 and not 16 <= args.size <= 4096:
        raise UserError(f"--size must be 16..4096 pixels (or 0: the photo's size), got {args.size}")
    if not 1 <= args.fps <= 120:
        raise UserError(f"--fps must be in [1, 120], got {args.fps}")
    points = parse_path(args.path)
    editor = _load_editor(args)
    editor.animate(args.input, points, out, fps=args.fps, seconds_per_segment=args.seconds, face=args.face,
                   size=args.size or None, force=args.force, progress=_progress())
    print(f"wrote {out}")
    return 0


def run_emotions(args: argparse.Namespace) -> int:
    from affectedit.emotions import emotion_table

    print(emotion_table())
    return 0
