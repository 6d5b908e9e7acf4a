"""Backend processes for tests: ``python -m support.<module>`` children that print one READY line.

``start_child`` runs the module with the tests directory on PYTHONPATH and waits (bounded) for the
line ``READY ...``; ``stop_child`` ends it (SIGTERM, then SIGKILL) and closes its pipe. The echo
backends (HTTP, HTTP/2, gRPC) all start and stop this way.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent.parent)


def start_child(
    module: str, args: list[str], what: str, timeout: float = 15.0
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The started process and the words after READY; RuntimeError (the child stopped) if it never says it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        stop_child(process)
        raise RuntimeError(f"{what} did not start (said {line!r})")
    return process, line.split()[1:]


def stop_child(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
