"""The `affectedit` command. Thin: each subcommand lives in a small module of this package
(`register(subparsers)` adds its parser and sets `func`), and calls the library modules."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from affectedit.errors import UserError

# Subcommand modules, in the order `--help` lists them. A module that is missing is skipped.
_MODULES = ["edit", "train", "data", "evaluate", "serve", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affectedit",
        description="Edit the facial expression in a photo along valence (unpleasant..pleasant) "
        "and arousal (calm..excited), both in [-1, 1].",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        try:
            module = importlib.import_module(f"affectedit.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"affectedit.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("AFFECTEDIT_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"affectedit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("affectedit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _interrupted(e):  # Ctrl-C that a library turned into another error on its way out
            print("affectedit: interrupted", file=sys.stderr)
            return 130
        if debug:
            raise
        print(f"affectedit: error: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
        return 1


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of ``error`` (``raise ... from`` or an error
    raised while handling it, e.g. a C++ writer failing in its clean-up after Ctrl-C)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
