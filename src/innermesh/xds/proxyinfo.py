"""Who is asking: an xDS ``Node`` (``envoy.config.core.v3.Node``) turned into a ``ProxyInfo``.

The table in docs/design/0005-xds-and-proxy.md is the contract. A Node whose id is
``sidecar~<namespace>~<workload>`` is our sidecar; any other id is a proxyless gRPC client, whose
namespace is ``metadata.NAMESPACE`` (``default`` when absent). Bad input raises ValueError naming the
field or metadata key, so that the server can refuse the stream with a message the operator can act on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from innermesh.api import names
from innermesh.api.addresses import parse_ip
from innermesh.xds.types import ProxyInfo

SIDECAR_PREFIX = "sidecar"
DEFAULT_NAMESPACE = "default"


def proxy_info(node: Any) -> ProxyInfo:
    """Parse ``node`` (an ``envoy.config.core.v3.Node``); raise ValueError on bad input."""
    if not node.id:
        raise ValueError("id: required")
    metadata: dict[str, Any] = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    zone = node.locality.zone or None
    namespace = _string(metadata, "NAMESPACE")
    if namespace is not None:
        _check(names.is_dns1123_label(namespace), "metadata NAMESPACE", namespace)
    if not node.id.startswith(SIDECAR_PREFIX + "~"):
        return ProxyInfo(
            node_id=node.id, kind="proxyless", namespace=namespace or DEFAULT_NAMESPACE, zone=zone
        )

    parts = node.id.split("~")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f'id: "{node.id}": a sidecar\'s id must be sidecar~<namespace>~<workload>')
    id_namespace, id_workload = parts[1], parts[2]
    _check(names.is_dns1123_label(id_namespace), "id: namespace", id_namespace)
    _check(names.is_dns1123_subdomain(id_workload), "id: workload", id_workload)
    if namespace is not None and namespace != id_namespace:
        raise ValueError(
            f'metadata NAMESPACE: "{namespace}" does not match the id\'s namespace "{id_namespace}"'
        )
    workload = _string(metadata, "WORKLOAD")
    if workload is not None and workload != id_workload:
        raise ValueError(f'metadata WORKLOAD: "{workload}" does not match the id\'s workload "{id_workload}"')
    return ProxyInfo(
        node_id=node.id,
        kind="sidecar",
        namespace=id_namespace,
        workload=id_workload,
        outbound=_outbound(metadata),
        app_ports=_app_ports(metadata),
        zone=zone,
    )


def _check(problems: list[str], what: str, value: str) -> None:
    if problems:
        raise ValueError(f'{what}: "{value}": {"; ".join(problems)}')


def _string(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"metadata {key}: must be a non-empty string, not {value!r}")
    return value


def _port(value: Any, what: str) -> int:
    # Struct numbers arrive as floats; a port must be a whole number in range.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what}: must be a port number, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what}: must be a port number, not {value!r}") from None
    if not number.is_integer() or not 1 <= number <= 65535:
        raise ValueError(f"{what}: must be a port number between 1 and 65535, not {value!r}")
    return int(number)


def _outbound(metadata: Mapping[str, Any]) -> tuple[str, int] | None:
    value = _string(metadata, "OUTBOUND")
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or parse_ip(host) is None:
        raise ValueError(f'metadata OUTBOUND: "{value}": must be <ip>:<port> (e.g. 127.0.0.1:15001)')
    return host, _port(port, "metadata OUTBOUND")


def _app_ports(metadata: Mapping[str, Any]) -> dict[int, int]:
    value = metadata.get("APP_PORTS")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"metadata APP_PORTS: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f'metadata APP_PORTS: must map workload ports to app ports ({{"8080": 18080}}), not {value!r}'
        )
    return {
        _port(k, f"metadata APP_PORTS: key {k!r}"): _port(v, f"metadata APP_PORTS[{k}]")
        for k, v in value.items()
    }
