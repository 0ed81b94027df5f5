"""Per-process handles to the outside world, built lazily from Settings.

Tasks and the webhook get the database, the provider client, the limiter and S3 from here; tests
and the demo pass any of them to the constructor instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from models.db import SessionFactory
from models.settings import Settings

if TYPE_CHECKING:
    from kling.client import ImageProvider
    from worker.accounts import AccountGate, LocalAccountGate
    from worker.fetch import SafeFetcher
    from worker.limiter import SlotLimiter
    from worker.polling import DurationCache, LocalPollGate, PollGate

Publish = Callable[[str, list[Any]], None]
# The poll and account gates' Redis calls, as bounded as the limiter's (worker/limiter.py).
GATE_TIMEOUT = 2.0


class Services:
    """The collaborators of the worker's functions. Each is built from `settings` on first use
    unless given. Outbox rows written in a session of `sessions` are published after its commit
    through `publish` (when set); a factory passed in as `sessions` is used as it is."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        sessions: SessionFactory | None = None,
        provider: ImageProvider | None = None,
        limiter: SlotLimiter | None = None,
        s3: Any = None,
        fetcher: SafeFetcher | None = None,
        publish: Publish | None = None,
        poll_gate: PollGate | LocalPollGate | None = None,
        account_gate: AccountGate | LocalAccountGate | None = None,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self._provider = provider
        self._lock = threading.Lock()
        self._providers: dict[str, ImageProvider] = {}
        for name, given in (
            ("engine", engine),
            ("sessions", sessions),
            ("limiter", limiter),
            ("s3", s3),
            ("fetcher", fetcher),
            ("poll_gate", poll_gate),
            ("account_gate", account_gate),
        ):
            if given is not None:
                self.__dict__[name] = given  # what the cached property would have built

    @cached_property
    def engine(self) -> Engine:
        from models.db import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> SessionFactory:
        from models.db import make_sessionmaker
        from worker.outbox import publish_after_commit, publish_rows

        factory = make_sessionmaker(self.engine)

        def publish_committed(rows: Any) -> None:
            if self.publish is not None:
                publish_rows(factory, self.publish, rows)

        publish_after_commit(factory, publish_committed)
        return factory

    @cached_property
    def provider(self) -> ImageProvider:
        """The deployment's default provider (`KLING_PROVIDER`)."""
        return self.provider_for(self.settings.kling_provider)

    def provider_for(self, name: str) -> ImageProvider:
        """The client for a job's provider (`kling` or `appypie`), built once per process."""
        if self._provider is not None:
            return self._provider
        with self._lock:
            client = self._providers.get(name)
            if client is None:
                from worker.provider import make_provider

                client = self._providers[name] = make_provider(self.settings, name)
            return client

    @cached_property
    def limiter(self) -> SlotLimiter:
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
        from worker.s3 import make_s3_client

        return make_s3_client(endpoint_url=self.settings.s3_endpoint_url, region=self.settings.aws_region)

    @cached_property
    def gate_redis(self) -> Any:
        """The Redis client the poll and account gates share (the limiter's Redis)."""
        import redis

        return redis.Redis.from_url(
            self.settings.limiter_redis_url,
            socket_timeout=GATE_TIMEOUT,
            socket_connect_timeout=GATE_TIMEOUT,
        )

    @cached_property
    def durations(self) -> DurationCache:
        """Task durations the poller learned, cached in this process."""
        from worker.polling import DurationCache

        return DurationCache()

    @cached_property
    def poll_gate(self) -> PollGate | LocalPollGate:
        from worker.polling import PollGate

        return PollGate(self.gate_redis, f"{self.settings.limiter_key_prefix}:poll")

    @cached_property
    def account_gate(self) -> AccountGate | LocalAccountGate:
        from worker.accounts import AccountGate

        return AccountGate(
            self.gate_redis,
            f"{self.settings.limiter_key_prefix}:account",
            probe_seconds=self.settings.account_probe_seconds,
        )
