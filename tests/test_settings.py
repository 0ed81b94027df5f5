from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from klingctl.errors import describe
from models.settings import Settings, get_settings


def test_to_env_rebuilds_the_same_settings_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        database_url="postgresql://db/kling",
        kling_secret_key="a-secret-key-0123456789-abcdefghijklmnop",
        archive_allowed_hosts="127.0.0.1,.klingai.com",
        public_base_url="https://hooks.example.com/",
        callback_secret="a-callback-secret-0123456789-abcdefghijkl",
        kling_concurrency=7,
    )
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_public_url_without_callback_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="CALLBACK_SECRET"):
        Settings(public_base_url="https://hooks.example.com", callback_secret=None)


LONG = "x" * 32
KEY_32 = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("name", ["api_token", "callback_secret", "metrics_token"])
def test_a_plain_secret_shorter_than_32_bytes_is_refused_by_name_without_echoing_it(name: str) -> None:
    short = "s3cr3t-" + "y" * 24  # 31 bytes
    with pytest.raises(ValidationError) as refused:
        Settings(**{name: short})
    text = str(refused.value)
    assert f"{name.upper()} is 31 bytes; it must be at least 32" in text
    assert short not in text
    assert Settings(**{name: LONG}).model_dump()[name].get_secret_value() == LONG


@pytest.mark.parametrize("name", ["kling_webhook_secret", "notify_secret"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("whsec_" + base64.b64encode(b"k" * 31).decode(), "key is 31 bytes; it must be at least 32"),
        ("x" * 64, "must look like whsec_<base64>"),
        ("whsec_not*base64", "is not whsec_ followed by valid base64"),
    ],
)
def test_a_webhook_secret_needs_a_32_byte_key(name: str, value: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as refused:
        Settings(**{name: value})
    assert name.upper() in str(refused.value) and value not in str(refused.value)
    assert Settings(**{name: KEY_32}).model_dump()[name].get_secret_value() == KEY_32


def test_a_short_secret_from_the_environment_stops_the_process_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "too-short")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValidationError, match="API_TOKEN is 9 bytes"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker-compose passes `${KLING_WEBHOOK_SECRET:-}` when the operator left it out.
    for name in ("API_TOKEN", "KLING_WEBHOOK_SECRET", "NOTIFY_SECRET", "METRICS_TOKEN", "PUBLIC_BASE_URL"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.api_token is None and settings.kling_webhook_secret is None
    assert settings.metrics_token is None and settings.public_base_url is None


def test_klingctl_reports_a_short_secret_as_one_line_naming_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(callback_secret="short-callback-secret")
    line, code = describe(refused.value)
    assert code == 2 and "\n" not in line
    assert line.startswith("configuration: CALLBACK_SECRET: ") and "it must be at least 32" in line
    assert "short-callback-secret" not in line
