"""`affectedit regressor ...`: train and score the paper's valence/arousal regressors (Table II/III);
`affectedit evaluate`: the paper's evaluation of an editor checkpoint (Tables III, IV, Fig. 2, 3).

Each command group has its own ``_register_*`` function; ``register`` calls them all, so another
group (e.g. ``affectedit evaluate``) is one more function and one more line in ``register``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from affectedit.errors import UserError


def register(subparsers) -> None:
    _register_regressor(subparsers)
    _register_evaluate(subparsers)


# ---------------------------------------------------------------------------------------------
# affectedit evaluate

def _register_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained editor as the paper does (Tables III/IV, Fig. 2 heatmaps, identity, background)",
        description="Edit held-out faces to a grid of valence/arousal labels with each edit mode, score the "
        "edits with the valence/arousal regressors (paper Table IV), draw the Fig. 2 heatmaps and Fig. 3 "
        "grids, and measure identity (dlib descriptor distance) and background change. Writes "
        "OUTPUT/README.md, OUTPUT/metrics.json and PNG figures.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="editor checkpoint (runs/NAME/checkpoint.pt or its folder) or exported weights")
    parser.add_argument("--data", required=True, metavar="CACHE",
                        help="labelled validation cache at the model's image size (made by `affectedit prepare`)")
    parser.add_argument("--regressors", required=True, nargs="+", metavar="PATH",
                        help="the valence and arousal regressors: a PREFIX (PREFIX-valence.pt, PREFIX-arousal.pt, "
                        "as `affectedit regressor train -o PREFIX` writes them), a folder holding both, or two "
                        "checkpoint paths")
    parser.add_argument("--faces", type=int, default=100,
                        help="faces to edit, one per person where the part has enough people (default: 100; the paper: 4,500)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated edit modes to compare: residual, paper or warp (the warp head), optionally "
                        "+mask (blended into the input with the feathered face ellipse, as an edited photo is), "
                        "+colour=keep or +colour=change, and @STRENGTH, e.g. residual+mask+colour=change@2; what a mode "
                        "does not say is the setting stored with the weights (default: the stored mode, and paper)")
    parser.add_argument("--grid", type=int, default=7,
                        help="labels per axis of the target grid over [-1, 1]^2, odd (default: 7, the paper's 49 labels)")
    parser.add_argument("--examples", type=int, default=3,
                        help="faces shown in the Fig. 3 grids (default: 3; 0 = no Fig. 3)")
    parser.add_argument("--offset", type=int, default=0,
                        help="the part of the identities to take faces from, 0-3 (default: 0, the report's); choose "
                        "settings with --offset 3 (calibration) and report with 0: no person is in both, for any --faces")
    parser.add_argument("--train-labels", metavar="CACHE", default=None,
                        help="the training cache: Table IV also scores the targets inside its labels' span separately "
                        "(targets outside it are labels the model and regressors never saw)")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a Markdown paragraph for the end of the report (repeatable)")
    parser.add_argument("--batch-faces", type=int, default=8,
                        help="faces edited per batch (each to every label; default: 8)")
    parser.add_argument("--no-identity", action="store_true",
                        help="skip the dlib identity distances (the slowest part on a CPU)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="report folder (created if missing)")
    parser.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from affectedit.evaluate import evaluate

    if args.faces < 1:
        raise UserError(f"--faces must be at least 1, got {args.faces}")
    if args.batch_faces < 1:
        raise UserError(f"--batch-faces must be at least 1, got {args.batch_faces}")
    if args.examples < 0:
        raise UserError(f"--examples must be 0 or more, got {args.examples}")
    if args.modes is None:  # the mode stored with the weights (warp or residual), and the paper's
        from affectedit.checkpoint import load_checkpoint
        from affectedit.editor import EditConfig

        stored = EditConfig.stored(load_checkpoint(args.checkpoint)).mode
        args.modes = ",".join(dict.fromkeys([stored, "paper"]))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes:
        raise UserError("--modes is empty; pass e.g. --modes residual,paper")
    result = evaluate(args.checkpoint, args.data, args.regressors, args.output, faces=args.faces, modes=modes,
                      grid=args.grid, examples=args.examples, batch_faces=args.batch_faces, offset=args.offset,
                      identity=not args.no_identity, device=args.device, train_labels=args.train_labels, notes=args.note)
    out = Path(args.output)
    print(f"wrote {out / 'README.md'} and {out / 'metrics.json'} "
          f"({result['data']['faces']} faces x {result['labels']['count']} labels, step {result['checkpoint']['step']})")
    print(f"{'Table IV':28} {'valence RMSE/SAGR/CCC':>24}   {'arousal RMSE/SAGR/CCC':>24}")
    rows = [(f"{m}"[:28], result["table_iv"]["modes"][m]["all"]) for m in result["modes"]]
    rows.append(("no edit", result["table_iv"]["unedited"]["all"]))
    for name, s in rows:
        cells = ["/".join(f"{s[d][k]:.3f}" for k in ("rmse", "sagr", "ccc")) for d in ("valence", "arousal")]
        print(f"{name:28} {cells[0]:>24}   {cells[1]:>24}")
    return 0


# ---------------------------------------------------------------------------------------------
# affectedit regressor train | evaluate

def _register_regressor(subparsers) -> None:
    parser = subparsers.add_parser(
        "regressor",
        help="train or score the valence/arousal regressors used to evaluate edits (paper Tables II, III)",
        description="The paper's VGG-like valence and arousal regressors (Table II): one network per "
        "dimension, SGD lr 0.001 momentum 0.9, mean absolute error.",
    )
    sub = parser.add_subparsers(dest="regressor_command", metavar="ACTION")

    def show_help(args: argparse.Namespace) -> int:  # `affectedit regressor` without an action
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)

    train = sub.add_parser("train", help="train a regressor on a face cache",
                           description="Train the valence and/or arousal regressor on a face cache "
                           "(made by `affectedit prepare`) and score it on a validation cache.")
    train.add_argument("--train", required=True, metavar="CACHE", help="training cache folder")
    train.add_argument("--val", required=True, metavar="CACHE", help="validation cache folder (scored at the end)")
    train.add_argument("--dimension", choices=["valence", "arousal", "both"], default="both",
                       help="which regressor to train; 'both' trains two networks one after the other "
                       "(default: both)")
    train.add_argument("--steps", type=int, default=20000, help="SGD steps per network (default: 20000)")
    train.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    train.add_argument("--width", type=float, default=1.0,
                       help="channel/unit multiplier; 1.0 = the paper's network, 0.25 is practical on a CPU "
                       "(default: 1.0)")
    train.add_argument("--image-size", type=int, default=None,
                       help="network input size, a multiple of 16 (default: the cache's size; the paper: 96)")
    train.add_argument("--seed", type=int, default=0, help="seed for initialisation and batch order (default: 0)")
    train.add_argument("--checkpoint-every", type=int, default=1000,
                       help="write the checkpoint every this many steps (default: 1000)")
    train.add_argument("--eval-every", type=int, default=0,
                       help="score the validation cache every this many steps; 0 = only at the end (default: 0)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the step stored in an existing output checkpoint")
    train.add_argument("-o", "--output", required=True, metavar="PATH",
                       help="checkpoint file; with --dimension both, PATH-valence.pt and PATH-arousal.pt "
                       "(PATH without its suffix)")
    train.set_defaults(func=_regressor_train)

    evaluate = sub.add_parser("evaluate", help="score regressors on a cache (the paper's Table III)",
                              description="Print RMSE, SAGR and CCC of each regressor on a labelled cache, "
                              "beside the paper's Table III.")
    evaluate.add_argument("--checkpoint", required=True, action="append", metavar="PATH",
                          help="regressor checkpoint; repeat for valence and arousal")
    evaluate.add_argument("--data", required=True, metavar="CACHE", help="labelled cache folder to score on")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    evaluate.add_argument("--max-images", type=int, default=None,
                          help="score only the first this many images (default: all)")
    evaluate.set_defaults(func=_regressor_evaluate)


def _output_paths(output: str, dimension: str) -> dict[str, Path]:
    path = Path(output)
    if dimension != "both":
        return {dimension: path}
    stem = path.with_suffix("") if path.suffix == ".pt" else path
    return {d: stem.with_name(f"{stem.name}-{d}.pt") for d in ("valence", "arousal")}


def _regressor_train(args: argparse.Namespace) -> int:
    from affectedit import regressor

    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.width <= 0:
        raise UserError(f"--width must be positive, got {args.width}")
    if args.image_size is not None and (args.image_size < 16 or args.image_size % 16):
        raise UserError(f"--image-size must be a multiple of 16, got {args.image_size}")
    results = {}
    for dimension, path in _output_paths(args.output, args.dimension).items():
        result = regressor.train_regressor(
            args.train, args.val, dimension, args.steps, args.batch_size, args.width, path,
            image_size=args.image_size, seed=args.seed, checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every, resume=args.resume,
        )
        print(f"wrote {path} (step {result['step']}, train MAE {result['loss']:.4f})")
        results[dimension] = result["val_metrics"]
    _print_table(results)
    return 0


def _regressor_evaluate(args: argparse.Namespace) -> int:
    from affectedit import regressor

    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {args.max_images}")
    results = {}
    for path in args.checkpoint:
        model = regressor.load_regressor(path)
        if model.dimension in results:
            raise UserError(f"two {model.dimension} checkpoints given; pass one valence and one arousal")
        results[model.dimension] = regressor.evaluate_regressor(model, args.data, args.batch_size, args.max_images)
    _print_table(results)
    return 0


def _print_table(results: dict[str, dict]) -> None:
    """Table III layout: one row per dimension, ours beside the paper's."""
    from affectedit.regressor import PAPER_TABLE_III

    print(f"{'':9}  {'RMSE':>6} {'SAGR':>6} {'CCC':>6}   paper: {'RMSE':>6} {'SAGR':>6} {'CCC':>6}")
    for dimension in ("valence", "arousal"):
        if dimension not in results or not results[dimension]:
            continue
        ours, paper = results[dimension], PAPER_TABLE_III[dimension]
        print(f"{dimension:9}  {ours['rmse']:6.3f} {ours['sagr']:6.3f} {ours['ccc']:6.3f}          "
              f"{paper['rmse']:6.3f} {paper['sagr']:6.3f} {paper['ccc']:6.3f}")
