"""Typed errors built from Kling's error-code table (kling-docs/000).

Every error carries `code`, `http_status`, `message`, `request_id` and `retryable`; callers decide
on retries from the class alone. Messages come from the provider or from us, never from request
headers, so secrets cannot leak through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class KlingError(Exception):
    """Base of every error raised by the `kling` package."""

    retryable: ClassVar[bool] = False
    default_code: ClassVar[int | None] = None
    default_http_status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or self.__class__.__doc__ or self.__class__.__name__
        self.code = code if code is not None else self.default_code
        self.http_status = http_status if http_status is not None else self.default_http_status
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(self.message)

    def __str__(self) -> str:
        parts = []
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        suffix = f" ({', '.join(parts)})" if parts else ""
        return f"{self.message}{suffix}"


# --- 1000-1004 authentication ------------------------------------------------------------------
class AuthenticationError(KlingError):
    """Authentication failed"""

    default_code, default_http_status = 1000, 401


class AuthorizationMissing(AuthenticationError):
    """Authorization is empty"""

    default_code = 1001


class AuthorizationInvalid(AuthenticationError):
    """Authorization is invalid"""

    default_code = 1002


class AuthorizationNotYetValid(AuthenticationError):
    """Authorization is not yet valid"""

    default_code = 1003


class AuthorizationExpired(AuthenticationError):
    """Authorization has expired"""

    default_code = 1004


# --- 1100-1103 account ---------------------------------------------------------------------------
class AccountError(KlingError):
    """Account exception"""

    default_code, default_http_status = 1100, 429


class AccountInArrears(AccountError):
    """Account in arrears (postpaid scenario)"""

    default_code = 1101


class ResourcePackDepleted(AccountError):
    """Resource pack depleted or expired (prepaid scenario)"""

    default_code = 1102


class PermissionDenied(AccountError):
    """Unauthorized access to requested resource, such as API/model"""

    default_code, default_http_status = 1103, 403


# --- 1200-1203 request ---------------------------------------------------------------------------
class InvalidRequestError(KlingError):
    """Invalid request parameters"""

    default_code, default_http_status = 1200, 400


class InvalidParameterValue(InvalidRequestError):
    """Invalid parameters, such as incorrect key or illegal value"""

    default_code = 1201


class InvalidMethod(InvalidRequestError):
    """The requested method is invalid"""

    default_code, default_http_status = 1202, 404


class ResourceNotFound(InvalidRequestError):
    """The requested resource does not exist"""

    default_code, default_http_status = 1203, 404


# --- 1300-1304 policy ----------------------------------------------------------------------------
class PolicyError(KlingError):
    """Trigger strategy of the platform"""

    default_code, default_http_status = 1300, 400


class ContentPolicyError(PolicyError):
    """Trigger the content security policy of the platform"""

    default_code = 1301


class RateLimited(PolicyError):
    """The API request is too fast, exceeding the platform's rate limit"""

    retryable = True
    default_code, default_http_status = 1302, 429


class ConcurrencyLimitExceeded(PolicyError):
    """Concurrency exceeds the prepaid resource package limit"""

    retryable = True
    default_code, default_http_status = 1303, 429


class IPWhitelistError(PolicyError):
    """Trigger the platform's IP whitelisting policy"""

    default_code, default_http_status = 1304, 429


# --- 5000-5002 server ----------------------------------------------------------------------------
class ServerError(KlingError):
    """Server internal error"""

    retryable = True
    default_code, default_http_status = 5000, 500


class ServiceUnavailable(ServerError):
    """Server temporarily unavailable, usually due to maintenance"""

    default_code, default_http_status = 5001, 503


class ServerTimeout(ServerError):
    """Server internal timeout, usually due to a backlog"""

    default_code, default_http_status = 5002, 504


# --- not from the table ----------------------------------------------------------------------------
class TransportError(KlingError):
    """Network failure (connect error, reset, timeout): the request may or may not have been processed"""

    retryable = True


class UnexpectedResponseError(KlingError):
    """The provider answered something that is not the documented shape"""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        # A proxy's HTML error page on 5xx is transient; a malformed 200 is not.
        return self.http_status is not None and self.http_status >= 500


@dataclass(frozen=True)
class FieldError:
    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(KlingError, ValueError):
    """Request rejected locally before any network call"""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("invalid request: " + "; ".join(str(e) for e in self.errors))


class CallbackError(KlingError, ValueError):
    """A callback body that is not a Kling task payload"""


class SignatureError(KlingError):
    """A callback signature that does not verify"""


# Every code of the table, so `error_for` never guesses for a documented code.
CODE_TABLE: dict[int, type[KlingError]] = {
    cls.default_code: cls
    for cls in (
        AuthenticationError,
        AuthorizationMissing,
        AuthorizationInvalid,
        AuthorizationNotYetValid,
        AuthorizationExpired,
        AccountError,
        AccountInArrears,
        ResourcePackDepleted,
        PermissionDenied,
        InvalidRequestError,
        InvalidParameterValue,
        InvalidMethod,
        ResourceNotFound,
        PolicyError,
        ContentPolicyError,
        RateLimited,
        ConcurrencyLimitExceeded,
        IPWhitelistError,
        ServerError,
        ServiceUnavailable,
        ServerTimeout,
    )
}

# For answers without a service code (the Appy Pie gateway, proxies): decide by HTTP status.
HTTP_STATUS_TABLE: dict[int, type[KlingError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: ResourceNotFound,
    429: RateLimited,
    500: ServerError,
    502: ServerError,
    # A bare 503 is a proxy or gateway being unavailable, not Kling's 5001 (maintenance, which
    # pauses a whole account): a transient server error, retried and looked up like a 500.
    503: ServerError,
    504: ServerTimeout,
}


def error_for(
    code: int | None,
    http_status: int | None,
    message: str = "",
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> KlingError:
    """The typed error for a provider answer."""
    cls: type[KlingError] | None = CODE_TABLE.get(code) if code is not None else None
    if cls is None and http_status is not None:
        cls = HTTP_STATUS_TABLE.get(http_status)
        if cls is None:
            cls = ServerError if http_status >= 500 else KlingError
    if cls is None:
        cls = KlingError
    return cls(message, code=code, http_status=http_status, request_id=request_id, retry_after=retry_after)
