"""``innermesh server``: the control plane, from flags to a running ``innermesh.server.serve``.

Every flag is checked before anything starts, and a bad one is a one-line error naming it (exit 2).
A failure to start (the port taken, the data directory locked by another server, etcd unreachable) is
one line too (exit 1). SIGINT and SIGTERM stop the server cleanly (exit 0). uvloop runs the event loop
when it is installed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from innermesh.cli import common
from innermesh.cli.process import add_log_flag, configure_logging, parse_listen, run_loop

DEFAULT_LISTEN = "127.0.0.1:7443"
DEFAULT_XDS_LISTEN = "127.0.0.1:15010"
DATA_DIR_ENV = "INNERMESH_DATA_DIR"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".innermesh")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "server",
        help="run the control plane (API server, store, controllers)",
        description="Run the innermesh control plane until SIGINT or SIGTERM.",
    )
    add_listen_flags(p)
    add_xds_flag(p)
    p.add_argument(
        "--store", choices=("sqlite", "etcd"), default="sqlite", help="the store (default: sqlite)"
    )
    p.add_argument(
        "--etcd-endpoints",
        metavar="URL,...",
        default="http://127.0.0.1:2379",
        help="etcd client URLs, with --store etcd (default: http://127.0.0.1:2379)",
    )
    p.add_argument(
        "--service-cidr",
        metavar="CIDR[,CIDR]",
        default="10.96.0.0/16,fd00:10:96::/112",
        help="ClusterIP ranges, one per IP family (default: 10.96.0.0/16,fd00:10:96::/112)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help="the bearer token clients must present (required beyond loopback; default: generated)",
    )
    add_log_flag(p)
    p.set_defaults(run=run, is_async=False)


def add_listen_flags(p: argparse.ArgumentParser, default_listen: str = DEFAULT_LISTEN) -> None:
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=default_listen,
        help=f"where the API listens (default: {default_listen})",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"the store and generated secrets (default: ${DATA_DIR_ENV}, else ~/.innermesh)",
    )


def add_xds_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--xds-listen",
        metavar="HOST:PORT",
        default=DEFAULT_XDS_LISTEN,
        help=f"where the xDS (ADS) server listens for sidecars and proxyless gRPC (default: {DEFAULT_XDS_LISTEN})",
    )


def _check_etcd_endpoints(text: str) -> list[str]:
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise common.UsageError("error: --etcd-endpoints: give at least one URL (http://host:port)")
    for e in endpoints:
        rest = e
        if "://" in e:
            scheme, _, rest = e.partition("://")
            if scheme != "http":
                raise common.UsageError(f"error: --etcd-endpoints {e!r}: only http:// is supported")
        host, _, port = rest.rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise common.UsageError(f"error: --etcd-endpoints {e!r}: expected http://host:port")
    return endpoints


def _check_token_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as e:
        raise common.UsageError(f"error: --token-file {str(path)!r}: {e.strerror or e}") from None
    if not text.strip():
        raise common.UsageError(f"error: --token-file {str(path)!r}: the file is empty")
    return path


def build_config(args: argparse.Namespace) -> Any:
    """The ServerConfig the flags describe (UsageError naming the flag when one is wrong)."""
    from innermesh.apiserver.admission import parse_service_cidrs
    from innermesh.server import ServerConfig

    host, port = parse_listen(args.listen)
    xds_host, xds_port = parse_listen(args.xds_listen, "--xds-listen")
    try:
        parse_service_cidrs(args.service_cidr)
    except ValueError as e:
        message = str(e)
        if not message.startswith("--service-cidr"):
            message = f"--service-cidr: {message}"
        raise common.UsageError(f"error: {message}") from None
    data_dir = args.data_dir or default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise common.UsageError(f"error: --data-dir {str(data_dir)!r}: not a directory")
    return ServerConfig(
        listen_host=host,
        listen_port=port,
        xds_host=xds_host,
        xds_port=xds_port,
        data_dir=data_dir.expanduser(),
        store=args.store,
        etcd_endpoints=_check_etcd_endpoints(args.etcd_endpoints),
        service_cidr=args.service_cidr,
        token_file=_check_token_file(args.token_file),
    )


def startup_error(e: BaseException, config: Any) -> str:
    """One line for a failure to start (or a store failure that stopped the server)."""
    from innermesh.store.backend import StoreError

    if isinstance(e, OSError) and e.filename:
        return f"error: {e.filename}: {e.strerror}"
    if isinstance(e, OSError) and e.errno is not None:
        return f"error: cannot listen on {config.listen_host}:{config.listen_port}: {e.strerror or e}"
    if isinstance(e, StoreError | ValueError):
        return f"error: {e}"
    return f"error: the server stopped: {type(e).__name__}: {e}"


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    configure_logging(args.log_level)
    from innermesh.server import serve

    try:
        run_loop(serve(config))
    except KeyboardInterrupt:
        return common.EXIT_OK
    except Exception as e:
        raise common.CliError(startup_error(e, config)) from None
    return common.EXIT_OK
