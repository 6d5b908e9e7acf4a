"""Object metadata and the types every kind shares (meta/v1): ObjectMeta, Resource, Condition,
LabelSelector, references.

A ``Resource`` is one stored object: apiVersion, kind, metadata, then the kind's spec and status. The
server owns uid, resourceVersion, generation and creationTimestamp; what a client sends there is
replaced (see ``apiserver``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import Field

from innermesh.api import names
from innermesh.api.fielderrors import (
    ErrorList,
    FieldPath,
    forbidden,
    invalid,
    required,
    too_long,
)
from innermesh.api.model import MergeKey, MergeSet, Model, max_length, pattern, rule

TOTAL_ANNOTATION_SIZE_MAX = 256 * 1024


def now_rfc3339() -> str:
    """Kubernetes' metav1.Time wire form: UTC, whole seconds, a Z."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_time(value: str) -> list[str]:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return ["must be an RFC 3339 date-time (e.g. 2026-01-02T15:04:05Z)"]
    return []


Time = Annotated[str, rule(_check_time)]
"""A timestamp as Kubernetes writes it (RFC 3339, ``2026-01-02T15:04:05Z``)."""


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class OwnerReference(Model):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(Model):
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    # Deprecated and ignored, accepted because older clients still send it.
    self_link: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    # Strategic merge patch merges these as Kubernetes does (patchMergeKey "uid"; finalizers as a set).
    owner_references: Annotated[list[OwnerReference], MergeKey("uid")] | None = None
    finalizers: Annotated[list[str], MergeSet()] | None = None
    # Server-side apply bookkeeping; innermesh does not track field managers and drops what is sent.
    managed_fields: list[dict[str, Any]] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.labels:
            check_labels(self.labels, path.child("labels"), errs)
        if self.annotations:
            size = 0
            for k, v in self.annotations.items():
                for msg in names.is_qualified_name(k.lower()):
                    errs.add(invalid(path.child("annotations"), k, msg))
                size += len(k) + len(v)
            if size > TOTAL_ANNOTATION_SIZE_MAX:
                errs.add(too_long(path.child("annotations"), TOTAL_ANNOTATION_SIZE_MAX))
        for i, f in enumerate(self.finalizers or []):
            for msg in names.is_qualified_name(f):
                errs.add(invalid(path.child("finalizers").index(i), f, msg))
        if self.deletion_grace_period_seconds is not None and self.deletion_grace_period_seconds < 0:
            errs.add(
                invalid(
                    path.child("deletionGracePeriodSeconds"),
                    self.deletion_grace_period_seconds,
                    "must be greater than or equal to 0",
                )
            )


def check_labels(labels: dict[str, str], path: FieldPath, errs: ErrorList) -> None:
    for k, v in labels.items():
        for msg in names.is_qualified_name(k):
            errs.add(invalid(path, k, msg))
        for msg in names.is_label_value(v):
            errs.add(invalid(path.key(k), v, msg))


class Resource(Model):
    """One API object. Each kind narrows ``api_version`` and ``kind`` to its own values."""

    api_version: str
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    def check_update(self, old: Any, errs: ErrorList) -> None:
        """Rules that compare an update with the stored object (immutable fields); override."""

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""


def check_immutable(new: Any, old: Any, path: FieldPath, errs: ErrorList) -> None:
    """Kubernetes' ValidateImmutableField."""
    if new != old:
        errs.add(invalid(path, _wire(new), "field is immutable"))


def _wire(v: Any) -> Any:
    return v.to_dict() if isinstance(v, Model) else v


# ---------------------------------------------------------------------------------------------------
# Conditions


ConditionStatus = Literal["True", "False", "Unknown"]

ConditionReason = Annotated[str, max_length(1024), pattern(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")]


class Condition(Model):
    """metav1.Condition."""

    type: Annotated[str, max_length(316)]
    status: ConditionStatus
    observed_generation: int | None = None
    last_transition_time: Time
    reason: ConditionReason
    message: Annotated[str, max_length(32768)] = ""

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        for msg in names.is_qualified_name(self.type):
            errs.add(invalid(path.child("type"), self.type, msg))
        if self.observed_generation is not None and self.observed_generation < 0:
            errs.add(invalid(path.child("observedGeneration"), self.observed_generation, "must be >= 0"))


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Kubernetes' meta.SetStatusCondition: replace the condition of the same type, keeping its
    lastTransitionTime when the status did not change."""
    out: list[Condition] = []
    replaced = False
    for c in conditions:
        if c.type == new.type:
            keep_time = c.status == new.status
            out.append(
                new.model_copy(update={"last_transition_time": c.last_transition_time}) if keep_time else new
            )
            replaced = True
        else:
            out.append(c)
    if not replaced:
        out.append(new)
    return out


# ---------------------------------------------------------------------------------------------------
# Label selectors


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        for msg in names.is_qualified_name(self.key):
            errs.add(invalid(path.child("key"), self.key, msg))
        if self.operator in ("In", "NotIn"):
            if not self.values:
                errs.add(
                    required(path.child("values"), "must be specified when `operator` is 'In' or 'NotIn'")
                )
        elif self.values:
            errs.add(
                forbidden(
                    path.child("values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                )
            )
        for i, v in enumerate(self.values or []):
            for msg in names.is_label_value(v):
                errs.add(invalid(path.child("values").index(i), v, msg))


class LabelSelector(Model):
    """metav1.LabelSelector. An empty selector selects everything; a missing one, nothing."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.match_labels:
            check_labels(self.match_labels, path.child("matchLabels"), errs)

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for k, v in (self.match_labels or {}).items():
            if labels.get(k) != v:
                return False
        for req in self.match_expressions or []:
            present = req.key in labels
            if req.operator == "In":
                if not present or labels[req.key] not in (req.values or []):
                    return False
            elif req.operator == "NotIn":
                if present and labels[req.key] in (req.values or []):
                    return False
            elif req.operator == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True


class LocalObjectReference(Model):
    name: str
