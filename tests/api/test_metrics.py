"""`/metrics`: scrape-time gauges from PostgreSQL and the Redis limiter, plus this process's counters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, text, update
from sqlalchemy.orm import Session, sessionmaker

from kling.callbacks import sign_callback
from models.base import utcnow
from models.enums import JobStatus
from models.tables import Image, Job
from models.tenants import create_tenant
from models.tokens import callback_token
from tests.api.conftest import Api, build_app, make_settings
from tests.conftest import TEST_CALLBACK_SECRET, TEST_WEBHOOK_SECRET
from tests.data.helpers import encode, legacy_body
from webhook.db import set_publisher
from webhook.metrics import (
    LIMITER_KEY,
    STATE_KEY,
    STATE_MAX_AGE_SECONDS,
    TENANT_LIVE,
    is_fresh,
    state_snapshot,
)
from worker import metrics as worker_metrics
from worker.limiter import RedisSlotLimiter

NAMES = {
    "kling_jobs",
    "kling_tenant_jobs",
    "kling_callbacks",
    "kling_provider_errors",
    "kling_slots_in_use",
    "kling_slots_limit",
    "kling_archive_bytes",
    "kling_archive_seconds",
    "kling_images_at_risk",
    "kling_outbox_backlog",
}


def scrape(api: Api) -> dict[str, dict[tuple[Any, ...], float]]:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    out: dict[str, dict[tuple[Any, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} exposed twice"
        out[family.name] = {
            (sample.name, *sorted(sample.labels.items())): sample.value for sample in family.samples
        }
    return out


def value(metrics: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    return float(metrics[family][(sample or family, *sorted(labels.items()))])


def post_callback(api: Api, job_id: str, body: dict[str, Any]) -> int:
    raw = encode(body)
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(utcnow().timestamp())),
    }
    headers["webhook-signature"] = sign_callback(
        TEST_WEBHOOK_SECRET, "msg_1", int(headers["webhook-timestamp"]), raw
    )
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    response = api.client.post(f"/callbacks/kling/{job_id}/{token}", data=raw, headers=headers)
    return response.status_code


def test_every_metric_is_exposed_with_values_from_the_database(api: Api) -> None:
    set_publisher(api.app, None)  # nothing published: the outbox keeps every row
    ids = [api.create({"prompt": f"p{i}", "n": 2}).get_json()["id"] for i in range(3)]
    assert post_callback(api, ids[0], legacy_body("task-a", "processing", external_task_id=ids[0])) == 200
    now = utcnow()
    # Images exist once the provider succeeded; those of live jobs count towards the risk.
    api.session.execute(update(Job).where(Job.id == ids[1]).values(status="succeeded"))
    api.session.add(
        Image(
            job_id=ids[1],
            index=0,
            source_url="https://cdn.klingai.com/a.png",
            provider_created_at=now - timedelta(days=26),
        )
    )
    api.session.add(
        Image(
            job_id=ids[1],
            index=1,
            source_url="https://cdn.klingai.com/b.png",
            provider_created_at=now - timedelta(days=1),
        )
    )
    api.session.commit()
    worker_metrics.images_at_risk.set(99)  # the worker's last-sweep value must not be exposed twice
    api.limiter.acquire(ids[0], 2)

    metrics = scrape(api)
    assert set(metrics) >= NAMES
    assert value(metrics, "kling_jobs", status="queued") == 1
    assert value(metrics, "kling_jobs", status="succeeded") == 1
    assert value(metrics, "kling_jobs", status="processing") == 1
    assert value(metrics, "kling_jobs", status="archived") == 0
    assert value(metrics, "kling_images_at_risk") == 1
    assert value(metrics, "kling_outbox_backlog") == 3
    assert value(metrics, "kling_slots_in_use") == 2
    assert value(metrics, "kling_slots_limit") == 5
    assert value(metrics, "kling_callbacks", "kling_callbacks_total", outcome="applied") >= 1
    assert value(metrics, "kling_metrics_source_up", source="database") == 1


def test_slots_come_from_the_shared_redis_limiter(
    api: Api, redis_client: redis.Redis, redis_key_prefix: str
) -> None:
    shared = RedisSlotLimiter(redis_client, limit=5, lease_seconds=60, key_prefix=redis_key_prefix)
    # Another process (a worker) holds slots; the webhook's scrape sees them through Redis.
    RedisSlotLimiter(redis_client, limit=5, lease_seconds=60, key_prefix=redis_key_prefix).acquire("job-x", 3)
    api.app.extensions[LIMITER_KEY] = shared
    assert value(scrape(api), "kling_slots_in_use") == 3
    shared.release("job-x")
    assert value(scrape(api), "kling_slots_in_use") == 0


def test_an_unreachable_limiter_is_reported_not_fatal(api: Api) -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, socket_timeout=1)
    api.app.extensions[LIMITER_KEY] = RedisSlotLimiter(down, limit=5, lease_seconds=60)
    metrics = scrape(api)
    assert "kling_slots_in_use" not in metrics
    assert value(metrics, "kling_slots_limit") == 5
    assert value(metrics, "kling_metrics_source_up", source="limiter") == 0
    assert value(metrics, "kling_jobs", status="queued") == 0


class FakeClock:
    """Monotonic seconds the test moves by hand: the cache window without sleeping or timing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def statements(db_engine: Engine) -> Iterator[list[str]]:
    """Every SQL statement the app sends to PostgreSQL while the test runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db_engine, "before_cursor_execute", record)


def test_scrapes_inside_the_window_run_the_database_queries_once(api: Api, statements: list[str]) -> None:
    clock = FakeClock()
    api.app.extensions[STATE_KEY].clock = clock
    api.create({"prompt": "counted", "n": 1})
    statements.clear()
    for _ in range(20):
        metrics = scrape(api)
        assert value(metrics, "kling_jobs", status="queued") == 1
        clock.now += STATE_MAX_AGE_SECONDS / 40  # all 20 scrapes inside one window
    counts = [s for s in statements if "count(" in s.lower()]
    # Jobs by status, live jobs by tenant, images at risk, outbox backlog: once.
    assert len(counts) == 4
    # The dashboard's snapshot reads the same copy.
    state_snapshot(api.app)
    assert len([s for s in statements if "count(" in s.lower()]) == 4

    # A new job is seen once the window has passed, by one more round of queries.
    api.create({"prompt": "later", "n": 1})
    statements.clear()
    clock.now += STATE_MAX_AGE_SECONDS
    metrics = scrape(api)
    assert value(metrics, "kling_jobs", status="queued") == 2
    assert value(metrics, "kling_metrics_state_age_seconds") == 0
    assert len([s for s in statements if "count(" in s.lower()]) == 4
    clock.now += 4
    assert value(scrape(api), "kling_metrics_state_age_seconds") == 4


def test_freshness_is_a_window_of_15_seconds() -> None:
    assert not is_fresh(None, 10.0)
    assert is_fresh(10.0, 10.0) and is_fresh(10.0, 24.9)
    assert not is_fresh(10.0, 25.0)
    assert not is_fresh(10.0, 9.0)  # a clock that went backwards never serves a copy forever


METRICS_TOKEN = "test-metrics-token-0123456789-abcdefghijk"


def test_metrics_token_is_required_when_set(db_engine: Engine, s3_client: Any) -> None:
    with db_engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        app, _ = build_app(make_settings(metrics_token=METRICS_TOKEN), factory, s3_client)
        client = app.test_client()
        try:
            wrong = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {METRICS_TOKEN}"})
            for headers in wrong:
                refused = client.get("/metrics", headers=headers)
                assert refused.status_code == 401
                assert refused.get_json()["field"] == "Authorization"
                assert METRICS_TOKEN not in refused.get_data(as_text=True)
                assert "kling_jobs" not in refused.get_data(as_text=True)
            allowed = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
            assert allowed.status_code == 200 and "kling_jobs" in allowed.get_data(as_text=True)
        finally:
            outer.rollback()


def test_metrics_are_open_without_a_token(api: Api) -> None:
    assert api.client.get("/metrics").status_code == 200


def test_units_and_account_states_are_exposed_by_account(api: Api) -> None:
    from webhook.accounts import SERVICES_KEY

    ids = [api.create({"prompt": f"p{i}"}).get_json()["id"] for i in range(3)]
    api.session.execute(update(Job).where(Job.id == ids[0]).values(account="default", units=2.0))
    api.session.execute(
        update(Job).where(Job.id == ids[1]).values(account=None, units=1.5)
    )  # before accounts
    api.session.commit()
    api.app.extensions[SERVICES_KEY].account_gate.pause("default", 1102, "dry")
    metrics = scrape(api)
    assert value(metrics, "kling_units", "kling_units_total", account="default") == 3.5
    assert value(metrics, "kling_account_state", account="default", state="paused") == 1
    assert value(metrics, "kling_account_state", account="default", state="active") == 0
    assert value(metrics, "kling_account_state", account="default", state="disabled") == 0
    assert value(metrics, "kling_metrics_source_up", source="accounts") == 1


def test_live_jobs_are_counted_by_tenant(api: Api) -> None:
    for name in ("acme", "zeta", "idle"):
        create_tenant(api.session, name)
    api.session.commit()

    def job(tenant: str, status: JobStatus) -> None:
        job_id = api.create({"prompt": f"{tenant} {status}", "tenant": tenant}).get_json()["id"]
        api.session.execute(update(Job).where(Job.id == job_id).values(status=status.value))

    for tenant, status in (
        ("acme", JobStatus.QUEUED),
        ("acme", JobStatus.QUEUED),
        ("acme", JobStatus.PROCESSING),
        ("acme", JobStatus.ARCHIVED),
        ("zeta", JobStatus.SUBMITTED),
        ("zeta", JobStatus.FAILED),
        ("default", JobStatus.QUEUED),
        ("default", JobStatus.SUCCEEDED),
    ):
        job(tenant, status)
    api.session.commit()

    shown = {
        (labels["tenant"], labels["status"]): n
        for (_, *pairs), n in scrape(api)["kling_tenant_jobs"].items()
        for labels in [dict(pairs)]
    }
    # Every tenant, live statuses only, 0 where it has none (finished jobs are not counted here).
    assert shown == {
        ("acme", "queued"): 2,
        ("acme", "submitted"): 0,
        ("acme", "processing"): 1,
        ("default", "queued"): 1,
        ("default", "submitted"): 0,
        ("default", "processing"): 0,
        ("idle", "queued"): 0,
        ("idle", "submitted"): 0,
        ("idle", "processing"): 0,
        ("zeta", "queued"): 0,
        ("zeta", "submitted"): 1,
        ("zeta", "processing"): 0,
    }
    # The process-wide gauge still counts every tenant's jobs.
    assert value(scrape(api), "kling_jobs", status="queued") == 3


def test_tenant_counts_read_indexes_never_the_whole_table(db_session: Session) -> None:
    """The query behind kling_tenant_jobs, planned by PostgreSQL with table scans priced out: queued
    jobs come from the partial queue index alone, the others from an index led by the status."""
    db_session.execute(text("SET LOCAL enable_seqscan = off"))
    compiled = TENANT_LIVE.compile(db_session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = "\n".join(db_session.execute(text(f"EXPLAIN {compiled}")).scalars())
    assert "Seq Scan" not in plan, plan
    assert "Index Only Scan using ix_jobs_tenant_queue" in plan, plan
    # (status, updated_at) or (status, created_at, id): either reads only the rows in those statuses.
    assert "Index Scan on ix_jobs_status_" in plan or "Index Scan using ix_jobs_status_" in plan, plan
