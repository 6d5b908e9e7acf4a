"""An open-loop HTTP/1.1 load generator: a fixed request rate, latency from the intended send time.

wrk (Debian's, not wrk2) only runs closed-loop, which hides queueing delay; latency "at a fixed 1,000
requests/s" needs requests sent on a schedule whatever the answers do. Each of C keep-alive
connections sends on its own schedule (rate / C per second); a request's latency counts from when it
*should* have been sent (coordinated omission corrected), to the last byte of its response.

    python bench/fixed_rate.py --url http://127.0.0.1:8080/ --rate 1000 --seconds 10 [--host H]

prints one JSON line: {"sent": n, "ok": n, "errors": n, "p50_us": ..., "p99_us": ..., "max_us": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import urllib.parse
from collections import deque
from typing import cast

import httptools


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[float], errors: list[int]) -> None:
        self.request = request
        self.latencies = latencies
        self.errors = errors
        self.transport: asyncio.Transport | None = None
        self.pending: deque[float] = deque()  # intended send times, in order
        self.parser = httptools.HttpResponseParser(self)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.pending.append(intended)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        intended = self.pending.popleft()
        if not self.pending and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)
        if self.parser.get_status_code() == 200:
            self.latencies.append(time.perf_counter() - intended)
        else:
            self.errors.append(self.parser.get_status_code())

    async def drained(self) -> None:
        while self.pending and not self.lost.done():
            self.idle = asyncio.get_running_loop().create_future()
            await asyncio.wait([self.idle, self.lost], return_when=asyncio.FIRST_COMPLETED)

    def connection_lost(self, exc: Exception | None) -> None:
        self.errors.extend([0] * len(self.pending))
        self.pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)


async def run(url: str, host: str | None, rate: float, seconds: float, connections: int) -> dict[str, float]:
    u = urllib.parse.urlsplit(url)
    request = (
        f"GET {u.path or '/'} HTTP/1.1\r\nHost: {host or u.netloc}\r\nUser-Agent: fixed-rate\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors: list[int] = []
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(
            lambda: _Conn(request, latencies, errors), u.hostname or "127.0.0.1", u.port or 80
        )
        conns.append(proto)
    interval = connections / rate
    start = time.perf_counter() + 0.05

    async def schedule(i: int, conn: _Conn) -> int:
        sent = 0
        t = start + i * (interval / connections)
        end = start + seconds
        while t < end:
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn.send(t)
            sent += 1
            t += interval
        return sent

    sent = sum(await asyncio.gather(*(schedule(i, c) for i, c in enumerate(conns))))
    # Answers still in flight: give them up to 5 s (each connection's queue drains in order).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(c.drained() for c in conns))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6 if lat else float("nan")

    return {
        "sent": sent,
        "ok": len(lat),
        "errors": len(errors) + max(0, sent - len(lat) - len(errors)),
        "p50_us": round(pct(0.50), 1),
        "p99_us": round(pct(0.99), 1),
        "max_us": round(lat[-1] * 1e6, 1) if lat else float("nan"),
        "mean_us": round(statistics.fmean(lat) * 1e6, 1) if lat else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--host", help="Host header (default: from the URL)")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=10)
    args = p.parse_args()
    import uvloop

    result = uvloop.run(run(args.url, args.host, args.rate, args.seconds, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
