"""ClusterIP allocation end to end, over HTTP: distinct under concurrency, released on delete, kept
across restarts, clear errors when exhausted or refused, IPv6 and dual-stack."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from innermesh.api.scheme import REGISTRY
from innermesh.api.status import ApiError
from innermesh.client.http import HttpClient
from innermesh.server import ControlPlane

SVC = REGISTRY.by_gvk("v1", "Service")
IPADDR = REGISTRY.by_gvk("networking.k8s.io/v1", "IPAddress")
NS = "default"

Connect = Callable[[ControlPlane], HttpClient]


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ports": [{"port": 80}], **spec}}


async def ip_addresses(api: HttpClient) -> dict[str, tuple[str, str]]:
    """Allocated address -> (namespace, name) of the Service it names."""
    items, _ = await api.list(IPADDR)
    out = {}
    for obj in items:
        ref = obj["spec"]["parentRef"]
        out[obj["metadata"]["name"]] = (ref.get("namespace", ""), ref["name"])
    return out


async def test_concurrent_creates_get_distinct_addresses(api: HttpClient) -> None:
    """50 Services created at once get 50 different ClusterIPs, each recorded as an IPAddress."""
    created = await asyncio.gather(*(api.create(SVC, NS, service(f"s{i}")) for i in range(50)))
    ips = [c["spec"]["clusterIP"] for c in created]
    assert len(set(ips)) == 50
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/16") for ip in ips)
    recorded = await ip_addresses(api)
    assert {ip: recorded[ip] for ip in ips} == {
        c["spec"]["clusterIP"]: (NS, c["metadata"]["name"]) for c in created
    }


async def test_concurrent_creates_in_a_small_range_never_duplicate(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """Racing creates in a range barely larger than the demand still never share an address."""
    plane = await start_control_plane(service_cidr="10.99.0.0/26")  # 62 usable
    api = connect(plane)
    created = await asyncio.gather(*(api.create(SVC, NS, service(f"s{i}")) for i in range(60)))
    ips = [c["spec"]["clusterIP"] for c in created]
    assert len(set(ips)) == 60
    assert set(await ip_addresses(api)) == set(ips)


async def test_delete_releases_the_address_for_reuse(api: HttpClient) -> None:
    """Deleting a Service deletes its IPAddress at once; a new Service can then ask for that address."""
    ip = (await api.create(SVC, NS, service("first")))["spec"]["clusterIP"]
    assert ip in await ip_addresses(api)
    await api.delete(SVC, NS, "first")
    assert ip not in await ip_addresses(api)
    again = await api.create(SVC, NS, service("second", clusterIP=ip))
    assert again["spec"]["clusterIPs"] == [ip]
    assert (await ip_addresses(api))[ip] == (NS, "second")


async def test_restart_keeps_every_allocation_and_allocates_no_duplicates(
    start_control_plane: Callable[..., Any], connect: Connect, tmp_path: Path
) -> None:
    """A server restarted on the same data dir still knows every address, and hands out new ones only."""
    data = tmp_path / "restart"
    first = await start_control_plane(data, service_cidr="10.99.0.0/27")  # 30 usable
    api = connect(first)
    before = {
        c["metadata"]["name"]: c["spec"]["clusterIP"]
        for c in await asyncio.gather(*(api.create(SVC, NS, service(f"a{i}")) for i in range(15)))
    }
    await first.stop()

    second = await start_control_plane(data, service_cidr="10.99.0.0/27")
    api2 = connect(second)
    items, _ = await api2.list(SVC, NS)
    assert {o["metadata"]["name"]: o["spec"]["clusterIP"] for o in items} == before
    after = [
        c["spec"]["clusterIP"]
        for c in await asyncio.gather(*(api2.create(SVC, NS, service(f"b{i}")) for i in range(15)))
    ]
    everything = [*before.values(), *after]
    assert len(set(everything)) == 30  # the whole range, no address twice
    assert set(await ip_addresses(api2)) == set(everything)


async def test_exhausted_range_gives_a_clear_error_and_stores_nothing(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """A /29 holds 6 Services; the 7th is refused with a message naming the range, and leaves no trace."""
    plane = await start_control_plane(service_cidr="10.99.0.0/29")
    api = connect(plane)
    ips = {(await api.create(SVC, NS, service(f"s{i}")))["spec"]["clusterIP"] for i in range(6)}
    assert len(ips) == 6
    with pytest.raises(ApiError) as exc:
        await api.create(SVC, NS, service("one-too-many"))
    assert exc.value.code == 500
    assert "10.99.0.0/29" in exc.value.message
    assert "exhausted" in exc.value.message
    with pytest.raises(ApiError) as missing:
        await api.get(SVC, NS, "one-too-many")
    assert missing.value.code == 404
    assert set(await ip_addresses(api)) == ips


@pytest.mark.parametrize(
    ("requested", "message"),
    [("10.96.0.0/16 taken", "provided IP is already allocated"), ("10.200.0.1", "not in the valid range")],
    ids=["taken", "out-of-range"],
)
async def test_refused_requested_cluster_ip_is_422_naming_the_field(
    api: HttpClient, requested: str, message: str
) -> None:
    """A requested clusterIP that is taken, or outside the range, is Invalid on spec.clusterIPs[0]."""
    if requested.endswith("taken"):
        requested = (await api.create(SVC, NS, service("holder")))["spec"]["clusterIP"]
    before = await ip_addresses(api)
    with pytest.raises(ApiError) as exc:
        await api.create(SVC, NS, service("wants-it", clusterIP=requested))
    assert exc.value.code == 422
    assert [c["field"] for c in exc.value.causes] == ["spec.clusterIPs[0]"]
    assert message in exc.value.message
    assert await ip_addresses(api) == before


async def test_ipv6_only_range_allocates_ipv6(
    start_control_plane: Callable[..., Any], connect: Connect
) -> None:
    """With an IPv6 --service-cidr, Services get IPv6 ClusterIPs and IPv6 IPAddresses."""
    plane = await start_control_plane(service_cidr="fd00:10:96::/112")
    api = connect(plane)
    svc = await api.create(SVC, NS, service("v6"))
    ip = svc["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("fd00:10:96::/112")
    assert svc["spec"]["ipFamilies"] == ["IPv6"]
    assert (await ip_addresses(api))[ip] == (NS, "v6")


async def test_prefer_dual_stack_gets_one_address_per_family(api: HttpClient) -> None:
    """PreferDualStack gets one address per family, in ipFamilies order; delete releases both."""
    svc = await api.create(SVC, NS, service("dual", ipFamilyPolicy="PreferDualStack"))
    v4, v6 = svc["spec"]["clusterIPs"]
    assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert ipaddress.ip_address(v4).version == 4
    assert ipaddress.ip_address(v6).version == 6
    recorded = await ip_addresses(api)
    assert recorded[v4] == recorded[v6] == (NS, "dual")

    v6first = await api.create(
        SVC, NS, service("v6first", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6"])
    )
    assert v6first["spec"]["ipFamilies"] == ["IPv6", "IPv4"]
    assert ipaddress.ip_address(v6first["spec"]["clusterIP"]).version == 6

    await api.delete(SVC, NS, "dual")
    remaining = await ip_addresses(api)
    assert v4 not in remaining
    assert v6 not in remaining


async def test_single_stack_default_on_a_dual_stack_server_is_the_primary_family(api: HttpClient) -> None:
    """Without a policy, a Service gets one address of the first --service-cidr's family."""
    svc = await api.create(SVC, NS, service("plain"))
    assert svc["spec"]["ipFamilies"] == ["IPv4"]
    assert len(svc["spec"]["clusterIPs"]) == 1
