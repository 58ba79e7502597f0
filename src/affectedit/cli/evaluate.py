"""`affectedit regressor ...`: train and score the paper's valence/arousal regressors (Table II/III).

Each command group has its own ``_register_*`` function; ``register`` calls them all, so another
group (e.g. ``affectedit evaluate``) is one more function and one more line in ``register``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from affectedit.errors import UserError


def register(subparsers) -> None:
    _register_regressor(subparsers)


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
