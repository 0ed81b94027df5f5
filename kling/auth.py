"""Authorization for the official API: a JWT signed with the secret key, or a static API key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import jwt

TOKEN_TTL_SECONDS = 1800
NOT_BEFORE_SKEW_SECONDS = 5
# Re-sign this long before `exp` so a token never expires while a request is in flight.
REFRESH_MARGIN_SECONDS = 60


def jwt_token(access_key: str, secret_key: str, now: float | None = None) -> str:
    """The API token exactly as kling-docs/000 builds it (HS256, iss, exp=now+1800, nbf=now-5)."""
    issued = int(time.time() if now is None else now)
    payload = {
        "iss": access_key,
        "exp": issued + TOKEN_TTL_SECONDS,
        "nbf": issued - NOT_BEFORE_SKEW_SECONDS,
    }
    return jwt.encode(payload, secret_key, algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})


class TokenProvider(Protocol):
    """What a client needs from an auth mode."""

    def token(self) -> str:
        """The bearer token to send now."""
        ...

    def invalidate(self) -> bool:
        """Forget the current token; True when a fresh one can be made (worth retrying)."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in errors or logs."""
        ...


class JwtAuth:
    """Thread-safe cached JWT: signed once, reused, re-signed `refresh_margin` seconds before expiry."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        clock: Callable[[], float] | None = None,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
    ) -> None:
        if not access_key or not secret_key:
            raise ValueError("both access_key and secret_key are required")
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock = time.time if clock is None else clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        # Kept so an answer echoing the token just replaced is still redacted.
        self._previous: str | None = None
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires - self._margin:
                self._previous = self._token or self._previous
                self._token = jwt_token(self._access_key, self._secret_key, now)
                self._expires = int(now) + TOKEN_TTL_SECONDS
            return self._token

    def invalidate(self) -> bool:
        with self._lock:
            self._previous = self._token or self._previous
            self._token = None
        return True

    def secrets(self) -> tuple[str, ...]:
        return (self._secret_key, *(t for t in (self._token, self._previous) if t))

    def __repr__(self) -> str:
        return f"JwtAuth(access_key={self._access_key!r})"


class StaticKeyAuth:
    """A static API key sent as the bearer token (newer Kling accounts)."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._api_key = api_key

    def token(self) -> str:
        return self._api_key

    def invalidate(self) -> bool:
        # A static key cannot be refreshed: retrying with it would fail the same way.
        return False

    def secrets(self) -> tuple[str, ...]:
        return (self._api_key,)

    def __repr__(self) -> str:
        return "StaticKeyAuth(api_key=***)"
