"""``innermesh demo``: the control plane on the embedded store, with the examples applied.

It starts the control plane in this process (SQLite in the data directory), applies
``examples/demo/`` (a namespace, Services, Workloads, an HTTPRoute with a deliberately missing backend),
waits briefly for the controllers (EndpointSlices, route status), prints ``get`` of each kind and
``describe service web``, then the commands to try next, and serves until Ctrl-C (or SIGTERM), when it
stops cleanly. Running it again on the same data directory finds everything in place (apply is
idempotent: "unchanged").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from innermesh.api import status as errors
from innermesh.cli import common
from innermesh.cli.process import add_log_flag, configure_logging, parse_listen, run_loop
from innermesh.cli.server import add_listen_flags, default_data_dir, startup_error

NAMESPACE = "demo"
MANIFESTS = Path("examples") / "demo"
# How long to wait for the controllers to publish EndpointSlices and route status before printing.
SETTLE_TIMEOUT = 10.0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the control plane with the examples applied, until Ctrl-C",
        description="Start the control plane on the embedded store, apply examples/demo/, show the result "
        "and serve until Ctrl-C.",
    )
    add_listen_flags(p)
    p.add_argument(
        "--manifests",
        metavar="DIR",
        type=Path,
        default=None,
        help="the manifests to apply (default: examples/demo/ of this checkout)",
    )
    add_log_flag(p, default="warning")
    p.set_defaults(run=run, is_async=False)


def find_manifests() -> Path | None:
    """examples/demo/ of the checkout innermesh runs from (editable install), or of the current
    directory."""
    here = Path(__file__).resolve()
    for base in (*here.parents, Path.cwd()):
        candidate = base / MANIFESTS
        if candidate.is_dir():
            return candidate
    return None


def command_name() -> str:
    """How the user can run innermesh again: ``innermesh`` if that is on PATH, else the script used."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    on_path = shutil.which("innermesh")
    if script is not None and script.name == "innermesh":
        if on_path and Path(on_path).resolve() == script.resolve():
            return "innermesh"
        return shlex.quote(str(script))
    return "innermesh" if on_path else f"{shlex.quote(sys.executable)} -m innermesh"


def _shown_path(path: Path) -> str:
    """The manifests' path as the user would type it: relative to the current directory if inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def next_steps(cmd: str, url: str, token_flag: str, manifests: Path) -> list[str]:
    s = f"{cmd} --server {url}{token_flag}"
    k = f"kubectl --server {url}{token_flag}"
    steps = [
        ("Watch the Services (Ctrl-C stops watching):", f"{s} get svc -n demo -w"),
        ("The Workloads behind them, with their labels:", f"{s} get workloads -n demo -o wide --show-labels"),
        (
            "Watch web's endpoints while, in a third terminal, you remove one:",
            f"{s} get endpointslices -n demo -w",
        ),
        ("", f"{s} delete workload web-3 -n demo"),
        ("...and put it back (apply is idempotent):", f"{s} apply -f {shlex.quote(_shown_path(manifests))}"),
        (
            "Why the route is not fully resolved (ResolvedRefs False: BackendNotFound):",
            f"{s} describe httproute web -n demo",
        ),
        ("Any object as YAML:", f"{s} get svc web -n demo -o yaml"),
        ("kubectl works against the same server:", f"{k} get svc -n demo"),
        ("", f"{k} get httproutes -n demo -o yaml"),
    ]
    lines = ["", f"The innermesh control plane is serving at {url}. Try, in another terminal:"]
    for comment, command in steps:
        if comment:
            lines += ["", f"  # {comment}"]
        lines.append(f"  {command}")
    return [*lines, "", "Press Ctrl-C to stop."]


async def _settle(url: str, token: str | None) -> bool:
    """Wait until web's endpoints and the route's status are published (or time runs out)."""
    from innermesh.api.scheme import REGISTRY
    from innermesh.client.http import HttpClient

    client = HttpClient(url, token=token)
    slices_kind = REGISTRY.resolve("endpointslices.discovery.k8s.io")
    routes_kind = REGISTRY.resolve("httproutes.gateway.networking.k8s.io")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    try:
        while loop.time() < deadline:
            try:
                slices, _ = await client.list(slices_kind, NAMESPACE, "kubernetes.io/service-name=web")
                route = await client.get(routes_kind, NAMESPACE, "web")
            except errors.ApiError:
                slices, route = [], {}
            has_endpoints = any(s.get("endpoints") for s in slices)
            has_status = bool((route.get("status") or {}).get("parents"))
            if has_endpoints and has_status:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await client.close()


async def _demo(args: argparse.Namespace, manifests: Path) -> int:
    from innermesh.cli.main import run_inline
    from innermesh.server import ControlPlane, ServerConfig

    host, port = parse_listen(args.listen)
    config = ServerConfig(
        listen_host=host, listen_port=port, data_dir=(args.data_dir or default_data_dir()).expanduser()
    )
    plane = ControlPlane(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await plane.start()
        except Exception as e:
            raise common.CliError(startup_error(e, config)) from None
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{plane.port}"
        token_path = config.data_dir / "admin-token"
        token = None if config.loopback else token_path.read_text().strip()
        conn = ["--server", url] + (["--token", token] if token else [])
        token_flag = f' --token "$(cat {shlex.quote(str(token_path))})"' if token else ""
        cmd = command_name()

        common.out(f"innermesh demo: control plane started at {url} (data: {config.data_dir})")
        common.out()
        common.out(f"$ {cmd} apply -f {_shown_path(manifests)}")
        code = await run_inline(["apply", "-f", str(manifests), *conn])
        if not await _settle(url, token):
            common.out()
            common.out("(the controllers have not published every EndpointSlice and route status yet)")
        for kind in ("services", "workloads", "endpointslices", "httproutes"):
            common.out()
            common.out(f"$ {cmd} get {kind} -n {NAMESPACE}")
            await run_inline(["get", kind, "-n", NAMESPACE, *conn])
        common.out()
        common.out(f"$ {cmd} describe service web -n {NAMESPACE}")
        await run_inline(["describe", "service", "web", "-n", NAMESPACE, *conn])
        for line in next_steps(cmd, url, token_flag, manifests):
            common.out(line)
        if code != common.EXIT_OK:
            common.err("innermesh demo: some manifests were not applied (see above); serving anyway")
        await stop.wait()
        common.out("innermesh demo: stopping")
        return common.EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await plane.stop()


def run(args: argparse.Namespace) -> int:
    manifests = args.manifests or find_manifests()
    if manifests is None or not manifests.is_dir():
        where = (
            f"{args.manifests}"
            if args.manifests
            else f"{MANIFESTS}/ (looked beside the installed package and in {Path.cwd()})"
        )
        raise common.UsageError(f"error: --manifests: cannot find the demo manifests in {where}")
    parse_listen(args.listen)
    configure_logging(args.log_level)
    try:
        code: int = run_loop(_demo(args, manifests))
    except KeyboardInterrupt:
        return common.EXIT_OK
    return code
