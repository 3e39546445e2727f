"""Unit tests of gateway.headers: what crosses the gateway in each direction, and who the client is."""
from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import client_address, client_response_headers, in_networks, upstream_request_headers

Pairs = list[tuple[str, str]]


def incoming(pairs: Pairs) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def upstream(pairs: Pairs, *, body_length: int | None = None, client_ip: str = "10.0.0.9") -> CIMultiDict[str]:
    return upstream_request_headers(
        incoming(pairs), peer=client_ip, scheme="https", service="user-service", body_length=body_length
    )


def networks(*cidrs: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(cidr) for cidr in cidrs)


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "Proxy-Connection",
        "Proxy-Anything",
        "proxy-lowercase",
    ],
    ids=lambda name: name.lower(),
)
def test_upstream_drops_hop_by_hop_headers(name: str) -> None:
    out = upstream([(name, "x"), ("Accept", "*/*")])
    assert name not in out
    assert out.getall("Accept") == ["*/*"]


@pytest.mark.parametrize(
    ("connection", "dropped"),
    [
        (["X-Secret"], ["X-Secret"]),
        (["x-secret"], ["X-Secret"]),
        (["close, X-Secret ,X-Other"], ["X-Secret", "X-Other"]),
        (["keep-alive, X-Secret", "X-Other"], ["X-Secret", "X-Other"]),
        ([" , ,X-Secret,"], ["X-Secret"]),
    ],
    ids=["one", "case-insensitive", "comma-list", "several-connection-headers", "empty-tokens"],
)
def test_upstream_drops_headers_named_in_connection(connection: list[str], dropped: list[str]) -> None:
    pairs = [("Connection", value) for value in connection]
    pairs += [("X-Secret", "s"), ("X-Other", "o"), ("X-Kept", "k")]
    out = upstream(pairs)
    for name in dropped:
        assert name not in out
    assert out.getall("X-Kept") == ["k"]
    assert "Connection" not in out


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "X-Request-ID",
        "X-Gateway-Service",
        "X-User-ID",
        "X-User-Role",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Real-IP",
        "Expect",
        "Content-Length",
    ],
    ids=lambda name: name.lower(),
)
def test_upstream_never_forwards_client_copies_of_gateway_headers(name: str) -> None:
    out = upstream([(name, "spoofed")])
    assert "spoofed" not in out.getall(name, [])


def test_upstream_keeps_repeated_end_to_end_headers_in_order() -> None:
    out = upstream(
        [("Cookie", "a=1"), ("X-Custom", "one"), ("Accept", "*/*"), ("Cookie", "b=2"), ("x-custom", "two")]
    )
    assert out.getall("Cookie") == ["a=1", "b=2"]
    assert out.getall("X-Custom") == ["one", "two"]
    assert out.getall("Accept") == ["*/*"]


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], "10.0.0.9"),
        ([("X-Forwarded-For", "1.2.3.4")], "1.2.3.4, 10.0.0.9"),
        ([("X-Forwarded-For", "1.2.3.4, 5.6.7.8")], "1.2.3.4, 5.6.7.8, 10.0.0.9"),
        ([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")], "1.2.3.4, 5.6.7.8, 10.0.0.9"),
        ([("Connection", "X-Forwarded-For"), ("X-Forwarded-For", "1.2.3.4")], "10.0.0.9"),
        ([("Connection", "x-forwarded-for, close"), ("X-Forwarded-For", "1.2.3.4")], "10.0.0.9"),
    ],
    ids=["none", "one-hop", "two-hops", "several-headers-joined", "named-in-connection", "named-lowercase"],
)
def test_upstream_appends_the_client_to_x_forwarded_for(pairs: Pairs, expected: str) -> None:
    out = upstream(pairs)
    assert out.getall("X-Forwarded-For") == [expected]


@pytest.mark.parametrize(
    ("pairs", "body_length", "expected"),
    [
        ([], 12, ["12"]),
        ([("Content-Length", "99")], 12, ["12"]),
        ([("Connection", "Content-Length"), ("Content-Length", "12")], 12, ["12"]),
        ([("Content-Length", "12")], None, []),
        ([], 0, ["0"]),
    ],
    ids=["set", "client-value-replaced", "named-in-connection", "no-body-length", "empty-body"],
)
def test_upstream_content_length_comes_from_the_body(
    pairs: Pairs, body_length: int | None, expected: list[str]
) -> None:
    assert upstream(pairs, body_length=body_length).getall("Content-Length", []) == expected


def test_upstream_sets_the_gateway_headers() -> None:
    out = upstream([("Host", "api.example.com:8080"), ("X-Gateway-Service", "evil")])
    assert out.getall("X-Forwarded-Host") == ["api.example.com:8080"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Gateway-Service") == ["user-service"]
    assert "Host" not in out


def test_upstream_without_host_sets_no_forwarded_host() -> None:
    assert "X-Forwarded-Host" not in upstream([])


@pytest.mark.parametrize(
    ("pairs", "status", "expected"),
    [
        ([("Content-Type", "text/plain"), ("Connection", "close")], 200, [("Content-Type", "text/plain")]),
        ([("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("ETag", '"1"')], 200, [("ETag", '"1"')]),
        ([("Proxy-Authenticate", "Basic"), ("Proxy-Foo", "x"), ("Vary", "Accept")], 200, [("Vary", "Accept")]),
        ([("Upgrade", "h2c"), ("Trailer", "X"), ("TE", "trailers")], 101, []),
        ([("Connection", "X-Internal, x-debug"), ("X-Internal", "1"), ("X-Debug", "2"), ("X-Public", "3")], 200,
         [("X-Public", "3")]),
        ([("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly")], 200,
         [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly")]),
        ([("Content-Length", "5"), ("ETag", '"1"')], 200, [("Content-Length", "5"), ("ETag", '"1"')]),
        ([("Content-Length", "5"), ("ETag", '"1"')], 204, [("ETag", '"1"')]),
        ([("Content-Length", "5"), ("ETag", '"1"')], 304, [("ETag", '"1"')]),
        ([("X-Request-ID", "abc"), ("Server", "svc")], 200, [("X-Request-ID", "abc"), ("Server", "svc")]),
    ],
    ids=["connection", "keep-alive-te", "proxy-star", "upgrade-trailer-te", "named-in-connection",
         "multiple-set-cookie", "content-length-kept", "no-content-length-204", "no-content-length-304",
         "end-to-end-kept"],
)
def test_client_response_headers(pairs: Pairs, status: int, expected: Pairs) -> None:
    out = client_response_headers(incoming(pairs), status)
    assert list(out.items()) == expected


TRUSTED = networks("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        ("203.0.113.7", ["1.2.3.4"], TRUSTED, "203.0.113.7"),
        ("203.0.113.7", ["1.2.3.4"], (), "203.0.113.7"),
        ("10.0.0.9", ["1.2.3.4"], (), "10.0.0.9"),
        ("10.0.0.9", [], TRUSTED, "10.0.0.9"),
        ("10.0.0.9", ["1.2.3.4"], TRUSTED, "1.2.3.4"),
        ("10.0.0.9", ["6.6.6.6, 1.2.3.4, 10.0.0.5"], TRUSTED, "1.2.3.4"),
        ("10.0.0.9", ["6.6.6.6", "1.2.3.4", "10.0.0.5"], TRUSTED, "1.2.3.4"),
        ("10.0.0.9", ["10.1.1.1, 10.0.0.5"], TRUSTED, "10.0.0.9"),
        ("10.0.0.9", ["1.2.3.4, not-an-ip"], TRUSTED, "unknown"),
        ("10.0.0.9", ["unknown"], TRUSTED, "unknown"),
        ("10.0.0.9", ["1.2.3.4, , 10.0.0.5"], TRUSTED, "1.2.3.4"),
        ("10.0.0.9", ["203.0.113.9:4711"], TRUSTED, "203.0.113.9"),
        ("10.0.0.9", ["[2001:db8::1]:4711"], TRUSTED, "2001:db8::1"),
        ("10.0.0.9", ["10.0.0.7:80"], TRUSTED, "10.0.0.9"),
        ("fd00::1", ["2001:db8::1"], TRUSTED, "2001:db8::1"),
        (None, ["1.2.3.4"], TRUSTED, "unknown"),
    ],
    ids=["untrusted-peer", "nothing-trusted", "nothing-trusted-private-peer", "trusted-peer-no-xff",
         "trusted-peer", "nearest-untrusted-from-right", "several-xff-headers", "all-hops-trusted",
         "garbage-hop-fails-closed", "unknown-hop-fails-closed", "empty-hop-skipped", "ipv4-with-port",
         "bracketed-ipv6-with-port", "trusted-hop-with-port", "ipv6", "no-peer"],
)
def test_client_address(
    peer: str | None, forwarded_for: list[str], trusted: tuple[IPv4Network | IPv6Network, ...], expected: str
) -> None:
    assert client_address(peer, forwarded_for, trusted) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", True),
        ("192.168.1.1", True),
        ("11.0.0.1", False),
        ("fd00::1", True),
        ("2001:db8::1", False),
        ("not-an-ip", False),
        ("", False),
        ("10.0.0.1:8080", False),
    ],
    ids=["in-first", "in-second", "outside", "ipv6-in", "ipv6-outside", "garbage", "empty", "with-port"],
)
def test_in_networks(text: str, expected: bool) -> None:
    assert in_networks(text, networks("10.0.0.0/8", "192.168.0.0/16", "fd00::/8")) is expected


def test_in_networks_with_no_networks_is_false() -> None:
    assert in_networks("10.0.0.1", ()) is False


@pytest.mark.parametrize(
    ("trusted", "sent", "proto", "host"),
    [
        (False, [("Host", "gw.example"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil")],
         "http", "gw.example"),
        (True, [("Host", "gw.internal"), ("X-Forwarded-Proto", "HTTPS"), ("X-Forwarded-Host", "shop.example")],
         "https", "shop.example"),
        (True, [("Host", "gw.internal"), ("X-Forwarded-Proto", "gopher")], "http", "gw.internal"),
        (True, [("Host", "gw.internal")], "http", "gw.internal"),
    ],
    ids=["untrusted-client-cannot-claim", "trusted-proxy-tells", "trusted-proxy-nonsense-proto", "trusted-silent"],
)
def test_forwarded_proto_and_host_come_from_trusted_proxies_only(
    trusted: bool, sent: Pairs, proto: str, host: str
) -> None:
    out = upstream_request_headers(
        incoming(sent), peer="1.2.3.4", scheme="http", service="s", body_length=None,
        from_trusted_proxy=trusted,
    )
    assert (out["X-Forwarded-Proto"], out["X-Forwarded-Host"]) == (proto, host)
