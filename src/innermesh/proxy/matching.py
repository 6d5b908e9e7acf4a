"""Route matching with Envoy's semantics, and the regular expressions it needs.

A route's match is one object per path kind (``ExactPath``, ``PrefixPath``, ``SeparatedPrefixPath``,
``RegexPath``, ``ConnectMatch``, ``AnyPath``), each with optional ``Conditions`` (headers, query
parameters, gRPC). Everything is decided when the plan is built: names are lower-cased, regexes
compiled, so ``matches`` is a few comparisons per request.

What Envoy does and we copy (source/common/router/config_impl.cc, http/header_utility.cc):

- ``grpc``: the content-type is ``application/grpc`` or starts with ``application/grpc+`` (Envoy's
  ``Grpc::Common::hasGrpcContentType``; gRPC-Web is not gRPC).
- Paths are matched without the query string, as received (percent-encoded, not normalised).
  ``safe_regex`` is a full match. ``case_sensitive: false`` applies to path, prefix and separated
  prefix, never to regexes.
- A header that appears several times is matched as its values joined with ``,``. A missing header
  fails every match, inverted or not, except ``present_match`` (which it fails unless
  ``present_match`` is false, or the match is inverted).
- Query parameters are parsed as Envoy's ``parseQueryString`` does: split on ``&``, name and value
  split at the first ``=``, *not* percent-decoded; only the first occurrence of a name counts.
  ``present_match: false`` matches when the parameter is absent (Envoy's newer behaviour).

Regexes: Envoy's are RE2, ours run on Python's ``re``. ``compile_re2`` accepts the RE2 subset whose
meaning is the same in both, translates the two spellings that differ (``\\z``; ``$`` outside
multi-line mode, which in Python would also match before a final newline) and refuses what RE2 does
not have (backreferences, lookaround, atomic groups, possessive quantifiers, conditionals, comments,
the ``x`` flag) or what Python would read differently (``{,n}``, POSIX classes, non-ASCII). Python's
engine backtracks where RE2 is linear, so a pathological pattern can be slow on a long header: the
header size limits of the protocol layer bound that.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from innermesh.proxy.plan import RequestHead


class UnsupportedRegex(ValueError):
    """A pattern outside the RE2 subset we run (the message says which construct)."""


# --- regexes ------------------------------------------------------------------------------------------

_RE2_FLAGS = frozenset("imsU-")


def compile_re2(pattern: str) -> re.Pattern[bytes]:
    """Compile an RE2 pattern for Python's ``re`` over bytes, or raise ``UnsupportedRegex``."""
    if not pattern.isascii():
        raise UnsupportedRegex("non-ASCII patterns are not supported")
    translated = _translate(pattern)
    try:
        with warnings.catch_warnings():
            # Python warns (FutureWarning) where a future version will read the pattern differently:
            # such a pattern is ambiguous, so it is refused rather than run.
            warnings.simplefilter("error")
            return re.compile(translated.encode("ascii"))
    except (re.error, Warning) as e:
        raise UnsupportedRegex(f"invalid regex: {e}") from None


def _translate(p: str) -> str:
    """Walk the pattern once: refuse non-RE2 constructs, rewrite the spellings that differ."""
    out: list[str] = []
    multiline = False
    quantified = False  # the previous token was a quantifier (for possessive detection)
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            if i + 1 >= n:
                raise UnsupportedRegex("trailing backslash")
            e = p[i + 1]
            if e in "123456789":
                raise UnsupportedRegex(f"backreference \\{e} (RE2 has none)")
            if e == "Z":
                raise UnsupportedRegex("\\Z is not RE2 syntax (use \\z)")
            out.append("\\Z" if e == "z" else p[i : i + 2])
            i += 2
            quantified = False
            continue
        if c == "[":
            end = _class_end(p, i)
            body = p[i:end]
            if "[:" in body and ":]" in body:
                raise UnsupportedRegex("POSIX character classes ([[:alpha:]]) are not supported")
            out.append(body)
            i = end
            quantified = False
            continue
        if c == "(" and p.startswith("(?", i):
            i, is_multiline = _group_opening(p, i, out)
            multiline = multiline or is_multiline
            quantified = False
            continue
        if c in "*+?":
            if quantified and c == "+":
                raise UnsupportedRegex("possessive quantifiers are not RE2 syntax")
            if quantified and c == "?":
                out.append(c)  # lazy form of the previous quantifier
                i += 1
                quantified = False
                continue
            out.append(c)
            i += 1
            quantified = True
            continue
        if c == "{":
            close = p.find("}", i)
            if close != -1 and re.fullmatch(r"\{\d*(,\d*)?\}", p[i : close + 1]):
                if p[i + 1] == ",":
                    raise UnsupportedRegex("{,n} is a literal in RE2 but a repetition in Python")
                out.append(p[i : close + 1])
                i = close + 1
                quantified = True
                continue
        if c == "$" and not multiline:
            # RE2's $ (without m) matches only at the very end; Python's also before a final newline.
            out.append("\\Z")
            i += 1
            quantified = False
            continue
        out.append(c)
        i += 1
        quantified = False
    return "".join(out)


def _class_end(p: str, start: int) -> int:
    """Index just after the ``]`` closing the character class opened at ``start``."""
    i = start + 1
    if i < len(p) and p[i] == "^":
        i += 1
    if i < len(p) and p[i] == "]":
        i += 1  # a leading ] is a literal
    while i < len(p):
        if p[i] == "\\":
            i += 2
            continue
        if p[i] == "]":
            return i + 1
        i += 1
    raise UnsupportedRegex("unterminated character class")


def _group_opening(p: str, i: int, out: list[str]) -> tuple[int, bool]:
    """Copy a ``(?...`` opening to ``out``; returns the next index and whether it sets multi-line."""
    rest = p[i + 2 : i + 4]
    if rest.startswith(("=", "!")):
        raise UnsupportedRegex("lookahead is not RE2 syntax")
    if rest.startswith(("<=", "<!")):
        raise UnsupportedRegex("lookbehind is not RE2 syntax")
    if rest.startswith(">"):
        raise UnsupportedRegex("atomic groups are not RE2 syntax")
    if rest.startswith("("):
        raise UnsupportedRegex("conditional groups are not RE2 syntax")
    if rest.startswith("#"):
        raise UnsupportedRegex("comments are not RE2 syntax")
    if rest.startswith("P="):
        raise UnsupportedRegex("named backreferences are not RE2 syntax")
    if rest.startswith(("P<", ":")):
        out.append("(?")
        return i + 2, False
    j = i + 2
    while j < len(p) and p[j] not in ":)":
        j += 1
    flags = p[i + 2 : j]
    if not flags or not set(flags) <= _RE2_FLAGS:
        raise UnsupportedRegex(f"unsupported group syntax (?{flags}")
    if "U" in flags:
        raise UnsupportedRegex("the U (ungreedy) flag is not supported")
    out.append(p[i:j])
    multiline = "m" in flags.split("-", 1)[0]
    return j, multiline


Template = tuple[bytes | int, ...]  # literal bytes and capture-group numbers


def compile_substitution(template: str, groups: int) -> Template:
    """An RE2 rewrite string (``\\0``-``\\9`` for groups, ``\\\\`` for a backslash) as parts."""
    parts: list[bytes | int] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        e = template[i + 1 : i + 2]
        if e == "\\":
            literal.append("\\")
        elif e.isdigit():
            if int(e) > groups:
                raise UnsupportedRegex(f"substitution uses group \\{e} but the pattern has {groups}")
            if literal:
                parts.append("".join(literal).encode())
                literal = []
            parts.append(int(e))
        else:
            raise UnsupportedRegex(f"invalid escape \\{e} in substitution (only \\0-\\9 and \\\\)")
        i += 2
    if literal:
        parts.append("".join(literal).encode())
    return tuple(parts)


def global_replace(pattern: re.Pattern[bytes], template: Template, subject: bytes) -> bytes:
    """RE2's GlobalReplace: every non-overlapping match, but never an empty match right where the
    previous match ended (Python's ``re.sub`` would replace ``.*`` on "abc" twice)."""
    out: list[bytes] = []
    pos = 0
    last_end = -1
    for m in pattern.finditer(subject):
        start, end = m.span()
        if start == end == last_end:
            continue
        out.append(subject[pos:start])
        for part in template:
            out.append(part if isinstance(part, bytes) else (m.group(part) or b""))
        pos = last_end = end
    if last_end == -1:
        return subject
    out.append(subject[pos:])
    return b"".join(out)


# --- request values -------------------------------------------------------------------------------------


def header_value(head: RequestHead, name: bytes) -> bytes | None:
    """A header as Envoy's matchers see it: pseudo-headers from the head, repeats joined by ``,``."""
    if name[:1] == b":" or name == b"host":
        if name == b":method":
            return head.method
        if name in (b":authority", b"host"):
            return head.authority
        if name == b":path":
            return head.path + b"?" + head.query if head.query else head.path
        if name == b":scheme":
            return head.scheme
        return None
    found: bytes | None = None
    for k, v in head.headers:
        if k == name:
            found = v if found is None else found + b"," + v
    return found


def first_query_value(query: bytes, name: bytes) -> bytes | None:
    """The raw (not decoded) value of the first ``name`` parameter, ``b""`` when it has no ``=``."""
    if not query:
        return None
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return value
    return None


def is_grpc(head: RequestHead) -> bool:
    """Envoy's test for a gRPC request: content-type ``application/grpc`` exactly or followed by ``+``
    (``application/grpc+proto``); ``application/grpc-web`` is not gRPC."""
    ct = header_value(head, b"content-type")
    return ct is not None and ct.startswith(b"application/grpc") and ct[16:17] in (b"", b"+")


# --- string matching ----------------------------------------------------------------------------------

StringKind = Literal["exact", "prefix", "suffix", "contains", "regex"]


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Envoy's StringMatcher. With ``ignore_case``, ``value`` is stored lower-cased."""

    kind: StringKind
    value: bytes = b""
    ignore_case: bool = False
    regex: re.Pattern[bytes] | None = None

    def test(self, s: bytes) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(s) is not None
        if self.ignore_case:
            s = s.lower()
        kind = self.kind
        if kind == "exact":
            return s == self.value
        if kind == "prefix":
            return s.startswith(self.value)
        if kind == "suffix":
            return s.endswith(self.value)
        return self.value in s


@dataclass(frozen=True, slots=True)
class IntRange:
    """Envoy's range_match: a decimal integer in [start, end)."""

    start: int
    end: int

    def test(self, s: bytes) -> bool:
        try:
            v = int(s)
        except ValueError:
            return False
        return self.start <= v < self.end


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition. ``test`` None means a presence test (``present`` says which way)."""

    name: bytes
    test: StringMatch | IntRange | None = None
    present: bool = True
    invert: bool = False
    missing_as_empty: bool = False

    def holds(self, head: RequestHead) -> bool:
        value = header_value(head, self.name)
        if value is None:
            if not self.missing_as_empty:
                if self.test is not None:
                    return False
                return self.present == self.invert
            value = b""
        matched = self.present if self.test is None else self.test.test(value)
        return matched != self.invert


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """One query parameter condition; ``test`` None means a presence test."""

    name: bytes
    test: StringMatch | None = None
    present: bool = True

    def holds(self, head: RequestHead) -> bool:
        value = first_query_value(head.query, self.name)
        if self.test is None:
            return (value is not None) == self.present
        return value is not None and self.test.test(value)


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a route asks beyond the path: every header and query condition, and gRPC if set."""

    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    grpc: bool = False

    def holds(self, head: RequestHead) -> bool:
        if self.grpc and not is_grpc(head):
            return False
        for h in self.headers:
            if not h.holds(head):
                return False
        return all(q.holds(head) for q in self.query)


# --- path kinds (each implements plan.RouteMatch) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnyPath:
    """No path condition (Envoy's ``prefix: ""``): only the conditions."""

    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        return self.when is None or self.when.holds(head)


@dataclass(frozen=True, slots=True)
class ExactPath:
    """``path``: the whole path. Case-insensitive paths store ``path`` lower-cased."""

    path: bytes
    case_sensitive: bool = True
    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        p = head.path if self.case_sensitive else head.path.lower()
        return p == self.path and (self.when is None or self.when.holds(head))


@dataclass(frozen=True, slots=True)
class PrefixPath:
    """``prefix``: a plain string prefix (``/foo`` matches ``/foobar``)."""

    prefix: bytes
    case_sensitive: bool = True
    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        p = head.path if self.case_sensitive else head.path.lower()
        return p.startswith(self.prefix) and (self.when is None or self.when.holds(head))


@dataclass(frozen=True, slots=True)
class SeparatedPrefixPath:
    """``path_separated_prefix``: the path equals the prefix or continues with ``/`` after it
    (Gateway API's PathPrefix: ``/foo`` matches ``/foo`` and ``/foo/bar``, not ``/foobar``)."""

    prefix: bytes
    case_sensitive: bool = True
    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        p = head.path if self.case_sensitive else head.path.lower()
        n = len(self.prefix)
        if not p.startswith(self.prefix) or (len(p) > n and p[n] != 0x2F):  # "/"
            return False
        return self.when is None or self.when.holds(head)


@dataclass(frozen=True, slots=True)
class RegexPath:
    """``safe_regex``: a full match on the path without the query."""

    regex: re.Pattern[bytes]
    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        return self.regex.fullmatch(head.path) is not None and (self.when is None or self.when.holds(head))


@dataclass(frozen=True, slots=True)
class ConnectMatch:
    """``connect_matcher``: CONNECT requests only (they carry no path)."""

    when: Conditions | None = None

    def matches(self, head: RequestHead) -> bool:
        return head.method == b"CONNECT" and (self.when is None or self.when.holds(head))
