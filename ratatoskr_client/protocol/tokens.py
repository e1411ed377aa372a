"""What a client may read from a token without verifying it, and how an
upstream session token is made. No I/O.

Two shapes carry their lifetime in clear:

* upstream Ratatoskr session tokens (upstream commit ``84a3a06``,
  ``src/auth/tokens.ts``): ``base64url(JSON{sub,exp,iat,type})`` ``.``
  ``base64url(HMAC-SHA256(JWT_SECRET, first part))``, unpadded;
* JWTs: ``header.payload.signature``, the claims in the middle part.

The client reads ``iat`` and ``exp`` to refresh a token ahead of its expiry
(it never trusts them: the server verifies). Anything else (an API token, a
static token) has no readable lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

__all__ = ["TokenLifetime", "mint_session_token", "read_lifetime"]


@dataclass(frozen=True, slots=True)
class TokenLifetime:
    """A token's claims about time, in Unix seconds (``issued_at`` None: no ``iat``)."""

    expires_at: float
    issued_at: float | None = None


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def read_lifetime(token: str) -> TokenLifetime | None:
    """``exp`` (and ``iat``) of an upstream session token or a JWT, unverified;
    None for any other token, or one whose claims cannot be read."""
    parts = token.split(".")
    if len(parts) == 2:
        claims_part = parts[0]
    elif len(parts) == 3:
        claims_part = parts[1]
    else:
        return None
    try:
        claims = json.loads(_b64(claims_part))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    if not isinstance(iat, int | float) or isinstance(iat, bool) or iat >= exp:
        iat = None
    return TokenLifetime(float(exp), None if iat is None else float(iat))


def mint_session_token(user_id: str, secret: str, *, lifetime: float, now: float) -> str:
    """An upstream-style session token for ``user_id``, valid ``lifetime``
    seconds from ``now`` (Unix time), signed with ``secret`` (upstream's
    ``JWT_SECRET``): exactly what upstream's ``createSessionToken`` makes."""
    iat = int(now)
    payload = {"sub": user_id, "exp": int(now + lifetime), "iat": iat, "type": "session"}
    data = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    data = data.rstrip(b"=")
    signature = hmac.new(secret.encode(), data, hashlib.sha256).digest()
    return f"{data.decode()}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
