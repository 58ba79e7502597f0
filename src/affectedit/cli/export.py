"""`affectedit export`: write a trained model for other runtimes (ONNX) or as inference weights."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from affectedit.errors import UserError

_WEIGHTS_ONLY = ("mode", "strength", "colour", "label_range_from", "gate_from")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model as ONNX (the whole crop edit as one graph) or as inference weights",
        description="Export a model (default: the bundled one). --format onnx writes the whole edit of an "
        "aligned face crop as one graph, as `Editor.edit` runs it with the settings stored with the weights: "
        "inputs image (N x 3 x S x S, [-1, 1]), label (N x 2, valence and arousal in [-1, 1]) and strength "
        "(N; the weights' own is in the metadata entry default_strength), output edited (N x 3 x S x S), a "
        "dynamic batch N (needs `pip install 'affectedit[export]'`). --format weights writes model.safetensors "
        "(E and G in fp16, the model config and the edit settings inside) into the folder -o names, which "
        "`Editor.from_pretrained(folder)` loads.",
    )
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a training checkpoint (runs/NAME/checkpoint.pt) or exported weights (default: the bundled model)")
    p.add_argument("--format", choices=["onnx", "weights"], default="onnx", help="onnx (default) or weights")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="the .onnx file for onnx (default: affectedit.onnx); the folder for weights (required)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--mode", choices=["residual", "paper", "warp"], default=None,
                   help="weights only: the edit mode stored with the weights (default: the checkpoint's, else residual)")
    p.add_argument("--strength", type=float, default=None,
                   help="weights only: the strength stored with the weights, in [0, 4] (e.g. the one `affectedit "
                   "evaluate` calibrated; default: the checkpoint's, else 1)")
    p.add_argument("--colour", choices=["keep", "change"], default=None,
                   help="weights only: the colour handling stored with the weights (default: the checkpoint's, else keep)")
    p.add_argument("--label-range-from", metavar="CACHE", default=None,
                   help="weights only: the training cache; its labels' range (0.1-99.9th percentiles) is stored so "
                   "that the dials' [-1, 1] map onto the labels the model has seen (default: the checkpoint's, else none)")
    p.add_argument("--gate-from", type=float, default=None, metavar="G",
                   help="weights only, warp head: store this dead zone (model.gate_from): a target within G of the "
                   "face's own label changes nothing (e.g. the one calibrated; default: the checkpoint's)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.output is None and args.format == "weights":
        raise UserError("--format weights needs -o FOLDER (where model.safetensors is written)")
    out = Path(args.output or "affectedit.onnx")
    if args.format == "onnx":
        from affectedit.export import export_onnx

        if out.is_dir():
            raise UserError(f"{out} is a folder; give the ONNX file to write, e.g. {out / 'model.onnx'}")
        if out.suffix.lower() != ".onnx":
            raise UserError(f"ONNX output {out} should end in .onnx")
        if any(getattr(args, k) is not None for k in _WEIGHTS_ONLY):
            raise UserError("--mode, --strength, --colour, --label-range-from and --gate-from are stored with --format weights only "
                            "(the ONNX graph uses the settings stored with the weights; strength is one of its inputs)")
        path = export_onnx(args.checkpoint, out, force=args.force)
    else:
        from affectedit.checkpoint import export_weights, load_checkpoint, resolve_weights
        from affectedit.editor import EditConfig, label_range

        source = args.checkpoint if args.checkpoint is not None else resolve_weights(None)

        if out.exists() and not out.is_dir():
            raise UserError(f"{out} is a file; --format weights writes a folder (model.safetensors)")
        labels_range = None
        if args.label_range_from is not None:
            from affectedit.data.cache import FaceCache

            labels_range = label_range(FaceCache(args.label_range_from).labels)
        settings = EditConfig.stored(load_checkpoint(source)).update(
            mode=args.mode, strength=args.strength, colour=args.colour, label_range=labels_range)
        path = export_weights(source, out, edit=dataclasses.asdict(settings), force=args.force, gate_from=args.gate_from)
    print(f"wrote {path}")
    return 0
