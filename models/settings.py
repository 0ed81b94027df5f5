"""The one settings object, read from the environment once (tests build their own explicitly)."""

from __future__ import annotations

import base64
import binascii
import logging
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.accounts import Account, legacy_settings_set, load_accounts

DEFAULT_ALLOWED_HOSTS = (".klingai.com", ".kling.ai", ".inkwai.com", ".kwai.net", ".kuaishou.com")
# Shared secrets anyone could try to guess from outside: 32 bytes = 256 bits, HMAC-SHA256's key size.
MIN_SECRET_BYTES = 32
# Plain shared secrets (bearer tokens, HMAC keys): their UTF-8 length counts.
PLAIN_SECRETS = ("api_token", "callback_secret", "metrics_token")
# Standard Webhooks secrets (`whsec_<base64>`): the decoded key counts.
WEBHOOK_SECRETS = ("kling_webhook_secret", "notify_secret")
GENERATE_HINT = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
WEBHOOK_HINT = (
    "generate one with `python -c 'import base64, secrets; "
    'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\'`'
)


def plain_secret_problem(name: str, value: str) -> str | None:
    """Why a bearer token / HMAC key is unacceptable, naming the setting, or None (never the value)."""
    size = len(value.encode())
    if size < MIN_SECRET_BYTES:
        return f"{name.upper()} is {size} bytes; it must be at least {MIN_SECRET_BYTES} ({GENERATE_HINT})"
    return None


def webhook_secret_problem(name: str, value: str) -> str | None:
    """Why a `whsec_` secret is unacceptable (format, or decoded key too short), or None."""
    if not value.startswith("whsec_"):
        return f"{name.upper()} must look like whsec_<base64> ({WEBHOOK_HINT})"
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return f"{name.upper()} is not whsec_ followed by valid base64 ({WEBHOOK_HINT})"
    if len(key) < MIN_SECRET_BYTES:
        rule = f"it must be at least {MIN_SECRET_BYTES} ({WEBHOOK_HINT})"
        return f"{name.upper()}'s key is {len(key)} bytes; {rule}"
    return None


class Settings(BaseSettings):
    """Configuration of every process: webhook, worker, beat, klingctl (the README's table)."""

    # hide_input_in_errors: a refused value (a short secret, a URL with a password) is never echoed.
    # env_ignore_empty: compose passes `${VAR:-}` for what the operator left out; empty = unset.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True, env_ignore_empty=True
    )

    database_url: str = "sqlite:///var/kling.db"
    celery_broker_url: str = "redis://localhost:6379/0"
    redis_url: str | None = None

    kling_provider: Literal["kling", "appypie"] = "kling"
    kling_api_base: str = "https://api-singapore.klingai.com"
    kling_access_key: str | None = None
    kling_secret_key: SecretStr | None = None
    kling_api_key: SecretStr | None = None
    kling_webhook_secret: SecretStr | None = None
    kling_concurrency: int = Field(default=5, ge=1)

    appypie_api_base: str = "https://gateway.appypie.com"
    appypie_subscription_key: SecretStr | None = None
    # Several accounts (models/accounts.py); when set, the single-account keys above are ignored.
    kling_accounts_file: str | None = None

    public_base_url: str | None = None
    callback_secret: SecretStr | None = None
    api_token: SecretStr | None = None
    notify_secret: SecretStr | None = None
    # Bearer token for GET /metrics; unset = /metrics open (bind it to a private network then).
    metrics_token: SecretStr | None = None

    s3_bucket: str = "kling-archive"
    s3_endpoint_url: str | None = None
    s3_prefix: str = "images/"
    aws_region: str | None = None

    archive_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ALLOWED_HOSTS
    archive_max_bytes: int = Field(default=104_857_600, ge=1)
    # Videos are one to two orders larger than images (a 10 s 1080p clip is tens of MB); 2 GiB.
    archive_max_bytes_video: int = Field(default=2 * 1024**3, ge=1)
    # Downstream hosts a job's webhook_url may name although they are not public (exact names).
    notify_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Account pauses and resumes as signed events (worker/alerts.py); its host may be private.
    alert_webhook_url: str | None = None

    reconcile_after_seconds: float = Field(default=60, ge=0)
    reconcile_interval_seconds: float = Field(default=5, gt=0)
    # Expected-duration polling (worker/polling.py): a round every POLL_INTERVAL_SECONDS, at most
    # POLL_MAX_PER_SECOND provider requests a second per account (one a round at the defaults).
    poll_interval_seconds: float = Field(default=0.2, gt=0)
    poll_max_per_second: float = Field(default=5, gt=0)
    # While a refusal about the account (1100, 1101, 1102, 1304) pauses submitting, one create per
    # ACCOUNT_PROBE_SECONDS, across all workers, checks whether it works again (worker/accounts.py).
    account_probe_seconds: float = Field(default=30, gt=0)
    outbox_relay_seconds: float = Field(default=2, gt=0)
    # A lease outlives any single submit; a crashed worker's slots come back after it.
    slot_lease_seconds: float = Field(default=900, gt=0)
    # How long a queued job holding a lease, or a succeeded job not yet archived, may stay quiet
    # before reconcile dispatches its work again (the message was lost with a killed worker).
    stuck_submit_seconds: float = Field(default=60, gt=0)
    stuck_archive_seconds: float = Field(default=120, gt=0)
    # A downstream notification attempt owns its row this long (longer than a POST can take: 5 s
    # to connect, 15 s for the answer); a due row is sent again `stuck_notify_seconds` after.
    notify_lease_seconds: float = Field(default=60, gt=0)
    stuck_notify_seconds: float = Field(default=60, ge=0)
    limiter_key_prefix: str = "kling:limiter"
    sweep_interval_seconds: float = Field(default=3600, gt=0)
    retention_days: int = Field(default=30, ge=6)
    # The sweep deletes published outbox rows and stored callbacks older than these.
    outbox_keep_days: int = Field(default=7, ge=1)
    callback_events_keep_days: int = Field(default=90, ge=1)

    log_level: str = "INFO"
    # `klingctl demo` only: lets the webhook start without API_TOKEN (the API then answers loopback only).
    demo_mode: bool = False

    @field_validator("archive_allowed_hosts", "notify_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(h.strip().lower() for h in v.split(",") if h.strip())
        return v

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else None

    @field_validator(*PLAIN_SECRETS)
    @classmethod
    def _long_enough(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        problem = v and plain_secret_problem(str(info.field_name), v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    @field_validator(*WEBHOOK_SECRETS)
    @classmethod
    def _webhook_key_long_enough(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        problem = v and webhook_secret_problem(str(info.field_name), v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    _accounts: tuple[Account, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.public_base_url and not self.callback_secret:
            raise ValueError("CALLBACK_SECRET is required when PUBLIC_BASE_URL is set")
        # Read here so every process (webhook, worker, klingctl) stops at start on a bad file.
        self._accounts = load_accounts(self)
        ignored = legacy_settings_set(self) if self.kling_accounts_file else []
        if ignored:
            logging.getLogger(__name__).warning(
                "KLING_ACCOUNTS_FILE is set: %s ignored (configure accounts in the file)", ", ".join(ignored)
            )
        return self

    @property
    def accounts(self) -> tuple[Account, ...]:
        """The provider accounts (the file's, or `default` from the single-account settings)."""
        return self._accounts

    def to_env(self) -> dict[str, str]:
        """Environment variables that make another process (a worker, a webhook) build these
        same settings; secrets included, so pass the result only to child processes."""
        env: dict[str, str] = {}
        for name, raw in self.model_dump().items():
            if raw is None:
                continue
            value = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
            env[name.upper()] = ",".join(value) if isinstance(value, tuple | list) else str(value)
        return env

    @property
    def limiter_redis_url(self) -> str:
        return self.redis_url or self.celery_broker_url

    @property
    def alert_after_days(self) -> int:
        return self.retention_days - 5


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
