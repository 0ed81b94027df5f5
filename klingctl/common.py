"""What several commands share: the settings, database handles, publishing, the console."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

# Wide enough for a job id, a status and an S3 key on one line when output goes to a pipe or a file.
PIPE_WIDTH = 200


def settings() -> Settings:
    """The process settings (read from the environment once, see `get_settings`)."""
    return get_settings()


def console(*, stderr: bool = False) -> Console:
    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)


def safe_url(url: str) -> str:
    """A database or broker URL with any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not an SQLAlchemy URL, e.g. redis://)
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@")
        return url


def db_handles(cfg: Settings) -> tuple[Engine, sessionmaker[Session]]:
    from models.db import make_engine, make_sessionmaker

    engine = make_engine(cfg.database_url)
    return engine, make_sessionmaker(engine)


def celery_publisher(cfg: Settings) -> tuple[Celery, Callable[[str, list[Any]], None]]:
    """The Celery app for `cfg` and the outbox publish function that sends to its broker."""
    from worker.factory import make_celery
    from worker.outbox import QUICK_RETRY
    from worker.outbox import celery_publisher as outbox_publisher

    app = make_celery(cfg)
    # A command must not hang on a dead broker: one quick retry, then the message waits in the outbox.
    return app, outbox_publisher(app, retry_policy=QUICK_RETRY)
