"""Header hygiene for a reverse proxy (RFC 9110 section 7.6): what crosses the gateway and what does not."""
from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Set by the gateway itself; a client's copy is never forwarded as truth.
GATEWAY_ASSERTED = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-request-id",
        "x-gateway-service",
        "x-user-id",
        "x-user-role",
    }
)
_NO_BODY_STATUSES = frozenset({204, 304})
_NOT_FORWARDED = HOP_BY_HOP | GATEWAY_ASSERTED
_NO_TOKENS: frozenset[str] = frozenset()
_CACHE_SIZE = 64
# Nearly every message carries no Connection header or one of a few values ("keep-alive", "close"): their
# parse, and the response's skip set, are worked out once. Bounded: the values are the peer's to choose.
_tokens_of: dict[str, frozenset[str]] = {}
_response_skip: dict[frozenset[str], frozenset[str]] = {_NO_TOKENS: HOP_BY_HOP}


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in Connection: they are hop-by-hop for this message only."""
    values = headers.getall("Connection", ())
    if not values:
        return _NO_TOKENS
    if len(values) > 1:
        return _parse_tokens(values)
    value = values[0]
    tokens = _tokens_of.get(value)
    if tokens is None:
        tokens = _parse_tokens(values)
        if len(_tokens_of) < _CACHE_SIZE:
            _tokens_of[value] = tokens
    return tokens


def _parse_tokens(values: list[str]) -> frozenset[str]:
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str,
    scheme: str,
    service: str,
    from_trusted_proxy: bool = False,
    body_length: int | None,
) -> CIMultiDict[str]:
    """Headers sent to the instance: end-to-end client headers plus the gateway's forwarding headers.

    Client-sent forwarding headers are replaced, except X-Forwarded-Proto/Host from a trusted proxy."""
    named = connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for name, value in incoming.items():
        lowered = name.lower()  # once per header: this loop runs for every header of every request
        if lowered in _NOT_FORWARDED or lowered.startswith("proxy-") or (named and lowered in named):
            continue
        add(name, value)
    # A Connection header that names Content-Length must not strip the framing of the body we send.
    if body_length is not None:
        out["Content-Length"] = str(body_length)
    previous = ", ".join(incoming.getall("X-Forwarded-For", ())) if "x-forwarded-for" not in named else ""
    # Each proxy appends the address its connection came from: the peer, even when that is a trusted proxy.
    out["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    # Behind a trusted proxy (a TLS-terminating load balancer) the scheme and host the client used are
    # the proxy's to tell; from anyone else they are what this connection shows.
    proto = incoming.get("X-Forwarded-Proto", "").strip().lower() if from_trusted_proxy else ""
    out["X-Forwarded-Proto"] = proto if proto in ("http", "https") else scheme
    host = (incoming.get("X-Forwarded-Host") if from_trusted_proxy else None) or incoming.get("Host")
    if host:
        out["X-Forwarded-Host"] = host
    out["X-Gateway-Service"] = service
    return out


def client_response_headers(upstream: CIMultiDictProxy[str], status: int) -> CIMultiDict[str]:
    """Headers of the upstream response passed to the client, minus hop-by-hop ones."""
    named = connection_tokens(upstream)
    skip = _response_skip.get(named)
    if skip is None:
        skip = HOP_BY_HOP | named
        if len(_response_skip) < _CACHE_SIZE:
            _response_skip[named] = skip
    if status in _NO_BODY_STATUSES:
        skip = skip | {"content-length"}
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for name, value in upstream.items():
        lowered = name.lower()  # once per header: this loop runs for every header of every response
        if lowered in skip or lowered.startswith("proxy-"):
            continue
        add(name, value)
    return out


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[IPv4Network | IPv6Network, ...]
) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, then the nearest untrusted hop
    of X-Forwarded-For. A hop that is not an address makes the client "unknown": never a trusted one."""
    address = peer or "unknown"
    if not trusted or not in_networks(address, trusted):
        return address
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        parsed = hop_address(hop)
        if parsed is None:
            return "unknown"
        if not in_networks(parsed, trusted):
            return parsed
    # Only trusted hops, or none: the request comes from the proxies themselves (health checks).
    return address


def hop_address(hop: str) -> str | None:
    """The address in one X-Forwarded-For hop: 1.2.3.4, 1.2.3.4:5678, 2001:db8::1 or [2001:db8::1]:5678."""
    candidates = [hop]
    if hop.startswith("[") and "]" in hop:
        candidates.append(hop[1 : hop.index("]")])
    elif hop.count(":") == 1:
        candidates.append(hop.split(":", 1)[0])
    for candidate in candidates:
        try:
            return str(ip_address(candidate))
        except ValueError:
            continue
    return None


def in_networks(text: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    """Whether an address given as text lies in any of the networks (False when it is not an address)."""
    try:
        address = ip_address(text)
    except ValueError:
        return False
    return any(address in network for network in networks)
