"""Field paths and field errors, in Kubernetes' words.

Every validation failure names the field by its path (``spec.ports[1].port``) and the rule it breaks, in
the same phrasing as Kubernetes' ``field.Error`` so that users read familiar messages::

    spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive
    spec.selector: Required value
    spec.type: Unsupported value: "Foo": supported values: "ClusterIP", "ExternalName"

Validation collects every error into an ``ErrorList`` rather than stopping at the first, so one answer
names every bad field.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldPath:
    """An immutable path into an object: ``FieldPath.root("spec").child("ports").index(1)``."""

    parts: tuple[str | int | MapKey, ...] = ()

    @staticmethod
    def root(*names: str) -> FieldPath:
        return FieldPath(tuple(names))

    def child(self, *names: str) -> FieldPath:
        return FieldPath(self.parts + names)

    def index(self, i: int) -> FieldPath:
        return FieldPath((*self.parts, i))

    def key(self, k: str) -> FieldPath:
        # A map key is shown in brackets, as Kubernetes does: metadata.labels[app].
        return FieldPath((*self.parts, MapKey(k)))

    def __str__(self) -> str:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, int):
                out.append(f"[{p}]")
            elif isinstance(p, MapKey):
                out.append(f"[{p.k}]")
            else:
                out.append(("." if out else "") + p)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class MapKey:
    k: str


class ErrorType(enum.Enum):
    """The kinds of field error, with Kubernetes' cause reason and message prefix."""

    REQUIRED = ("FieldValueRequired", "Required value")
    INVALID = ("FieldValueInvalid", "Invalid value")
    NOT_SUPPORTED = ("FieldValueNotSupported", "Unsupported value")
    DUPLICATE = ("FieldValueDuplicate", "Duplicate value")
    FORBIDDEN = ("FieldValueForbidden", "Forbidden")
    TOO_LONG = ("FieldValueTooLong", "Too long")
    TOO_MANY = ("FieldValueTooMany", "Too many")
    NOT_FOUND = ("FieldValueNotFound", "Not found")
    UNKNOWN = ("FieldValueUnknown", "Unknown field")
    INTERNAL = ("InternalError", "Internal error")

    @property
    def reason(self) -> str:
        return self.value[0]

    @property
    def prefix(self) -> str:
        return self.value[1]


_NO_VALUE = object()


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    try:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    # A huge value (an oversized list, a long string) would drown the message; show its start.
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True, slots=True)
class FieldError:
    type: ErrorType
    path: FieldPath
    detail: str = ""
    value: Any = _NO_VALUE

    @property
    def field(self) -> str:
        return str(self.path)

    def body(self) -> str:
        """The message without the field path (Kubernetes' ``ErrorBody``)."""
        parts = [self.type.prefix]
        if self.value is not _NO_VALUE and self.type in (
            ErrorType.INVALID,
            ErrorType.NOT_SUPPORTED,
            ErrorType.DUPLICATE,
            ErrorType.NOT_FOUND,
            ErrorType.TOO_MANY,
        ):
            parts.append(_render_value(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)

    def __str__(self) -> str:
        return f"{self.path}: {self.body()}" if self.path.parts else self.body()


def required(path: FieldPath, detail: str = "") -> FieldError:
    return FieldError(ErrorType.REQUIRED, path, detail)


def invalid(path: FieldPath, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.INVALID, path, detail, value)


def not_supported(path: FieldPath, value: Any, supported: Iterable[str]) -> FieldError:
    listed = ", ".join(json.dumps(s) for s in supported)
    return FieldError(ErrorType.NOT_SUPPORTED, path, f"supported values: {listed}", value)


def duplicate(path: FieldPath, value: Any) -> FieldError:
    return FieldError(ErrorType.DUPLICATE, path, "", value)


def forbidden(path: FieldPath, detail: str) -> FieldError:
    return FieldError(ErrorType.FORBIDDEN, path, detail)


def too_long(path: FieldPath, limit: int, unit: str = "bytes") -> FieldError:
    return FieldError(ErrorType.TOO_LONG, path, f"may not be more than {limit} {unit}")


def too_many(path: FieldPath, count: int, limit: int) -> FieldError:
    return FieldError(ErrorType.TOO_MANY, path, f"must have at most {limit} items", count)


def unknown_field(path: FieldPath) -> FieldError:
    return FieldError(ErrorType.UNKNOWN, path)


class ErrorList:
    """Collects field errors; validation appends to one of these and never raises on the first."""

    __slots__ = ("_errors",)

    def __init__(self, errors: Iterable[FieldError] = ()) -> None:
        self._errors: list[FieldError] = list(errors)

    def add(self, err: FieldError) -> None:
        self._errors.append(err)

    def extend(self, errs: Iterable[FieldError]) -> None:
        self._errors.extend(errs)

    def __iter__(self) -> Iterator[FieldError]:
        return iter(self._errors)

    def __len__(self) -> int:
        return len(self._errors)

    def __bool__(self) -> bool:
        return bool(self._errors)

    def __str__(self) -> str:
        return summarize(self._errors)


def summarize(errors: Iterable[FieldError]) -> str:
    """One line for many errors, as Kubernetes' aggregate: ``[a, b]`` or just ``a``."""
    msgs = sorted({str(e) for e in errors})
    if len(msgs) == 1:
        return msgs[0]
    return "[" + ", ".join(msgs) + "]"
