"""`GET /metrics` (Prometheus text format).

Two kinds of metrics:
- Counted where they happen (`kling_callbacks_total` here, the worker's `kling_provider_errors_total`,
  `kling_archive_bytes_total`, `kling_archive_seconds`): this process's values, or every process's
  when `PROMETHEUS_MULTIPROC_DIR` is set (prometheus_client multiprocess mode: set it, to the same
  empty directory, for the webhook and every worker on the host).
- Derived from shared state (`kling_jobs`, `kling_tenant_jobs`, `kling_images_at_risk`,
  `kling_outbox_backlog` from the database, `kling_slots_in_use` / `kling_slots_limit` from the
  limiter): the same answer whichever process serves the scrape. The database gauges run
  `count(*)` queries, so each process computes them at most once per `STATE_MAX_AGE_SECONDS`
  (15 s) and serves that copy, with its age in `kling_metrics_state_age_seconds`, however often
  anyone scrapes. A source that cannot be read is reported by `kling_metrics_source_up{source}` = 0
  instead of failing the scrape.

`METRICS_TOKEN`, when set, is required as `Authorization: Bearer <token>` (401 without it).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import String, func, literal, literal_column, select, union_all
from sqlalchemy.orm import Session, sessionmaker

# Imported for their side effect: registering the counters this process may update.
import webhook.callbacks
import worker.metrics
from models.base import utcnow
from models.enums import JobStatus
from models.settings import Settings
from models.tables import Job, Outbox, Tenant
from webhook import db
from worker.account_views import STATES, AccountView, account_views
from worker.repair import at_risk_query

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

REGISTRY_KEY = "kling.metrics_registry"
STATE_KEY = "kling.metrics_state"
LIMITER_KEY = db.LIMITER_KEY
TOKEN_KEY = "kling.metrics_token"  # noqa: S105 (the extension's name, not a token)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus scrapes every 15-60 s; a faster scraper (or an attacker) gets the same copy.
STATE_MAX_AGE_SECONDS = 15.0

# Names the scrape-time collector owns; a process-local metric of the same name is dropped.
DERIVED = frozenset(
    {
        "kling_jobs",
        "kling_tenant_jobs",
        "kling_images_at_risk",
        "kling_outbox_backlog",
        "kling_slots_in_use",
        "kling_slots_limit",
        "kling_metrics_state_age_seconds",
    }
)
_ = (webhook.callbacks.CALLBACKS, worker.metrics.provider_errors)

# kling_tenant_jobs: the live statuses only, each read from an index rather than the table. Queued
# jobs, maybe a long backlog, are counted by an index-only scan of the partial ix_jobs_tenant_queue
# (its status is the literal: naming the column would need the rows); submitted and processing ones
# (no more than the slots they hold) through an index led by the status. Finished-today counts
# are left out: no index has the tenant with the finish time, so they would read every row finished
# today, at a million jobs a day most of the table, on every refresh.
LIVE = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING)
TENANT_LIVE = union_all(
    select(Job.tenant, literal(JobStatus.QUEUED.value, String).label("status"), func.count())
    # A literal, not a bound parameter: a generic plan could not prove the partial index applies.
    .where(Job.status == literal_column("'queued'"))
    .group_by(Job.tenant),
    select(Job.tenant, Job.status, func.count())
    .where(Job.status.in_([JobStatus.SUBMITTED, JobStatus.PROCESSING]))
    .group_by(Job.tenant, Job.status),
)


def is_fresh(taken_at: float | None, now: float, max_age: float = STATE_MAX_AGE_SECONDS) -> bool:
    """Whether gauges taken at `taken_at` (monotonic seconds; None = never) may still be served."""
    return taken_at is not None and 0 <= now - taken_at < max_age


def bearer_matches(expected: str, header: str) -> bool:
    """Whether an `Authorization` header value carries `expected` as its bearer token."""
    scheme, _, provided = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(provided.strip().encode(), expected.encode())


class StateCollector(Collector):
    """Gauges from the database (cached per process, see STATE_MAX_AGE_SECONDS) and the limiter."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        limiter: Callable[[], Any],
        clock: Callable[[], float] = time.monotonic,
        accounts: Callable[[], list[AccountView]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._limiter = limiter
        self._accounts = accounts
        self.clock = clock  # swappable: tests move time without sleeping
        # One thread computes while concurrent scrapes wait for its result instead of querying too.
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._cached: list[Metric] | None = None  # None: the database did not answer then

    def _database_cached(self) -> tuple[list[Metric] | None, float]:
        with self._lock:
            now = self.clock()
            if not is_fresh(self._taken_at, now):
                try:
                    self._cached = self._database()
                except Exception as exc:  # noqa: BLE001 (a scrape reports the outage, it does not fail)
                    log.warning("metrics: database unavailable (%s)", type(exc).__name__)
                    self._cached = None
                self._taken_at = now
            assert self._taken_at is not None
            return self._cached, now - self._taken_at

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "kling_metrics_source_up", "Whether a metrics source answered this scrape", labels=["source"]
        )
        database, age = self._database_cached()
        if database is not None:
            yield from database
        up.add_metric(["database"], 0 if database is None else 1)
        taken = GaugeMetricFamily(
            "kling_metrics_state_age_seconds", "Age of the database gauges served (recomputed after 15 s)"
        )
        taken.add_metric([], age)
        yield taken
        limit = GaugeMetricFamily("kling_slots_limit", "Provider concurrency limit, in slots (first account)")
        limit.add_metric([], self._settings.accounts[0].concurrency)
        yield limit
        try:
            in_use = GaugeMetricFamily("kling_slots_in_use", "Provider slots held by live leases")
            in_use.add_metric([], self._limiter().in_use())
            yield in_use
            up.add_metric(["limiter"], 1)
        except Exception as exc:  # noqa: BLE001
            log.warning("metrics: limiter unavailable (%s)", type(exc).__name__)
            up.add_metric(["limiter"], 0)
        if self._accounts is not None:
            try:
                yield account_states(self._accounts())
                up.add_metric(["accounts"], 1)
            except Exception as exc:  # noqa: BLE001
                log.warning("metrics: account states unavailable (%s)", type(exc).__name__)
                up.add_metric(["accounts"], 0)
        yield up

    def _database(self) -> list[Metric]:
        deadline = utcnow() - timedelta(days=self._settings.alert_after_days)
        with self._sessions() as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            tenants = list(session.scalars(select(Tenant.name)))
            live = {(tenant, status): n for tenant, status, n in session.execute(TENANT_LIVE)}
            at_risk = session.scalar(at_risk_query(deadline))
            backlog = session.scalar(
                select(func.count()).select_from(Outbox).where(Outbox.dispatched_at.is_(None))
            )
            units = session.execute(
                select(Job.account, func.sum(Job.units)).where(Job.units.is_not(None)).group_by(Job.account)
            ).all()
        jobs = GaugeMetricFamily("kling_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        # Every tenant, even one with no live job (0): its series does not vanish when it drains.
        per_tenant = GaugeMetricFamily(
            "kling_tenant_jobs", "Live jobs by tenant and status", labels=["tenant", "status"]
        )
        for tenant in sorted({*tenants, *(tenant for tenant, _ in live)}):
            for status in LIVE:
                per_tenant.add_metric([tenant, status.value], live.get((tenant, status.value), 0))
        risk = GaugeMetricFamily(
            "kling_images_at_risk",
            "Images not archived yet, within 5 days of the provider's 30-day deletion",
        )
        risk.add_metric([], at_risk or 0)
        outbox = GaugeMetricFamily("kling_outbox_backlog", "Outbox rows not yet published to the broker")
        outbox.add_metric([], backlog or 0)
        # A counter by name (it only grows), computed from the jobs so every process agrees.
        total = CounterMetricFamily("kling_units", "Units deducted by finished tasks", labels=["account"])
        first = self._settings.accounts[0].name
        by_account: dict[str, float] = {}
        for account, value in units:
            by_account[account or first] = by_account.get(account or first, 0.0) + float(value or 0.0)
        for account_name in sorted(by_account):
            total.add_metric([account_name], by_account[account_name])
        return [jobs, per_tenant, risk, outbox, total]


def account_states(views: list[AccountView]) -> GaugeMetricFamily:
    """1 for each account's current state, 0 for its others."""
    family = GaugeMetricFamily(
        "kling_account_state", "Account state (1 = current)", labels=["account", "state"]
    )
    for view in views:
        for state in STATES:
            family.add_metric([view.name, state], 1 if view.state == state else 0)
    return family


class ProcessCollector(Collector):
    """This process's (or, in multiprocess mode, every process's) counters, minus derived names."""

    def __init__(self, source: Collector | CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._source.collect() if m.name not in DERIVED]


def _process_source() -> Collector | CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def init_app(app: Flask, settings: Settings) -> None:
    """Call after `webhook.db.init_app` (the collector reads the app's session factory)."""
    with app.app_context():
        sessions = db.sessions()

    def limiter() -> Any:
        return db.limiter_for(app)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessCollector(_process_source()))

    from webhook.accounts import services_for  # here: that module imports this one's neighbours
    from webhook.tenant_metrics import TenantCollector

    def accounts() -> list[AccountView]:
        return account_views(services_for(app), with_units=False)

    state = StateCollector(sessions, settings, limiter, accounts=accounts)
    registry.register(state)
    registry.register(TenantCollector(lambda: services_for(app)))
    app.extensions[REGISTRY_KEY] = registry
    app.extensions[STATE_KEY] = state
    app.extensions[TOKEN_KEY] = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    app.register_blueprint(bp)


def state_snapshot(app: Flask) -> dict[str, float]:
    """The scrape-time gauges as `{name or name{label}: value}` (the dashboard shows them)."""
    state: StateCollector = app.extensions[STATE_KEY]
    out: dict[str, float] = {}
    for metric in state.collect():
        for sample in metric.samples:
            label = ",".join(sample.labels.values())
            out[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return out


@bp.get("/metrics")
def metrics() -> Response | tuple[dict[str, str], int, dict[str, str]]:
    expected: str = current_app.extensions[TOKEN_KEY]
    if expected and not bearer_matches(expected, request.headers.get("Authorization", "")):
        return (
            {"error": "missing or invalid bearer token (METRICS_TOKEN)", "field": "Authorization"},
            401,
            {"WWW-Authenticate": 'Bearer realm="kling-orchestrator metrics"'},
        )
    registry: CollectorRegistry = current_app.extensions[REGISTRY_KEY]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)


__all__ = [
    "DERIVED",
    "LIMITER_KEY",
    "STATE_MAX_AGE_SECONDS",
    "ProcessCollector",
    "StateCollector",
    "bearer_matches",
    "bp",
    "init_app",
    "is_fresh",
    "state_snapshot",
]
