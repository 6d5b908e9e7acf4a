"""The sidecar beside HAProxy, nginx and a direct connection, on one backend, in one run.

Layout (PERF-NOTES.md): the proxy under test alone on core 1 (``taskset -c 1``); the backend (nginx,
one worker, a 1 KiB ``return 200``) and the load generator share core 0. Scenarios are interleaved
and their order rotated in each repetition; ratios are taken within a repetition, then the median.

For each proxy:
- requests/s: ``wrk -t1 -c50 -d<seconds>s`` through it;
- proxy-core µs/request: core 1's busy time (/proc/stat: total - idle - iowait - steal) during that
  run, divided by the requests; the fair per-core figure, since core 0 saturates first;
- latency at one connection: ``wrk -t1 -c1 --latency`` p50/p99;
- latency at a fixed 1,000 requests/s over 10 connections: ``bench/fixed_rate.py`` p50/p99
  (open loop, measured from the intended send time);
- syscalls per request: ``perf stat -e raw_syscalls:sys_enter -p PIDS`` (the peer's process tree:
  nginx's worker, not only its master) during a wrk run before the repetitions, divided by the
  requests wrk made meanwhile;
- user and sys µs/request: the peer's process tree's user and kernel CPU time (/proc/PID/stat)
  during the requests/s run, divided by its requests: where the per-core cost goes (the proxy's own
  code, or the kernel's TCP, whose cost grows when core 0 idles and every write must wake it);
- RSS: idle (before any load) and loaded (after the runs), from /proc/PID/status.

The innermesh sidecar runs for real: an ``innermesh server`` holds a Service, the backend as a Workload,
and an HTTPRoute that sets a request header and a response header; ``innermesh proxy`` gets its
configuration over xDS and serves its outbound listener; metrics are on (they always are).

Run: .venv/bin/python bench/proxy_http.py [--reps 5 --seconds 10] (needs haproxy, nginx, wrk and
linux-perf from Debian; root for perf)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.server_process import innermesh_command, running_server  # noqa: E402

BODY = "x" * 1023 + "\n"  # a 1 KiB response
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, host: str | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310
            with urllib.request.urlopen(req, timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return
        except Exception as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"{url} (Host {host}) did not answer 200 within {timeout}s: {last}")


def core_busy(core: int) -> float:
    """Seconds core ``core`` has been busy since boot (total - idle - iowait - steal)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                total = sum(v[:8])
                idle = v[3] + v[4] + v[7]
                return (total - idle) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> list[int]:
    """A process and its children (nginx forks its worker; taskset execs in place)."""
    with contextlib.suppress(OSError):
        return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    return [pid]


def process_tree_rss_mb(pid: int) -> float:
    return sum(rss_mb(p) for p in process_tree(pid))


def process_tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by a process and its children."""
    user = system = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            # Fields after the command (which may hold spaces) start at the last ")".
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


@dataclass
class Peer:
    name: str
    url: str
    host: str | None
    pid: int | None  # the process on core 1 (None for direct)
    rss_idle: float = float("nan")
    runs: list[dict[str, float]] = field(default_factory=list)


WRK_RE = {
    "rps": re.compile(r"Requests/sec:\s+([\d.]+)"),
    "requests": re.compile(r"(\d+) requests in"),
    "p50": re.compile(r"50%\s+([\d.]+)(us|ms|s)"),
    "p99": re.compile(r"99%\s+([\d.]+)(us|ms|s)"),
}
UNIT = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def wrk(url: str, host: str | None, connections: int, seconds: float) -> dict[str, float]:
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {}
    for key, rx in WRK_RE.items():
        m = rx.search(out)
        if m is None:
            raise RuntimeError(f"cannot read {key} from wrk:\n{out}")
        result[key] = float(m.group(1)) * (UNIT[m.group(2)] if key.startswith("p") else 1.0)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = float(errors.group(1)) if errors else 0.0
    return result


H2LOAD_RE = {
    "rps": re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s"),
    "requests": re.compile(r"requests: \d+ total, \d+ started, (\d+) done"),
    "failed": re.compile(r"requests: .* (\d+) failed"),
    "mean": re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)"),
}


def h2load(url: str, host: str | None, connections: int, streams: int, seconds: float) -> dict[str, float]:
    """HTTP/2 (h2c, prior knowledge) load with Debian's h2load; it reports a mean latency, no percentiles."""
    cmd = ["taskset", "-c", "0", "h2load", f"-c{connections}", f"-m{streams}", f"-D{seconds:g}"]
    if host:
        cmd += ["-H", f":authority: {host}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {}
    for key, rx in H2LOAD_RE.items():
        m = rx.search(out)
        if m is None:
            raise RuntimeError(f"cannot read {key} from h2load:\n{out}")
        result[key] = float(m.group(1)) * (UNIT[m.group(2)] if key == "mean" else 1.0)
    status = re.search(r"status codes: (\d+) 2xx", out)
    # h2load's "done" and its 2xx count can differ by the requests in flight at the deadline.
    result["non2xx"] = (
        max(0.0, result["requests"] - (float(status.group(1)) if status else 0.0)) + result["failed"]
    )
    return result


def load(peer: Peer, connections: int, seconds: float, h2: bool) -> dict[str, float]:
    """Closed-loop load: wrk over HTTP/1.1 keep-alive, or h2load with 10 streams per connection."""
    if not h2:
        return wrk(peer.url, peer.host, connections, seconds)
    result = h2load(peer.url, peer.host, connections, 10 if connections > 1 else 1, seconds)
    result["p50"] = result["p99"] = result["mean"]  # h2load gives no percentiles
    return result


def fixed_rate(url: str, host: str | None, seconds: float) -> dict[str, float]:
    cmd = ["taskset", "-c", "0", sys.executable, str(ROOT / "bench/fixed_rate.py"), "--url", url]
    cmd += ["--rate", "1000", "--seconds", str(seconds)] + (["--host", host] if host else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def syscalls_per_request(peer: Peer, seconds: float, h2: bool = False) -> float:
    if peer.pid is None or shutil.which("perf") is None:
        return float("nan")
    perf = subprocess.Popen(
        [
            "perf",
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter",
            "-p",
            ",".join(map(str, process_tree(peer.pid))),
            "--",
            "sleep",
            str(seconds),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.2)
    made = load(peer, 50, seconds - 1, h2)
    _, err = perf.communicate()
    m = re.search(r"^(\d+),", err, re.M)
    if m is None:
        return float("nan")
    return int(m.group(1)) / made["requests"]


# --- the peers -------------------------------------------------------------------------------------


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  {body}
}}
"""
    )
    return path


@contextlib.contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def innermesh_manifests(backend_port: int) -> list[dict[str, object]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "backend", "namespace": "bench", "labels": {}},
            "spec": {
                "selector": {"app": "backend"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "mesh.innermesh.io/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": "backend", "namespace": "bench", "labels": {"app": "backend"}},
            "spec": {"addresses": [LOOPBACK], "ports": [{"name": "http", "port": backend_port}]},
        },
        {
            "apiVersion": "mesh.innermesh.io/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": "client", "namespace": "bench", "labels": {"app": "client"}},
            "spec": {"addresses": [LOOPBACK]},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "backend", "namespace": "bench"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "backend", "port": 80}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "x-bench", "value": "1"}]},
                            },
                            {
                                "type": "ResponseHeaderModifier",
                                "responseHeaderModifier": {"remove": ["x-powered-by"]},
                            },
                        ],
                        "backendRefs": [{"name": "backend", "port": 80}],
                    }
                ],
            },
        },
    ]


def apply(api: str, manifests: list[dict[str, object]], tmp: Path) -> None:
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    done = subprocess.run(
        [*innermesh_command(), "--server", api, "apply", "-f", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"innermesh apply failed:\n{done.stdout}{done.stderr}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--only", help="comma-separated peers to run (direct,haproxy,nginx,innermesh)")
    p.add_argument(
        "--h2",
        action="store_true",
        help="clients speak HTTP/2 (h2c) to the proxies, which speak HTTP/1.1 to the backend (no direct row; "
        "latency columns are h2load's mean; no fixed-rate run)",
    )
    args = p.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        sys.exit("needs two cores")
    for tool in ("haproxy", "nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool} (apt-get install haproxy nginx wrk)")

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="innermesh-bench-")))
        backend_port = free_port()
        backend = nginx_conf(
            tmp,
            "backend",
            f'server {{ listen {LOOPBACK}:{backend_port}; location / {{ return 200 "{BODY}"; }} }}',
        )
        stack.enter_context(process(["taskset", "-c", "0", "nginx", "-c", str(backend)], tmp / "backend.log"))
        wait_http(f"http://{LOOPBACK}:{backend_port}/")
        peers: list[Peer] = (
            [] if args.h2 else [Peer("direct", f"http://{LOOPBACK}:{backend_port}/", None, None)]
        )

        hp = free_port()
        hcfg = tmp / "haproxy.cfg"
        hcfg.write_text(
            f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind {LOOPBACK}:{hp}{" proto h2" if args.h2 else ""}
  default_backend be
backend be
  http-request set-header x-bench 1
  server s1 {LOOPBACK}:{backend_port}
"""
        )
        h = stack.enter_context(
            process(["taskset", "-c", "1", "haproxy", "-f", str(hcfg)], tmp / "haproxy.log")
        )
        peers.append(Peer("haproxy", f"http://{LOOPBACK}:{hp}/", None, h.pid))

        np_ = free_port()
        ncfg = nginx_conf(
            tmp,
            "proxy",
            f"""upstream be {{ server {LOOPBACK}:{backend_port}; keepalive 64; }}
  server {{ listen {LOOPBACK}:{np_}{" http2" if args.h2 else ""};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_set_header x-bench 1; proxy_buffering on; }} }}""",
        )
        n = stack.enter_context(process(["taskset", "-c", "1", "nginx", "-c", str(ncfg)], tmp / "nginx.log"))
        peers.append(Peer("nginx", f"http://{LOOPBACK}:{np_}/", None, n.pid))

        server = stack.enter_context(running_server(tmp / "server-data"))
        apply(server.url, innermesh_manifests(backend_port), tmp)
        outbound, admin = free_port(), free_port()
        proxy_cmd = [
            "taskset", "-c", "1", *innermesh_command(), "proxy",
            "--xds", f"{LOOPBACK}:{server.xds_port}", "--workload", "bench/client",
            "--outbound", f"{LOOPBACK}:{outbound}", "--admin", f"{LOOPBACK}:{admin}", "--log-level", "warning",
        ]  # fmt: skip
        proxy = stack.enter_context(process(proxy_cmd, tmp / "proxy.log"))
        host = "backend.bench"
        wait_http(f"http://{LOOPBACK}:{outbound}/", host)
        peers.append(Peer("innermesh", f"http://{LOOPBACK}:{outbound}/", host, proxy.pid))

        if args.only:
            wanted = set(args.only.split(","))
            peers = [p for p in peers if p.name in wanted]
        for peer in peers:
            if peer.pid is not None:
                time.sleep(0.5)
                peer.rss_idle = process_tree_rss_mb(peer.pid)
            if not args.h2:
                wait_http(peer.url, peer.host)

        syscalls = {peer.name: syscalls_per_request(peer, min(args.seconds, 8.0), args.h2) for peer in peers}
        for rep in range(args.reps):
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
            for peer in order:
                before = core_busy(1)
                cpu_before = process_tree_cpu(peer.pid) if peer.pid else (0.0, 0.0)
                loaded_run = load(peer, 50, args.seconds, args.h2)
                busy = core_busy(1) - before
                cpu_after = process_tree_cpu(peer.pid) if peer.pid else (0.0, 0.0)
                per_request = 1e6 / loaded_run["requests"] if peer.pid else float("nan")
                one = load(peer, 1, max(3.0, args.seconds / 2), args.h2)
                nan = float("nan")
                fixed = (
                    {"p50_us": nan, "p99_us": nan, "errors": 0.0}
                    if args.h2
                    else fixed_rate(peer.url, peer.host, args.seconds)
                )
                peer.runs.append(
                    {
                        "rps": loaded_run["rps"],
                        "non2xx": loaded_run["non2xx"],
                        "core_us": busy * per_request,
                        "user_us": (cpu_after[0] - cpu_before[0]) * per_request,
                        "sys_us": (cpu_after[1] - cpu_before[1]) * per_request,
                        "c1_p50": one["p50"],
                        "c1_p99": one["p99"],
                        "fixed_p50": fixed["p50_us"],
                        "fixed_p99": fixed["p99_us"],
                        "fixed_errors": fixed["errors"],
                    }
                )
            print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr)

        def med(peer: Peer, key: str) -> float:
            return statistics.median(r[key] for r in peer.runs)

        by_name = {p.name: p for p in peers}
        print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
        print(
            f"backend: nginx return 200 (1 KiB) on core 0; load: {'h2load -c50 -m10 (h2c)' if args.h2 else 'wrk -c50'} on core 0; "
            f"proxies on core 1; {args.reps} reps x {args.seconds:g}s\n"
        )
        head = f"{'peer':<10} {'req/s':>8} {'core µs/req':>11} {'vs haproxy':>10} {'user µs':>8} {'kern µs':>8} {'c1 p50':>8} {'c1 p99':>8} {'1k/s p50':>9} {'1k/s p99':>9} {'sys/req':>7} {'RSS idle':>9} {'RSS load':>9}"
        print(head)
        print("-" * len(head))
        for peer in peers:
            ratio = float("nan")
            if "haproxy" in by_name and peer.pid is not None:
                # per-core efficiency relative to HAProxy, median of same-repetition ratios
                hap = by_name["haproxy"]
                ratio = statistics.median(
                    h["core_us"] / r["core_us"] for h, r in zip(hap.runs, peer.runs, strict=True)
                )
            loaded = process_tree_rss_mb(peer.pid) if peer.pid else float("nan")
            print(
                f"{peer.name:<10} {med(peer, 'rps'):>8.0f} {med(peer, 'core_us'):>11.1f} {ratio:>9.2f}x "
                f"{med(peer, 'user_us'):>8.1f} {med(peer, 'sys_us'):>8.1f} {med(peer, 'c1_p50'):>7.0f}µs {med(peer, 'c1_p99'):>7.0f}µs {med(peer, 'fixed_p50'):>8.0f}µs "
                f"{med(peer, 'fixed_p99'):>8.0f}µs {syscalls[peer.name]:>7.2f} {peer.rss_idle:>7.1f}MB {loaded:>7.1f}MB"
            )
            bad = sum(r["non2xx"] + r["fixed_errors"] for r in peer.runs)
            if bad:
                print(f"  !! {peer.name}: {bad:.0f} failed requests")
        print(
            "\ncore µs/req: the proxy core's busy time per request (lower is better); vs haproxy: HAProxy's core µs/req divided by this peer's (higher is better)"
            "\nuser µs, kern µs: the peer's own CPU time per request in user space and in the kernel; sys/req: system calls per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
