"""``innermesh proxy``: the sidecar, from flags to a running ``innermesh.proxy.sidecar.Sidecar``.

    innermesh proxy --workload NAMESPACE/NAME [--xds HOST:PORT] [--outbound HOST:PORT]
                    [--admin HOST:PORT] [--app-port WORKLOAD_PORT=APP_PORT ...] [--zone Z]

The Workload must exist (or appear): the control plane sends the sidecar the configuration for that
Workload. Flags are checked before anything starts; a bad one is a one-line error naming it (exit 2).
SIGINT and SIGTERM stop the proxy after draining its connections (exit 0).

A sidecar runs beside every workload, so what it imports stays in every workload's memory: this
module imports neither ``innermesh.cli.common`` (the API layer, pydantic, the aiohttp client) nor
``innermesh.cli.server`` (which imports it); ``common`` comes in only to report an error. The few
process helpers it shares in spirit with ``server`` (the log flag, HOST:PORT parsing, the uvloop
runner) are therefore its own.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from innermesh.api import names

DEFAULT_XDS = "127.0.0.1:15010"
DEFAULT_OUTBOUND = "127.0.0.1:15001"
DEFAULT_ADMIN = "127.0.0.1:15000"
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "proxy",
        help="run the sidecar proxy for one workload",
        description="Run the innermesh sidecar for one Workload until SIGINT or SIGTERM.",
    )
    p.add_argument(
        "--workload", metavar="NAMESPACE/NAME", required=True, help="the Workload this sidecar serves"
    )
    p.add_argument(
        "--xds",
        metavar="HOST:PORT",
        default=DEFAULT_XDS,
        help=f"the control plane's xDS server (default: {DEFAULT_XDS})",
    )
    p.add_argument(
        "--outbound",
        metavar="HOST:PORT",
        default=DEFAULT_OUTBOUND,
        help=f"where the app reaches services through the sidecar (default: {DEFAULT_OUTBOUND})",
    )
    p.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default=DEFAULT_ADMIN,
        help=f"/ready, /stats, /config_dump (default: {DEFAULT_ADMIN})",
    )
    p.add_argument(
        "--app-port",
        metavar="PORT=APP_PORT",
        action="append",
        default=[],
        help="on loopback, the sidecar takes the Workload's PORT and forwards to the app on APP_PORT (repeatable)",
    )
    p.add_argument("--zone", help="this workload's zone (default: the Workload's spec.zone)")
    p.add_argument(
        "--sotw", action="store_true", help="use state-of-the-world xDS instead of incremental (delta)"
    )
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help=f"log level: {', '.join(LOG_LEVELS)} (default: info)",
    )
    p.set_defaults(run=run, is_async=False)


def _usage_error(message: str) -> Exception:
    from innermesh.cli import common  # only on this path: see the module docstring

    return common.UsageError(message)


def _workload(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    problems = [] if sep else ["expected NAMESPACE/NAME"]
    if sep:
        problems += [f"namespace: {m}" for m in names.is_dns1123_label(namespace)]
        problems += [f"name: {m}" for m in names.is_dns1123_subdomain(name)]
    if problems:
        raise _usage_error(f"error: --workload {text!r}: {problems[0]}")
    return namespace, name


def _app_ports(values: list[str]) -> dict[int, int]:
    ports: dict[int, int] = {}
    for text in values:
        left, sep, right = text.partition("=")
        if (
            not sep
            or not left.isdigit()
            or not right.isdigit()
            or not all(0 < int(x) < 65536 for x in (left, right))
        ):
            raise _usage_error(f"error: --app-port {text!r}: expected PORT=APP_PORT, ports from 1 to 65535")
        if int(left) in ports:
            raise _usage_error(f"error: --app-port {text!r}: port {left} is given twice")
        ports[int(left)] = int(right)
    return ports


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); a usage error naming the flag if not
    (the rules of ``innermesh server``'s flags)."""
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
        problem = problem or "write an IPv6 address in brackets: [::1]:15001"
    if problem:
        raise _usage_error(f"error: {flag} {text!r}: {problem} (e.g. 127.0.0.1:15001)")
    return host, int(port_text)


def build_config(args: argparse.Namespace) -> Any:
    from innermesh.proxy.sidecar import SidecarConfig

    namespace, workload = _workload(args.workload)
    return SidecarConfig(
        namespace=namespace,
        workload=workload,
        xds=parse_listen(args.xds, "--xds"),
        outbound=parse_listen(args.outbound, "--outbound"),
        admin=parse_listen(args.admin, "--admin"),
        app_ports=_app_ports(args.app_port),
        zone=args.zone,
        delta=not args.sotw,
    )


async def serve(config: Any) -> None:
    from innermesh.proxy.sidecar import Sidecar

    sidecar = Sidecar(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
        await stop.wait()
    finally:
        await sidecar.stop()


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop if it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        _run_loop(serve(config))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        from innermesh.cli import common  # only on this path: see the module docstring

        raise common.CliError(f"error: the proxy could not start: {e.strerror or e}") from None
    return 0
