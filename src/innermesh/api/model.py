"""The base of every schema: strict pydantic models, and validation in two phases.

Phase 1 is structural, done by pydantic while parsing: unknown fields, types (strict: ``"80"`` is not a
port), required fields, enums, ranges and patterns on single fields. Phase 2 runs only on an object that
parsed: each model's ``check`` hook sees its typed self and adds the rules that involve several fields
(Gateway API's CEL rules, uniqueness in lists, "exactly one of"). Both phases report every error with its
field path, in Kubernetes' words (see ``fielderrors``).

Conventions for schema modules:

- Python attributes are snake_case; the wire names are camelCase through the alias generator, or an
  explicit ``alias`` where Kubernetes' spelling is irregular (``clusterIPs``).
- An optional field is ``X | None = None``; a defaulted field has its default, which then appears in the
  stored object, as Kubernetes' defaulting does.
- Field-local rules are ``Annotated`` types built with ``rule()``, raising ``check_error`` values.
- Cross-field rules go in ``check(self, path, errs)``; the walker visits every nested model.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from innermesh.api.fielderrors import (
    ErrorList,
    ErrorType,
    FieldError,
    FieldPath,
    invalid,
    not_supported,
    required,
    too_long,
    too_many,
    unknown_field,
)

ROOT = FieldPath()


class Model(BaseModel):
    """Every schema type derives from this: strict, closed (unknown fields refused), camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        validate_assignment=False,
        # Models are data; controllers copy and modify them with model_copy(update=...) or by assignment.
        frozen=False,
    )

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        """Rules across this model's fields; override to add them. Nested models are visited for you."""

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


M = TypeVar("M", bound=Model)


# ---------------------------------------------------------------------------------------------------
# Field-local rules, as Annotated types.


def check_error(kind: ErrorType, detail: str) -> PydanticCustomError:
    """The error a field rule raises; the error translator turns it into a FieldError of ``kind``.
    The type is prefixed so that it cannot be mistaken for one of pydantic's own (``too_long``)."""
    # No context is passed, so pydantic leaves the detail as it is (braces in regexes included).
    return PydanticCustomError(_RULE_PREFIX + kind.name.lower(), detail)


_RULE_PREFIX = "innermesh_"


T = TypeVar("T")


def rule(check: Callable[[T], Iterable[str]]) -> AfterValidator:
    """An AfterValidator from a function returning problems (as the ``names`` functions do)."""

    def validate(value: T) -> T:
        problems = list(check(value))
        if problems:
            raise check_error(ErrorType.INVALID, ", ".join(problems))
        return value

    return AfterValidator(validate)


def int_range(lo: int, hi: int) -> AfterValidator:
    def check(v: int) -> list[str]:
        return [] if lo <= v <= hi else [f"must be between {lo} and {hi}, inclusive"]

    return rule(check)


def min_value(lo: int) -> AfterValidator:
    def check(v: int) -> list[str]:
        return [] if v >= lo else [f"must be greater than or equal to {lo}"]

    return rule(check)


def max_length(n: int) -> AfterValidator:
    """For strings: at most n characters (Kubernetes: Too long)."""

    def validate(value: str) -> str:
        if len(value) > n:
            raise check_error(ErrorType.TOO_LONG, f"may not be more than {n} bytes")
        return value

    return AfterValidator(validate)


def min_length(n: int) -> AfterValidator:
    def validate(value: str) -> str:
        if len(value) < n:
            raise check_error(ErrorType.INVALID, f"must be at least {n} characters long")
        return value

    return AfterValidator(validate)


def pattern(regex: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(v: str) -> list[str]:
        return [] if compiled.fullmatch(v) else [f"should match '{regex}'"]

    return rule(check)


def max_items(n: int) -> AfterValidator:
    def validate(value: list[Any]) -> list[Any]:
        if len(value) > n:
            raise check_error(ErrorType.TOO_MANY, f"must have at most {n} items")
        return value

    return AfterValidator(validate)


def min_items(n: int) -> AfterValidator:
    def validate(value: list[Any]) -> list[Any]:
        if len(value) < n:
            raise check_error(ErrorType.INVALID, f"must have at least {n} items")
        return value

    return AfterValidator(validate)


def _validate_int_or_string(value: object) -> int | str:
    # bool is an int in Python but not in JSON: refuse it, as Go's decoder does.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise check_error(ErrorType.INVALID, "must be an integer or a string")
    return value


IntOrString = Annotated[
    int | str,
    AfterValidator(_validate_int_or_string),
]
"""Kubernetes' intstr.IntOrString (targetPort, maxSurge...). Validated as one type, so that a wrong
value gives one error rather than one per union member."""


# ---------------------------------------------------------------------------------------------------
# Translating pydantic's errors into field errors.

_TYPE_DETAIL = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "none_required": "must be null",
}


def _quoted_options(expected: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in re.finditer(r"'((?:[^'\\]|\\.)*)'|\"([^\"]*)\"", expected)]


def unwrap_annotation(tp: Any) -> tuple[Any, list[Any]]:
    """The structural type under Annotated and Optional, and the Annotated metadata met on the way
    (markers such as ``MergeKey``)."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp, *extra = typing.get_args(tp)
            metadata.extend(extra)
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp, metadata


def _element_type(tp: Any) -> Any:
    return unwrap_annotation(tp)[0]


def _field_for_alias(model: type[BaseModel], name: str) -> Any:
    for fname, info in model.model_fields.items():
        if name in (info.alias, fname):
            return info.annotation
    return None


def loc_to_path(root: type[BaseModel] | None, loc: tuple[str | int, ...], base: FieldPath) -> FieldPath:
    """Turn a pydantic error location into a field path, telling map keys from field names by
    following the schema (``metadata.labels[app.kubernetes.io/name]``, not ``...labels.app...``)."""
    path = base
    tp: Any = root
    for part in loc:
        tp = _element_type(tp)
        origin = typing.get_origin(tp)
        if isinstance(part, int):
            path = path.index(part)
            args = typing.get_args(tp)
            tp = args[0] if args else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            path = path.child(part)
            tp = _field_for_alias(tp, part)
        elif origin is dict or tp is dict:
            if part == "[key]":  # pydantic's marker for "the key itself is bad"
                continue
            path = path.key(part)
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else None
        elif part in ("int", "str", "function-after", "function-plain") or "[" in part:
            # Union member tags and validator wrappers name no field.
            continue
        else:
            path = path.child(part)
            tp = None
    return path


def translate(err: ValidationError, root: type[BaseModel] | None, base: FieldPath = ROOT) -> list[FieldError]:
    """Field errors for a pydantic ValidationError."""
    out: list[FieldError] = []
    for e in err.errors(include_url=False):
        path = loc_to_path(root, tuple(e["loc"]), base)
        etype = e["type"]
        value = e.get("input")
        ctx = e.get("ctx") or {}
        if etype == "missing":
            out.append(required(path))
        elif etype == "extra_forbidden":
            out.append(unknown_field(path))
        elif etype in ("literal_error", "enum"):
            out.append(not_supported(path, value, _quoted_options(str(ctx.get("expected", "")))))
        elif etype in _TYPE_DETAIL:
            out.append(invalid(path, value, _TYPE_DETAIL[etype]))
        elif etype == "string_too_long":
            out.append(too_long(path, int(ctx.get("max_length", 0))))
        elif etype == "too_long":
            out.append(
                too_many(path, len(value) if isinstance(value, list) else 0, int(ctx.get("max_length", 0)))
            )
        elif etype.startswith(_RULE_PREFIX):
            kind = ErrorType[etype.removeprefix(_RULE_PREFIX).upper()]
            msg = e["msg"]
            if kind is ErrorType.TOO_MANY:
                out.append(FieldError(kind, path, msg, len(value) if isinstance(value, list) else value))
            elif kind in (ErrorType.REQUIRED, ErrorType.FORBIDDEN, ErrorType.TOO_LONG, ErrorType.UNKNOWN):
                out.append(FieldError(kind, path, msg))
            else:
                out.append(FieldError(kind, path, msg, value))
        elif etype == "value_error":
            out.append(invalid(path, value, str(ctx.get("error", e["msg"]))))
        else:
            out.append(invalid(path, value, e["msg"][0].lower() + e["msg"][1:]))
    return out


# ---------------------------------------------------------------------------------------------------
# Phase 2: the walker.


def check_tree(obj: Model, path: FieldPath, errs: ErrorList) -> None:
    """Run ``check`` on ``obj`` and on every model nested in it, each with its own path."""
    obj.check(path, errs)
    for fname, info in type(obj).model_fields.items():
        value = getattr(obj, fname)
        if value is None:
            continue
        _visit(value, path.child(info.alias or fname), errs)


def _visit(value: Any, path: FieldPath, errs: ErrorList) -> None:
    if isinstance(value, Model):
        check_tree(value, path, errs)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, Model | list | dict):
                _visit(item, path.index(i), errs)
    elif isinstance(value, dict):
        for k, item in value.items():
            if isinstance(item, Model | list | dict):
                _visit(item, path.key(str(k)), errs)


class ParseFailed(Exception):
    """Phase 1 or 2 failed; ``errors`` names every bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def parse(model: type[M], data: Any, base: FieldPath = ROOT) -> M:
    """Parse and fully validate ``data`` as ``model``; raise ParseFailed naming every bad field."""
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise ParseFailed(translate(e, model, base)) from None
    errs = ErrorList()
    check_tree(obj, base, errs)
    if errs:
        raise ParseFailed(list(errs))
    return obj


class MergeKey:
    """Annotated marker: this list of objects merges by ``key`` under strategic merge patch, as
    Kubernetes' ``patchStrategy:"merge" patchMergeKey:"<key>"`` (e.g. Service ``spec.ports`` by port)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"MergeKey({self.key!r})"


class MergeSet:
    """Annotated marker: this list of scalars merges as a set under strategic merge patch
    (``patchStrategy:"merge"`` on a primitive list, e.g. ``metadata.finalizers``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MergeSet()"
