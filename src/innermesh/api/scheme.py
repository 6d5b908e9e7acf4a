"""Every kind the API serves, in one registry (Kubernetes calls this the scheme)."""

from __future__ import annotations

from innermesh.api import coordination, core, discovery, gateway, mesh, networking
from innermesh.api.registry import Registry

REGISTRY = Registry(
    [
        *core.KINDS,
        *discovery.KINDS,
        *networking.KINDS,
        *gateway.KINDS,
        *mesh.KINDS,
        *coordination.KINDS,
    ]
)
