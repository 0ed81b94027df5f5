from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import webhook.db


@pytest.fixture(autouse=True)
def recorded_publishes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[Any]]]]:
    """The receiver's after-commit publishes, recorded instead of sent to a broker."""
    sent: list[tuple[str, list[Any]]] = []

    class Recorder:
        def __init__(self, _settings: Any) -> None:
            pass

        def __call__(self, name: str, args: list[Any]) -> None:
            sent.append((name, args))

    monkeypatch.setattr(webhook.db, "_LazyCeleryPublisher", Recorder)
    yield sent
