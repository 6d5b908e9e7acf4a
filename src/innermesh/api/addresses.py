"""IP address and CIDR rules, with Kubernetes' syntax and messages.

Python's ipaddress is stricter than Go's net.ParseIP in some places (it refuses IPv4 octets with
leading zeros) and looser in others (it accepts IPv6 zones, "fe80::1%eth0", and netmask-style
prefixes, "10.0.0.0/255.0.0.0"). These functions pin the accepted syntax to Kubernetes' strict rules
(apimachinery's parseIP/parseCIDR with strict validation) and reuse its messages. Every schema module
checks addresses here.
"""

from __future__ import annotations

import ipaddress
import re

_DOTTED_QUAD = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
_PREFIX_LEN = re.compile(r"^[0-9]{1,3}$")

IP_INVALID = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
CIDR_INVALID = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def _has_leading_zero_octet(value: str) -> bool:
    return bool(_DOTTED_QUAD.match(value)) and any(len(o) > 1 and o[0] == "0" for o in value.split("."))


def _octets_in_range(value: str) -> bool:
    return all(int(o) <= 255 for o in value.split("."))


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None when ``value`` is not one in a syntax Go's parser also accepts."""
    if "%" in value or value.strip() != value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_problems(value: str, *, canonical: bool = True) -> list[str]:
    """Kubernetes' IsValidIP (``canonical``) or IsValidIPForLegacyField with strict parsing."""
    if _has_leading_zero_octet(value) and _octets_in_range(value):
        return ["must not have leading 0s"]
    ip = parse_ip(value)
    if ip is None:
        return [IP_INVALID]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ["must not be an IPv4-mapped IPv6 address"]
    if canonical and str(ip) != value:
        return [f'must be in canonical form ("{ip}")']
    return []


def parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network (host bits cleared), or None when ``value`` is not ``address/length``."""
    addr, sep, length = value.partition("/")
    if not sep or not _PREFIX_LEN.match(length) or _has_leading_zero_octet(addr):
        return None
    ip = parse_ip(addr)
    if ip is None:
        return None
    try:
        return ipaddress.ip_network(f"{ip}/{int(length)}", strict=False)
    except ValueError:
        return None


def cidr_problems(value: str, *, canonical: bool = True) -> list[str]:
    """Kubernetes' IsValidCIDR (``canonical``) or IsValidCIDRForLegacyField with strict parsing."""
    addr, sep, length = value.partition("/")
    if sep and _PREFIX_LEN.match(length) and _has_leading_zero_octet(addr) and _octets_in_range(addr):
        return ["must not have leading 0s in IP or prefix length"]
    net = parse_cidr(value)
    if net is None:
        return [CIDR_INVALID]
    if len(length) > 1 and length[0] == "0":
        return ["must not have leading 0s in IP or prefix length"]
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ["must not have an IPv4-mapped IPv6 address"]
    if ip != net.network_address:
        return ["must not have bits set beyond the prefix length"]
    if canonical and str(net) != value:
        return [f'must be in canonical form ("{net}")']
    return []


def _is_link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Go's net.IP.IsLinkLocalMulticast: 224.0.0.0/24, or ff02::/16 with any flags nibble (ffX2::).
    if isinstance(ip, ipaddress.IPv4Address):
        return ip in ipaddress.IPv4Network("224.0.0.0/24")
    packed = ip.packed
    return packed[0] == 0xFF and packed[1] & 0x0F == 0x02


def endpoint_ip_problems(value: str, *, allow_loopback: bool = True) -> list[str]:
    """Kubernetes' ValidateEndpointIP, for an address that already parsed: the ranges a backend address
    can not be in. Loopback is allowed by default, unlike Kubernetes, because innermesh runs workloads
    on loopback when it has no root (see DESIGN.md, "Workloads on one machine")."""
    ip = parse_ip(value)
    if ip is None:
        return ["must be a valid IP address"]
    out = []
    if ip.is_unspecified:
        out.append(f"may not be unspecified ({value})")
    if ip.is_loopback and not allow_loopback:
        out.append("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    if ip.is_link_local:
        out.append("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    if _is_link_local_multicast(ip):
        out.append("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    return out
