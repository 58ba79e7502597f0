"""`affectedit export`: write a trained model for other runtimes (ONNX) or as inference weights."""
from __future__ import annotations

import argparse
from pathlib import Path

from affectedit.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model as ONNX (E and G as one graph) or as inference weights",
        description="Export the encoder and generator of a checkpoint. --format onnx writes one graph "
        "edited = G(E(image), label) with inputs image (N x 3 x S x S, [-1, 1]) and label (N x 2, valence "
        "and arousal in [-1, 1]) and a dynamic batch N (needs `pip install affectedit[export]`). "
        "--format weights writes affectedit.pt (fp16) + affectedit.json into the folder -o names, the "
        "pair `Editor.from_pretrained(weights_dir=...)` loads.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a training checkpoint (runs/NAME/checkpoint.pt) or exported weights")
    p.add_argument("--format", choices=["onnx", "weights"], default="onnx", help="onnx (default) or weights")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="model.onnx for onnx; a folder for weights")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--strength", type=float, default=None,
                   help="weights only: the residual strength editors use by default with these weights (e.g. the "
                   "one `affectedit evaluate` calibrated); default: none stored, i.e. 1")
    p.add_argument("--label-range-from", metavar="CACHE", default=None,
                   help="weights only: the training cache; its labels' range (0.1-99.9th percentiles) is stored so "
                   "that the dials' [-1, 1] map onto the labels the model has seen (default: labels used as given)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if args.format == "onnx":
        from affectedit.export import export_onnx

        if out.is_dir():
            raise UserError(f"{out} is a folder; give the ONNX file to write, e.g. {out / 'model.onnx'}")
        if out.suffix.lower() != ".onnx":
            raise UserError(f"ONNX output {out} should end in .onnx")
        if args.strength is not None or args.label_range_from is not None:
            raise UserError("--strength and --label-range-from are stored with --format weights only "
                            "(the ONNX graph computes G(E(x), y))")
        path = export_onnx(args.checkpoint, out, force=args.force)
    else:
        from affectedit.editor import export_weights, label_range

        if out.exists() and not out.is_dir():
            raise UserError(f"{out} is a file; --format weights writes a folder (affectedit.pt + affectedit.json)")
        labels_range = None
        if args.label_range_from is not None:
            from affectedit.data.cache import FaceCache

            labels_range = label_range(FaceCache(args.label_range_from).labels)
        path = export_weights(args.checkpoint, out, force=args.force, strength=args.strength, label_range=labels_range)
    print(f"wrote {path}")
    return 0
