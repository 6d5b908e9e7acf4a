"""The ``innermesh`` command: argument parsing and dispatch to one module per command.

``main(argv)`` returns the exit code (0 success, 1 failure of what was asked, 2 usage error) and never
raises for a user's mistake or an unreachable server: those are one line on stderr. Client commands are
coroutines run on a fresh event loop; ``server`` and ``demo`` run their own.

``innermesh proxy ...`` (the sidecar, one per workload) is parsed on its own: the other commands'
modules import the API layer, pydantic and the aiohttp client, which a sidecar never uses and which
would stay in every sidecar's memory (about 15 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from innermesh import __version__

if TYPE_CHECKING:
    from innermesh.cli.common import CliError

EXIT_USAGE = 2  # as common.EXIT_USAGE (argparse uses 2 too); not imported, see the module docstring


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``innermesh get: error: ...`` and a hint, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from innermesh.cli import apply, common, delete, demo, describe, get, proxy, server

    parser = _top_parser()
    common.add_connection_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in (server, proxy, apply, get, delete, describe, demo):
        module.add_parser(sub)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="innermesh",
        description="innermesh: a service mesh with Kubernetes' resource model and an xDS control plane.",
    )
    parser.add_argument("--version", action="version", version=f"innermesh {__version__}")
    return parser


def _report(e: CliError) -> int:
    from innermesh.cli import common

    for line in e.message.splitlines() or [""]:
        common.err(line)
    return e.code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["proxy"]:
        return _main_proxy(words)
    from innermesh.cli import common

    parser = build_parser()
    try:
        args = parser.parse_args(words)
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


def _main_proxy(words: list[str]) -> int:
    """``innermesh proxy ...``: the same parsing and error reporting as ``main``, with only the
    proxy's modules imported (``innermesh.cli.common`` only if there is an error to report)."""
    from innermesh.cli import proxy

    parser = _top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    proxy.add_parser(sub)
    try:
        args = parser.parse_args(words)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from innermesh.cli import common  # only now: an error to report, or one to re-raise

        if isinstance(e, common.CliError):
            return _report(e)
        raise
    return code


async def run_inline(argv: Sequence[str]) -> int:
    """Run a client command inside a running event loop (the demo prints ``get`` and ``describe``)."""
    from innermesh.cli import common

    args: Any = build_parser().parse_args(list(argv))
    try:
        code: int = await args.run(args)
    except common.CliError as e:
        return _report(e)
    return code
