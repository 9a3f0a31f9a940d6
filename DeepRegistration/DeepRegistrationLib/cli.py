"""The ``deepregistration`` command line.

Each subcommand lives in a module with ``add_command(subparsers)``; that function sets
``func`` on its parser. Errors the library raises for bad input are printed as one line
and exit with status 2; a cancelled run (Ctrl-C) exits with 130 and writes nothing.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .core.errors import Cancelled, InputError

COMMAND_MODULES = (
    "DeepRegistrationLib.commands.register",
    "DeepRegistrationLib.commands.batch",
    "DeepRegistrationLib.commands.demo",
    "DeepRegistrationLib.commands.data",
    "DeepRegistrationLib.commands.train_metric",
    "DeepRegistrationLib.commands.response",
    "DeepRegistrationLib.commands.train_dirnet",
    "DeepRegistrationLib.commands.train_diffeo",
    "DeepRegistrationLib.commands.train_deepsim",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepregistration",
        description="Learned and classical image registration in physical space (ITK/LPS, mm). "
                    "Transforms map fixed points to moving points, as ITK resampling does.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"deepregistration {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print(f"deepregistration {args.command}: cancelled; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
