"""Placeholder: filled in by the schema work."""

from __future__ import annotations

from innermesh.api.registry import Kind

KINDS: list[Kind] = []
