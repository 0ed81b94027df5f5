from __future__ import annotations

import pytest

from models.settings import Settings


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
