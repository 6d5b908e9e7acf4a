"""``innermesh apply`` and ``kubectl apply`` take turns on the same objects: each reads the other's
last-applied configuration, so neither undoes the other and re-applying the same file is "unchanged"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server_process import ServerProcess, innermesh_command, running_server

REPO = Path(__file__).resolve().parents[2]
# scripts/setup --dev unpacks Debian's kubectl here (INNERMESH_TEST_KUBECTL overrides the path, as in
# tests/e2e); otherwise whatever kubectl is on PATH.
DEBIAN_KUBECTL = Path(
    os.environ.get("INNERMESH_TEST_KUBECTL", REPO / ".cache" / "debian-kubectl" / "usr" / "bin" / "kubectl")
)

pytestmark = pytest.mark.kubectl

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: shared
  namespace: default
  labels: {app: shared, tier: front}
spec:
  selector: {app: shared}
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: admin, port: 9000}
"""


def find_kubectl() -> str:
    if os.access(DEBIAN_KUBECTL, os.X_OK):
        return str(DEBIAN_KUBECTL)
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (scripts/setup --dev fetches Debian's)")
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("kubectl") / "data") as s:
        yield s


def kubectl(server: ServerProcess, *args: str) -> str:
    # --validate=false: kubectl cannot parse the server's /openapi/v2 Content-Type yet (reported), and
    # innermesh validates every object on the server anyway.
    result = subprocess.run(
        [
            find_kubectl(),
            "--server",
            server.url,
            *args,
            *(["--validate=false"] if args[0] == "apply" else []),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": "/dev/null"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def innermesh(server: ServerProcess, *args: str) -> str:
    result = subprocess.run(
        [*innermesh_command(), "--server", server.url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_and_innermesh_apply_take_turns(server: ServerProcess, tmp_path: Path) -> None:
    """Created by one, unchanged for the other; a change by one, unchanged for the other; a port and
    a label removed by kubectl are removed, and innermesh then agrees."""
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE)
    assert innermesh(server, "apply", "-f", str(f)) == "service/shared created\n"
    assert kubectl(server, "apply", "-f", str(f)) == "service/shared unchanged\n"

    f.write_text(SERVICE.replace("    - {name: admin, port: 9000}\n", "").replace(", tier: front", ""))
    assert kubectl(server, "apply", "-f", str(f)) == "service/shared configured\n"
    assert innermesh(server, "apply", "-f", str(f)) == "service/shared unchanged\n"
    svc = json.loads(innermesh(server, "get", "svc", "shared", "-o", "json"))
    assert [p["port"] for p in svc["spec"]["ports"]] == [80]
    assert svc["metadata"]["labels"] == {"app": "shared"}

    f.write_text(SERVICE)
    assert innermesh(server, "apply", "-f", str(f)) == "service/shared configured\n"
    assert kubectl(server, "apply", "-f", str(f)) == "service/shared unchanged\n"
    table = kubectl(server, "get", "svc", "shared").splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert innermesh(server, "get", "svc", "shared").splitlines()[0].split() == table[0].split()
