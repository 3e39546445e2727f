"""Unit tests of gateway.envelope (the spec's response bodies) and gateway.tokens (development JWTs)."""
from __future__ import annotations

import re
import time
import warnings
from datetime import datetime
from typing import Any

import jwt
import orjson
import pytest

from gateway.config.settings import Settings
from gateway.envelope import error_body, success_body, utc_timestamp
from gateway.tokens import TokenRefused, mint_token

ISO_UTC_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LONG_SECRET = "unit-test-secret-0123456789-abcdefghij"


def assert_fresh_timestamp(text: str) -> None:
    assert ISO_UTC_MILLIS.match(text), text
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs(moment.timestamp() - time.time()) < 5


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1720189800.123, "2024-07-05T14:30:00.123Z"),
        (1720189800.5, "2024-07-05T14:30:00.500Z"),
    ],
    ids=["epoch", "millis", "half-second"],
)
def test_utc_timestamp(epoch: float, expected: str) -> None:
    assert utc_timestamp(epoch) == expected


def test_utc_timestamp_now() -> None:
    assert_fresh_timestamp(utc_timestamp())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            (404, "Not Found", "req_1"),
            {"success": False, "error": "Not Found", "statusCode": 404, "requestId": "req_1"},
        ),
        ((502, "Bad Gateway", None), {"success": False, "error": "Bad Gateway", "statusCode": 502, "requestId": None}),
        (
            (400, "Invalid", "r", [{"field": "email"}]),
            {
                "success": False, "error": "Invalid", "statusCode": 400, "requestId": "r",
                "details": [{"field": "email"}],
            },
        ),
        ((400, "Invalid", "r", {}), {"success": False, "error": "Invalid", "statusCode": 400, "requestId": "r",
                                     "details": {}}),
    ],
    ids=["plain", "no-request-id", "with-details", "empty-details-kept"],
)
def test_error_body(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    body = orjson.loads(error_body(*args))
    assert_fresh_timestamp(body.pop("timestamp"))
    assert body == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (({"id": 1}, "req_1"), {"success": True, "data": {"id": 1}, "requestId": "req_1"}),
        (([], None), {"success": True, "data": [], "requestId": None}),
        ((None, "r", "Created"), {"success": True, "data": None, "message": "Created", "requestId": "r"}),
    ],
    ids=["object", "list-no-request-id", "with-message"],
)
def test_success_body(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    body = orjson.loads(success_body(*args))
    assert_fresh_timestamp(body.pop("timestamp"))
    assert body == expected


def decode(token: str, secret: str = LONG_SECRET) -> dict[str, Any]:
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    return jwt.decode(token, secret, algorithms=["HS256"])


@pytest.mark.parametrize(
    ("kwargs", "extra"),
    [
        ({"sub": "u-1", "role": "customer"}, {}),
        ({"sub": "u-2", "role": "admin", "ttl": 60}, {}),
        ({"sub": "u-3", "role": "vendor", "email": "v@example.com"}, {"email": "v@example.com"}),
        ({"sub": "u-4", "role": "customer", "email": ""}, {}),
    ],
    ids=["default-ttl", "custom-ttl", "with-email", "empty-email-omitted"],
)
def test_mint_token_payload(kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
    before = int(time.time())
    payload = decode(mint_token(Settings(jwt_secret=LONG_SECRET), **kwargs))
    after = int(time.time())
    assert before <= payload["iat"] <= after
    assert payload == {
        "sub": kwargs["sub"],
        "role": kwargs["role"],
        "iat": payload["iat"],
        "exp": payload["iat"] + kwargs.get("ttl", 3600),
        **extra,
    }


def test_mint_token_is_signed_with_the_settings_secret() -> None:
    token = mint_token(Settings(jwt_secret=LONG_SECRET), "u-1", "customer")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-enough-length-0123456789", algorithms=["HS256"])


@pytest.mark.parametrize("ttl", [0, -1], ids=["zero", "negative"])
def test_mint_token_refuses_non_positive_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        mint_token(Settings(jwt_secret=LONG_SECRET), "u-1", "customer", ttl=ttl)


def test_mint_token_refused_in_production() -> None:
    with pytest.raises(TokenRefused, match="KADAI_ENV=production"):
        mint_token(Settings(env="production", jwt_secret="x" * 40), "u-1", "admin")


def test_mint_token_with_the_development_secret_is_silent() -> None:
    token = mint_token(Settings(), "u-1", "customer")  # filterwarnings=error: a warning here fails
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        assert jwt.decode(token, Settings().jwt_secret, algorithms=["HS256"])["sub"] == "u-1"
