"""Per-process handles to the outside world, built lazily from Settings.

Tasks and the webhook get the database, the provider client, the limiter and S3 from here, so
tests and the demo swap any of them by building a `Services` with explicit parts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings

if TYPE_CHECKING:
    from kling.client import ImageProvider
    from worker.fetch import SafeFetcher
    from worker.limiter import SlotLimiter


@dataclass
class Services:
    settings: Settings
    # Overrides (tests, demo); None = build from settings on first use.
    provider_override: ImageProvider | None = None
    limiter_override: SlotLimiter | None = None
    s3_override: Any = None
    publish: Callable[[str, list[Any]], None] | None = None
    # Set when a session from `sessions` flushed an outbox row; a Celery task relays after its run
    # only then (`take_outbox_written`), instead of querying the outbox after every task.
    outbox_written: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _providers: dict[str, ImageProvider] = field(default_factory=dict, repr=False)

    @cached_property
    def engine(self) -> Engine:
        from models.db import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        from models.db import make_sessionmaker

        factory = make_sessionmaker(self.engine)
        event.listen(factory, "before_flush", self._note_outbox_rows)
        event.listen(factory, "before_commit", self._note_core_outbox_rows)
        return factory

    def _note_outbox_rows(self, session: Session, *_: Any) -> None:
        from models.tables import Outbox

        if any(isinstance(obj, Outbox) for obj in session.new):
            self.outbox_written = True

    def _note_core_outbox_rows(self, session: Session) -> None:
        from models.outbox import CORE_ROWS_WRITTEN

        # Rows the state machine wrote with Core statements (apply_provider_task).
        if session.info.get(CORE_ROWS_WRITTEN):
            self.outbox_written = True

    def take_outbox_written(self) -> bool:
        """Whether outbox rows were written since the last call (which resets it)."""
        written, self.outbox_written = self.outbox_written, False
        return written

    @cached_property
    def provider(self) -> ImageProvider:
        """The deployment's default provider (`KLING_PROVIDER`)."""
        return self.provider_for(self.settings.kling_provider)

    def provider_for(self, name: str) -> ImageProvider:
        """The client for a job's provider (`kling` or `appypie`), built once per process."""
        if self.provider_override is not None:
            return self.provider_override
        with self._lock:
            client = self._providers.get(name)
            if client is None:
                from worker.provider import make_provider

                client = self._providers[name] = make_provider(self.settings, name)
            return client

    @cached_property
    def limiter(self) -> SlotLimiter:
        if self.limiter_override is not None:
            return self.limiter_override
        from worker.limiter import RedisSlotLimiter

        return RedisSlotLimiter(
            self.settings.limiter_redis_url,
            limit=self.settings.kling_concurrency,
            lease_seconds=self.settings.slot_lease_seconds,
            key_prefix=self.settings.limiter_key_prefix,
        )

    @cached_property
    def fetcher(self) -> SafeFetcher:
        from worker.fetch import SafeFetcher

        return SafeFetcher(self.settings.archive_allowed_hosts, max_bytes=self.settings.archive_max_bytes)

    @cached_property
    def s3(self) -> Any:
        if self.s3_override is not None:
            return self.s3_override
        from worker.s3 import make_s3_client

        return make_s3_client(endpoint_url=self.settings.s3_endpoint_url, region=self.settings.aws_region)
