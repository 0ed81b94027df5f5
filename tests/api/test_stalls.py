"""No request waits on a stalled dependency: a server that accepts connections and never answers.

A stalled server is played by a listening socket nobody reads (the kernel completes the
handshake and takes the bytes, nothing answers: what a SIGSTOPped Redis looks like), and for
PostgreSQL by a proxy that stops passing bytes on every connection it holds. Each request runs in
a thread joined with a deadline far above the bounds: the test checks that it answers, not how fast
(the chaos suite's `redis-stall` and `postgres-stall` time the real servers).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from models.outbox import SUBMIT_JOB
from models.tables import Outbox
from tests.api.conftest import AUTH, build_app, make_settings
from webhook import create_app
from webhook.api import S3_CLIENT
from webhook.db import limiter_for, sessions, set_publisher

pytestmark = pytest.mark.integration

T = TypeVar("T")
BODY = {"prompt": "a red fox in the snow", "n": 1, "aspect_ratio": "16:9"}
# Far above every bound (about 2 s a step): a call still running then is hanging.
HANG = 30.0


def answered(call: Callable[[], T]) -> T:
    """`call()`'s result, run in a thread; fails the test if it has not returned within HANG."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed back to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=HANG)
    assert not thread.is_alive(), f"no answer after {HANG:.0f} s: the call hangs on the stalled server"
    if errors:
        raise errors[0]
    return box[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does, into the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        yield listener.getsockname()[1]


class StallingProxy:
    """A TCP proxy that, once `stall()`ed, holds every byte either way and keeps every connection
    open, new ones included: a SIGSTOPped server as its clients see it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.closing = True
        self.flowing.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()  # stalled: the bytes wait here, the sockets stay open
                if self.closing:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()


def test_a_stalled_broker_leaves_the_row_in_the_outbox_and_the_create_answers(
    db_engine: Engine, s3_client: Any, silent_port: int
) -> None:
    with db_engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        settings = make_settings(celery_broker_url=f"redis://127.0.0.1:{silent_port}/0")
        # No set_publisher: the app's own Celery publisher, pointed at the silent broker.
        app, _ = build_app(settings, factory, s3_client)
        client = app.test_client()
        try:
            response = answered(lambda: client.post("/v1/jobs", json=BODY, headers=AUTH))
            assert response.status_code == 202, response.get_json()
            job_id = response.get_json()["id"]
            with factory() as session:
                rows = session.scalars(select(Outbox).where(Outbox.task == SUBMIT_JOB)).all()
            mine = [row for row in rows if row.args == [job_id]]
            assert len(mine) == 1
            assert mine[0].dispatched_at is None  # waiting for the relay
        finally:
            outer.rollback()


def test_the_limiter_of_the_request_path_gives_up_on_a_stalled_redis(silent_port: int) -> None:
    app = create_app(make_settings(redis_url=f"redis://127.0.0.1:{silent_port}/1"))
    limiter = limiter_for(app)
    with pytest.raises(redis.RedisError):
        answered(limiter.holders)


def test_a_stalled_database_answers_503_with_retry_after_then_recovers(
    committed_pg_url: str, s3_client: Any
) -> None:
    url = make_url(committed_pg_url)
    proxy = StallingProxy(url.host or "127.0.0.1", url.port or 5432)
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # The app builds its own engine, with the webhook's bounds on every wait for the server.
    app = create_app(make_settings(database_url=via_proxy))
    app.extensions[S3_CLIENT] = s3_client
    set_publisher(app, None)
    client = app.test_client()
    unknown = f"/v1/jobs/{uuid.uuid4()}"
    try:
        assert client.get(unknown, headers=AUTH).status_code == 404  # the database answered
        proxy.stall()
        # A pooled connection (its ping stalls) and then a new one (its start-up stalls).
        for _ in range(2):
            response = answered(lambda: client.get(unknown, headers=AUTH))
            assert response.status_code == 503
            assert response.headers["Retry-After"]
        proxy.resume()
        assert answered(lambda: client.get(unknown, headers=AUTH)).status_code == 404
    finally:
        proxy.close()
        with app.app_context():
            bind = sessions().kw["bind"]
            assert isinstance(bind, Engine)
            bind.dispose()
