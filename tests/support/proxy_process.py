"""An ``innermesh proxy`` (the sidecar) as a real process, for e2e tests and benchmarks.

``ProxyProcess(xds_port, "ns/workload").start()`` runs the sidecar on free loopback ports and waits
until its admin port says /ready (it has applied a configuration from the control plane).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from support.server_process import LOOPBACK, free_port, innermesh_command


class ProxyProcess:
    def __init__(
        self,
        xds_port: int,
        workload: str,
        log_path: Path,
        *,
        app_ports: dict[int, int] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.xds_port = xds_port
        self.workload = workload
        self.log_path = log_path
        self.app_ports = app_ports or {}
        self.extra_args = list(extra_args)
        self.outbound = free_port()
        self.admin = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            *innermesh_command(),
            "proxy",
            "--workload",
            self.workload,
            "--xds",
            f"{LOOPBACK}:{self.xds_port}",
            "--outbound",
            f"{LOOPBACK}:{self.outbound}",
            "--admin",
            f"{LOOPBACK}:{self.admin}",
            "--log-level",
            "info",
        ]
        for port, app in self.app_ports.items():
            cmd += ["--app-port", f"{port}={app}"]
        return cmd + self.extra_args

    def start(self, timeout: float = 20.0) -> ProxyProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"innermesh proxy exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"innermesh proxy was not ready within {timeout}s:\n{self.log_tail()}")

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.admin}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def ready(self) -> bool:
        try:
            return self.admin_get("/ready")[0] == 200
        except OSError:
            return False

    def config_dump(self) -> dict[str, Any]:
        status, body = self.admin_get("/config_dump")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def stats(self) -> str:
        return self.admin_get("/stats")[1]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM: the proxy stops accepting, drains what it accepted, and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def running_proxy(xds_port: int, workload: str, log_path: Path, **kw: Any) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(xds_port, workload, log_path, **kw)
    try:
        yield proxy.start()
    finally:
        proxy.stop()
