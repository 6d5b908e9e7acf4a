"""A real ``innermesh server`` in a subprocess, for tests that need the control plane as users run it.

``running_server(data_dir)`` starts ``python -m innermesh server`` on a free loopback port with its own
data directory, waits until ``/readyz`` answers 200, and stops it (SIGTERM, then SIGKILL) on exit, even
when the body fails. The server's output goes to ``<data_dir>.log``; ``log_tail()`` is in every start
failure. ``ServerProcess`` can also be killed (``kill``) and started again on the same data directory
(``start``), for the crash tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def innermesh_command() -> list[str]:
    """How tests run the ``innermesh`` command: this interpreter, ``-m innermesh``."""
    return [sys.executable, "-m", "innermesh"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One ``innermesh server`` on loopback. ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        store: str = "sqlite",
        etcd_endpoints: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.etcd_endpoints = list(etcd_endpoints)
        self.extra_args = list(extra_args)
        self.env = env
        self.port = port or free_port()
        self.xds_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            *innermesh_command(),
            "server",
            "--listen",
            f"{LOOPBACK}:{self.port}",
            "--xds-listen",
            f"{LOOPBACK}:{self.xds_port}",
            "--data-dir",
            str(self.data_dir),
            "--store",
            self.store,
            "--log-level",
            "info",
        ]
        if self.etcd_endpoints:
            cmd += ["--etcd-endpoints", ",".join(self.etcd_endpoints)]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait for /readyz; on failure raise with the log's tail."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        env = {**os.environ, **(self.env or {})}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"innermesh server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"innermesh server was not ready within {timeout}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1.0) as response:  # noqa: S310
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        """SIGKILL (as a crash would stop it) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_server(
    data_dir: Path,
    *,
    store: str = "sqlite",
    etcd_endpoints: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    start_timeout: float = 30.0,
) -> Iterator[ServerProcess]:
    """A started server; stopped on exit, whatever happened in the body."""
    server = ServerProcess(
        data_dir, store=store, etcd_endpoints=etcd_endpoints, extra_args=extra_args, env=env
    )
    try:
        for attempt in range(3):
            try:
                server.start(start_timeout)
                break
            except RuntimeError:
                server.kill()
                # The port free_port() picked may have been taken meanwhile: pick again.
                if attempt == 2 or "address already in use" not in server.log_tail().lower():
                    raise
                server.port = free_port()
        yield server
    finally:
        server.stop()
