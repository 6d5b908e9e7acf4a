"""coordination.k8s.io/v1: Lease, the lock controllers take for leader election.

Fields and rules follow Kubernetes' ``coordination/v1`` and ``ValidateLease``. A replica holds the
lease while ``renewTime + leaseDurationSeconds`` is in the future; others take it over after that,
incrementing ``leaseTransitions``. The write is a compare-and-swap on resourceVersion, so two replicas
can not both win.

Times are ``MicroTime``: RFC 3339 with exactly six fractional digits, as Kubernetes writes and parses
them (``2026-01-02T15:04:05.000000Z``). Offsets are accepted and stored in UTC, as Kubernetes'
encoder does.

Left out: ``strategy`` and ``preferredHolder`` (Kubernetes' coordinated leader election, beta and off
by default there); innermesh's replicas are interchangeable and need only the classic lease.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from innermesh.api.fielderrors import ErrorList, ErrorType, FieldPath, invalid
from innermesh.api.meta import Resource
from innermesh.api.model import Model, check_error
from innermesh.api.registry import Column, Kind

GROUP = "coordination.k8s.io"
VERSION = "v1"

_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


def format_micro_time(when: dt.datetime) -> str:
    """metav1.MicroTime's wire form of an aware datetime: UTC, microseconds, a Z."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _normalize_micro_time(value: str) -> str:
    detail = "must be an RFC 3339 time with microseconds (e.g. 2026-01-02T15:04:05.000000Z)"
    if not _MICRO_TIME.match(value):
        raise check_error(ErrorType.INVALID, detail)
    try:
        when = parse_micro_time(value)
    except ValueError:
        raise check_error(ErrorType.INVALID, detail) from None
    return format_micro_time(when)


MicroTime = Annotated[str, AfterValidator(_normalize_micro_time)]
"""metav1.MicroTime, normalized to UTC."""


class LeaseSpec(Model):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: MicroTime | None = None
    renew_time: MicroTime | None = None
    lease_transitions: int | None = None

    def check(self, path: FieldPath, errs: ErrorList) -> None:
        if self.lease_duration_seconds is not None and self.lease_duration_seconds <= 0:
            errs.add(
                invalid(
                    path.child("leaseDurationSeconds"), self.lease_duration_seconds, "must be greater than 0"
                )
            )
        if self.lease_transitions is not None and self.lease_transitions < 0:
            errs.add(
                invalid(
                    path.child("leaseTransitions"),
                    self.lease_transitions,
                    "must be greater than or equal to 0",
                )
            )


class Lease(Resource):
    api_version: Literal["coordination.k8s.io/v1"] = "coordination.k8s.io/v1"
    kind: Literal["Lease"] = "Lease"
    spec: LeaseSpec = Field(default_factory=LeaseSpec)


KINDS = [
    Kind(
        group=GROUP,
        version=VERSION,
        kind="Lease",
        plural="leases",
        model=Lease,
        strategic_merge=True,
        columns=(Column("Holder", lambda o: o.spec.holder_identity or ""),),
    ),
]
