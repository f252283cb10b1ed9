"""The ``fastgan`` command line: ``fastgan info``, ``fastgan demo``, ..."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    from ._info import info

    info(print_it=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._help import plain_help

    from . import __version__

    parser = argparse.ArgumentParser(prog="fastgan", description=plain_help(__doc__))
    parser.add_argument("--version", action="version", version=f"fastgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, and which backends are live and why")
    p.set_defaults(func=_cmd_info)
    from . import demo

    demo.add_command(sub)
    from . import eval as _eval; _eval.add_command(sub)  # noqa: E702
    from .train import cli as train_cli

    train_cli.add_command(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
