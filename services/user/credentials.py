"""The client credentials of POST /service-tokens: `Authorization: Basic base64(<service-name>:<credential>)`,
where the name is a catalogue service and the credential is that service's own, derived from the platform's
KADAI_SERVICE_SECRET (services/kit/credential.py). The secret itself is still taken in place of any
credential: whoever holds it can derive them all anyway."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from services.catalog import CATALOG
from services.kit import Unauthorized
from services.kit.credential import service_credential

REALM = "kadai-services"
CHALLENGE = f'Basic realm="{REALM}"'
_EXPECTED = "Expected Authorization: Basic <service-name>:<credential>"


def _refused(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": CHALLENGE})


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def authenticated_service(authorization: Sequence[str], secret: str) -> str:
    """The service the Authorization header values prove to be; Unauthorized (with the Basic challenge)
    when there is none, it is malformed, the credential is neither the service's nor the secret, or the
    name is not a catalogue service."""
    if not authorization:
        raise _refused("Missing service credentials: send Authorization: Basic <service-name>:<credential>")
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
    # about how close a guess was, nor how long the secret is. Both comparisons always run.
    sent_digest = _digest(sent)
    credential_matches = hmac.compare_digest(sent_digest, _digest(service_credential(secret, name)))
    secret_matches = hmac.compare_digest(sent_digest, _digest(secret))
    if not (colon and (credential_matches | secret_matches) and name in CATALOG):
        # One message for an unknown name and a wrong secret.
        raise _refused("Invalid service credentials")
    return name
