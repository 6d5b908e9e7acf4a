"""Label and field selectors in their string form, as ``?labelSelector=`` and ``-l`` take them.

The grammar is Kubernetes' (``k8s.io/apimachinery/pkg/labels``)::

    selector    := requirement ("," requirement)*
    requirement := KEY | "!" KEY
                 | KEY ("=" | "==" | "!=") VALUE
                 | KEY ("in" | "notin") "(" VALUE ("," VALUE)* ")"
                 | KEY (">" | "<") INTEGER

Field selectors support ``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` and ``!=``,
which is what Kubernetes supports for every kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from innermesh.api import names
from innermesh.api.meta import LabelSelector

Operator = Literal["=", "!=", "in", "notin", "exists", "!", ">", "<"]


class SelectorError(ValueError):
    """A selector string that does not parse; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=":
                return present and value == self.values[0]
            case "!=":
                return not present or value != self.values[0]
            case "in":
                return present and value in self.values
            case "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case _:  # ">" or "<": numeric comparisons; a label that is not a number never matches
                try:
                    have = int(value or "")
                except ValueError:
                    return False
                want = int(self.values[0])
                return have > want if self.op == ">" else have < want


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed label selector; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


EVERYTHING = Selector()

_TOKEN = re.compile(r"\s*(==|!=|=|\(|\)|,|!|>|<|[^\s=!(),<>]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:  # pragma: no cover - the pattern matches any non-space character
            raise SelectorError(f"unexpected character at {pos} in {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _check_key(key: str) -> None:
    problems = names.is_qualified_name(key)
    if problems:
        raise SelectorError(f"invalid label key {key!r}: {'; '.join(problems)}")


def _check_value(value: str) -> None:
    problems = names.is_label_value(value)
    if problems:
        raise SelectorError(f"invalid label value {value!r}: {'; '.join(problems)}")


def parse_label_selector(text: str) -> Selector:
    """Parse ``-l``/``labelSelector`` syntax; raise SelectorError with the reason."""
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def peek() -> str | None:
        return toks[i] if i < len(toks) else None

    def take() -> str:
        nonlocal i
        if i >= len(toks):
            raise SelectorError(f"unexpected end of selector {text!r}")
        t = toks[i]
        i += 1
        return t

    while i < len(toks):
        t = take()
        if t == "!":
            key = take()
            _check_key(key)
            reqs.append(Requirement(key, "!"))
        else:
            key = t
            if key in ("=", "==", "!=", "(", ")", ",", ">", "<"):
                raise SelectorError(f"expected a label key, found {key!r} in {text!r}")
            _check_key(key)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt is None or nxt == "," else take()
                _check_value(value)
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"expected '(' after {op!r} in {text!r}")
                values: list[str] = []
                while True:
                    v = take()
                    if v == ")":
                        break
                    if v == ",":
                        continue
                    _check_value(v)
                    values.append(v)
                if not values and op == "in":
                    raise SelectorError(f"'in' needs at least one value in {text!r}")
                reqs.append(Requirement(key, op, tuple(values)))  # type: ignore[arg-type]
            elif op in (">", "<"):
                take()
                v = take()
                if not re.fullmatch(r"-?\d+", v):
                    raise SelectorError(f"{op!r} needs an integer value, found {v!r}")
                reqs.append(Requirement(key, op, (v,)))  # type: ignore[arg-type]
            else:
                raise SelectorError(f"expected an operator after {key!r}, found {op!r} in {text!r}")
        sep = peek()
        if sep is not None:
            if sep != ",":
                raise SelectorError(f"expected ',' found {sep!r} in {text!r}")
            take()
            if peek() is None:
                raise SelectorError(f"trailing ',' in {text!r}")
    return Selector(tuple(reqs))


def from_label_selector(sel: LabelSelector) -> Selector:
    """The string-selector form of a metav1.LabelSelector (for printing and for matching)."""
    reqs: list[Requirement] = [Requirement(k, "=", (v,)) for k, v in sorted((sel.match_labels or {}).items())]
    for e in sel.match_expressions or []:
        op: Operator = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[e.operator]  # type: ignore[assignment]
        reqs.append(Requirement(e.key, op, tuple(e.values or ())))
    return Selector(tuple(reqs))


def format_selector(sel: Selector) -> str:
    parts = []
    for r in sel.requirements:
        match r.op:
            case "=" | "!=" | ">" | "<":
                parts.append(f"{r.key}{r.op}{r.values[0]}")
            case "in" | "notin":
                parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
            case "exists":
                parts.append(r.key)
            case "!":
                parts.append(f"!{r.key}")
    return ",".join(parts)


# ---------------------------------------------------------------------------------------------------
# Field selectors

FIELD_SELECTOR_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        for r in self.requirements:
            have = meta.get(r.field.split(".", 1)[1]) or ""
            if (have == r.value) == r.negate:
                return False
        return True

    def exact(self, field: str) -> str | None:
        """The value a ``field=value`` requirement pins, if any (lets the server read one key)."""
        for r in self.requirements:
            if r.field == field and not r.negate:
                return r.value
        return None


def parse_field_selector(text: str) -> FieldSelector:
    reqs: list[FieldRequirement] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|!=|=)\s*(.*)", part)
        if not m:
            raise SelectorError(f"invalid field selector {part!r}: expected FIELD=VALUE or FIELD!=VALUE")
        field, op, value = m.groups()
        if field not in FIELD_SELECTOR_FIELDS:
            raise SelectorError(
                f'field label not supported: "{field}" (supported: {", ".join(FIELD_SELECTOR_FIELDS)})'
            )
        reqs.append(FieldRequirement(field, op == "!=", value))
    return FieldSelector(tuple(reqs))
