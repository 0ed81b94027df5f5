from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import webhook.db
from worker.limiter_local import LocalSlotLimiter


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
    # Slots handed on after a final callback go to an in-process limiter, not the default Redis keys.
    limiter = LocalSlotLimiter(limit=5, lease_seconds=60)
    monkeypatch.setattr(webhook.db, "limiter_for", lambda _app: limiter)
    yield sent
