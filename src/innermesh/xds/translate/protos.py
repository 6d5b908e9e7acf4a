"""Small builders for the protobuf pieces every translator module needs (durations, Any, ADS, ...)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from innermesh.api.gateway import parse_duration

MILLION = 1_000_000

# Regex metacharacters (RE2's and Python's alike); everything else stands for itself.
_RE_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def pack(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(dt.timedelta(seconds=seconds))
    return out


def gateway_duration(value: str) -> duration_pb2.Duration:
    """A Gateway API Duration (``1h30m``, ``500ms``), already validated by its pattern."""
    out = duration_pb2.Duration()
    out.FromTimedelta(parse_duration(value))
    return out


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def ads() -> config_source_pb2.ConfigSource:
    """A config source that says "over the ADS stream you already have": what Envoy and gRPC need."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def per_million(numerator: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=numerator, denominator=percent_pb2.FractionalPercent.MILLION
    )


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def exact(value: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(exact=value)


def regex(value: str) -> regex_pb2.RegexMatcher:
    # No engine named: Envoy's default (and gRPC's only) engine is RE2.
    return regex_pb2.RegexMatcher(regex=value)


def regex_string(value: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex(value))


def re_escape(literal: str) -> str:
    """``literal`` as a regular expression that matches exactly it, in RE2 and Python alike.

    Python's ``re.escape`` also escapes characters RE2 would accept as they are; escaping only the
    metacharacters keeps patterns readable in config dumps.
    """
    return "".join("\\" + c if c in _RE_SPECIAL else c for c in literal)
