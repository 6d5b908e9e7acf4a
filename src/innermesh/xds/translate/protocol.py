"""What a port speaks, from its ``appProtocol`` or, failing that, its name.

``appProtocol`` wins when it says something we know (Kubernetes' ``kubernetes.io/h2c`` and
``kubernetes.io/ws``, IANA service names such as ``http`` and ``grpc``); otherwise the port name is read
as Istio reads it: ``http``, ``grpc``, ``tcp``, ... alone or as a prefix before ``-`` (``http-web``).
Anything else is ``unknown``: an inbound listener then detects HTTP from the first bytes, and the
outbound virtual host offers both HTTP routes and CONNECT.

TLS and HTTPS count as ``tcp``: the sidecar cannot read inside them, so it forwards bytes.
"""

from __future__ import annotations

from typing import Literal

PortProtocol = Literal["http1", "http2", "tcp", "unknown"]

_KNOWN: dict[str, PortProtocol] = {
    "http": "http1",
    "http1": "http1",
    "grpc-web": "http1",
    "ws": "http1",
    "kubernetes.io/ws": "http1",
    "http2": "http2",
    "h2c": "http2",
    "grpc": "http2",
    "kubernetes.io/h2c": "http2",
    "tcp": "tcp",
    "tls": "tcp",
    "https": "tcp",
    "wss": "tcp",
    "kubernetes.io/wss": "tcp",
    "mongo": "tcp",
    "mysql": "tcp",
    "redis": "tcp",
}


def port_protocol(app_protocol: str | None, name: str | None) -> PortProtocol:
    if app_protocol is not None and app_protocol.lower() in _KNOWN:
        return _KNOWN[app_protocol.lower()]
    if name:
        lowered = name.lower()
        if lowered in _KNOWN:
            return _KNOWN[lowered]
        prefix = lowered.split("-", 1)[0]
        if prefix in _KNOWN:
            return _KNOWN[prefix]
    return "unknown"


def speaks_http(protocol: PortProtocol) -> bool:
    """Whether HTTP routes apply to a port of this protocol (unknown ports may carry HTTP)."""
    return protocol != "tcp"


def may_tunnel(protocol: PortProtocol) -> bool:
    """Whether an explicit-proxy client may reach a port of this protocol with HTTP CONNECT."""
    return protocol in ("tcp", "unknown")
