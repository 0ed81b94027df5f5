"""Our statements are planned for their own parameters, never from a cached generic plan.

After five custom plans PostgreSQL may switch a prepared statement to a generic plan, made from
the statistics of that moment and kept until an ANALYZE. Made while a table is small (a new
deployment, a burst of jobs before autovacuum's ANALYZE, a server without autovacuum), it scans
that table for as long as the connection lives. Every engine of ours asks PostgreSQL for custom
plans (models/db.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from models.db import session_scope
from models.documents import job_document
from models.statemachine import create_job
from tests.api.conftest import AUTH, make_settings
from webhook import create_app
from webhook.api import S3_CLIENT
from webhook.db import sessions, set_publisher
from worker.services import Services

PLANS_MADE = (
    "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) FROM pg_prepared_statements"
)
READS = 30  # on each pooled connection, well past the runs after which PostgreSQL goes generic


def test_a_job_read_again_and_again_is_planned_every_time(committed_pg_url: str, s3_client: Any) -> None:
    app = create_app(make_settings(database_url=committed_pg_url))
    app.extensions[S3_CLIENT] = s3_client
    set_publisher(app, None)
    client = app.test_client()
    created = client.post("/v1/jobs", json={"prompt": "plans", "n": 1}, headers=AUTH)
    assert created.status_code == 202, created.json
    with app.app_context():
        engine = sessions().kw["bind"]
    assert isinstance(engine, Engine)
    try:
        for _ in range(READS):
            assert client.get(f"/v1/jobs/{created.json['id']}", headers=AUTH).status_code == 200
        # Every connection the requests used is back in the pool: take them all and look at each.
        conns = [engine.connect() for _ in range(engine.pool.checkedin())]
        generic = custom = 0
        for conn in conns:
            g, c = conn.execute(text(PLANS_MADE)).one()
            generic, custom = generic + g, custom + c
            conn.close()
        assert (generic, custom) == (0, custom) and custom > 0, (generic, custom)
        assert generic == 0
    finally:
        engine.dispose()


def test_the_workers_statements_are_planned_every_time_too(committed_pg_url: str) -> None:
    svc = Services(make_settings(database_url=committed_pg_url))
    try:
        with session_scope(svc.sessions) as session:
            job_id = create_job(session, {"prompt": "plans"}, provider="kling").job.id
        with session_scope(svc.sessions) as session:
            for _ in range(READS):
                assert job_document(session, job_id) is not None
            generic, custom = session.execute(text(PLANS_MADE)).one()
        assert (generic, custom) == (0, custom) and custom > 0, (generic, custom)
    finally:
        svc.engine.dispose()
