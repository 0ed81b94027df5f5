"""Hypothesis drives random sequences of callbacks (fresh, redelivered, reordered, stale, forged) for
several jobs through the real app and database, and checks the state machine's invariants after
every step. Each example runs in one transaction that is rolled back."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models import Image, Job, Transition, callback_token, create_job, transition
from models.settings import Settings
from tests.conftest import TEST_CALLBACK_SECRET, TEST_WEBHOOK_SECRET
from tests.data.helpers import RANK, encode, expected_outcome, legacy_body, signed_headers, snapshot
from webhook import create_app

PROVIDER_STATUSES = ["submitted", "processing", "succeeded", "failed"]
FORGERIES = ["wrong_token", "other_job_token", "tampered_body", "old_timestamp", "unsigned", "foreign_task"]
JOBS = 3


class CallbackMachine(RuleBasedStateMachine):
    engine: ClassVar[Engine]
    sessions: ClassVar[sessionmaker[Session]]
    client: ClassVar[FlaskClient]

    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.connection = self.engine.connect()
        self.outer = self.connection.begin()
        # The app (built once per test) and this example share one connection, rolled back at teardown.
        self.sessions.configure(bind=self.connection)
        self.session = self.sessions()
        self.jobs: list[str] = []
        self.status: dict[str, str] = {}
        self.images: dict[str, int] = {}
        self.seen: dict[str, list[str]] = {}
        for i in range(JOBS):
            job = create_job(self.session, {"prompt": f"p{i}", "n": 2}, provider="kling").job
            # Job 0 has no provider task id yet: its callbacks must be adopted via external_task_id.
            if i:
                transition(self.session, job, "submitted", source="worker", provider_task_id=f"task-{i}")
            self.session.commit()
            self.jobs.append(job.id)
            self.status[job.id] = job.status
            self.images[job.id] = 0
            self.seen[job.id] = [job.status]

    def teardown(self) -> None:
        self.session.close()
        self.outer.rollback()
        self.connection.close()

    def _body(self, job_index: int, status: str, n_images: int) -> bytes:
        job_id = self.jobs[job_index]
        return encode(
            legacy_body(
                f"task-{job_index}", status, external_task_id=job_id, n_images=n_images, message=status
            )
        )

    def _post(self, job_id: str, body: bytes, headers: dict[str, str], token: str | None = None) -> Any:
        token = token or callback_token(TEST_CALLBACK_SECRET, job_id)
        return self.client.post(f"/callbacks/kling/{job_id}/{token}", data=body, headers=headers)

    @rule(
        target=sent,
        job_index=st.integers(0, JOBS - 1),
        status=st.sampled_from(PROVIDER_STATUSES),
        n_images=st.integers(1, 3),
    )
    def deliver(self, job_index: int, status: str, n_images: int) -> tuple[int, bytes, str]:
        job_id = self.jobs[job_index]
        body = self._body(job_index, status, n_images)
        headers = signed_headers(body)
        answer = self._post(job_id, body, headers)
        expected = expected_outcome(self.status[job_id], status)
        assert (answer.status_code, answer.get_json()) == (200, {"outcome": expected})
        if expected == "applied":
            self.status[job_id] = status
            if status == "succeeded":
                self.images[job_id] = n_images
        return job_index, body, headers["webhook-id"]

    @rule(delivery=sent)
    def redeliver(self, delivery: tuple[int, bytes, str]) -> None:
        job_index, body, msg_id = delivery
        answer = self._post(self.jobs[job_index], body, signed_headers(body, msg_id=msg_id))
        assert (answer.status_code, answer.get_json()) == (200, {"outcome": "duplicate"})

    @rule(
        job_index=st.integers(0, JOBS - 1),
        status=st.sampled_from(PROVIDER_STATUSES),
        kind=st.sampled_from(FORGERIES),
    )
    def forge(self, job_index: int, status: str, kind: str) -> None:
        job_id = self.jobs[job_index]
        other = self.jobs[(job_index + 1) % JOBS]
        body = self._body(job_index, status, 2)
        headers = signed_headers(body)
        token = None
        expected_code = 401
        if kind == "wrong_token":
            token, expected_code = "f" * 64, 403
        elif kind == "other_job_token":
            token, expected_code = callback_token(TEST_CALLBACK_SECRET, other), 403
        elif kind == "tampered_body":
            body = self._body(job_index, "failed" if status != "failed" else "succeeded", 2)
        elif kind == "old_timestamp":
            headers = signed_headers(body, timestamp=int(time.time()) - 301)
        elif kind == "unsigned":
            headers = {"content-type": "application/json"}
        else:
            # Correctly addressed and signed, but the task belongs to another job.
            body = encode(legacy_body(f"task-{(job_index + 1) % JOBS}", status, external_task_id=other))
            headers, expected_code = signed_headers(body), 409
        before = snapshot(self.session)
        answer = self._post(job_id, body, headers, token)
        assert answer.status_code == expected_code
        assert snapshot(self.session) == before

    @rule(job_index=st.integers(0, JOBS - 1))
    def archive(self, job_index: int) -> None:
        job_id = self.jobs[job_index]
        job = self.session.get(Job, job_id)
        assert job is not None
        moved = transition(self.session, job, "archived", source="archiver").changed
        self.session.commit()
        assert moved == (self.status[job_id] == "succeeded")
        if moved:
            self.status[job_id] = "archived"

    @invariant()
    def invariants_hold(self) -> None:
        # One query per table keeps the many steps Hypothesis runs cheap.
        self.session.expire_all()
        statuses = {job_id: status for job_id, status in self.session.execute(select(Job.id, Job.status))}
        rows = self.session.execute(
            select(Transition.job_id, Transition.from_status, Transition.to_status).order_by(Transition.id)
        ).all()
        image_rows = self.session.execute(select(Image.job_id, Image.index)).all()
        for job_id in self.jobs:
            # The database agrees with the model; status monotonic; terminal states absorb everything.
            status = statuses[job_id]
            assert status == self.status[job_id]
            history = self.seen[job_id]
            assert RANK[status] >= RANK[history[-1]]
            assert not (history[-1] in ("archived", "failed") and status != history[-1])
            history.append(status)
            # One transition per (job, to-status), chained from the previous one.
            mine = [(frm, to) for jid, frm, to in rows if jid == job_id]
            targets = [to for _, to in mine]
            assert len(targets) == len(set(targets))
            assert [frm for frm, _ in mine] == [None, *targets[:-1]]
            assert targets[-1] == status
            # Image rows made once, from the first success only.
            indexes = sorted(index for jid, index in image_rows if jid == job_id)
            assert indexes == list(range(self.images[job_id]))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_callback_sequences_keep_invariants(backend: str, request: pytest.FixtureRequest) -> None:
    CallbackMachine.engine = request.getfixturevalue(
        "db_engine" if backend == "postgresql" else "sqlite_engine"
    )
    CallbackMachine.sessions = sessionmaker(join_transaction_mode="create_savepoint", expire_on_commit=False)
    app = create_app(
        Settings(
            database_url="sqlite://",
            callback_secret=SecretStr(TEST_CALLBACK_SECRET),
            kling_webhook_secret=SecretStr(TEST_WEBHOOK_SECRET),
        ),
        session_factory=CallbackMachine.sessions,
    )
    CallbackMachine.client = app.test_client()
    run_state_machine_as_test(
        CallbackMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
