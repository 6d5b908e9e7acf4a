"""EndpointSlice (discovery.k8s.io/v1): upstream's fields and defaults, every validation rule refused
with Kubernetes' path and message, and kubectl's table columns."""

from __future__ import annotations

from typing import Any

import pytest

from innermesh.api import core, discovery
from innermesh.api.discovery import EndpointSlice
from innermesh.api.fielderrors import ErrorList
from innermesh.api.model import Model, ParseFailed, parse
from innermesh.api.registry import Registry, UnknownKind

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


def errors(model: type[Model], data: Any) -> list[str]:
    """Every error ``parse`` reports, as the API server would print them."""
    with pytest.raises(ParseFailed) as exc:
        parse(model, data)
    return [str(e) for e in exc.value.errors]


def slice_(address_type: str = "IPv4", **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc12",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": address_type,
        **fields,
    }


def endpoint(*addresses: str, **fields: Any) -> dict[str, Any]:
    return {"addresses": list(addresses), **fields}


# ---------------------------------------------------------------------------------------------------
# Fields and defaults


def test_controller_made_slice_parses_and_defaults() -> None:
    """A slice as Kubernetes' controller writes it parses; ports default to TCP and an empty name."""
    obj = parse(
        EndpointSlice,
        slice_(
            endpoints=[
                endpoint(
                    "10.1.0.5",
                    conditions={"ready": True, "serving": True, "terminating": False},
                    nodeName="node-1",
                    zone="zone-a",
                    hostname="web-0",
                    targetRef={
                        "kind": "Pod",
                        "namespace": "default",
                        "name": "web-0",
                        "uid": "u1",
                        "resourceVersion": "7",
                    },
                    hints={"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-1"}]},
                )
            ],
            ports=[{"port": 8080, "appProtocol": "kubernetes.io/h2c"}],
        ),
    )
    assert obj.service_name == "web"
    assert obj.ports is not None
    assert obj.to_dict()["ports"] == [
        {"name": "", "protocol": "TCP", "port": 8080, "appProtocol": "kubernetes.io/h2c"}
    ]
    ep = obj.endpoints[0]
    assert ep.address == "10.1.0.5"
    assert ep.target_ref is not None
    assert ep.target_ref.resource_version == "7"


def test_unset_conditions_mean_ready_serving_not_terminating() -> None:
    """Nil ready and serving read as true, nil terminating as false, as the v1 type documents."""
    obj = parse(EndpointSlice, slice_(endpoints=[endpoint("10.1.0.5")]))
    cond = obj.endpoints[0].conditions
    assert (cond.is_ready, cond.is_serving, cond.is_terminating) == (True, True, False)
    cond = (
        parse(EndpointSlice, slice_(endpoints=[endpoint("10.1.0.5", conditions={"ready": False})]))
        .endpoints[0]
        .conditions
    )
    assert cond.is_ready is False


def test_deprecated_topology_is_accepted_and_dropped() -> None:
    """deprecatedTopology is not writable through v1: it parses and is silently removed."""
    obj = parse(EndpointSlice, slice_(endpoints=[endpoint("10.1.0.5", deprecatedTopology={"a": "b"})]))
    assert "deprecatedTopology" not in obj.to_dict()["endpoints"][0]


def test_loopback_addresses_are_allowed() -> None:
    """Workloads run on loopback without root, so 127.0.0.0/8 and ::1 are valid endpoint addresses."""
    parse(EndpointSlice, slice_(endpoints=[endpoint("127.0.0.2")]))
    parse(EndpointSlice, slice_("IPv6", endpoints=[endpoint("::1")]))


def test_fqdn_with_trailing_dot_is_valid() -> None:
    """An FQDN address may end with the root's dot."""
    parse(EndpointSlice, slice_("FQDN", endpoints=[endpoint("backend.example.com.")]))


# ---------------------------------------------------------------------------------------------------
# Validation


def test_address_type_is_required() -> None:
    """A slice without addressType is refused."""
    data = slice_()
    del data["addressType"]
    assert errors(EndpointSlice, data) == ["addressType: Required value"]


def test_address_type_must_be_supported() -> None:
    """The deprecated "IP" type and unknown ones are refused with the sorted list of supported types."""
    assert errors(EndpointSlice, slice_("IP")) == [
        'addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"'
    ]


def test_endpoint_needs_an_address() -> None:
    """An endpoint with no addresses is refused."""
    assert errors(EndpointSlice, slice_(endpoints=[endpoint()])) == [
        "endpoints[0].addresses: Required value: must contain at least 1 address"
    ]


def test_endpoint_has_at_most_100_addresses() -> None:
    """More than 100 addresses in one endpoint is too many."""
    addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(101)]
    assert errors(EndpointSlice, slice_(endpoints=[endpoint(*addresses)])) == [
        "endpoints[0].addresses: Too many: 101: must have at most 100 items"
    ]


def test_slice_has_at_most_1000_endpoints() -> None:
    """More than 1000 endpoints in one slice is too many."""
    eps = [endpoint(f"10.{i // 250}.0.{i % 250 + 1}") for i in range(1001)]
    assert errors(EndpointSlice, slice_(endpoints=eps)) == [
        "endpoints: Too many: 1001: must have at most 1000 items"
    ]


def test_slice_has_at_most_20000_ports() -> None:
    """More than 20000 ports is too many (Kubernetes raised the documented 100 in #99795)."""
    ports = [{"name": f"p{i}", "port": i % 65535 + 1} for i in range(20001)]
    assert errors(EndpointSlice, slice_(ports=ports)) == [
        "ports: Too many: 20001: must have at most 20000 items"
    ]


def test_ipv4_slice_refuses_other_addresses() -> None:
    """An IPv4 slice refuses IPv6, IPv4-mapped and malformed addresses."""
    eps = [endpoint("2001:db8::1", "::ffff:10.0.0.1", "10.0.0.256", "10.0.0.01")]
    assert errors(EndpointSlice, slice_(endpoints=eps)) == [
        'endpoints[0].addresses[0]: Invalid value: "2001:db8::1": must be a valid IPv4 address',
        'endpoints[0].addresses[1]: Invalid value: "::ffff:10.0.0.1": must be a valid IPv4 address',
        'endpoints[0].addresses[2]: Invalid value: "10.0.0.256": must be a valid IPv4 address',
        'endpoints[0].addresses[3]: Invalid value: "10.0.0.01": must be a valid IPv4 address',
    ]


def test_ipv6_slice_refuses_ipv4_and_non_canonical_addresses() -> None:
    """An IPv6 slice refuses IPv4 addresses, and IPv6 ones not in canonical form."""
    eps = [endpoint("10.0.0.1", "2001:DB8::1", "2001:db8:0:0::1")]
    assert errors(EndpointSlice, slice_("IPv6", endpoints=eps)) == [
        'endpoints[0].addresses[0]: Invalid value: "10.0.0.1": must be a valid IPv6 address',
        'endpoints[0].addresses[1]: Invalid value: "2001:DB8::1": must be in canonical form ("2001:db8::1")',
        'endpoints[0].addresses[2]: Invalid value: "2001:db8:0:0::1": must be in canonical form ("2001:db8::1")',
    ]


def test_special_ranges_are_refused() -> None:
    """Unspecified, link-local and link-local multicast addresses are not endpoints."""
    eps = [endpoint("0.0.0.0", "169.254.169.254", "224.0.0.251")]
    assert errors(EndpointSlice, slice_(endpoints=eps)) == [
        'endpoints[0].addresses[0]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)',
        (
            'endpoints[0].addresses[1]: Invalid value: "169.254.169.254": '
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        ),
        (
            'endpoints[0].addresses[2]: Invalid value: "224.0.0.251": '
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
        ),
    ]
    eps = [endpoint("::", "fe80::1", "ff02::fb")]
    assert errors(EndpointSlice, slice_("IPv6", endpoints=eps)) == [
        'endpoints[0].addresses[0]: Invalid value: "::": may not be unspecified (::)',
        (
            'endpoints[0].addresses[1]: Invalid value: "fe80::1": '
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
        ),
        (
            'endpoints[0].addresses[2]: Invalid value: "ff02::fb": '
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
        ),
    ]


def test_fqdn_addresses_are_fully_qualified_domain_names() -> None:
    """FQDN addresses need two labels, lower case, and no empty label."""
    eps = [endpoint("localhost", "Backend.example.com", "a..b")]
    assert errors(EndpointSlice, slice_("FQDN", endpoints=eps)) == [
        (
            'endpoints[0].addresses[0]: Invalid value: "localhost": '
            "should be a domain with at least two segments separated by dots"
        ),
        f'endpoints[0].addresses[1]: Invalid value: "Backend.example.com": {DNS1123_SUBDOMAIN}',
        f'endpoints[0].addresses[2]: Invalid value: "a..b": {DNS1123_SUBDOMAIN}',
    ]


def test_fqdn_address_may_not_be_empty() -> None:
    """An empty FQDN address is a missing value."""
    assert errors(EndpointSlice, slice_("FQDN", endpoints=[endpoint("")])) == [
        "endpoints[0].addresses[0]: Required value"
    ]


def test_fqdn_label_longer_than_63_is_refused() -> None:
    """Each label of an FQDN is a DNS-1123 label (at most 63 characters)."""
    long = "a" * 64
    assert errors(EndpointSlice, slice_("FQDN", endpoints=[endpoint(f"{long}.example.com")])) == [
        f'endpoints[0].addresses[0]: Invalid value: "{long}": must be no more than 63 characters'
    ]


def test_hostname_is_a_dns_label() -> None:
    """hostname must be a DNS-1123 label."""
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", hostname="web.0")])) == [
        f'endpoints[0].hostname: Invalid value: "web.0": {DNS1123_LABEL}'
    ]


def test_node_name_is_a_dns_subdomain() -> None:
    """nodeName must be a valid node name (DNS-1123 subdomain)."""
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", nodeName="Node_1")])) == [
        f'endpoints[0].nodeName: Invalid value: "Node_1": {DNS1123_SUBDOMAIN}'
    ]


def test_zone_hints_are_bounded_unique_label_values() -> None:
    """forZones: at most 8, no duplicates, each a label value."""
    hints = {"forZones": [{"name": "a"}, {"name": "a"}, {"name": "b c"}]}
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", hints=hints)])) == [
        'endpoints[0].hints.forZones[1].name: Duplicate value: "a"',
        (
            'endpoints[0].hints.forZones[2].name: Invalid value: "b c": a valid label must be an empty string or '
            "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
            "character (e.g. 'MyValue', or 'my_value', or '12345', regex used for validation is "
            "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        ),
    ]
    hints = {"forZones": [{"name": f"z{i}"} for i in range(9)]}
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", hints=hints)])) == [
        "endpoints[0].hints.forZones: Too many: 9: must have at most 8 items"
    ]


def test_node_hints_are_bounded_unique_node_names() -> None:
    """forNodes: at most 8, no duplicates, each a node name."""
    hints = {"forNodes": [{"name": "n1"}, {"name": "n1"}, {"name": "N2"}]}
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", hints=hints)])) == [
        'endpoints[0].hints.forNodes[1].name: Duplicate value: "n1"',
        f'endpoints[0].hints.forNodes[2].name: Invalid value: "N2": {DNS1123_SUBDOMAIN}',
    ]
    hints = {"forNodes": [{"name": f"n{i}"} for i in range(9)]}
    assert errors(EndpointSlice, slice_(endpoints=[endpoint("10.0.0.1", hints=hints)])) == [
        "endpoints[0].hints.forNodes: Too many: 9: must have at most 8 items"
    ]


def test_port_names_are_unique_including_the_empty_name() -> None:
    """Two ports with the same name, or two unnamed ports, are duplicates."""
    ports = [{"name": "http", "port": 80}, {"name": "http", "port": 81}, {"port": 82}, {"port": 83}]
    assert errors(EndpointSlice, slice_(ports=ports)) == [
        'ports[1].name: Duplicate value: "http"',
        'ports[3].name: Duplicate value: ""',
    ]


def test_port_name_is_a_dns_label() -> None:
    """A port name must be a DNS-1123 label."""
    assert errors(EndpointSlice, slice_(ports=[{"name": "HTTP", "port": 80}])) == [
        f'ports[0].name: Invalid value: "HTTP": {DNS1123_LABEL}'
    ]


def test_port_protocol_must_be_supported() -> None:
    """protocol is SCTP, TCP or UDP (listed sorted, as Kubernetes does)."""
    assert errors(EndpointSlice, slice_(ports=[{"port": 80, "protocol": "ICMP"}])) == [
        'ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'
    ]


def test_port_number_is_in_range() -> None:
    """A port number is 1..65535."""
    assert errors(EndpointSlice, slice_(ports=[{"port": 0}])) == [
        "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
    ]


def test_app_protocol_is_a_qualified_name() -> None:
    """appProtocol follows label-key syntax."""
    assert errors(EndpointSlice, slice_(ports=[{"port": 80, "appProtocol": "-h2c"}])) == [
        (
            'ports[0].appProtocol: Invalid value: "-h2c": name part must consist of alphanumeric characters, '
            "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or "
            "'my.name', or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    ]


def test_service_name_label_must_be_a_service_name() -> None:
    """The kubernetes.io/service-name label holds a valid Service name (DNS-1035 label)."""
    data = slice_()
    data["metadata"]["labels"]["kubernetes.io/service-name"] = "1web"
    assert errors(EndpointSlice, data) == [
        (
            'metadata.labels[kubernetes.io/service-name]: Invalid value: "1web": a DNS-1035 label must consist '
            "of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an "
            "alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is "
            "'[a-z]([-a-z0-9]*[a-z0-9])?')"
        )
    ]


def test_address_type_is_immutable() -> None:
    """Changing addressType on update is refused."""
    old = parse(EndpointSlice, slice_("IPv4"))
    new = parse(EndpointSlice, slice_("IPv6"))
    errs = ErrorList()
    new.check_update(old, errs)
    assert [str(e) for e in errs] == ['addressType: Invalid value: "IPv6": field is immutable']
    errs = ErrorList()
    old.check_update(old, errs)
    assert not errs


# ---------------------------------------------------------------------------------------------------
# The kind: names and columns


def test_kind_names_and_the_ep_short_name() -> None:
    """endpointslices, its group-qualified name, and "ep" (the legacy Endpoints kind is not served, so
    its short name leads to its successor)."""
    registry = Registry([*core.KINDS, *discovery.KINDS])
    assert registry.resolve("endpointslices").kind == "EndpointSlice"
    assert registry.resolve("endpointslices.discovery.k8s.io").kind == "EndpointSlice"
    assert registry.resolve("ep").kind == "EndpointSlice"
    with pytest.raises(UnknownKind):
        registry.resolve("endpoints")
    kind = discovery.KINDS[0]
    assert kind.short_names == ("ep",)
    assert kind.strategic_merge


def test_columns_show_type_ports_and_first_addresses() -> None:
    """Columns as kubectl prints them: at most three items, then "+ N more..."."""
    kind = discovery.KINDS[0]
    obj = parse(
        EndpointSlice,
        slice_(
            endpoints=[endpoint(f"10.0.0.{i}") for i in range(1, 6)],
            ports=[
                {"name": "a", "port": 80},
                {"name": "b"},
                {"name": "c", "port": 81},
                {"name": "d", "port": 82},
            ],
        ),
    )
    assert [c.name for c in kind.columns] == ["AddressType", "Ports", "Endpoints"]
    assert [c.value(obj) for c in kind.columns] == [
        "IPv4",
        "80,b,81 + 1 more...",
        "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...",
    ]
    empty = parse(EndpointSlice, slice_())
    assert [c.value(empty) for c in kind.columns] == ["IPv4", "<unset>", "<unset>"]
