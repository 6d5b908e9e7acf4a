"""``innermesh demo``: starts the control plane, applies the examples, shows them, tells the user what to
try next, serves until SIGINT and stops cleanly; run again on the same data directory, it finds
everything unchanged."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from support.server_process import free_port, innermesh_command

DONE = "Press Ctrl-C to stop."


class Demo:
    """A running ``innermesh demo``: its output lines arrive through a queue fed by a thread."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            [*innermesh_command(), "demo", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "INNERMESH_SERVER"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)
            self.lines.put(None)

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def read_until(self, last: str | None, timeout: float) -> str:
        """Output up to and including the line ``last`` (or to the end when None)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {last!r} within {timeout}s:\n{''.join(seen)}") from None
            if line is None:
                if last is None:
                    return "".join(seen)
                raise AssertionError(f"demo exited with {self.proc.wait()}:\n{''.join(seen)}")
            seen.append(line)
            if last is not None and line.strip() == last:
                return "".join(seen)

    def stop(self) -> tuple[int, str]:
        """SIGINT, as Ctrl-C; the exit code and the rest of the output."""
        self.proc.send_signal(signal.SIGINT)
        try:
            rest = self.read_until(None, 15)
            return self.proc.wait(15), rest
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def run_demo(data_dir: Path, port: int, timeout: float = 60.0) -> tuple[str, Demo]:
    """Start the demo; its output up to the final prompt, and the still-running demo."""
    demo = Demo(data_dir, port)
    try:
        return demo.read_until(DONE, timeout), demo
    except BaseException:
        demo.close()
        raise


def test_demo_shows_the_mesh_and_stops_on_sigint(tmp_path: Path) -> None:
    """Everything the demo promises, a working server while it runs, a clean stop, and a re-run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "demo-data"
    out, demo = run_demo(data_dir, port)
    try:
        for expected in (
            f"innermesh demo: control plane started at {url}",
            "namespace/demo created",
            "service/web created",
            "workload.mesh.innermesh.io/web-1 created",
            "httproute.gateway.networking.k8s.io/web created",
            "get services -n demo",
            "get workloads -n demo",
            "get endpointslices -n demo",
            "get httproutes -n demo",
            "describe service web -n demo",
            "127.0.10.1:8080",
            "Workload/web-1",
            "(BackendNotFound)",
            f"--server {url} get svc -n demo -w",
            f"kubectl --server {url} get svc -n demo",
        ):
            assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"
        # The server really serves while the demo waits.
        listing = subprocess.run(
            [*innermesh_command(), "--server", url, "get", "workloads", "-n", "demo", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert listing.stdout.split() == [
            f"workload.mesh.innermesh.io/{n}" for n in ("api-1", "api-2", "web-1", "web-2", "web-3")
        ]
    finally:
        code, rest = demo.stop()
    assert code == 0, rest
    assert "innermesh demo: stopping" in rest
    assert "Traceback" not in out + rest

    again, demo = run_demo(data_dir, port)
    code, rest = demo.stop()
    assert code == 0, rest
    assert "service/web unchanged" in again
    assert "httproute.gateway.networking.k8s.io/web unchanged" in again
    assert "created" not in again.split("get services")[0].replace("control plane started", "")
