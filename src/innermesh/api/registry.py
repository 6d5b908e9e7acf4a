"""The kinds the API serves: their group, version, names, scope, schema and table columns.

One ``Kind`` per resource type; ``REGISTRY`` holds them all and resolves the names users and URLs use
(``services``, ``svc``, ``Service``, ``httproutes.gateway.networking.k8s.io``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from innermesh.api import names
from innermesh.api.meta import Resource, parse_time


@dataclass(frozen=True, slots=True)
class Column:
    """A column of ``get``'s table (Kubernetes' TableColumnDefinition), computed from the typed object.
    Priority 0 columns always show; priority 1 only with ``-o wide``."""

    name: str
    value: Callable[[Any], object]
    type: str = "string"
    priority: int = 0
    description: str = ""


def age(obj: Resource) -> str:
    """Kubernetes' age format: 5s, 3m, 2d4h..."""
    ts = obj.metadata.creation_timestamp
    if not ts:
        return "<unknown>"
    secs = max(0, int((dt.datetime.now(dt.UTC) - parse_time(ts)).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 48:
        return f"{hours}h{mins % 60}m" if hours < 8 and mins % 60 else f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 else f"{days // 365}y"


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    model: type[Resource]
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # The rule for metadata.name (most kinds: DNS-1123 subdomain; Service: DNS-1035 label).
    name_rule: Callable[[str], list[str]] = names.is_dns1123_subdomain
    # Kinds kubectl compiles in accept strategic merge patch; the others (our group and the Gateway API,
    # which are CRDs in Kubernetes) accept JSON merge and JSON patch only, as Kubernetes does for CRDs.
    strategic_merge: bool = False
    # Columns between NAME (and NAMESPACE with -A) and AGE.
    columns: tuple[Column, ...] = ()
    # Subresources beside the main one; "status" when the kind has a status written by controllers.
    subresources: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def group_resource(self) -> str:
        """``services`` or ``httproutes.gateway.networking.k8s.io``, as Kubernetes names a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def key_prefix(self, namespace: str | None = None) -> str:
        """The store prefix for this kind, or for one namespace of it."""
        base = f"/registry/{self.group or 'core'}/{self.plural}/"
        if namespace and self.namespaced:
            return f"{base}{namespace}/"
        return base

    def key(self, namespace: str | None, name: str) -> str:
        return f"{self.key_prefix(namespace)}{name}"


class UnknownKind(LookupError):
    pass


class Registry:
    def __init__(self, kinds: Iterable[Kind]) -> None:
        self._kinds = tuple(kinds)
        self._by_gvk = {(k.group, k.version, k.kind): k for k in self._kinds}
        self._by_resource = {(k.group, k.version, k.plural): k for k in self._kinds}
        if len(self._by_gvk) != len(self._kinds) or len(self._by_resource) != len(self._kinds):
            raise ValueError("duplicate kind or resource in the registry")

    def __iter__(self) -> Any:
        return iter(self._kinds)

    def groups(self) -> dict[str, list[str]]:
        """Group name -> versions, core ("") included."""
        out: dict[str, list[str]] = {}
        for k in self._kinds:
            versions = out.setdefault(k.group, [])
            if k.version not in versions:
                versions.append(k.version)
        return out

    def by_gvk(self, api_version: str, kind: str) -> Kind:
        group, _, version = api_version.rpartition("/")
        k = self._by_gvk.get((group, version, kind))
        if k is None:
            raise UnknownKind(f'no kind "{kind}" is registered for version "{api_version}"')
        return k

    def by_resource(self, group: str, version: str, plural: str) -> Kind:
        k = self._by_resource.get((group, version, plural))
        if k is None:
            raise UnknownKind(
                f'the server could not find the requested resource "{plural}" in "{group or "core"}/{version}"'
            )
        return k

    def in_group_version(self, group: str, version: str) -> list[Kind]:
        return [k for k in self._kinds if k.group == group and k.version == version]

    def resolve(self, name: str) -> Kind:
        """A kind from what a user types: plural, singular, short name or Kind, optionally qualified by
        group (``httproutes.gateway.networking.k8s.io``) or group and version."""
        lowered = name.lower()
        matches: list[Kind] = []
        for k in self._kinds:
            spellings = {k.plural, k.singular, k.kind.lower(), *k.short_names}
            qualified = {f"{s}.{k.group}" for s in spellings if k.group} | {
                f"{s}.{k.version}.{k.group}" for s in spellings if k.group
            }
            if lowered in spellings or lowered in qualified:
                matches.append(k)
        if not matches:
            raise UnknownKind(f'the server doesn\'t have a resource type "{name}"')
        # An unqualified name shared by two groups resolves to the core group first, then by order.
        return matches[0]
