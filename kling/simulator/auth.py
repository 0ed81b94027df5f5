"""Authorization checks as Kling answers them: a service code from the 1000-1004 range, or 0."""

from __future__ import annotations

import hmac

import jwt

OK = 0


def check_authorization(
    header: str | None,
    *,
    access_key: str | None,
    secret_key: str | None,
    api_key: str | None,
) -> int:
    """The service code for an `Authorization` header value (0 when it is accepted)."""
    if header is None or not header.strip():
        return 1001
    # Kling needs "Bearer <token>" with the space; anything else is an invalid Authorization.
    if not header.startswith("Bearer "):
        return 1002
    token = header[len("Bearer ") :].strip()
    if not token:
        return 1001
    if api_key is not None and hmac.compare_digest(token.encode(), api_key.encode()):
        return OK
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return 1002
    issuer = claims.get("iss")
    if access_key is None or secret_key is None or not isinstance(issuer, str):
        return 1000
    if not hmac.compare_digest(issuer.encode(), access_key.encode()):
        return 1000
    try:
        jwt.decode(token, secret_key, algorithms=["HS256"], options={"require": ["iss"]})
    except jwt.ExpiredSignatureError:
        return 1004
    except jwt.ImmatureSignatureError:
        return 1003
    except jwt.InvalidTokenError:
        return 1002
    return OK


def check_subscription_key(header: str | None, expected: str | None) -> bool:
    """Appy Pie gateway key check; with no configured key any non-empty key passes."""
    if not header:
        return False
    if expected is None:
        return True
    return hmac.compare_digest(header.encode(), expected.encode())
