"""Debian's kubectl (package kubernetes-client) against a real ``innermesh server``.

kubectl is the client users already know; these tests run its real binary for create, apply, get,
get -w and delete on Services, Workloads and HTTPRoutes. The binary is the one ``scripts/setup --dev``
unpacks into .cache/debian-kubectl (INNERMESH_TEST_KUBECTL overrides the path).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.kubectl

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(os.environ.get("INNERMESH_TEST_KUBECTL", ROOT / ".cache/debian-kubectl/usr/bin/kubectl"))

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"""

WORKLOAD = """\
apiVersion: mesh.innermesh.io/v1alpha1
kind: Workload
metadata:
  name: web-1
  labels: {app: web}
spec:
  addresses: [127.0.20.1]
  ports: [{name: http, port: 8080}]
  zone: zone-a
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 80}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not KUBECTL.exists():
        pytest.fail(
            f"Debian's kubectl is not at {KUBECTL}: run scripts/setup --dev (it unpacks kubernetes-client)"
        )
    with running_server(tmp_path_factory.mktemp("kubectl") / "data") as s:
        yield s


def kubectl(server: ServerProcess, *args: str, stdin: str | None = None, check: bool = True) -> str:
    # An empty kubeconfig: nothing from the machine's ~/.kube may leak into the test.
    env = {**os.environ, "KUBECONFIG": os.devnull, "HOME": "/nonexistent"}
    proc = subprocess.run(
        [str(KUBECTL), "--server", server.url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout + proc.stderr


def test_kubectl_is_debians_binary() -> None:
    """The compatibility claim is about Debian's kubectl: check which binary these tests run."""
    if not KUBECTL.exists():
        pytest.fail(f"Debian's kubectl is not at {KUBECTL}: run scripts/setup --dev")
    out = subprocess.run(
        [str(KUBECTL), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["clientVersion"]["gitVersion"].startswith("v1.")


def test_create_get_and_delete_a_service(server: ServerProcess) -> None:
    """kubectl create, get (table, wide, yaml and json) and delete a Service."""
    assert "service/web created" in kubectl(server, "create", "-f", "-", stdin=SERVICE)
    table = kubectl(server, "get", "services")
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"]
    assert row.split()[:2] == ["web", "ClusterIP"] and "80/TCP" in row
    assert "app=web" in kubectl(server, "get", "svc", "web", "-o", "wide")
    obj = json.loads(kubectl(server, "get", "svc", "web", "-o", "json"))
    assert obj["spec"]["clusterIP"].count(".") == 3 and obj["spec"]["ports"][0]["targetPort"] == "http"
    assert "already exists" in kubectl(server, "create", "-f", "-", stdin=SERVICE, check=False)
    assert 'service "web" deleted' in kubectl(server, "delete", "svc", "web")
    assert "NotFound" in kubectl(server, "get", "svc", "web", check=False)


def test_apply_creates_then_configures_then_leaves_unchanged(server: ServerProcess) -> None:
    """kubectl apply on a Service (strategic merge) and on our kinds (merge patch), twice, then changed."""
    manifests = "---\n".join([SERVICE, WORKLOAD, ROUTE])
    out = kubectl(server, "apply", "-f", "-", stdin=manifests)
    assert "service/web created" in out
    assert "workload.mesh.innermesh.io/web-1 created" in out
    assert "httproute.gateway.networking.k8s.io/web created" in out
    again = kubectl(server, "apply", "-f", "-", stdin=manifests)
    assert "service/web unchanged" in again
    changed = kubectl(server, "apply", "-f", "-", stdin=manifests.replace("zone: zone-a", "zone: zone-b"))
    assert "workload.mesh.innermesh.io/web-1 configured" in changed
    wl = json.loads(kubectl(server, "get", "workload", "web-1", "-o", "json"))
    assert wl["spec"]["zone"] == "zone-b"
    assert "web-1" in kubectl(server, "get", "wl")
    routes = kubectl(server, "get", "httproutes")
    assert routes.splitlines()[0].split()[0] == "NAME" and "web" in routes
    # A field removed from the manifest is removed from the object (three-way apply).
    trimmed = SERVICE.replace("  labels: {app: web}\n", "")
    kubectl(server, "apply", "-f", "-", stdin=trimmed)
    svc = json.loads(kubectl(server, "get", "svc", "web", "-o", "json"))
    assert "labels" not in svc["metadata"] or "app" not in svc["metadata"]["labels"]
    out = kubectl(server, "delete", "-f", "-", stdin=manifests)
    assert 'workload.mesh.innermesh.io "web-1" deleted' in out


def test_invalid_manifest_shows_the_servers_field_errors(server: ServerProcess) -> None:
    """kubectl shows innermesh's 422 with the field path and rule, and nothing is created."""
    bad = SERVICE.replace("port: 80,", "port: 70000,")
    out = kubectl(server, "apply", "-f", "-", stdin=bad, check=False)
    assert "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive" in out
    assert "NotFound" in kubectl(server, "get", "svc", "web", check=False)


@pytest.mark.parametrize(
    ("manifest", "resource", "name", "change"),
    [
        (SERVICE, "services", "web", ("port: 80,", "port: 81,")),
        (WORKLOAD, "workloads", "web-1", ("zone: zone-a", "zone: zone-c")),
        (ROUTE, "httproutes", "web", ("value: /api", "value: /v2")),
    ],
)
def test_get_watch_prints_changes_as_they_happen(
    server: ServerProcess, manifest: str, resource: str, name: str, change: tuple[str, str]
) -> None:
    """kubectl get -w prints a row for each create, change and delete made by another client."""
    env = {**os.environ, "KUBECONFIG": os.devnull, "HOME": "/nonexistent"}
    watcher = subprocess.Popen(
        [str(KUBECTL), "--server", server.url, "get", resource, "-w", "--output-watch-events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        time.sleep(1.0)  # let the watch start; kubectl prints nothing for an empty list
        # create --save-config, so that apply can compute its three-way patch (without the annotation
        # kubectl would merge the changed port in beside the old one, in Kubernetes too).
        kubectl(server, "create", "--save-config", "-f", "-", stdin=manifest)
        kubectl(server, "apply", "-f", "-", stdin=manifest.replace(*change))
        kubectl(server, "delete", resource, name)
        time.sleep(1.5)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    events = [line.split()[0] for line in out.splitlines() if name in line.split()[1:2]]
    # Controllers may add MODIFIED events of their own (a route's status) between ours.
    assert events[0] == "ADDED" and events[-1] == "DELETED", out
    assert events[1:-1] and set(events[1:-1]) == {"MODIFIED"}, out
