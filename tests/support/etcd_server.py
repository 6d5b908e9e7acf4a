"""A real etcd server for tests and benchmarks: Debian's ``etcd-server`` package (``/usr/bin/etcd``).

``running_etcd()`` starts one single-member cluster on free loopback ports with its own data directory,
waits until it answers, and stops it (and removes the directory it created) on exit, even when the body
fails. ``EtcdServer`` can also be killed with SIGKILL and restarted on the same data directory and
ports (durability tests). The ``etcd_server`` pytest fixture wraps ``running_etcd`` for tests that
import it (``from support.etcd_server import etcd_server``) or list it in a conftest.

Progress notifications for quiet watches are sent every ``progress_notify_interval`` (etcd's default
is 10 minutes; we use 1 s so that bookmarks can be tested).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ETCD_BINARY = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"


class EtcdNotInstalled(RuntimeError):
    pass


def find_etcd() -> str:
    """The etcd binary, or a clear error saying how to install it."""
    for candidate in (os.environ.get("INNERMESH_ETCD"), ETCD_BINARY, shutil.which("etcd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EtcdNotInstalled(
        f"etcd is not installed (looked for {ETCD_BINARY} and etcd on PATH): "
        "run `apt-get install etcd-server` (Debian's etcd 3.4), or set INNERMESH_ETCD to an etcd binary"
    )


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member on loopback. ``start``/``stop``/``kill``; ``endpoint`` is
    ``127.0.0.1:<client port>``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        name: str = "innermesh-test",
        progress_notify_interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_etcd()
        self.data_dir = data_dir
        self.name = name
        self.progress_notify_interval = progress_notify_interval
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _command(self) -> list[str]:
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            f"--experimental-watch-progress-notify-interval={self.progress_notify_interval}",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until it reports healthy; on failure raise with the log's tail."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("etcd is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy within {timeout}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as response:  # noqa: S310
                body = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(body.get("health") == "true")

    def metric(self, name: str) -> float:
        """One gauge or counter from etcd's /metrics (summed over label sets)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5.0) as response:  # noqa: S310
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL (as a crash or power cut would stop it) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_etcd(
    base_dir: Path | None = None,
    *,
    progress_notify_interval: str = "1s",
    start_timeout: float = 20.0,
    keep_data: bool = False,
) -> Iterator[EtcdServer]:
    """A started etcd in ``base_dir`` (default: a new temporary directory). On exit, even on failure,
    it is stopped and its data directory removed (etcd preallocates 64 MB of WAL; ``keep_data`` keeps
    it), and the temporary directory too if we created it; in a given ``base_dir`` the log stays."""
    created = base_dir is None
    root = Path(tempfile.mkdtemp(prefix="innermesh-etcd-")) if base_dir is None else base_dir
    server = EtcdServer(root / "etcd-data", progress_notify_interval=progress_notify_interval)
    try:
        for attempt in range(3):
            try:
                server.start(start_timeout)
                break
            except RuntimeError:
                # A port picked by free_port() may have been taken meanwhile: pick again.
                server.kill()
                if attempt == 2:
                    raise
                shutil.rmtree(server.data_dir, ignore_errors=True)
                server.client_port, server.peer_port = free_port(), free_port()
        yield server
    finally:
        server.stop()
        if not keep_data:
            shutil.rmtree(server.data_dir, ignore_errors=True)
        if created:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd server for one test, in the test's tmp dir. Fails (naming ``apt-get install
    etcd-server``) rather than skips when etcd is missing: the store suite must run on both backends."""
    with running_etcd(tmp_path) as server:
        yield server
