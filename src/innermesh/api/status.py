"""API errors as Kubernetes Status objects.

Every failure the API returns is an ``ApiError``: an HTTP code, a machine-readable ``reason`` and a
human message, plus, for invalid objects, one cause per bad field. The server turns it into a Status
body; the HTTP client turns a Status body back into the same ``ApiError``, so in-process and remote
callers handle errors the same way. The codes and reasons are Kubernetes' (``metav1.StatusReason``)::

    400 BadRequest            malformed body, bad query, wrong kind for the URL
    401 Unauthorized          missing or wrong bearer token
    403 Forbidden             refused by policy (e.g. a namespace being deleted)
    404 NotFound              no such object, kind or path
    405 MethodNotAllowed      verb not supported on this path
    409 AlreadyExists         create of a name that exists
    409 Conflict              stale resourceVersion (optimistic concurrency)
    410 Expired               watch from a compacted revision ("too old resource version")
    413 RequestEntityTooLarge body or object over the limit
    415 UnsupportedMediaType  unknown patch type or content type
    422 Invalid               the object breaks field rules; causes name every bad field
    500 InternalError         a bug, or a store failure
    503 ServiceUnavailable    the store cannot be reached
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from innermesh.api.fielderrors import FieldError, summarize


class ApiError(Exception):
    """An API failure carrying everything a Kubernetes Status needs."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        kind: str = "",
        name: str = "",
        group: str = "",
        causes: Iterable[dict[str, str]] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.kind = kind
        self.name = name
        self.group = group
        self.causes = list(causes)
        self.retry_after = retry_after

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = self.causes
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            status["details"] = details
        return status

    @classmethod
    def from_status(cls, status: dict[str, Any], http_code: int) -> ApiError:
        details = status.get("details") or {}
        return cls(
            int(status.get("code") or http_code),
            str(status.get("reason") or "Unknown"),
            str(status.get("message") or f"HTTP {http_code}"),
            kind=str(details.get("kind") or ""),
            name=str(details.get("name") or ""),
            group=str(details.get("group") or ""),
            causes=details.get("causes") or (),
            retry_after=details.get("retryAfterSeconds"),
        )

    @property
    def field_causes(self) -> list[str]:
        """``field: message`` per cause, as ``apply`` prints them."""
        return [f"{c.get('field', '')}: {c.get('message', '')}".lstrip(": ") for c in self.causes]


def _what(resource: str, name: str) -> str:
    return f'{resource} "{name}"'


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message)


def forbidden(resource: str, name: str, message: str) -> ApiError:
    return ApiError(
        403, "Forbidden", f"{_what(resource, name)} is forbidden: {message}", kind=resource, name=name
    )


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404, "NotFound", f"{_what(resource, name)} not found", kind=resource, name=name, group=group
    )


def path_not_found(message: str = "the server could not find the requested resource") -> ApiError:
    return ApiError(404, "NotFound", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409, "AlreadyExists", f"{_what(resource, name)} already exists", kind=resource, name=name, group=group
    )


def conflict(resource: str, name: str, group: str = "", detail: str = "") -> ApiError:
    detail = (
        detail
        or "the object has been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f"Operation cannot be fulfilled on {_what(resource, name)}: {detail}",
        kind=resource,
        name=name,
        group=group,
    )


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def too_large(message: str) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: {message}")


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def invalid(kind: str, name: str, errors: Iterable[FieldError], group: str = "") -> ApiError:
    errs = list(errors)
    causes = [{"reason": e.type.reason, "message": e.body(), "field": e.field} for e in errs]
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summarize(errs)}',
        kind=kind,
        name=name,
        group=group,
        causes=causes,
    )


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceUnavailable", message, retry_after=1)
