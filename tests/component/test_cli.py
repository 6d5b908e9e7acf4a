"""The ``innermesh`` command as users run it: a subprocess against a real ``innermesh server`` subprocess.

One server serves the module (started by a fixture on a free loopback port with a tmp data dir, stopped
even when a test fails); each test works in its own namespace, so tests do not see each other's objects.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.etcd_server import running_etcd
from support.server_process import ServerProcess, free_port, innermesh_command, running_server

REPO = Path(__file__).resolve().parents[2]
DEMO_MANIFESTS = REPO / "examples" / "demo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("cli") / "data") as s:
        yield s


def cli(
    server: ServerProcess | None, *args: str, stdin: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("INNERMESH_SERVER", None)
    if server is not None:
        env["INNERMESH_SERVER"] = server.url
    return subprocess.run(
        [*innermesh_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def namespace_doc(ns: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"


def service_doc(name: str, ns: str, port: int = 80, labels: str = "app: web", extra: str = "") -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    {labels}
spec:
  selector:
    app: {name}
  ports:
    - name: http
      port: {port}
      targetPort: http
{extra}"""


def write(path: Path, *docs: str) -> Path:
    path.write_text("---\n".join(docs))
    return path


def get_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(ok(cli(server, "get", *args, "-o", "json")))


# ---------------------------------------------------------------------------------------------------
# apply


def test_apply_creates_then_reports_unchanged_then_configured(server: ServerProcess, tmp_path: Path) -> None:
    """created, then unchanged for the same file, then configured for a changed one; a field removed
    from the file is removed from the object, and what the server set (the ClusterIP) stays."""
    f = write(
        tmp_path / "web.yaml",
        namespace_doc("t-apply"),
        service_doc("web", "t-apply", labels="app: web\n    tier: front"),
    )
    assert ok(cli(server, "apply", "-f", str(f))) == "namespace/t-apply created\nservice/web created\n"
    ip = get_json(server, "svc", "web", "-n", "t-apply")["spec"]["clusterIP"]
    assert ok(cli(server, "apply", "-f", str(f))) == "namespace/t-apply unchanged\nservice/web unchanged\n"

    write(f, namespace_doc("t-apply"), service_doc("web", "t-apply", port=8080))
    assert ok(cli(server, "apply", "-f", str(f))) == "namespace/t-apply unchanged\nservice/web configured\n"
    svc = get_json(server, "svc", "web", "-n", "t-apply")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    assert svc["metadata"]["labels"] == {"app": "web"}  # tier was removed from the file
    assert svc["spec"]["clusterIP"] == ip
    last = json.loads(svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["spec"]["ports"][0]["port"] == 8080


def test_apply_reports_a_bad_document_and_applies_the_others(server: ServerProcess, tmp_path: Path) -> None:
    """The bad document is named by file, index and every field the server refused; it stores
    nothing; the documents around it are applied; exit code 1."""
    f = write(
        tmp_path / "web.yaml",
        namespace_doc("t-bad"),
        service_doc("bad", "t-bad", port=70000, extra="  bogus: 1\n"),
        service_doc("good", "t-bad"),
    )
    result = cli(server, "apply", "-f", str(f))
    assert result.returncode == 1
    assert result.stdout == "namespace/t-bad created\nservice/good created\n"
    assert result.stderr.splitlines() == [
        f'error: {f}: document 2 (Service "bad"): spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive',
        f'error: {f}: document 2 (Service "bad"): spec.bogus: Unknown field',
    ]
    missing = cli(server, "get", "svc", "bad", "-n", "t-bad")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): services "bad" not found'


def test_apply_reports_malformed_yaml_with_line_and_column(server: ServerProcess, tmp_path: Path) -> None:
    """A document that is not YAML: file, index, line and column; the next document is applied."""
    f = tmp_path / "broken.yaml"
    f.write_text(
        namespace_doc("t-yaml")
        + "---\napiVersion: v1\nkind: Service\n  name: [oops\n---\n"
        + service_doc("after", "t-yaml")
    )
    result = cli(server, "apply", "-f", str(f))
    assert result.returncode == 1
    assert result.stdout == "namespace/t-yaml created\nservice/after created\n"
    assert result.stderr.splitlines() == [
        f"error: {f}: document 2: invalid YAML at line 8, column 7: mapping values are not allowed in this context"
    ]


def test_apply_refuses_unknown_kinds_and_documents_without_kind(
    server: ServerProcess, tmp_path: Path
) -> None:
    """No apiVersion/kind, or a kind the server does not serve: a clear error for that document."""
    f = write(
        tmp_path / "odd.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        "metadata:\n  name: nothing\n",
        "kind: Service\nmetadata:\n  name: s\n",
    )
    result = cli(server, "apply", "-f", str(f))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'error: {f}: document 1 (Widget "w"): no matches for kind "Widget" in version "example.com/v1"',
        f"error: {f}: document 2: apiVersion not set, kind not set",
        f'error: {f}: document 3 (Service "s"): apiVersion not set',
    ]


def test_apply_reads_directories_in_name_order_and_stdin(server: ServerProcess, tmp_path: Path) -> None:
    """-f DIR applies *.yaml/*.yml/*.json in name order (so the namespace comes first); -f - reads
    stdin; -n gives documents without a namespace theirs."""
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "b-svc.yml").write_text(service_doc("one", "t-dir"))
    (d / "a-ns.yaml").write_text(namespace_doc("t-dir"))
    (d / "notes.txt").write_text("not a manifest")
    assert ok(cli(server, "apply", "-f", str(d))) == "namespace/t-dir created\nservice/one created\n"
    doc = service_doc("two", "t-dir").replace("  namespace: t-dir\n", "")
    assert ok(cli(server, "apply", "-n", "t-dir", "-f", "-", stdin=doc)) == "service/two created\n"
    assert get_json(server, "svc", "two", "-n", "t-dir")["metadata"]["namespace"] == "t-dir"


def test_apply_server_dry_run_stores_nothing(server: ServerProcess, tmp_path: Path) -> None:
    """--dry-run=server: the server checks the object, nothing is stored."""
    ok(cli(server, "apply", "-f", "-", stdin=namespace_doc("t-dry")))
    f = write(tmp_path / "s.yaml", service_doc("dry", "t-dry"))
    assert (
        ok(cli(server, "apply", "--dry-run=server", "-f", str(f))) == "service/dry created (server dry run)\n"
    )
    assert cli(server, "get", "svc", "dry", "-n", "t-dry").returncode == 1


# ---------------------------------------------------------------------------------------------------
# get


@pytest.fixture(scope="module")
def listed(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    """Two namespaces with Services for the get tests."""
    f = write(
        tmp_path_factory.mktemp("get") / "get.yaml",
        namespace_doc("t-get-a"),
        namespace_doc("t-get-b"),
        service_doc("web", "t-get-a", labels="app: web"),
        service_doc("api", "t-get-a", port=8080, labels="app: api"),
        service_doc("db", "t-get-b", port=5432, labels="app: db"),
    )
    ok(cli(server, "apply", "-f", str(f)))
    return server


def test_get_prints_the_servers_table(listed: ServerProcess) -> None:
    """Uppercase headers, kubectl's alignment, one row per object in name order."""
    lines = ok(cli(listed, "get", "svc", "-n", "t-get-a")).splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["api", "web"]
    assert lines[1].split()[4] == "8080/TCP"
    # Columns start where their headers start.
    start = lines[0].index("PORT(S)")
    assert all(line[start - 3 : start] == "   " for line in lines)
    wide = ok(cli(listed, "get", "services", "-n", "t-get-a", "-o", "wide")).splitlines()
    assert wide[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "SELECTOR", "AGE"]
    assert wide[1].split()[5] == "app=api"


def test_get_all_namespaces_and_selectors(listed: ServerProcess) -> None:
    """-A adds NAMESPACE first; -l filters on the server; --show-labels adds LABELS."""
    lines = ok(cli(listed, "get", "svc", "-A", "-l", "app in (web,db)", "--show-labels")).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert lines[0].split()[-1] == "LABELS"
    rows = {(line.split()[0], line.split()[1], line.split()[-1]) for line in lines[1:]}
    assert ("t-get-a", "web", "app=web") in rows
    assert ("t-get-b", "db", "app=db") in rows
    assert not any(name == "api" for _, name, _ in rows)


def test_get_nothing_found_says_so_on_stderr(listed: ServerProcess) -> None:
    """An empty list is not an error: kubectl's message on stderr, nothing on stdout."""
    result = cli(listed, "get", "svc", "-n", "t-get-none")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "",
        "No resources found in t-get-none namespace.\n",
    )


def test_get_yaml_round_trips(listed: ServerProcess, tmp_path: Path) -> None:
    """-o yaml is the object (a List for a listing) and reads back to what -o json says; applying it
    back changes nothing the user set."""
    text = ok(cli(listed, "get", "svc", "web", "-n", "t-get-a", "-o", "yaml"))
    obj = yaml.safe_load(text)
    assert obj == get_json(listed, "svc", "web", "-n", "t-get-a")
    assert obj["kind"] == "Service"
    assert obj["metadata"]["resourceVersion"] == str(obj["metadata"]["resourceVersion"])
    listing = yaml.safe_load(ok(cli(listed, "get", "svc", "-n", "t-get-a", "-o", "yaml")))
    assert listing["kind"] == "List"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["api", "web"]
    names = ok(cli(listed, "get", "svc", "-n", "t-get-a", "-o", "name")).splitlines()
    assert names == ["service/api", "service/web"]


def test_get_several_kinds_and_unknown_kind(listed: ServerProcess) -> None:
    """KIND,KIND prints a table per kind with kind/name; an unknown kind is an error."""
    out = ok(cli(listed, "get", "svc,ns", "-n", "t-get-b"))
    assert "service/db" in out
    assert "namespace/t-get-b" in out
    bad = cli(listed, "get", "widgets")
    assert bad.returncode == 1
    assert bad.stderr == 'error: the server doesn\'t have a resource type "widgets"\n'


class LineReader:
    """Lines of a subprocess's stdout as they arrive (a thread feeds a queue)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line.rstrip("\n"))

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def wait_for(self, needle: str, timeout: float) -> tuple[str, float]:
        """The first line containing ``needle`` and when it arrived (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r} within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if needle in line:
                return line, time.monotonic()


@pytest.fixture
def watcher(server: ServerProcess) -> Iterator[Any]:
    """Starts ``innermesh get ...`` in the background; killed, reaped and its pipes closed at teardown."""
    started: list[tuple[subprocess.Popen[str], LineReader]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], LineReader]:
        env = {**os.environ, "INNERMESH_SERVER": server.url}
        proc = subprocess.Popen(
            [*innermesh_command(), "get", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        reader = LineReader(proc)
        started.append((proc, reader))
        return proc, reader

    yield start
    for proc, reader in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.thread.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def test_get_watch_shows_a_change_from_another_process_within_a_second(
    server: ServerProcess, watcher: Any
) -> None:
    """-w prints the list, then a row for a Service another process creates, within a second; Ctrl-C
    ends it with status 0."""
    ok(
        cli(
            server,
            "apply",
            "-f",
            "-",
            stdin=namespace_doc("t-watch") + "---\n" + service_doc("first", "t-watch"),
        )
    )
    proc, reader = watcher("svc", "-n", "t-watch", "-w")
    header, _ = reader.wait_for("NAME", 15)
    assert header.split()[0] == "NAME"
    reader.wait_for("first", 5)
    ok(cli(server, "apply", "-f", "-", stdin=service_doc("second", "t-watch")))
    applied = time.monotonic()
    line, seen = reader.wait_for("second", 5)
    assert seen - applied < 1.0
    assert line.split()[1] == "ClusterIP"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_get_watch_goes_on_after_the_server_ends_a_watch(server: ServerProcess, watcher: Any) -> None:
    """When the server ends the watch (timeoutSeconds), get watches again from the last
    resourceVersion: a change after that still shows, and none is printed twice."""
    ok(cli(server, "apply", "-f", "-", stdin=namespace_doc("t-rewatch")))
    proc, reader = watcher("svc", "-n", "t-rewatch", "-w", "--watch-timeout", "1")
    time.sleep(2.5)  # at least two server-side watch ends
    ok(cli(server, "apply", "-f", "-", stdin=service_doc("late", "t-rewatch")))
    reader.wait_for("late", 5)
    ok(cli(server, "delete", "svc", "late", "-n", "t-rewatch"))
    reader.wait_for("late", 5)  # the deletion's row
    time.sleep(1.5)
    assert reader.lines.empty()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


# ---------------------------------------------------------------------------------------------------
# delete


def test_delete_by_name_file_and_label(server: ServerProcess, tmp_path: Path) -> None:
    """kubectl's messages; not found is an error naming the object unless --ignore-not-found."""
    f = write(
        tmp_path / "d.yaml",
        namespace_doc("t-del"),
        service_doc("a", "t-del", labels="app: x"),
        service_doc("b", "t-del", labels="app: x"),
        service_doc("c", "t-del", labels="app: y"),
    )
    ok(cli(server, "apply", "-f", str(f)))
    assert ok(cli(server, "delete", "svc", "a", "-n", "t-del")) == 'service "a" deleted\n'
    again = cli(server, "delete", "svc", "a", "-n", "t-del")
    assert (again.returncode, again.stderr) == (1, 'Error from server (NotFound): services "a" not found\n')
    assert ok(cli(server, "delete", "svc", "a", "-n", "t-del", "--ignore-not-found")) == ""
    assert ok(cli(server, "delete", "svc", "-l", "app=x", "-n", "t-del")) == 'service "b" deleted\n'
    only_c = write(tmp_path / "c.yaml", service_doc("c", "t-del"))
    assert ok(cli(server, "delete", "-f", str(only_c))) == 'service "c" deleted\n'
    assert cli(server, "get", "svc", "-n", "t-del").stderr == "No resources found in t-del namespace.\n"


# ---------------------------------------------------------------------------------------------------
# describe


def test_describe_service_shows_endpoints_and_routes(server: ServerProcess) -> None:
    """A Service with its ClusterIP, ports, the endpoints from its EndpointSlices (with their Workloads)
    and the routes attached to it and sending traffic to it, with the route's conditions."""
    ok(cli(server, "apply", "-f", str(DEMO_MANIFESTS)))
    deadline = time.monotonic() + 15
    while True:
        out = ok(cli(server, "describe", "service", "web", "-n", "demo"))
        if "Workload/web-3" in out and "BackendNotFound" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    svc = get_json(server, "svc", "web", "-n", "demo")
    lines = out.splitlines()
    assert lines[0].split() == ["Name:", "web"]
    assert ["Namespace:", "demo"] in [line.split() for line in lines]
    assert f"IP:                {svc['spec']['clusterIP']}" in lines
    assert "TargetPort:        http/TCP" in lines
    endpoint_rows = [line.split() for line in lines if line.startswith("  127.0.10.")]
    assert endpoint_rows == [
        ["127.0.10.1:8080", "true", "true", "false", "<none>", "zone-a", "Workload/web-1"],
        ["127.0.10.2:8080", "true", "true", "false", "<none>", "zone-b", "Workload/web-2"],
        ["127.0.10.3:8080", "true", "true", "false", "<none>", "zone-a", "Workload/web-3"],
    ]
    attached = lines[lines.index("Attached Routes (parentRefs):") + 2].split()
    assert attached[:4] == ["HTTPRoute", "web", "*", "True"]
    assert attached[4:6] == ["False", "(BackendNotFound)"]
    sending = lines[lines.index("Routes Sending Traffic Here (backendRefs):") + 2].split()
    assert sending == ["HTTPRoute", "web", "1", "90", "(90%)", "80"]


def test_describe_workload_and_other_kinds(server: ServerProcess) -> None:
    """A Workload lists the Services that select it; an HTTPRoute shows its spec and conditions."""
    ok(cli(server, "apply", "-f", str(DEMO_MANIFESTS)))
    out = ok(cli(server, "describe", "workload", "api-1", "-n", "demo")).splitlines()
    assert "Addresses:        127.0.20.1" in out
    assert out[out.index("Selected By Services:") + 1] == "  api"
    route = ok(cli(server, "describe", "httproute", "web", "-n", "demo"))
    assert "Spec:" in route
    assert "name: web-canary" in route
    missing = cli(server, "describe", "svc", "nope", "-n", "demo")
    assert (missing.returncode, missing.stderr) == (
        1,
        'Error from server (NotFound): services "nope" not found\n',
    )


# ---------------------------------------------------------------------------------------------------
# Connection and flags


def test_unreachable_server_is_one_line_naming_it() -> None:
    """No server at the URL: one line naming it, no traceback, exit 1."""
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(None, "--server", url, "get", "svc")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: cannot reach the innermesh server at {url}")
    result = cli(None, "apply", "--server", url, "-f", "-", stdin=namespace_doc("x"))
    assert (result.returncode, len(result.stderr.splitlines())) == (1, 1)
    assert url in result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--listen", "nowhere"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--store", "postgres"], "--store"),
        (["--service-cidr", "10.0.0.0/33"], "--service-cidr"),
        (["--token-file", "/nonexistent/token"], "--token-file"),
        (["--etcd-endpoints", "https://x:2379"], "--etcd-endpoints"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_server_refuses_bad_flags_in_one_line(args: list[str], flag: str, tmp_path: Path) -> None:
    """A bad server flag: exit 2 with one line naming the flag; nothing starts."""
    result = cli(None, "server", "--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert flag in result.stderr
    assert not (tmp_path / "d").exists()


def test_server_reports_a_taken_port(server: ServerProcess, tmp_path: Path) -> None:
    """A second server on the same port says so in one line and exits 1."""
    result = cli(None, "server", "--listen", f"127.0.0.1:{server.port}", "--data-dir", str(tmp_path / "d2"))
    assert result.returncode == 1
    assert f"127.0.0.1:{server.port}" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_cleanly_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    """SIGTERM (a service manager) and SIGINT (Ctrl-C) stop the server with status 0, no traceback."""
    with running_server(tmp_path / "data") as s:
        assert s.process is not None
        s.process.send_signal(sig)
        assert s.process.wait(15) == 0
        assert "Traceback" not in s.log_tail(200)


def test_token_is_required_when_the_server_has_one(tmp_path: Path) -> None:
    """With --token-file, requests need the token: --token or $INNERMESH_TOKEN gives it."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with running_server(tmp_path / "data", extra_args=["--token-file", str(token_file)]) as s:
        refused = cli(s, "get", "ns")
        assert (refused.returncode, refused.stderr) == (1, "Error from server (Unauthorized): Unauthorized\n")
        assert "default" in ok(cli(s, "get", "ns", "--token", "s3cret"))
        env = {**os.environ, "INNERMESH_SERVER": s.url, "INNERMESH_TOKEN": "s3cret"}
        by_env = subprocess.run(
            [*innermesh_command(), "get", "ns", "-o", "name"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert "namespace/default" in ok(by_env).split()


@pytest.mark.etcd
def test_server_on_etcd(tmp_path: Path) -> None:
    """--store etcd --etcd-endpoints: the same commands work on the distributed store."""
    with (
        running_etcd(tmp_path) as etcd,
        running_server(tmp_path / "data", store="etcd", etcd_endpoints=[etcd.url]) as s,
    ):
        f = write(tmp_path / "e.yaml", namespace_doc("t-etcd"), service_doc("web", "t-etcd"))
        assert ok(cli(s, "apply", "-f", str(f))) == "namespace/t-etcd created\nservice/web created\n"
        assert ok(cli(s, "apply", "-f", str(f))) == "namespace/t-etcd unchanged\nservice/web unchanged\n"
        assert ok(cli(s, "get", "svc", "-n", "t-etcd", "-o", "name")) == "service/web\n"
