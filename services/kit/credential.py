"""A service's own credential for POST /service-tokens, derived from the platform's service secret.

Holding the platform secret (KADAI_SERVICE_SECRET) proves nothing about which service one is: whoever
has it can ask user-service for a token in any service's name. A credential derived from it and one
service's name (HMAC-SHA256, as AWS derives its signing keys) proves that one service only, and does
not give the secret away. Deployments hand each service its credential (KADAI_SERVICE_CREDENTIAL,
printed by `kadai service-credential NAME`) and keep the secret on user-service alone; a service given
the secret itself derives its credential from it, so nothing changes for deployments that share it.
"""
from __future__ import annotations

import hashlib
import hmac
import re

_CONTEXT = b"kadai-service-credential:"
CREDENTIAL_FORM = re.compile(r"^[0-9a-f]{64}$")
"""What a credential looks like: 64 lowercase hex digits."""


def service_credential(secret: str, service: str) -> str:
    """The credential of `service` under the platform's service secret."""
    return hmac.new(secret.encode("utf-8"), _CONTEXT + service.encode("utf-8"), hashlib.sha256).hexdigest()
