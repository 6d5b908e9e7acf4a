"""HTTP/1.1 bytes: reading heads, editing them in place, rebuilding them, chunk framing.

Pure functions. The hot path keeps a head as the bytes it arrived in: ``simple_request`` and
``simple_response_length`` find the few fields the proxy acts on with one regular-expression pass
over the lower-cased head (no object per header), and ``HeadEdit`` applies a header mutation by
cutting and appending lines. A head they decline (hop-by-hop fields, an absolute target, HTTP/1.0,
chunked framing, ...) takes the general path: ``scan_response`` reads a response head's framing,
``header_fields`` parses a head into a header list, ``request_head`` / ``response_head`` rebuild.

The scans interpret; they do not validate. Their callers feed the same bytes to llhttp, which rejects
bad syntax (invalid names and values, obs-fold, bare CR or LF, duplicate or invalid Content-Length,
Content-Length with Transfer-Encoding), before any result is used. The scans only need to be right
about heads llhttp accepts, and to decline what they are not sure of.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import NamedTuple

from innermesh.proxy.plan import HeaderMutation, Headers, RequestHead
from innermesh.proxy.runtime.messages import Request

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


# --- scanning heads ------------------------------------------------------------------------------------

# The request fields the proxy reads or must act on; every other field passes through as bytes. The
# pattern runs on the lower-cased head: a field line is CRLF, the name, a colon (llhttp refuses
# whitespace before it), optional whitespace, the value up to the next CR (values hold no CR).
_REQUEST_FIELDS = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade|expect|x-forwarded-for|x-forwarded-proto|x-request-id):[ \t]*([^\r]*)"
)
_REQUEST_LINE = re.compile(rb"([^ ]+) (/[^ ]*) HTTP/1\.1\r\n")
_RESPONSE_FIELDS = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer|upgrade)"
    rb":[ \t]*([^\r]*)"
)


def simple_request(head: bytes, source_ip: str, max_fields: int) -> Request | None:
    """The request of a head (through its blank line) that can go upstream as received, with lines
    added: HTTP/1.1, an origin-form target, exactly one Host, no Transfer-Encoding, no hop-by-hop
    field but ``Connection: keep-alive``, no Expect, no X-Forwarded-For to merge, at most
    ``max_fields`` fields. None when the head needs the general path (which also answers whatever
    about it is wrong). ``Request.raw`` is the head; ``RequestHead.headers`` is left empty."""
    line = _REQUEST_LINE.match(head)
    if line is None or head.count(b"\r\n") > max_fields + 2:
        return None
    authority = b""
    hosts = length = 0
    has_proto = has_request_id = False
    for name, value in _REQUEST_FIELDS.findall(head.lower(), line.end() - 2):
        if name == b"host":
            hosts += 1
            authority = value.rstrip(b" \t")
        elif name == b"content-length":
            value = value.rstrip(b" \t")
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"x-forwarded-proto":
            has_proto = True
        elif name == b"x-request-id":
            has_request_id = True
        elif name != b"connection" or value.rstrip(b" \t") != b"keep-alive":
            return None
    if hosts != 1:
        return None
    method, target = line.groups()
    path, _, query = target.partition(b"?")
    if path.find(b"#") >= 0:  # (bytes.find is faster than "in", which first tries an int)
        path = path.partition(b"#")[0]
    head_ = RequestHead(method, path, query, authority, [], b"http", source_ip)
    return Request(head_, head, length or None, False, None, has_proto, has_request_id)


def simple_response_length(head: bytes) -> int:
    """The Content-Length of a response head (through its blank line) that can go to an HTTP/1.1
    client as received and frames a body by Content-Length: HTTP/1.1, a final status other than 204
    and 304, no hop-by-hop field but ``Connection: keep-alive``, no Transfer-Encoding. -1 for any
    other head."""
    status = head[9:12]
    if not head.startswith(b"HTTP/1.1 ") or status < b"200" or status == b"204" or status == b"304":
        return -1
    length = -1
    for name, value in _RESPONSE_FIELDS.findall(head.lower(), 12):
        if name == b"content-length" and length < 0:
            value = value.rstrip(b" \t")
            if not value.isdigit():
                return -1
            length = int(value)
        elif name != b"connection" or value.rstrip(b" \t") != b"keep-alive":
            return -1
    return length


class ResponseScan(NamedTuple):
    """What a response head says about its framing and its connection."""

    status: int
    length: int | None  # Content-Length (None when absent)
    chunked: bool  # Transfer-Encoding: chunked
    keep_alive: bool  # the connection may carry another request afterwards
    forwardable: bool  # no hop-by-hop field but ``Connection: keep-alive`` and chunked framing


def scan_response(head: bytes) -> ResponseScan | None:
    """``head`` (a response head through its blank line) as a ``ResponseScan``; None for what the
    proxy does not forward: another version than HTTP/1.x, a transfer coding other than chunked."""
    if not head.startswith(b"HTTP/1.") or head[8:9] != b" " or not head[9:12].isdigit():
        return None
    http11 = head[7:8] == b"1"
    length: int | None = None
    chunked = False
    keep_alive = forwardable = http11
    for name, value in _RESPONSE_FIELDS.findall(head.lower(), 12):
        value = value.rstrip(b" \t")
        if name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            if value != b"chunked":
                return None
            chunked = True
        elif name == b"connection":
            tokens = connection_tokens(value)
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
            if tokens != {b"keep-alive"}:
                forwardable = False
        else:
            forwardable = False
    return ResponseScan(int(head[9:12]), length, chunked, keep_alive, forwardable)


def header_fields(head: bytes) -> Headers:
    """Every field of a head (after its first line), in order: names lower-cased, values without
    surrounding whitespace."""
    start = head.find(b"\r\n") + 2
    end = len(head) - 4
    if end <= start:
        return []
    fields = []
    for line in head[start:end].split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip(b" \t")))
    return fields


def request_fields(head: bytes) -> Headers:
    """``header_fields`` without Host (which ``RequestHead`` carries as the authority)."""
    return [f for f in header_fields(head) if f[0] != b"host"]


# --- editing heads -------------------------------------------------------------------------------------


class HeadEdit:
    """A ``HeaderMutation`` as an operation on head bytes: cut the lines of the names it replaces or
    removes (rare: only when the head has them), then append its lines. Appended lines keep the
    mutation's order (set, set-if-exists, add, add-if-absent), as ``HeaderMutation.apply`` does."""

    __slots__ = ("_conditional", "_needles", "drop", "lines", "mutation")

    def __init__(self, mutation: HeaderMutation) -> None:
        self.mutation = mutation
        self.drop = mutation.remove | {k for k, _ in mutation.set}
        self._needles = tuple(b"\r\n" + name + b":" for name in sorted(self.drop))
        self.lines = b"".join(b"%s: %s\r\n" % kv for kv in (*mutation.set, *mutation.add))
        self._conditional = bool(mutation.add_if_absent or mutation.set_if_exists)

    def apply(self, head: bytes, low: bytes) -> bytes:
        """``head`` changed by the mutation; ``low`` is ``head.lower()``."""
        if not self._conditional:
            for needle in self._needles:
                if low.find(needle) >= 0:
                    return _append(cut_fields(head, low, self.drop), self.lines)
            return _append(head, self.lines) if self.lines else head
        m = self.mutation
        present = {k for k, _ in (*m.set_if_exists, *m.add_if_absent) if low.find(b"\r\n" + k + b":") >= 0}
        present -= m.remove
        drop = self.drop | {k for k, _ in m.set_if_exists if k in present}
        lines = [b"%s: %s\r\n" % kv for kv in m.set]
        lines += [b"%s: %s\r\n" % kv for kv in m.set_if_exists if kv[0] in present]
        lines += [b"%s: %s\r\n" % kv for kv in m.add]
        lines += [b"%s: %s\r\n" % kv for kv in m.add_if_absent if kv[0] not in present]
        return _append(cut_fields(head, low, drop), b"".join(lines))


def edit_head(head: bytes, edits: tuple[HeadEdit, ...], extra: bytes = b"") -> bytes:
    """``head`` with each edit applied in turn, then the lines ``extra`` (each ending in CRLF)."""
    if len(edits) == 1 and not edits[0]._conditional:
        # The common case: the mutation finds nothing to replace or remove, and only appends.
        low = head.lower()
        for needle in edits[0]._needles:
            if low.find(needle) >= 0:
                break
        else:
            lines = edits[0].lines
            return b"".join((head[:-2], lines, extra, CRLF)) if lines or extra else head
    if edits:
        low = head.lower()
        last = len(edits) - 1
        for i, edit in enumerate(edits):
            changed = edit.apply(head, low)
            if changed is not head and i < last:
                low = changed.lower()
            head = changed
    return b"".join((head[:-2], extra, CRLF)) if extra else head


def _append(head: bytes, lines: bytes) -> bytes:
    return head[:-2] + lines + CRLF


def cut_fields(head: bytes, low: bytes, names: frozenset[bytes]) -> bytes:
    """``head`` without the lines of fields named in ``names`` (lower-case); ``low`` is
    ``head.lower()``."""
    start = head.find(b"\r\n") + 2
    end = len(head) - 2
    kept = [head[:start]]
    pos = start
    while pos < end:
        eol = head.find(b"\r\n", pos)
        if low[pos : low.find(b":", pos, eol)] not in names:
            kept.append(head[pos : eol + 2])
        pos = eol + 2
    kept.append(CRLF)
    return b"".join(kept)


# --- building heads --------------------------------------------------------------------------------------


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
