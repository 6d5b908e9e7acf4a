"""``innermesh proxy``: the sidecar, from flags to a running ``innermesh.proxy.sidecar.Sidecar``.

    innermesh proxy --workload NAMESPACE/NAME [--xds HOST:PORT] [--outbound HOST:PORT]
                    [--admin HOST:PORT] [--app-port WORKLOAD_PORT=APP_PORT ...] [--zone Z]

The Workload must exist (or appear): the control plane sends the sidecar the configuration for that
Workload. Flags are checked before anything starts; a bad one is a one-line error naming it (exit 2).
SIGINT and SIGTERM stop the proxy after draining its connections (exit 0).

A sidecar runs beside every workload, so what it imports stays in every workload's memory: this
module imports ``cli.process`` (light), never ``cli.common`` or ``cli.server`` (the API layer,
pydantic, the aiohttp client).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from innermesh.api import names
from innermesh.cli.process import (
    EXIT_OK,
    CliError,
    UsageError,
    add_log_flag,
    configure_logging,
    parse_listen,
    run_loop,
)

DEFAULT_XDS = "127.0.0.1:15010"
DEFAULT_OUTBOUND = "127.0.0.1:15001"
DEFAULT_ADMIN = "127.0.0.1:15000"


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
    add_log_flag(p)
    p.set_defaults(run=run, is_async=False)


def _workload(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    problems = [] if sep else ["expected NAMESPACE/NAME"]
    if sep:
        problems += [f"namespace: {m}" for m in names.is_dns1123_label(namespace)]
        problems += [f"name: {m}" for m in names.is_dns1123_subdomain(name)]
    if problems:
        raise UsageError(f"error: --workload {text!r}: {problems[0]}")
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
            raise UsageError(f"error: --app-port {text!r}: expected PORT=APP_PORT, ports from 1 to 65535")
        if int(left) in ports:
            raise UsageError(f"error: --app-port {text!r}: port {left} is given twice")
        ports[int(left)] = int(right)
    return ports


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


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    configure_logging(args.log_level)
    try:
        run_loop(serve(config))
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as e:
        raise CliError(f"error: the proxy could not start: {e.strerror or e}") from None
    return EXIT_OK
