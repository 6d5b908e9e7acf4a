"""NetworkPolicy and IPAddress (networking.k8s.io/v1): upstream's defaults and every validation rule,
with Kubernetes' paths and messages; the serviceAccounts peer extension; the shared address rules."""

from __future__ import annotations

from typing import Any

import pytest

from innermesh.api import core, networking
from innermesh.api.addresses import IP_INVALID, cidr_problems, endpoint_ip_problems, ip_problems
from innermesh.api.fielderrors import ErrorList
from innermesh.api.model import Model, ParseFailed, parse
from innermesh.api.networking import IPAddress, NetworkPolicy, ServiceAccountRef, ip_address_name
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
CIDR_INVALID = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
PEER = "spec.ingress[0].from[0]"


def errors(model: type[Model], data: Any) -> list[str]:
    """Every error ``parse`` reports, as the API server would print them."""
    with pytest.raises(ParseFailed) as exc:
        parse(model, data)
    return [str(e) for e in exc.value.errors]


def policy(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "prod"},
    }
    if spec is not None:
        data["spec"] = spec
    return data


def ingress_port(**port: Any) -> dict[str, Any]:
    return policy({"ingress": [{"ports": [port]}]})


def ingress_peer(**peer: Any) -> dict[str, Any]:
    return policy({"ingress": [{"from": [peer]}]})


def ip_address(name: str = "10.96.0.10", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {"name": name},
        "spec": spec,
    }


SERVICE_REF = {"group": "", "resource": "services", "namespace": "default", "name": "dns"}


# ---------------------------------------------------------------------------------------------------
# NetworkPolicy defaults


def test_upstream_example_parses_unchanged() -> None:
    """The test-network-policy example from Kubernetes' documentation parses and keeps its values."""
    obj = parse(
        NetworkPolicy,
        policy(
            {
                "podSelector": {"matchLabels": {"role": "db"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                            {"podSelector": {"matchLabels": {"role": "frontend"}}},
                        ],
                        "ports": [{"protocol": "TCP", "port": 6379}],
                    }
                ],
                "egress": [
                    {
                        "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                        "ports": [{"protocol": "TCP", "port": 5978}],
                    }
                ],
            }
        ),
    )
    assert obj.spec.affects_ingress
    assert obj.spec.affects_egress
    assert obj.to_dict()["spec"]["ingress"][0]["from"][0] == {
        "ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}
    }


def test_pod_selector_defaults_to_everything() -> None:
    """Without podSelector (or without spec) the policy selects every workload of its namespace."""
    obj = parse(NetworkPolicy, policy())
    assert obj.to_dict()["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert obj.spec.pod_selector.matches({"any": "labels"})


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() -> None:
    """policyTypes defaults to Ingress, and Ingress+Egress when the policy has egress rules."""
    assert parse(NetworkPolicy, policy({"ingress": [{}]})).spec.policy_types == ["Ingress"]
    assert parse(NetworkPolicy, policy({"egress": [{}]})).spec.policy_types == ["Ingress", "Egress"]
    assert parse(NetworkPolicy, policy({"egress": [{}], "policyTypes": []})).spec.policy_types == [
        "Ingress",
        "Egress",
    ]


def test_explicit_egress_only_policy_is_kept() -> None:
    """An egress-only policy stays egress-only: explicit policyTypes are not defaulted."""
    obj = parse(NetworkPolicy, policy({"policyTypes": ["Egress"]}))
    assert obj.spec.policy_types == ["Egress"]
    assert not obj.spec.affects_ingress


def test_port_protocol_defaults_to_tcp() -> None:
    """A port without protocol is TCP."""
    obj = parse(NetworkPolicy, ingress_port(port=80))
    assert obj.to_dict()["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 80}]


def test_port_ranges_and_named_ports_parse() -> None:
    """A numeric port with endPort, and a named port, are both valid."""
    parse(NetworkPolicy, ingress_port(port=32000, endPort=32768))
    parse(NetworkPolicy, ingress_port(port="http", protocol="UDP"))
    parse(NetworkPolicy, ingress_port(port=80, endPort=80))


# ---------------------------------------------------------------------------------------------------
# NetworkPolicy validation


def test_port_number_is_in_range() -> None:
    """A numeric port is 1..65535."""
    assert errors(NetworkPolicy, ingress_port(port=0)) == [
        "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    ]


def test_named_port_is_an_iana_service_name() -> None:
    """A string port is an IANA service name ("80" is a string, and has no letter)."""
    assert errors(NetworkPolicy, ingress_port(port="80")) == [
        'spec.ingress[0].ports[0].port: Invalid value: "80": must contain at least one letter (a-z)'
    ]


def test_protocol_must_be_supported() -> None:
    """protocol is TCP, UDP or SCTP."""
    assert errors(NetworkPolicy, ingress_port(port=80, protocol="ICMP")) == [
        'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"'
    ]


def test_end_port_must_not_be_below_port() -> None:
    """endPort >= port."""
    assert errors(NetworkPolicy, ingress_port(port=8080, endPort=80)) == [
        "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`"
    ]


def test_end_port_is_in_range() -> None:
    """endPort is a port number too."""
    assert errors(NetworkPolicy, ingress_port(port=80, endPort=70000)) == [
        "spec.ingress[0].ports[0].endPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
    ]


def test_end_port_needs_a_numeric_port() -> None:
    """endPort with a named port, or with no port, is refused."""
    assert errors(NetworkPolicy, ingress_port(port="http", endPort=90)) == [
        "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"
    ]
    assert errors(NetworkPolicy, ingress_port(endPort=90)) == [
        "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified"
    ]


def test_policy_types_are_at_most_two() -> None:
    """More than two policyTypes is refused (Kubernetes does not check for duplicates)."""
    assert errors(NetworkPolicy, policy({"policyTypes": ["Ingress", "Egress", "Egress"]})) == [
        'spec.policyTypes: Invalid value: ["Ingress","Egress","Egress"]: may not specify more than two policyTypes'
    ]
    parse(NetworkPolicy, policy({"policyTypes": ["Ingress", "Ingress"]}))


def test_policy_type_must_be_supported() -> None:
    """A policy type is Ingress or Egress."""
    assert errors(NetworkPolicy, policy({"policyTypes": ["Ingress", "Both"]})) == [
        'spec.policyTypes[1]: Unsupported value: "Both": supported values: "Ingress", "Egress"'
    ]


def test_peer_must_specify_something() -> None:
    """An empty peer is refused, in ingress and in egress."""
    assert errors(NetworkPolicy, ingress_peer()) == [f"{PEER}: Required value: must specify a peer"]
    assert errors(NetworkPolicy, policy({"egress": [{"to": [{}]}]})) == [
        "spec.egress[0].to[0]: Required value: must specify a peer"
    ]


def test_pod_and_namespace_selectors_combine() -> None:
    """podSelector and namespaceSelector may be set together."""
    parse(NetworkPolicy, ingress_peer(podSelector={}, namespaceSelector={"matchLabels": {"team": "a"}}))


def test_ip_block_must_be_alone() -> None:
    """ipBlock with another peer field is forbidden."""
    assert errors(NetworkPolicy, ingress_peer(ipBlock={"cidr": "10.0.0.0/8"}, namespaceSelector={})) == [
        f"{PEER}: Forbidden: may not specify both ipBlock and another peer"
    ]


def test_selectors_in_peers_are_validated() -> None:
    """A bad label value in a peer's selector names its full path."""
    assert errors(NetworkPolicy, ingress_peer(podSelector={"matchLabels": {"app": "a b"}})) == [
        (
            f'{PEER}.podSelector.matchLabels[app]: Invalid value: "a b": a valid label must be an empty string or '
            "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'MyValue', or 'my_value', or '12345', regex used for validation is "
            "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    ]


def test_ip_block_cidr_is_required() -> None:
    """ipBlock.cidr is required, and may not be empty."""
    assert errors(NetworkPolicy, ingress_peer(ipBlock={})) == [f"{PEER}.ipBlock.cidr: Required value"]
    assert errors(NetworkPolicy, ingress_peer(ipBlock={"cidr": ""})) == [
        f"{PEER}.ipBlock.cidr: Required value"
    ]


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.0.0", CIDR_INVALID),
        ("10.0.0.0/33", CIDR_INVALID),
        ("10.0.0.0/255.0.0.0", CIDR_INVALID),
        ("10.0.0.1/8", "must not have bits set beyond the prefix length"),
        ("010.0.0.0/8", "must not have leading 0s in IP or prefix length"),
        ("10.0.0.0/08", "must not have leading 0s in IP or prefix length"),
        ("::ffff:10.0.0.0/104", "must not have an IPv4-mapped IPv6 address"),
    ],
)
def test_ip_block_cidr_is_a_strict_cidr(cidr: str, message: str) -> None:
    """cidr is parsed strictly, with apimachinery's messages."""
    assert errors(NetworkPolicy, ingress_peer(ipBlock={"cidr": cidr})) == [
        f'{PEER}.ipBlock.cidr: Invalid value: "{cidr}": {message}'
    ]


def test_ip_block_cidr_need_not_be_canonical() -> None:
    """As upstream's legacy CIDR fields, a non-canonical IPv6 spelling is accepted."""
    parse(NetworkPolicy, ingress_peer(ipBlock={"cidr": "2001:DB8::/32", "except": ["2001:DB8:1::/48"]}))


def test_except_must_be_a_strict_subset_of_cidr() -> None:
    """except entries lie inside cidr and are smaller; each is a valid CIDR."""
    block = {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.1.0.0/24", "10.0.0.0/16", "fd00::/64", "x"]}
    assert errors(NetworkPolicy, ingress_peer(ipBlock=block)) == [
        f'{PEER}.ipBlock.except[1]: Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`',
        f'{PEER}.ipBlock.except[2]: Invalid value: "10.0.0.0/16": must be a strict subset of `cidr`',
        f'{PEER}.ipBlock.except[3]: Invalid value: "fd00::/64": must be a strict subset of `cidr`',
        f'{PEER}.ipBlock.except[4]: Invalid value: "x": {CIDR_INVALID}',
    ]


# ---------------------------------------------------------------------------------------------------
# The serviceAccounts peer (innermesh extension)


def test_service_accounts_peer_parses_alone() -> None:
    """A serviceAccounts peer, with and without namespace, is valid alone."""
    obj = parse(
        NetworkPolicy,
        ingress_peer(
            serviceAccounts=[{"name": "frontend"}, {"namespace": "monitoring", "name": "prometheus"}]
        ),
    )
    rule = obj.spec.ingress
    assert rule is not None
    peers = rule[0].from_
    assert peers is not None
    refs = peers[0].service_accounts
    assert refs is not None
    assert [r.spiffe_id("mesh.local", "prod") for r in refs] == [
        "spiffe://mesh.local/ns/prod/sa/frontend",
        "spiffe://mesh.local/ns/monitoring/sa/prometheus",
    ]


def test_service_accounts_peer_must_be_alone() -> None:
    """serviceAccounts combined with a selector is forbidden."""
    peer = {"serviceAccounts": [{"name": "a"}], "namespaceSelector": {}}
    assert errors(NetworkPolicy, ingress_peer(**peer)) == [
        f"{PEER}: Forbidden: may not specify both serviceAccounts and another peer"
    ]


def test_service_accounts_with_ip_block_reports_the_ip_block_rule_once() -> None:
    """With ipBlock too, only upstream's ipBlock message is given."""
    peer = {"serviceAccounts": [{"name": "a"}], "ipBlock": {"cidr": "10.0.0.0/8"}}
    assert errors(NetworkPolicy, ingress_peer(**peer)) == [
        f"{PEER}: Forbidden: may not specify both ipBlock and another peer"
    ]


def test_service_accounts_may_not_be_empty() -> None:
    """An empty serviceAccounts list would match nothing and is refused."""
    assert errors(NetworkPolicy, ingress_peer(serviceAccounts=[])) == [
        f"{PEER}.serviceAccounts: Required value: must contain at least one service account"
    ]


def test_service_accounts_are_unique() -> None:
    """The same service account twice is a duplicate."""
    refs = [{"namespace": "a", "name": "x"}, {"namespace": "a", "name": "x"}]
    assert errors(NetworkPolicy, ingress_peer(serviceAccounts=refs)) == [
        f'{PEER}.serviceAccounts[1]: Duplicate value: {{"name":"x","namespace":"a"}}'
    ]


def test_service_account_names_and_namespaces_are_validated() -> None:
    """name is a DNS-1123 subdomain (required), namespace a DNS-1123 label."""
    refs = [{"namespace": "a.b", "name": "X"}, {"name": ""}]
    assert errors(NetworkPolicy, ingress_peer(serviceAccounts=refs)) == [
        f'{PEER}.serviceAccounts[0].name: Invalid value: "X": {DNS1123_SUBDOMAIN}',
        f'{PEER}.serviceAccounts[0].namespace: Invalid value: "a.b": {DNS1123_LABEL}',
        f"{PEER}.serviceAccounts[1].name: Required value",
    ]
    assert errors(NetworkPolicy, ingress_peer(serviceAccounts=[{"namespace": "a"}])) == [
        f"{PEER}.serviceAccounts[0].name: Required value"
    ]


def test_service_account_namespace_defaults_to_the_referrer() -> None:
    """An unset namespace resolves to the policy's namespace."""
    assert ServiceAccountRef(name="a").resolved_namespace("prod") == "prod"
    assert ServiceAccountRef(name="a", namespace="dev").resolved_namespace("prod") == "dev"


# ---------------------------------------------------------------------------------------------------
# IPAddress


def test_ip_address_for_a_service_parses() -> None:
    """The IPAddress the ClusterIP allocator writes parses, with the core group as ""."""
    obj = parse(IPAddress, ip_address(parentRef=SERVICE_REF))
    assert obj == IPAddress.for_service("10.96.0.10", "default", "dns")
    assert obj.spec.parent_ref is not None
    assert obj.spec.parent_ref.normalized() == ("", "services", "default", "dns")


def test_ip_address_name_is_a_canonical_ip() -> None:
    """metadata.name is an IP in canonical form: the Kind's name rule says why otherwise."""
    kind = networking.KINDS[1]
    assert kind.name_rule is ip_address_name
    assert kind.name_rule("10.96.0.10") == []
    assert kind.name_rule("2001:db8::a") == []
    assert kind.name_rule("2001:DB8::A") == ['must be in canonical form ("2001:db8::a")']
    assert kind.name_rule("10.96.0.010") == ["must not have leading 0s"]
    assert kind.name_rule("::ffff:10.96.0.10") == ["must not be an IPv4-mapped IPv6 address"]
    assert kind.name_rule("web") == ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]


def test_ip_address_parent_ref_is_required() -> None:
    """spec.parentRef is required."""
    assert errors(IPAddress, ip_address()) == ["spec.parentRef: Required value"]
    data = ip_address()
    del data["spec"]
    assert errors(IPAddress, data) == ["spec.parentRef: Required value"]


def test_ip_address_parent_ref_needs_resource_and_name() -> None:
    """parentRef.resource and parentRef.name are required; group and namespace are optional."""
    assert errors(IPAddress, ip_address(parentRef={"group": ""})) == [
        "spec.parentRef.resource: Required value",
        "spec.parentRef.name: Required value",
    ]
    parse(IPAddress, ip_address(parentRef={"resource": "gateways", "name": "gw"}))


def test_ip_address_parent_ref_fields_are_path_segments() -> None:
    """resource, name and namespace must be usable as URL path segments; group is a DNS subdomain."""
    ref = {"group": "Gateway", "resource": "..", "namespace": "a%b", "name": "x/y"}
    assert errors(IPAddress, ip_address(parentRef=ref)) == [
        f'spec.parentRef.group: Invalid value: "Gateway": {DNS1123_SUBDOMAIN}',
        "spec.parentRef.resource: Invalid value: \"..\": may not be '..'",
        "spec.parentRef.name: Invalid value: \"x/y\": may not contain '/'",
        "spec.parentRef.namespace: Invalid value: \"a%b\": may not contain '%'",
    ]


def test_ip_address_parent_ref_is_immutable() -> None:
    """parentRef may not change; an omitted group equals the empty group."""
    old = parse(IPAddress, ip_address(parentRef=SERVICE_REF))
    same = parse(IPAddress, ip_address(parentRef={k: v for k, v in SERVICE_REF.items() if k != "group"}))
    errs = ErrorList()
    same.check_update(old, errs)
    assert not errs
    moved = parse(IPAddress, ip_address(parentRef={**SERVICE_REF, "name": "other"}))
    errs = ErrorList()
    moved.check_update(old, errs)
    assert [str(e) for e in errs] == [
        (
            'spec.parentRef: Invalid value: {"group":"","name":"other","namespace":"default","resource":"services"}: '
            "field is immutable"
        )
    ]


# ---------------------------------------------------------------------------------------------------
# Kinds and columns


def test_kinds_names_scope_and_columns() -> None:
    """netpol is NetworkPolicy's short name; IPAddress is cluster-scoped, with no short name."""
    registry = Registry([*core.KINDS, *networking.KINDS])
    assert registry.resolve("netpol").kind == "NetworkPolicy"
    assert registry.resolve("ipaddresses").kind == "IPAddress"
    np_kind, ip_kind = networking.KINDS
    assert np_kind.namespaced
    assert not ip_kind.namespaced
    assert ip_kind.short_names == ()
    assert np_kind.strategic_merge
    assert ip_kind.strategic_merge
    everything = parse(NetworkPolicy, policy())
    db = parse(NetworkPolicy, policy({"podSelector": {"matchLabels": {"role": "db"}}}))
    assert [c.value(everything) for c in np_kind.columns] == ["<none>"]
    assert [c.value(db) for c in np_kind.columns] == ["role=db"]
    ip = parse(IPAddress, ip_address(parentRef=SERVICE_REF))
    assert [c.name for c in ip_kind.columns] == ["ParentRef"]
    assert [c.value(ip) for c in ip_kind.columns] == ["services/default/dns"]
    gw = parse(
        IPAddress,
        ip_address(parentRef={"group": "gateway.networking.k8s.io", "resource": "gateways", "name": "g"}),
    )
    assert [c.value(gw) for c in ip_kind.columns] == ["gateways.gateway.networking.k8s.io/g"]


# ---------------------------------------------------------------------------------------------------
# Shared address rules


@pytest.mark.parametrize(
    ("value", "canonical", "strict"),
    [
        ("10.1.2.3", [], []),
        ("2001:db8::1", [], []),
        ("2001:DB8::1", ['must be in canonical form ("2001:db8::1")'], []),
        ("10.1.2.03", ["must not have leading 0s"], ["must not have leading 0s"]),
        (
            "::ffff:10.1.2.3",
            ["must not be an IPv4-mapped IPv6 address"],
            ["must not be an IPv4-mapped IPv6 address"],
        ),
        ("fe80::1%eth0", [IP_INVALID], [IP_INVALID]),
        (" 10.1.2.3", [IP_INVALID], [IP_INVALID]),
        ("10.1.2.256", [IP_INVALID], [IP_INVALID]),
    ],
)
def test_ip_problems_follow_apimachinery(value: str, canonical: list[str], strict: list[str]) -> None:
    """IsValidIP (canonical) and IsValidIPForLegacyField (strict parsing only) agree with upstream."""
    assert ip_problems(value) == canonical
    assert ip_problems(value, canonical=False) == strict


def test_cidr_problems_require_canonical_form_when_asked() -> None:
    """IsValidCIDR also wants the canonical spelling."""
    assert cidr_problems("2001:DB8::/32") == ['must be in canonical form ("2001:db8::/32")']
    assert cidr_problems("2001:DB8::/32", canonical=False) == []


def test_endpoint_ip_problems_can_refuse_loopback() -> None:
    """Loopback is allowed by default (workloads on loopback) and refused on request, as upstream."""
    assert endpoint_ip_problems("127.0.0.1") == []
    assert endpoint_ip_problems("::1", allow_loopback=False) == [
        "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    ]
