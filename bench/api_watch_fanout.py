"""API write throughput and watch fan-out, SQLite and etcd side by side in one run.

For each store, a real ``innermesh server`` process (and, for etcd, a real etcd from Debian's
etcd-server) is started; W watchers open watch streams on Workloads (in P separate processes, so that
the watchers' own JSON work does not slow the writer); then N Workloads are created through the REST
API by C concurrent writers. Each object carries the writer's send time (CLOCK_MONOTONIC, which all
processes on the machine share), so each watcher measures every event's delay itself.

Figures per store:
- writes/s: N / (time from the first create sent to the last acknowledged);
- all seen: time from the first create sent until every watcher has seen every event;
- event delay p50/p99/max: create sent -> event read by a watcher, over all W x N deliveries;
- raw store writes/s: the same creates straight into the backend (no HTTP, no validation), the
  reference for what the API layer costs.

Run: .venv/bin/python bench/api_watch_fanout.py [--objects 10000 --watchers 100 --writers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the etcd and server runners the tests use

from innermesh.store import open_backend  # noqa: E402
from support.etcd_server import running_etcd  # noqa: E402
from support.server_process import running_server  # noqa: E402

PATH = "/apis/mesh.innermesh.io/v1alpha1/namespaces/default/workloads"
SENT_RE = re.compile(rb'"bench/sent-ns":"(\d+)"')


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------------------------------
# Watchers, in child processes


async def _watch_many(url: str, rv: str, count: int, expected: int, ready: Any, results: Any) -> None:
    delays: list[int] = []
    seen_all_at: list[int] = []

    async def one(session: aiohttp.ClientSession) -> None:
        seen = 0
        params = {"watch": "true", "resourceVersion": rv}
        async with session.get(url + PATH, params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            ready.release()
            async for line in resp.content:
                m = SENT_RE.search(line)
                if m is None or b'"type":"ADDED"' not in line:
                    continue
                delays.append(now_ns() - int(m.group(1)))
                seen += 1
                if seen >= expected:
                    seen_all_at.append(now_ns())
                    return

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, read_bufsize=4 * 1024 * 1024) as session:
        await asyncio.gather(*(one(session) for _ in range(count)))
    delays.sort()
    results.put(
        {"delays": delays[:: max(1, len(delays) // 20000)], "n": len(delays), "done": max(seen_all_at)}
    )


def _watcher_process(url: str, rv: str, count: int, expected: int, ready: Any, results: Any) -> None:
    asyncio.run(_watch_many(url, rv, count, expected, ready, results))


# ---------------------------------------------------------------------------------------------------
# Writers


async def _write(url: str, n: int, writers: int) -> tuple[int, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    first = now_ns()

    async def writer(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "apiVersion": "mesh.innermesh.io/v1alpha1",
                "kind": "Workload",
                "metadata": {
                    "name": f"w-{i}",
                    "labels": {"app": f"bench-{i % 50}"},
                    "annotations": {"bench/sent-ns": str(now_ns())},
                },
                "spec": {
                    "addresses": [f"127.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"],
                    "zone": "a",
                },
            }
            async with session.post(url + PATH, json=body) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"create failed: {resp.status} {await resp.text()}")
                await resp.read()

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(writer(session) for _ in range(writers)))
    return first, now_ns()


async def _list_rv(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + PATH) as resp:
        body = await resp.json()
        return str(body["metadata"]["resourceVersion"])


async def _raw_writes(store: str, data_dir: Path, endpoints: list[str], n: int, writers: int) -> float:
    backend = await open_backend(store, data_dir, endpoints, "/bench-raw")  # type: ignore[arg-type]
    try:
        value = json.dumps(
            {"spec": {"addresses": ["127.0.0.1"]}, "metadata": {"labels": {"a": "b"}}}
        ).encode()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def writer() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await backend.create(f"/raw/{i}", value)

        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return n / (time.perf_counter() - t0)
    finally:
        await backend.close()


# ---------------------------------------------------------------------------------------------------


@dataclass
class Result:
    store: str
    writes_per_s: float
    all_seen_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    deliveries: int
    raw_writes_per_s: float


def pct(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1e6


@contextlib.contextmanager
def _store(store: str, base: Path) -> Iterator[list[str]]:
    if store == "etcd":
        (base / "etcd").mkdir()
        with running_etcd(base / "etcd") as etcd:
            yield [etcd.url]
    else:
        yield []


def run_one(store: str, args: argparse.Namespace, base: Path) -> Result:
    with _store(store, base) as endpoints:
        with running_server(base / "data", store=store, etcd_endpoints=endpoints) as server:
            url = server.url
            rv = asyncio.run(_list_rv(url))
            ctx = mp.get_context("spawn")
            ready = ctx.Semaphore(0)
            results: Any = ctx.Queue()
            per = [
                args.watchers // args.watcher_procs + (1 if i < args.watchers % args.watcher_procs else 0)
                for i in range(args.watcher_procs)
            ]
            procs = [
                ctx.Process(
                    target=_watcher_process, args=(url, rv, k, args.objects, ready, results), daemon=True
                )
                for k in per
                if k
            ]
            for p in procs:
                p.start()
            for _ in range(args.watchers):
                if not ready.acquire(timeout=60):
                    raise RuntimeError("watchers did not connect within 60s")
            first, last_ack = asyncio.run(_write(url, args.objects, args.writers))
            parts = [results.get(timeout=600) for _ in procs]
            for p in procs:
                p.join(timeout=10)
        delays = sorted(d for part in parts for d in part["delays"])
        done = max(part["done"] for part in parts)
        raw = asyncio.run(_raw_writes(store, base / "raw", endpoints, args.objects, args.writers))
    return Result(
        store=store,
        writes_per_s=args.objects / ((last_ack - first) / 1e9),
        all_seen_s=(done - first) / 1e9,
        p50_ms=pct(delays, 0.50),
        p99_ms=pct(delays, 0.99),
        max_ms=delays[-1] / 1e6 if delays else float("nan"),
        deliveries=sum(part["n"] for part in parts),
        raw_writes_per_s=raw,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--watchers", type=int, default=100)
    ap.add_argument("--writers", type=int, default=32)
    ap.add_argument("--watcher-procs", type=int, default=4)
    ap.add_argument("--stores", default="sqlite,etcd")
    args = ap.parse_args()
    results = []
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"innermesh-bench-{store}-") as tmp:
            results.append(run_one(store, args, Path(tmp)))
    cmd = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
    print(f"\n$ {cmd}")
    print(
        f"{args.objects} Workloads created by {args.writers} concurrent writers over HTTP while {args.watchers} "
        f"watchers ({args.watcher_procs} processes) follow; {os.cpu_count()} CPUs\n"
    )
    header = f"{'store':<8} {'writes/s':>9} {'all seen':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'events':>9} {'raw store writes/s':>19}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.store:<8} {r.writes_per_s:>9.0f} {r.all_seen_s:>8.2f}s {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.max_ms:>8.1f} {r.deliveries:>9} {r.raw_writes_per_s:>19.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
