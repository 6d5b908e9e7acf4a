"""What the long-running commands (``server``, ``proxy``, ``demo``) share: exit codes and errors, the
log flag, HOST:PORT flags, and the event loop.

Light on purpose: a sidecar runs beside every workload, so ``innermesh proxy`` imports this module
and not ``cli.common`` (the API layer, pydantic, the aiohttp client), which re-exports what is here.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


class CliError(Exception):
    """A failure to report on stderr (each line of ``message``), ending the command with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def add_log_flag(p: argparse.ArgumentParser, default: str = "info") -> None:
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default,
        help=f"log level: {', '.join(LOG_LEVELS)} (default: {default})",
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); UsageError naming the flag if not."""
    host, sep, port_text = text.rpartition(":")
    problem = ""
    if not sep or not host:
        problem = "expected HOST:PORT"
    elif not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        problem = "the port must be a number from 0 to 65535"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            problem = problem or f"{host!r} is not an IPv6 address"
    elif ":" in host:
        problem = problem or "write an IPv6 address in brackets: [::1]:7443"
    if problem:
        raise UsageError(f"error: {flag} {text!r}: {problem} (e.g. 127.0.0.1:7443)")
    return host, int(port_text)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop if it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
