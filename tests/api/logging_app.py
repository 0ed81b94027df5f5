"""The webhook as gunicorn loads it, for the log-redaction test (tests/api/test_logging.py): real
`create_app`, except that a callback body of `boom` raises inside the view (a 500 that Flask logs)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from pydantic import SecretStr

import webhook.callbacks
from kling.callbacks import parse_callback
from models.settings import Settings
from tests.conftest import TEST_CALLBACK_SECRET
from webhook import create_app


def _parse(body: bytes) -> Any:
    if body == b"boom":
        raise RuntimeError("a bug while parsing")
    return parse_callback(body)


def app() -> Flask:
    webhook.callbacks.parse_callback = _parse  # type: ignore[assignment]
    return create_app(Settings(database_url="sqlite://", callback_secret=SecretStr(TEST_CALLBACK_SECRET)))
