"""Versions by content: what the ADS server tells a proxy it is at.

A resource is serialized once, deterministically (map fields in key order), and its version is a hash
of those bytes; a state-of-the-world version is a hash over the sorted (name, resource version) pairs
of what one response carries. Two servers (or one server after a restart) holding the same
configuration therefore announce the same versions, and a stream whose output did not change sees the
same version and is sent nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from innermesh.xds.types import Resources

# 16 hex digits (64 bits): collisions among the versions of one resource over a server's life are
# not a practical concern, and short versions keep config dumps and logs readable.
_DIGEST_CHARS = 16


@dataclass(frozen=True, slots=True)
class EncodedResource:
    """One resource as it goes on the wire: its deterministic serialization and the version of that."""

    name: str
    body: bytes
    version: str


EncodedResources = dict[str, dict[str, EncodedResource]]  # type URL -> name -> encoded resource


def content_version(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:_DIGEST_CHARS]


def encode(resources: Resources) -> EncodedResources:
    """Serialize every resource once; the server filters and versions from these bytes."""
    out: EncodedResources = {}
    for type_url, by_name in resources.items():
        encoded: dict[str, EncodedResource] = {}
        for name, message in by_name.items():
            body = message.SerializeToString(deterministic=True)
            encoded[name] = EncodedResource(name, body, content_version(body))
        out[type_url] = encoded
    return out


def set_version(versions: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """The version of a set of resources, from their (name, version) pairs, in any order.

    Hashing each resource's version rather than its bytes again is equivalent (the version is a hash
    of the bytes) and costs one short hash per resource instead of rehashing every body.
    """
    pairs = sorted(versions.items() if isinstance(versions, Mapping) else versions)
    h = hashlib.sha256()
    for name, version in pairs:
        # Lengths first, so that ("ab", "c") and ("a", "bc") cannot hash alike.
        h.update(f"{len(name)}:{name}{len(version)}:{version};".encode())
    return h.hexdigest()[:_DIGEST_CHARS]
