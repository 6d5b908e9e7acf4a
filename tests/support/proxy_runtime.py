"""Shared pieces of the proxy runtime tests (no tests here): hand-built plans over echo backends,
the runtime fixture, and clients (curl, and raw sockets for what curl will not send).

Address plan: everything on 127.0.0.1; the proxy's listener is bound to port 0 and its port read
back with ``ProxyRuntime.port``; backends are ``support.echo_backend`` processes on ports they pick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from innermesh.proxy.balance import BalancedCluster, LbSettings, build_cluster
from innermesh.proxy.matching import PrefixPath
from innermesh.proxy.plan import (
    Backend,
    ConnectionLimits,
    DirectResponse,
    EndpointState,
    Forward,
    HeaderMutation,
    LbPolicy,
    ListenerPlan,
    Plan,
    Redirect,
    Route,
    RouteMatch,
    RouteTable,
    VirtualHost,
)
from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend

# The clients' ``timeout`` parameters bound how long a test waits on one exchange with the proxy.
# ruff: noqa: ASYNC109

LOOPBACK = "127.0.0.1"
AUTHORITY = "echo.default"  # the virtual host every test plan serves (and "*" unless told otherwise)


# --- plans -----------------------------------------------------------------------------------------------


def endpoint_of(backend: EchoBackend, *, tcp: bool = False, **kw: Any) -> EndpointState:
    return EndpointState(LOOPBACK, backend.tcp_port if tcp else backend.port, **kw)


def cluster(
    name: str,
    endpoints: Sequence[EndpointState],
    *,
    policy: LbPolicy = "round_robin",
    limits: ConnectionLimits | None = None,
    seed: int = 1,
) -> BalancedCluster:
    return build_cluster(
        name,
        "http1",
        LbSettings(policy),
        limits or ConnectionLimits(),
        tuple(endpoints),
        random.Random(seed),
    )


def forward(*clusters: str, **kw: Any) -> Forward:
    return Forward(tuple(Backend(c, 1) for c in clusters), **kw)


def route(action: Forward | Redirect | DirectResponse, match: RouteMatch | None = None, **kw: Any) -> Route:
    return Route("r", match or PrefixPath(b"/"), action, **kw)


def http_plan(
    routes: Sequence[Route],
    clusters: Sequence[BalancedCluster] = (),
    *,
    domains: tuple[str, ...] = (AUTHORITY, "*"),
    version: str = "v1",
    listener: ListenerPlan | None = None,
    extra_listeners: Sequence[ListenerPlan] = (),
) -> Plan:
    listener = listener or ListenerPlan("outbound", LOOPBACK, 0, "outbound", "http", route_table="outbound")
    table = RouteTable("outbound", (VirtualHost("echo", domains, tuple(routes)),))
    listeners = {lp.name: lp for lp in (listener, *extra_listeners)}
    return Plan(version, listeners, {"outbound": table}, {c.name: c for c in clusters})


def mutation(
    set: Sequence[tuple[bytes, bytes]] = (),
    add: Sequence[tuple[bytes, bytes]] = (),
    remove: Sequence[bytes] = (),
) -> HeaderMutation:
    return HeaderMutation(tuple(set), tuple(add), frozenset(remove))


async def serve(rt: ProxyRuntime, plan: Plan, listener: str = "outbound") -> int:
    """Apply ``plan`` and return the port of ``listener``."""
    await rt.apply(plan)
    return rt.port(listener)


# --- curl ------------------------------------------------------------------------------------------------


@dataclass
class CurlResult:
    exit_code: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str
    elapsed: float
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before the final one

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)


async def curl(*args: str, stdin: bytes | None = None, timeout: float = 30.0) -> CurlResult:
    """Run curl with ``-i`` (head and body on stdout) and parse its last response."""
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-S",
        "-i",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    elapsed = time.monotonic() - start
    status, headers, body, interim = 0, [], b"", []
    rest = out
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        if 100 <= code < 200 and code != 101:
            interim.append(code)
            continue
        status = code
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        body = rest
        break
    return CurlResult(
        proc.returncode or 0, status, headers, body, err.decode(errors="replace"), elapsed, interim
    )


def url(port: int, path: str = "/") -> str:
    return f"http://{LOOPBACK}:{port}{path}"


def host(authority: str = AUTHORITY) -> list[str]:
    return ["-H", f"Host: {authority}"]


# --- raw sockets -----------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    """One response from ``reader`` (content-length, chunked, or until the connection closes)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("the connection closed before a response")
    status = int(line.split()[1])
    headers: list[tuple[bytes, bytes]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        headers.append((k.strip().lower(), v.strip()))
    response = RawResponse(status, headers, b"")
    if head_request or status < 200 or status in (204, 304):
        return response
    length = response.header(b"content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif response.header(b"transfer-encoding") == b"chunked":
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        response.body = b"".join(parts)
    else:
        response.body = await reader.read()
    return response


class RawClient:
    """A plain TCP connection to the proxy, for requests written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_request: bool = False, timeout: float = 10.0) -> RawResponse:
        async with asyncio.timeout(timeout):
            return await read_response(self.reader, head_request=head_request)

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readexactly(n)

    async def read_line(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.reader.readline()

    async def read_to_end(self, timeout: float = 5.0) -> bytes:
        """Everything until the proxy closes the connection (a reset counts as the end)."""
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read()
            except ConnectionResetError:
                return b""

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the proxy closes the connection (EOF) within ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the proxy may have reset it
            await self.writer.wait_closed()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def get(path: str = "/", authority: str = AUTHORITY, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode()


# --- measurements ----------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssWatch:
    """Samples this process's RSS every 10 ms while running; ``growth`` is peak minus start."""

    def __init__(self) -> None:
        self.start = rss_bytes()
        self.peak = self.start
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def in_flight(rt: ProxyRuntime, cluster_name: str) -> int:
    """Requests on their way to (or waiting for) cluster ``cluster_name`` right now."""
    stats = rt.stats.clusters.get(cluster_name)
    return stats.rq_active if stats is not None else 0


async def counts(backends: Sequence[EchoBackend]) -> list[int]:
    """Requests served so far by each backend."""
    return list(await asyncio.gather(*(asyncio.to_thread(b.count) for b in backends)))
