"""Bodies stream through the proxy with backpressure: 200 MB each way with the proxy's memory flat
(the proxy runs in this test's process, so its RSS is this process's, sampled from /proc), a client
that stops reading, and a body that trickles in."""

from __future__ import annotations

import asyncio
import hashlib
import os

from innermesh.proxy.runtime.listeners import ProxyRuntime
from support.echo_backend import EchoBackend
from support.proxy_runtime import (
    RawClient,
    RssWatch,
    cluster,
    curl,
    endpoint_of,
    forward,
    host,
    http_plan,
    route,
    serve,
    url,
)

# The fixtures (backends, runtime) come from the shared support module.

BIG = 200_000_000
MB = 1 << 20
FLAT = 8 * MB  # how much the proxy's RSS may grow while 200 MB go through it


def zeros_sha256(n: int) -> str:
    h = hashlib.sha256()
    block = bytes(MB)
    for _ in range(n // MB):
        h.update(block)
    h.update(bytes(n % MB))
    return h.hexdigest()


async def test_200mb_upload_streams_with_flat_memory(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """curl uploads 200 MB (chunked, from a pipe); the backend gets every byte; the proxy's RSS stays flat."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    read_fd, write_fd = os.pipe()
    source = await asyncio.create_subprocess_exec("head", "-c", str(BIG), "/dev/zero", stdout=write_fd)
    os.close(write_fd)
    try:
        async with RssWatch() as rss:
            proc = await asyncio.create_subprocess_exec(
                "curl",
                "-s",
                "-S",
                "-T",
                "-",
                *host(),
                url(port, "/upload"),
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
            )
            os.close(read_fd)
            out, _ = await proc.communicate()
    finally:
        await source.wait()
    import json

    seen = json.loads(out)
    assert seen["body_length"] == BIG
    assert seen["body_sha256"] == zeros_sha256(BIG)
    assert rss.growth < FLAT, f"RSS grew by {rss.growth / MB:.1f} MB"


async def test_200mb_download_streams_with_flat_memory(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """curl downloads 200 MB through the proxy; all of it arrives and the proxy's RSS stays flat."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with RssWatch() as rss:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-s",
            "-S",
            *host(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}:%{size_download}",
            url(port, f"/?size={BIG}"),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    assert out.decode() == f"200:{BIG}"
    assert rss.growth < FLAT, f"RSS grew by {rss.growth / MB:.1f} MB"
    assert runtime.stats.clusters["c"].cx_active == 1, "the connection went back to the pool"


async def test_a_client_that_stops_reading_stops_the_upstream(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """While the client reads nothing, the proxy stops reading the upstream instead of buffering;
    when it reads again, the whole response arrives."""
    size = 60 * MB
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    async with RssWatch() as rss, await RawClient.connect(port) as c:
        c.writer.transport.set_write_buffer_limits(high=0)
        sock = c.writer.get_extra_info("socket")
        sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 64 * 1024)
        await c.send(f"GET /?size={size}&chunked=1 HTTP/1.1\r\nHost: echo.default\r\n\r\n".encode())
        await asyncio.sleep(1.0)
        stalled = rss.growth
        r = await c.response(timeout=30)
    assert stalled < FLAT, f"RSS grew by {stalled / MB:.1f} MB while the client was not reading"
    assert len(r.body) == size


async def test_an_upstream_that_reads_slowly_stops_the_client(
    runtime: ProxyRuntime, backends: list[EchoBackend]
) -> None:
    """While the upstream reads nothing, the proxy stops reading the client's body instead of
    buffering it; the whole body arrives once the upstream reads."""
    size = 60 * MB
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    block = bytes(MB)
    async with RssWatch() as rss, await RawClient.connect(port) as c:
        head = f"PUT /?read_delay=1000 HTTP/1.1\r\nHost: echo.default\r\nContent-Length: {size}\r\n\r\n"
        c.writer.write(head.encode())

        async def upload() -> None:
            for _ in range(size // MB):
                await c.send(block)

        sender = asyncio.create_task(upload())
        await asyncio.sleep(0.8)
        stalled = rss.growth
        assert not sender.done(), "the whole body was taken while the upstream read nothing"
        await sender
        r = await c.response(timeout=30)
    assert stalled < FLAT, f"RSS grew by {stalled / MB:.1f} MB while the upstream was not reading"
    assert r.json()["body_length"] == size


async def test_a_trickling_body_is_forwarded(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A body sent in small pieces with pauses (content-length and chunked) arrives whole."""
    port = await serve(runtime, http_plan([route(forward("c"))], [cluster("c", [endpoint_of(backends[0])])]))
    pieces = [bytes([65 + i]) * 100 for i in range(10)]
    body = b"".join(pieces)
    async with await RawClient.connect(port) as c:
        await c.send(
            f"POST /slow HTTP/1.1\r\nHost: echo.default\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for piece in pieces:
            await asyncio.sleep(0.03)
            await c.send(piece)
        r = await c.response()
        assert (r.json()["body_length"], r.json()["body"]) == (len(body), body.decode())
        await c.send(b"POST /slow HTTP/1.1\r\nHost: echo.default\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await asyncio.sleep(0.03)
            await c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await c.send(b"0\r\n\r\n")
        r = await c.response()
        assert r.json()["body"] == body.decode()


async def test_large_body_is_not_retried(runtime: ProxyRuntime, backends: list[EchoBackend]) -> None:
    """A body larger than the replay buffer streams once: a retriable failure is answered, not retried."""
    from innermesh.proxy.plan import RetryPolicy

    retry = RetryPolicy(attempts=3, on_status=frozenset({503}), backoff_base=0.001)
    port = await serve(
        runtime, http_plan([route(forward("c", retry=retry))], [cluster("c", [endpoint_of(backends[0])])])
    )
    small = await curl(url(port, "/?status=503"), *host(), "--data-binary", "@-", stdin=b"s" * 1000)
    assert small.status == 503
    assert runtime.stats.clusters["c"].rq_retry == 3
    last = await asyncio.to_thread(backends[0].last)
    assert last["body"] == "s" * 1000, "the last try carried the whole body again"
    big = await curl(url(port, "/?status=503"), *host(), "--data-binary", "@-", stdin=b"b" * (1 * MB))
    assert big.status == 503
    assert big.json()["body_length"] == MB
    assert runtime.stats.clusters["c"].rq_retry == 3, "the large body was not retried"
