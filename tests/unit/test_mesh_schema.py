"""mesh.innermesh.io/v1alpha1: Workload (addresses, ports, identity, readiness) and AuthorizationPolicy
(targets, sources, operations, conditions), every rule refused with its path and message."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from innermesh.api import coordination, core, mesh
from innermesh.api.coordination import Lease, format_micro_time
from innermesh.api.fielderrors import ErrorList
from innermesh.api.mesh import (
    AuthorizationPolicy,
    Workload,
    principal_problems,
    regex_problems,
    string_matches,
)
from innermesh.api.model import Model, ParseFailed, parse
from innermesh.api.registry import Registry

DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name', or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
DNS1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex "
    "used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345', regex "
    "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
HOST = (
    "must be a lower case hostname, optionally with a leading '*.' wildcard label "
    "(e.g. 'backend.default.svc' or '*.example.com')"
)
WILDCARD = "may contain '*' only once, as its first or last character"
SOURCE = "spec.rules[0].from[0]"
OPERATION = "spec.rules[0].to[0]"


def errors(model: type[Model], data: Any) -> list[str]:
    """Every error ``parse`` reports, as the API server would print them."""
    with pytest.raises(ParseFailed) as exc:
        parse(model, data)
    return [str(e) for e in exc.value.errors]


def workload(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "vm-1", "namespace": "prod", "labels": {"app": "billing"}},
        "spec": {"addresses": ["10.0.0.5"], **(spec or {})},
    }
    if status is not None:
        data["status"] = status
    return data


def condition(status: str, type_: str = "Ready") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": "Probe", "lastTransitionTime": "2026-01-02T15:04:05Z"}


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesh.innermesh.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "prod"},
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "billing"}], **spec},
    }


def source(**fields: Any) -> dict[str, Any]:
    return policy(rules=[{"from": [fields]}])


def operation(**fields: Any) -> dict[str, Any]:
    return policy(rules=[{"to": [fields]}])


def path_match(type_: str, value: str) -> dict[str, Any]:
    return operation(paths=[{"type": type_, "value": value}])


# ---------------------------------------------------------------------------------------------------
# Workload


def test_vm_registered_by_hand_parses_and_defaults() -> None:
    """A dual-stack VM with a named port gets serviceAccount "default" and protocol TCP."""
    obj = parse(
        Workload,
        workload(
            {
                "addresses": ["10.0.0.5", "2001:db8::5"],
                "ports": [{"name": "http", "port": 8080}],
                "zone": "z1",
            }
        ),
    )
    assert obj.to_dict()["spec"] == {
        "serviceAccount": "default",
        "addresses": ["10.0.0.5", "2001:db8::5"],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "zone": "z1",
    }
    assert obj.spiffe_id("mesh.local") == "spiffe://mesh.local/ns/prod/sa/default"


def test_loopback_address_is_allowed() -> None:
    """Workloads run on loopback when the agent has no root."""
    parse(Workload, workload({"addresses": ["127.0.0.2"]}))


def test_addresses_are_required_unless_a_node_will_assign_them() -> None:
    """No address and no node: nobody could ever reach it. With a node, its agent assigns one."""
    assert errors(Workload, workload({"addresses": []})) == [
        "spec.addresses: Required value: must contain at least one address unless `node` is set"
    ]
    data = workload({"node": "node-1"})
    del data["spec"]["addresses"]
    assert parse(Workload, data).spec.addresses == []


def test_addresses_are_canonical_ips() -> None:
    """Addresses are IPs in canonical form, parsed strictly."""
    assert errors(Workload, workload({"addresses": ["2001:DB8::5", "10.0.0.05"]})) == [
        'spec.addresses[0]: Invalid value: "2001:DB8::5": must be in canonical form ("2001:db8::5")',
        'spec.addresses[1]: Invalid value: "10.0.0.05": must not have leading 0s',
    ]
    assert errors(Workload, workload({"addresses": ["vm-1.example.com"]})) == [
        (
            'spec.addresses[0]: Invalid value: "vm-1.example.com": must be a valid IP address, '
            "(e.g. 10.9.8.7 or 2001:db8::ffff)"
        )
    ]


def test_addresses_may_not_be_special() -> None:
    """Unspecified, link-local and multicast addresses can not be a workload's."""
    assert errors(Workload, workload({"addresses": ["0.0.0.0", "fe80::1"]})) == [
        'spec.addresses[0]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)',
        'spec.addresses[1]: Invalid value: "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)',
    ]
    assert errors(Workload, workload({"addresses": ["239.1.1.1"]})) == [
        'spec.addresses[0]: Invalid value: "239.1.1.1": may not be a multicast address'
    ]


def test_at_most_one_address_per_family() -> None:
    """Two IPv4 addresses are refused."""
    assert errors(Workload, workload({"addresses": ["10.0.0.5", "10.0.0.6"]})) == [
        'spec.addresses: Invalid value: ["10.0.0.5","10.0.0.6"]: may specify no more than one IP for each IP family'
    ]


def test_port_rules() -> None:
    """Port names are IANA service names, port numbers 1..65535, appProtocol a qualified name."""
    ports = [{"name": "http--alt", "port": 0, "appProtocol": "a/b/c"}]
    assert errors(Workload, workload({"ports": ports})) == [
        'spec.ports[0].name: Invalid value: "http--alt": must not contain consecutive hyphens',
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        'spec.ports[0].appProtocol: Invalid value: "a/b/c": prefix part ' + DNS1123_SUBDOMAIN,
    ]
    assert errors(Workload, workload({"ports": [{"port": 80, "protocol": "ICMP"}]})) == [
        'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"'
    ]


def test_port_names_and_numbers_are_unique() -> None:
    """A name twice, or the same port and protocol twice, is a duplicate; 53/TCP and 53/UDP are not."""
    ports = [
        {"name": "dns", "port": 53},
        {"name": "dns-udp", "port": 53, "protocol": "UDP"},
        {"name": "dns", "port": 5353},
        {"port": 53},
    ]
    assert errors(Workload, workload({"ports": ports})) == [
        'spec.ports[2].name: Duplicate value: "dns"',
        'spec.ports[3]: Duplicate value: {"port":53,"protocol":"TCP"}',
    ]


def test_service_account_node_and_zone_are_validated() -> None:
    """serviceAccount and node are DNS-1123 subdomains; zone is a label value."""
    assert errors(Workload, workload({"serviceAccount": "Billing", "node": "node_1", "zone": "eu west"})) == [
        f'spec.serviceAccount: Invalid value: "Billing": {DNS1123_SUBDOMAIN}',
        f'spec.node: Invalid value: "node_1": {DNS1123_SUBDOMAIN}',
        f'spec.zone: Invalid value: "eu west": {LABEL_VALUE}',
    ]


def test_status_conditions_have_unique_types() -> None:
    """Two Ready conditions are a duplicate; observedGeneration is not negative."""
    status = {"observedGeneration": -1, "conditions": [condition("True"), condition("False")]}
    assert errors(Workload, workload(status=status)) == [
        "status.observedGeneration: Invalid value: -1: must be greater than or equal to 0",
        'status.conditions[1].type: Duplicate value: "Ready"',
    ]


@pytest.mark.parametrize(
    ("conditions", "ready", "column"),
    [
        (None, True, "True"),
        ([condition("True", "Healthy")], True, "True"),
        ([condition("True")], True, "True"),
        ([condition("False")], False, "False"),
        ([condition("Unknown")], False, "Unknown"),
    ],
)
def test_workload_without_ready_condition_counts_as_ready(
    conditions: list[dict[str, Any]] | None, ready: bool, column: str
) -> None:
    """No Ready condition means ready (a VM registered by hand); False and Unknown mean not ready."""
    obj = parse(Workload, workload(status={"conditions": conditions} if conditions else {}))
    assert obj.is_ready is ready
    ready_column = next(c for c in mesh.KINDS[0].columns if c.name == "Ready")
    assert ready_column.value(obj) == column


def test_service_account_is_immutable() -> None:
    """Changing the identity of a registered workload is refused."""
    old = parse(Workload, workload())
    new = parse(Workload, workload({"serviceAccount": "admin"}))
    errs = ErrorList()
    new.check_update(old, errs)
    assert [str(e) for e in errs] == ['spec.serviceAccount: Invalid value: "admin": field is immutable']


def test_node_may_be_set_once() -> None:
    """node may go from unset to set, but not change afterwards, nor be cleared."""
    unplaced = parse(Workload, workload())
    placed = parse(Workload, workload({"node": "node-1"}))
    errs = ErrorList()
    placed.check_update(unplaced, errs)
    assert not errs
    moved = parse(Workload, workload({"node": "node-2"}))
    moved.check_update(placed, errs)
    unplaced.check_update(placed, errs)
    assert [str(e) for e in errs] == [
        'spec.node: Invalid value: "node-2": may not change once set',
        "spec.node: Invalid value: null: may not change once set",
    ]


def test_workload_kind_names_and_columns() -> None:
    """wl is the short name; columns show addresses, node, zone, readiness, and the identity when wide."""
    registry = Registry([*core.KINDS, *mesh.KINDS])
    assert registry.resolve("wl").kind == "Workload"
    kind = mesh.KINDS[0]
    assert not kind.strategic_merge
    assert kind.has_status
    obj = parse(Workload, workload({"addresses": ["10.0.0.5", "2001:db8::5"], "node": "n1"}))
    assert [(c.name, c.value(obj), c.priority) for c in kind.columns] == [
        ("Addresses", "10.0.0.5,2001:db8::5", 0),
        ("Node", "n1", 0),
        ("Zone", "<none>", 0),
        ("Ready", "True", 0),
        ("ServiceAccount", "default", 1),
    ]


# ---------------------------------------------------------------------------------------------------
# AuthorizationPolicy: a whole policy


def test_istio_shaped_policy_parses() -> None:
    """A policy using every field parses; action defaults to ALLOW."""
    obj = parse(
        AuthorizationPolicy,
        policy(
            rules=[
                {
                    "from": [
                        {
                            "principals": [
                                "spiffe://mesh.local/ns/prod/sa/frontend",
                                "spiffe://mesh.local/ns/ops/*",
                            ]
                        },
                        {"serviceAccounts": [{"name": "batch"}], "ipBlocks": ["10.0.0.0/8", "192.168.1.7"]},
                        {"namespaces": ["monitoring"]},
                    ],
                    "to": [
                        {
                            "methods": ["GET", "HEAD"],
                            "paths": [
                                {"type": "PathPrefix", "value": "/api"},
                                {"type": "Exact", "value": "/healthz"},
                            ],
                            "ports": [8080],
                            "hosts": ["billing.prod.svc", "*.example.com"],
                        },
                        {"paths": [{"type": "RegularExpression", "value": "/v[0-9]+/invoices/.*"}]},
                    ],
                    "when": [{"header": "x-tenant", "values": ["acme", "beta-*"]}],
                }
            ]
        ),
    )
    assert obj.spec.action == "ALLOW"
    assert obj.spec.rules[0].needs_http


def test_allow_nothing_policy_is_valid() -> None:
    """A policy with no rules (ALLOW: deny everything else) is valid; {} is a rule matching everything."""
    assert parse(AuthorizationPolicy, policy()).spec.rules == []
    obj = parse(AuthorizationPolicy, policy(action="DENY", rules=[{}]))
    assert not obj.spec.rules[0].needs_http


def test_action_must_be_allow_or_deny() -> None:
    """AUDIT and CUSTOM are not supported."""
    assert errors(AuthorizationPolicy, policy(action="AUDIT")) == [
        'spec.action: Unsupported value: "AUDIT": supported values: "ALLOW", "DENY"'
    ]


def test_spec_and_target_refs_are_required() -> None:
    """A policy needs a spec with at least one target."""
    data = policy()
    del data["spec"]
    assert errors(AuthorizationPolicy, data) == ["spec: Required value"]
    data = policy()
    del data["spec"]["targetRefs"]
    assert errors(AuthorizationPolicy, data) == ["spec.targetRefs: Required value"]
    assert errors(AuthorizationPolicy, policy(targetRefs=[])) == [
        "spec.targetRefs: Required value: must contain at least one target"
    ]


def test_target_refs_are_bounded_and_unique() -> None:
    """At most 16 targets, no duplicates."""
    refs = [{"group": "", "kind": "Service", "name": f"s{i}"} for i in range(17)]
    assert errors(AuthorizationPolicy, policy(targetRefs=refs)) == [
        "spec.targetRefs: Too many: 17: must have at most 16 items"
    ]
    refs = [{"group": "", "kind": "Service", "name": "a"}] * 2
    assert errors(AuthorizationPolicy, policy(targetRefs=refs)) == [
        'spec.targetRefs[1]: Duplicate value: {"group":"","kind":"Service","name":"a"}'
    ]


def test_target_kinds_and_groups_are_checked() -> None:
    """Targets are Services and Namespaces (core group) and Workloads (mesh.innermesh.io)."""
    refs = [
        {"group": "apps", "kind": "Deployment", "name": "a"},
        {"group": "mesh.innermesh.io", "kind": "Service", "name": "a"},
        {"group": "", "kind": "Workload", "name": "a"},
        {"group": "mesh.innermesh.io", "kind": "Workload", "name": "vm-1"},
    ]
    assert errors(AuthorizationPolicy, policy(targetRefs=refs)) == [
        (
            'spec.targetRefs[0].kind: Unsupported value: "Deployment": supported values: "Namespace", "Service", '
            '"Workload"'
        ),
        'spec.targetRefs[1].group: Unsupported value: "mesh.innermesh.io": supported values: ""',
        'spec.targetRefs[2].group: Unsupported value: "": supported values: "mesh.innermesh.io"',
    ]


def test_target_names_follow_their_kinds_rules() -> None:
    """A Service name is a DNS-1035 label, a Workload's a DNS-1123 subdomain."""
    refs = [
        {"group": "", "kind": "Service", "name": "1web"},
        {"group": "mesh.innermesh.io", "kind": "Workload", "name": "Vm"},
    ]
    assert errors(AuthorizationPolicy, policy(targetRefs=refs)) == [
        f'spec.targetRefs[0].name: Invalid value: "1web": {DNS1035_LABEL}',
        f'spec.targetRefs[1].name: Invalid value: "Vm": {DNS1123_SUBDOMAIN}',
    ]


def test_namespace_target_is_the_policys_own_namespace() -> None:
    """Targets are local: the Namespace target names the policy's namespace."""
    parse(AuthorizationPolicy, policy(targetRefs=[{"group": "", "kind": "Namespace", "name": "prod"}]))
    assert errors(
        AuthorizationPolicy, policy(targetRefs=[{"group": "", "kind": "Namespace", "name": "dev"}])
    ) == ['spec.targetRefs[0].name: Invalid value: "dev": must be the policy\'s own namespace ("prod")']


def test_namespace_target_name_is_a_namespace_name() -> None:
    """A Namespace target's name is a DNS-1123 label (and then the policy's own namespace)."""
    assert errors(
        AuthorizationPolicy, policy(targetRefs=[{"group": "", "kind": "Namespace", "name": "Prod"}])
    ) == [
        'spec.targetRefs[0].name: Invalid value: "Prod": must be the policy\'s own namespace ("prod")',
        f'spec.targetRefs[0].name: Invalid value: "Prod": {DNS1123_LABEL}',
    ]


def test_rules_are_bounded() -> None:
    """At most 64 rules."""
    assert errors(AuthorizationPolicy, policy(rules=[{}] * 65)) == [
        "spec.rules: Too many: 65: must have at most 64 items"
    ]


# ---------------------------------------------------------------------------------------------------
# Sources


def test_source_must_specify_something() -> None:
    """An empty source is refused."""
    assert errors(AuthorizationPolicy, source()) == [
        (
            f"{SOURCE}: Required value: must specify at least one of `principals`, `serviceAccounts`, "
            "`namespaces` or `ipBlocks`"
        )
    ]


def test_source_lists_may_not_be_empty() -> None:
    """A present but empty list would match nothing and is refused."""
    assert errors(
        AuthorizationPolicy, source(principals=[], namespaces=[], ipBlocks=[], serviceAccounts=[])
    ) == [
        f"{SOURCE}.principals: Required value: must contain at least one value when specified",
        f"{SOURCE}.serviceAccounts: Required value: must contain at least one service account",
        f"{SOURCE}.namespaces: Required value: must contain at least one value when specified",
        f"{SOURCE}.ipBlocks: Required value: must contain at least one value when specified",
    ]


def test_source_lists_are_bounded() -> None:
    """At most 256 values in one field."""
    assert errors(AuthorizationPolicy, source(namespaces=[f"ns{i}" for i in range(257)])) == [
        f"{SOURCE}.namespaces: Too many: 257: must have at most 256 items"
    ]


@pytest.mark.parametrize(
    ("principal", "message"),
    [
        ("cluster.local/ns/a/sa/b", 'must be a SPIFFE ID starting with "spiffe://"'),
        ("spiffe://", "trust domain must be non-empty"),
        ("spiffe:///ns/a", "trust domain must be non-empty"),
        (
            "spiffe://Mesh.Local/ns/a",
            "trust domain may contain only lower case letters, digits, '.', '-' and '_'",
        ),
        (
            "spiffe://mesh.local:8443/ns/a",
            "trust domain may contain only lower case letters, digits, '.', '-' and '_'",
        ),
        ("spiffe://mesh.local/ns//a", "path may not contain empty segments or end with '/'"),
        ("spiffe://mesh.local/ns/a/", "path may not contain empty segments or end with '/'"),
        ("spiffe://mesh.local/ns/../a", "path segments may not be '.' or '..'"),
        ("spiffe://mesh.local/ns/a?x=1", "path may contain only letters, digits, '.', '-', '_' and '/'"),
        ("spiffe://mesh.local/*/sa/b", WILDCARD),
        ("*spiffe://mesh.local/*", WILDCARD),
        ("**", WILDCARD),
        ("spiffe:/*", 'must be a SPIFFE ID starting with "spiffe://"'),
        ("spiffe://Mesh*", "trust domain may contain only lower case letters, digits, '.', '-' and '_'"),
        ("spiffe:///*", "trust domain must be non-empty"),
        ("spiffe://mesh.local/ns//*", "path may not contain empty segments or end with '/'"),
        ("*/sa/b?", "path may contain only letters, digits, '.', '-', '_' and '/'"),
    ],
)
def test_principals_are_spiffe_ids_or_patterns(principal: str, message: str) -> None:
    """Each bad principal is refused with the SPIFFE rule it breaks."""
    assert errors(AuthorizationPolicy, source(principals=[principal])) == [
        f'{SOURCE}.principals[0]: Invalid value: "{principal}": {message}'
    ]


@pytest.mark.parametrize(
    "principal",
    [
        "*",
        "spiffe://mesh.local",
        "spiffe://mesh.local/ns/prod/sa/frontend",
        "spiffe://*",
        "spiffe://mesh.local/*",
        "spiffe://mesh.local/ns/prod/sa/front*",
        "*/sa/frontend",
        "*frontend",
    ],
)
def test_valid_principals_and_patterns(principal: str) -> None:
    """Exact IDs, prefixes, suffixes and the any-authenticated "*" are accepted."""
    assert principal_problems(principal) == []


def test_long_spiffe_id_is_refused() -> None:
    """A SPIFFE ID is at most 2048 characters."""
    principal = "spiffe://mesh.local/" + "a" * 2040
    assert errors(AuthorizationPolicy, source(principals=[principal])) == [
        f'{SOURCE}.principals[0]: Invalid value: "{principal}": must be no more than 2048 characters'
    ]


def test_source_namespaces_service_accounts_and_ip_blocks_are_validated() -> None:
    """namespaces are DNS labels, serviceAccounts as in NetworkPolicy, ipBlocks IPs or CIDRs."""
    data = source(
        namespaces=["Prod"],
        serviceAccounts=[{"name": "a"}, {"name": "a"}],
        ipBlocks=["10.0.0.1/8", "10.0.0.300", "2001:DB8::1"],
    )
    assert errors(AuthorizationPolicy, data) == [
        f'{SOURCE}.serviceAccounts[1]: Duplicate value: {{"name":"a"}}',
        f'{SOURCE}.namespaces[0]: Invalid value: "Prod": {DNS1123_LABEL}',
        f'{SOURCE}.ipBlocks[0]: Invalid value: "10.0.0.1/8": must not have bits set beyond the prefix length',
        (
            f'{SOURCE}.ipBlocks[1]: Invalid value: "10.0.0.300": must be an IP address or a CIDR: must be a valid IP '
            "address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        ),
        (
            f'{SOURCE}.ipBlocks[2]: Invalid value: "2001:DB8::1": must be an IP address or a CIDR: must be in '
            'canonical form ("2001:db8::1")'
        ),
    ]


# ---------------------------------------------------------------------------------------------------
# Operations


def test_operation_must_specify_something() -> None:
    """An empty operation is refused."""
    assert errors(AuthorizationPolicy, operation()) == [
        f"{OPERATION}: Required value: must specify at least one of `methods`, `paths`, `ports` or `hosts`"
    ]


def test_operation_lists_may_not_be_empty() -> None:
    """A present but empty list is refused."""
    assert errors(AuthorizationPolicy, operation(methods=[], paths=[], ports=[], hosts=[])) == [
        f"{OPERATION}.{f}: Required value: must contain at least one value when specified"
        for f in ("methods", "paths", "ports", "hosts")
    ]


def test_methods_are_tokens() -> None:
    """A method is an RFC 9110 token."""
    assert errors(AuthorizationPolicy, operation(methods=["GET", "GET /"])) == [
        f'{OPERATION}.methods[1]: Invalid value: "GET /": must be an HTTP method (an RFC 9110 token, e.g. GET)'
    ]


def test_ports_are_in_range() -> None:
    """Ports are 1..65535."""
    assert errors(AuthorizationPolicy, operation(ports=[80, 65536])) == [
        f"{OPERATION}.ports[1]: Invalid value: 65536: must be between 1 and 65535, inclusive"
    ]


def test_hosts_are_hostnames_with_an_optional_wildcard() -> None:
    """Hosts are lower case hostnames, with '*.' only as the first label."""
    assert errors(AuthorizationPolicy, operation(hosts=["Billing", "a.*.b", "*", "a" * 254])) == [
        f'{OPERATION}.hosts[0]: Invalid value: "Billing": {HOST}',
        f'{OPERATION}.hosts[1]: Invalid value: "a.*.b": {HOST}',
        f'{OPERATION}.hosts[2]: Invalid value: "*": {HOST}',
        f'{OPERATION}.hosts[3]: Invalid value: "{"a" * 254}": must be no more than 253 characters',
    ]


@pytest.mark.parametrize(
    ("type_", "value", "message"),
    [
        ("Exact", "api", "must be an absolute path (start with '/')"),
        ("PathPrefix", "/a//b", "must not contain '//'"),
        ("PathPrefix", "/a/./b", "must not contain '/./'"),
        ("Exact", "/a/../b", "must not contain '/../'"),
        ("Exact", "/a%2fb", "must not contain '%2f'"),
        ("Exact", "/a%2Fb", "must not contain '%2F'"),
        ("Exact", "/a#b", "must not contain '#'"),
        ("PathPrefix", "/a/..", "must not end with '/..'"),
        ("PathPrefix", "/a/.", "must not end with '/.'"),
        (
            "RegularExpression",
            "/v[0-9",
            "must be a valid regular expression: unterminated character set at position 2",
        ),
        ("RegularExpression", "/(a)\\1", "must be RE2-compatible (no backreferences)"),
        ("RegularExpression", "/a(?=b)", "must be RE2-compatible (no lookahead or lookbehind)"),
        ("RegularExpression", "/(?<!a)b", "must be RE2-compatible (no lookahead or lookbehind)"),
        ("RegularExpression", "/(?>a+)b", "must be RE2-compatible (no atomic groups)"),
        ("RegularExpression", "/a*+b", "must be RE2-compatible (no possessive repeats)"),
        ("RegularExpression", "/(a)?(?(1)b|c)", "must be RE2-compatible (no conditional groups)"),
    ],
)
def test_paths_are_checked_by_type(type_: str, value: str, message: str) -> None:
    """Exact and PathPrefix are clean absolute paths; RegularExpression compiles and suits RE2."""
    assert errors(AuthorizationPolicy, path_match(type_, value)) == [
        f"{OPERATION}.paths[0].value: Invalid value: {json.dumps(value)}: {message}"
    ]


def test_path_value_is_bounded() -> None:
    """A path value is at most 1024 characters."""
    assert errors(AuthorizationPolicy, path_match("Exact", "/" + "a" * 1024)) == [
        f"{OPERATION}.paths[0].value: Too long: may not be more than 1024 bytes"
    ]


def test_path_type_must_be_supported() -> None:
    """Path match types are Gateway API's."""
    assert errors(AuthorizationPolicy, path_match("Prefix", "/")) == [
        (
            f'{OPERATION}.paths[0].type: Unsupported value: "Prefix": supported values: "Exact", "PathPrefix", '
            '"RegularExpression"'
        )
    ]


def test_path_match_defaults_to_prefix_slash() -> None:
    """An empty path match is PathPrefix "/", as in Gateway API."""
    obj = parse(AuthorizationPolicy, operation(paths=[{}]))
    assert obj.to_dict()["spec"]["rules"][0]["to"][0]["paths"] == [{"type": "PathPrefix", "value": "/"}]


def test_regex_problems_accept_ordinary_patterns() -> None:
    """Groups, classes, alternations and anchors are fine."""
    assert regex_problems(r"^/(api|v[0-9]+)/[^/]+\.json$") == []


# ---------------------------------------------------------------------------------------------------
# Conditions


def test_when_headers_are_tokens_with_values() -> None:
    """A header name is a token (at most 256), values are Istio string patterns, and not empty."""
    data = policy(
        rules=[
            {
                "when": [
                    {"header": "x tenant", "values": ["a*b"]},
                    {"header": "x-" + "a" * 255, "values": []},
                ]
            }
        ]
    )
    assert errors(AuthorizationPolicy, data) == [
        'spec.rules[0].when[0].header: Invalid value: "x tenant": must be an HTTP header name (an RFC 9110 token)',
        f'spec.rules[0].when[0].values[0]: Invalid value: "a*b": {WILDCARD}',
        "spec.rules[0].when[1].header: Too long: may not be more than 256 bytes",
        "spec.rules[0].when[1].values: Required value: must contain at least one value when specified",
    ]


def test_when_condition_needs_header_and_values() -> None:
    """header and values are required."""
    assert errors(AuthorizationPolicy, policy(rules=[{"when": [{}]}])) == [
        "spec.rules[0].when[0].header: Required value",
        "spec.rules[0].when[0].values: Required value",
    ]


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "", True),
        ("v1", "v1", True),
        ("v1", "v10", False),
        ("v1*", "v10", True),
        ("*-canary", "web-canary", True),
        ("*-canary", "web-canary-2", False),
        ("spiffe://mesh.local/ns/prod/*", "spiffe://mesh.local/ns/prod/sa/a", True),
        ("spiffe://mesh.local/ns/prod/*", "spiffe://mesh.local/ns/production/sa/a", False),
    ],
)
def test_string_patterns_match_as_istio(pattern: str, value: str, matches: bool) -> None:
    """Exact, prefix, suffix and presence matching."""
    assert string_matches(pattern, value) is matches


def test_authorization_policy_kind_names_and_columns() -> None:
    """ap is the short name; columns show the action and the targets."""
    registry = Registry([*core.KINDS, *mesh.KINDS])
    assert registry.resolve("ap").kind == "AuthorizationPolicy"
    assert registry.resolve("authorizationpolicies.mesh.innermesh.io").kind == "AuthorizationPolicy"
    kind = mesh.KINDS[1]
    obj = parse(
        AuthorizationPolicy,
        policy(
            action="DENY",
            targetRefs=[
                {"group": "", "kind": "Service", "name": "a"},
                {"group": "mesh.innermesh.io", "kind": "Workload", "name": "b"},
            ],
        ),
    )
    assert [(c.name, c.value(obj)) for c in kind.columns] == [
        ("Action", "DENY"),
        ("Targets", "Service/a,Workload/b"),
    ]


# ---------------------------------------------------------------------------------------------------
# coordination.k8s.io/v1 Lease, which the control plane's replicas use for leader election (kept here,
# with the other kinds the control plane writes for itself, as this task's files are fixed).


def lease(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "innermesh-controllers", "namespace": "innermesh-system"},
        "spec": spec,
    }


def test_lease_parses_and_normalizes_micro_time_to_utc() -> None:
    """A lease as client-go writes it parses; an offset time is stored in UTC with microseconds."""
    obj = parse(
        Lease,
        lease(
            holderIdentity="server-1_4f2a",
            leaseDurationSeconds=15,
            acquireTime="2026-01-02T15:04:05.000000Z",
            renewTime="2026-01-02T16:04:10.123456+01:00",
            leaseTransitions=3,
        ),
    )
    assert obj.spec.renew_time == "2026-01-02T15:04:10.123456Z"
    assert (
        format_micro_time(dt.datetime(2026, 1, 2, 15, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T15:04:05.000000Z"
    )


@pytest.mark.parametrize(
    "value", ["2026-01-02T15:04:05Z", "2026-01-02T15:04:05.123Z", "2026-02-30T15:04:05.000000Z"]
)
def test_lease_times_are_micro_times(value: str) -> None:
    """acquireTime and renewTime need RFC 3339 with exactly six fractional digits, as Kubernetes parses."""
    assert errors(Lease, lease(renewTime=value)) == [
        (
            f'spec.renewTime: Invalid value: "{value}": must be an RFC 3339 time with microseconds '
            "(e.g. 2026-01-02T15:04:05.000000Z)"
        )
    ]


def test_lease_duration_and_transitions_are_checked() -> None:
    """leaseDurationSeconds > 0 and leaseTransitions >= 0, with Kubernetes' messages."""
    assert errors(Lease, lease(leaseDurationSeconds=0, leaseTransitions=-1)) == [
        "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
        "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
    ]


def test_lease_kind_columns() -> None:
    """Leases show their holder, as kubectl does."""
    kind = coordination.KINDS[0]
    assert (kind.group, kind.plural, kind.namespaced, kind.short_names) == (
        "coordination.k8s.io",
        "leases",
        True,
        (),
    )
    obj = parse(Lease, lease(holderIdentity="server-1"))
    assert [(c.name, c.value(obj)) for c in kind.columns] == [("Holder", "server-1")]
