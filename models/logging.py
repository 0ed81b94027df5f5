"""Structured JSON logs that carry the job id and provider task id, with every secret scrubbed.

- `configure_logging(settings)`: JSON lines on stderr for the whole process (webhook, worker).
- `install_redaction(settings)`: from then on, every configured secret value is replaced by
  `[REDACTED]` in every log record of the process, whoever handles it (our JSON handler, pytest's
  caplog, gunicorn's handlers): records are scrubbed when they are created, not when formatted.
- `log_context(job_id=..., provider_task_id=...)`: binds ids for the code running inside it
  (contextvars; reset on exit, so reused gunicorn/Celery threads never carry a stale id);
  `extra={"job_id": ...}` works too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from models.settings import Settings

REDACTED = "[REDACTED]"
# Shorter values would shred unrelated text; nothing that short is a real secret.
MIN_SECRET_LENGTH = 6
# Secrets that live outside Settings (boto3 reads them itself).
ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CONTEXT_FIELDS = ("job_id", "provider_task_id")
CALLBACK_PATH = "/callbacks/kling/"
_CALLBACK_TOKEN = re.compile(r"(/callbacks/kling/[^/\s\"']+/)[^\s\"'?/]+")
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@/\s\"']+@", re.IGNORECASE)

_job_id: ContextVar[str | None] = ContextVar("kling_job_id", default=None)
_provider_task_id: ContextVar[str | None] = ContextVar("kling_provider_task_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def secret_values(settings: Settings) -> set[str]:
    """Every configured secret, plus the key inside a `whsec_` value (it is secret on its own)."""
    values: set[str] = set()
    for field in (
        settings.kling_secret_key,
        settings.kling_api_key,
        settings.api_token,
        settings.callback_secret,
        settings.kling_webhook_secret,
        settings.notify_secret,
        settings.metrics_token,
        settings.appypie_subscription_key,
    ):
        if field is not None:
            values.add(field.get_secret_value())
    for account in settings.accounts:
        values.update(account.secrets())
    values.update(os.environ.get(name, "") for name in ENV_SECRETS)
    values.update(v.removeprefix("whsec_") for v in list(values) if v.startswith("whsec_"))
    return {v for v in values if len(v) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces known secret values in text; longest first so a secret's prefix never survives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {v for v in values if len(v) >= MIN_SECRET_LENGTH}
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # Secrets by shape, whatever wrote them (Flask logs a failed request's path, with its token).
        if CALLBACK_PATH in text:
            text = _CALLBACK_TOKEN.sub(rf"\g<1>{REDACTED}", text)
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
        return text


redact = Redactor()
_factory_lock = threading.Lock()
_factory_installed = False


def _scrub(record: logging.LogRecord) -> None:
    # Formatting here freezes the message; a record is only built once its level is enabled.
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 (a bad format string must not lose the record)
        message = f"{record.msg!r} % {record.args!r}"
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    # No attributes are added here: `extra=` may not overwrite existing record attributes.


_CONTEXT = {"job_id": _job_id, "provider_task_id": _provider_task_id}


def install_redaction(settings: Settings) -> None:
    """Scrub `settings`' secrets from every log record of this process (idempotent, additive)."""
    global _factory_installed  # noqa: PLW0603 (one record factory per process)
    redact.add(secret_values(settings))
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or _CONTEXT[name].get()
            if value is not None:
                entry[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        # The final text is scrubbed too: extras and exceptions may carry secrets the factory missed.
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


@contextmanager
def log_context(*, job_id: str | None = None, provider_task_id: str | None = None) -> Iterator[None]:
    """Bind ids to every record logged inside the block (unset ids keep their outer value)."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if provider_task_id is not None:
        tokens.append((_provider_task_id, _provider_task_id.set(provider_task_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def configure_logging(settings: Settings, *, stream: Any = None) -> logging.Handler:
    """JSON lines for the whole process at `settings.log_level`, with redaction installed."""
    install_redaction(settings)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_kling_json", False)]:
        root.removeHandler(old)
    handler._kling_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler


__all__ = [
    "REDACTED",
    "JsonFormatter",
    "configure_logging",
    "install_redaction",
    "log_context",
    "redact",
    "secret_values",
]
