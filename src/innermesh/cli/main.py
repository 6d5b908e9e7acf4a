"""The ``innermesh`` command: argument parsing and dispatch to one module per command.

``main(argv)`` returns the exit code (0 success, 1 failure of what was asked, 2 usage error) and never
raises for a user's mistake or an unreachable server: those are one line on stderr. Client commands are
coroutines run on a fresh event loop; ``server`` and ``demo`` run their own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from innermesh import __version__
from innermesh.cli import apply, common, delete, demo, describe, get, proxy, server


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``innermesh get: error: ...`` and a hint, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(common.EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="innermesh",
        description="innermesh: a service mesh with Kubernetes' resource model and an xDS control plane.",
    )
    parser.add_argument("--version", action="version", version=f"innermesh {__version__}")
    common.add_connection_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in (server, proxy, apply, get, delete, describe, demo):
        module.add_parser(sub)
    return parser


def _report(e: common.CliError) -> int:
    for line in e.message.splitlines() or [""]:
        common.err(line)
    return e.code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return e.code if isinstance(e.code, int) else common.EXIT_USAGE
    try:
        if getattr(args, "is_async", True):
            code: int = asyncio.run(args.run(args))
        else:
            code = args.run(args)
    except common.CliError as e:
        return _report(e)
    except KeyboardInterrupt:
        # Ctrl-C ends a watch or a demo as the user meant; anything else was interrupted.
        return common.EXIT_OK if getattr(args, "watch", False) else 130
    except BrokenPipeError:
        # The reader went away (``innermesh get ... | head``): nothing more to say, and nothing more to
        # flush into the closed pipe at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return common.EXIT_OK
    return code


async def run_inline(argv: Sequence[str]) -> int:
    """Run a client command inside a running event loop (the demo prints ``get`` and ``describe``)."""
    args: Any = build_parser().parse_args(list(argv))
    try:
        code: int = await args.run(args)
    except common.CliError as e:
        return _report(e)
    return code
