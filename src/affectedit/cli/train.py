"""`affectedit train`: train the model on a prepared face cache."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from affectedit.config import PRESETS, Config, apply_overrides, get_config
from affectedit.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train E, G, D_z and D_img on a prepared face cache",
        description="Train the conditional adversarial autoencoder (Lindt et al. 2019) on a face cache written by "
        "`affectedit prepare`. Resumable: rerun with --resume after an interruption. Multi-GPU: "
        "`accelerate launch --multi_gpu -m affectedit train ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default="paper", help=f"a preset ({', '.join(PRESETS)}) or a config.json written by an earlier run")
    p.add_argument("--data", required=True, help="face cache folder from `affectedit prepare` (holds images.npy, labels.npy, meta.json)")
    p.add_argument("--out", default="runs/affectedit", help="run folder: checkpoint.pt, config.json, tensorboard/ and samples/ go here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=2000 --set loss.identity=0.5; repeatable; unknown keys are errors")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly where it stopped")
    p.add_argument("--steps", type=int, default=None, help="shortcut for --set train.steps=N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (for logs)")
    p.set_defaults(func=run)


def load_config(name: str, overrides: list[str]) -> Config:
    if name in PRESETS:
        return get_config(name, overrides)
    path = Path(name)
    if not path.exists():
        raise UserError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing config.json")
    try:
        cfg = Config.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--config {path} is not a valid affectedit config: {e}") from None
    return apply_overrides(cfg, overrides)


def run(args: argparse.Namespace) -> int:
    from affectedit.train import train

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    try:
        cfg = load_config(args.config, overrides)
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a folder; create a face cache with `affectedit prepare` first")
    logs = train(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"done: checkpoint in {Path(args.out) / 'checkpoint.pt'}; " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
    return 0
