"""The client credentials of POST /service-tokens: `Authorization: Basic base64(<service-name>:<secret>)`,
where the name is a catalogue service and the secret is the platform's KADAI_SERVICE_SECRET."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from services.catalog import CATALOG
from services.kit import Unauthorized

REALM = "kadai-services"
CHALLENGE = f'Basic realm="{REALM}"'
_EXPECTED = "Expected Authorization: Basic <service-name>:<secret>"


def _refused(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": CHALLENGE})


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def authenticated_service(authorization: Sequence[str], secret: str) -> str:
    """The service the Authorization header values prove to be; Unauthorized (with the Basic challenge)
    when there is none, it is malformed, the secret is wrong or the name is not a catalogue service."""
    if not authorization:
        raise _refused("Missing service credentials: send Authorization: Basic <service-name>:<secret>")
    if len(authorization) > 1:
        raise _refused("Several Authorization headers")
    scheme, _, encoded = authorization[0].strip().partition(" ")
    if scheme.lower() != "basic":
        raise _refused(_EXPECTED)
    try:
        name, colon, sent = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _refused(_EXPECTED) from None
    # Compared whatever the name, in constant time, as digests of one length: the answer tells nothing
    # about how close a guess was, nor how long the secret is.
    secret_matches = hmac.compare_digest(_digest(sent), _digest(secret))
    if not (colon and secret_matches and name in CATALOG):
        # One message for an unknown name and a wrong secret.
        raise _refused("Invalid service credentials")
    return name
