"""HTTP/1.1 bytes: status lines, heads rebuilt from header lists, chunk framing, hop-by-hop rules.

Pure functions. The fast path forwards a head's bytes as received and only appends lines to it
(``patch_head``); these builders are for heads that must change (a rewrite, a header mutation,
hop-by-hop headers to drop) and for the proxy's own answers.
"""

from __future__ import annotations

from http import HTTPStatus

from innermesh.proxy.plan import Headers

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# RFC 9110 section 7.6.1: headers that describe one connection and are never forwarded, plus the
# framing headers, which the proxy sets itself for the hop it writes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FRAMING = frozenset({b"content-length", b"transfer-encoding"})

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _REASONS.items()}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the standard phrase when ``reason`` is empty."""
    if not reason:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = reason_phrase(status)
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-cased tokens of a Connection header value (``close``, ``upgrade``, header names)."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def dropped_names(headers: Headers) -> frozenset[bytes]:
    """Hop-by-hop headers plus every header the Connection header names (RFC 9110 section 7.6.1)."""
    named: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            named |= connection_tokens(v)
    return HOP_BY_HOP | named if named else HOP_BY_HOP


def patch_head(raw: bytes, extra: bytes) -> bytes:
    """A head as received with header lines ``extra`` (each ending in CRLF) added at its end."""
    if not extra:
        return raw
    return raw[:-2] + extra + CRLF


def request_head(
    method: bytes,
    target: bytes,
    authority: bytes,
    headers: Headers,
    *,
    length: int | None,
    chunked: bool,
    keep: frozenset[bytes] = frozenset(),
    extra: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request head rebuilt from parts.

    Hop-by-hop and framing headers in ``headers`` are dropped (except names in ``keep``, for an
    Upgrade that must reach the upstream); the framing is written from ``length`` (content-length)
    or ``chunked``; ``extra`` is appended verbatim.
    """
    drop = dropped_names(headers) - keep
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", authority, CRLF]
    for k, v in headers:
        if k in drop or (k in FRAMING) or k == b"host":
            continue
        parts += (k, b": ", v, CRLF)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    parts += (extra, CRLF)
    return b"".join(parts)


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    length: int | None,
    chunked: bool,
    close: bool,
    keep: frozenset[bytes] = frozenset(),
) -> bytes:
    """An HTTP/1.1 response head rebuilt from parts (see ``request_head`` for the dropping rules).

    ``close`` adds ``connection: close``: the proxy will close the client connection after it.
    """
    drop = dropped_names(headers) - keep
    parts = [status_line(status, reason)]
    for k, v in headers:
        if k in drop or k in FRAMING:
            continue
        parts += (k, b": ", v, CRLF)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body, as three buffers for ``writelines`` (no copy of ``data``)."""
    return (b"%x\r\n" % len(data), data, CRLF)


def with_shadow_suffix(authority: bytes) -> bytes:
    """Envoy's authority for a mirrored request: ``-shadow`` after the host, before any port."""
    if authority.startswith(b"["):  # an IPv6 literal: the port follows the closing bracket
        end = authority.find(b"]")
        host, port = authority[: end + 1], authority[end + 1 :]
    else:
        host, sep, p = authority.rpartition(b":")
        if sep and p.isdigit():
            port = b":" + p
        else:
            host, port = authority, b""
    return host + b"-shadow" + port


def whole_response(
    status: int, headers: Headers, body: bytes, *, close: bool, head_only: bool = False
) -> bytes:
    """A complete response the proxy makes itself (an error, a redirect, a direct response).

    ``head_only`` leaves the body out but keeps its content-length (the answer to a HEAD request).
    """
    parts = [status_line(status)]
    for k, v in headers:
        parts += (k, b": ", v, CRLF)
    parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(CRLF)
    if not head_only:
        parts.append(body)
    return b"".join(parts)
