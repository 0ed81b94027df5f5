"""Downstream delivery through the SSRF guard, on real sockets: nothing inside is reached (DNS
rebinding, address spellings, redirects, environment proxies), every attempt is bounded in time
and bytes, and each failure shows in the API as a word of the fixed vocabulary."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from models.db import session_scope
from models.delivery import VOCABULARY, DeliveryError, shown_error
from tests.conftest import TEST_API_TOKEN
from tests.fixtures.services import assert_no_connection
from tests.worker.conftest import RECEIVER_HOSTS
from tests.worker.test_notify import archived_job
from webhook import create_app
from webhook.openapi import openapi_document
from worker.delivery import WebhookSender
from worker.notify import notify_job
from worker.outcome import Step
from worker.services import Services

pytestmark = pytest.mark.integration


def rebinding_resolver(address: str) -> Callable[..., list[tuple[object, ...]]]:
    """What a hostile DNS server answers at send time, whatever it answered when the job was made."""

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


class RawServer:
    """A TCP server on 127.0.0.1 running `script(conn)` for each connection, in a thread."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = script
        self.finished: list[bool] = []  # one per connection: did the script run to its end
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self.script(conn)
                    self.finished.append(True)
                except OSError:
                    self.finished.append(False)  # the client hung up first

    def wait_done(self, connections: int = 1) -> None:
        deadline = time.monotonic() + 60
        while len(self.finished) < connections:
            assert time.monotonic() < deadline, "the server never finished its connection"
            time.sleep(0.05)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw_servers() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def make(script: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def drip_headers(conn: socket.socket) -> None:
    """A status line, then a header one byte every 50 ms: 10 s in all, each read well inside any
    per-read timeout."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for byte in b"X-Slow: " + b"a" * 192:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)
    conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")


def huge_body(conn: socket.socket) -> None:
    """200, then a 64 MiB body: far more than the socket buffers hold, so the server finishes
    writing only if the client reads it all."""
    conn.recv(65536)
    size = 64 * 1024 * 1024
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        conn.sendall(chunk)


def not_http(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


def shown(svc: Services, job_id: str) -> dict[str, object]:
    client = create_app(svc.settings).test_client()
    answer = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TEST_API_TOKEN}"})
    assert answer.status_code == 200
    (note,) = answer.get_json()["notifications"]
    return note  # type: ignore[no-any-return]


def deliver(svc: Services, url: str, sender: WebhookSender | None = None) -> tuple[Step, dict[str, object]]:
    with session_scope(svc.sessions) as s:
        job_id = archived_job(s, url)
    return notify_job(svc, job_id, sender=sender).step, shown(svc, job_id)


# --- nothing inside is reached ---------------------------------------------------------------------


def test_dns_rebinding_to_loopback_sends_nothing(svc: Services, silent_listener: socket.socket) -> None:
    """The name was public when the job was accepted; at send time it answers 127.0.0.1."""
    port = silent_listener.getsockname()[1]
    sender = WebhookSender(RECEIVER_HOSTS, resolver=rebinding_resolver("127.0.0.1"))
    step, note = deliver(svc, f"http://hooks.rebind.example:{port}/hook", sender)
    assert step is Step.RETRY
    assert (note["last_error"], note["last_status"]) == ("blocked_address", None)
    assert_no_connection(silent_listener)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "[::ffff:127.0.0.1]", "[::7f00:1]", "[64:ff9b::7f00:1]"],
)
def test_loopback_in_any_spelling_is_blocked(host: str, silent_listener: socket.socket) -> None:
    """Rows written before the create-time check, or spellings it might miss: the guard at connect
    time refuses them all (the real resolver)."""
    port = silent_listener.getsockname()[1]
    delivery = WebhookSender(RECEIVER_HOSTS).post(f"http://{host}:{port}/", b"{}", {})
    assert delivery.error is DeliveryError.BLOCKED_ADDRESS
    assert_no_connection(silent_listener)


def test_metadata_address_is_blocked_even_when_listed() -> None:
    sender = WebhookSender(["169.254.169.254"], resolver=rebinding_resolver("169.254.169.254"))
    assert sender.post("http://169.254.169.254/latest/meta-data/", b"{}", {}).error == "blocked_address"


def test_a_redirect_is_not_followed(
    svc: Services, httpserver: HTTPServer, silent_listener: socket.socket
) -> None:
    port = silent_listener.getsockname()[1]
    httpserver.expect_request("/hook", method="POST").respond_with_response(
        Response(status=307, headers={"Location": f"http://127.0.0.1:{port}/internal"})
    )
    step, note = deliver(svc, httpserver.url_for("/hook"))
    assert step is Step.RETRY
    assert (note["last_error"], note["last_status"]) == ("redirect", 307)
    assert len(httpserver.log) == 1
    assert_no_connection(silent_listener)


def test_environment_proxies_are_ignored(
    svc: Services, httpserver: HTTPServer, silent_listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://127.0.0.1:{silent_listener.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    step, note = deliver(svc, httpserver.url_for("/hook"))
    assert step is Step.DONE and note["delivered_at"] is not None
    assert len(httpserver.log) == 1
    assert_no_connection(silent_listener)


# --- bounded in time and bytes ---------------------------------------------------------------------


def test_a_dripping_receiver_ends_as_timeout(svc: Services, raw_servers: Callable[..., RawServer]) -> None:
    server = raw_servers(drip_headers)
    sender = WebhookSender(["127.0.0.1"], deadline_seconds=1.0)
    step, note = deliver(svc, f"http://127.0.0.1:{server.port}/hook", sender)
    assert step is Step.RETRY
    assert (note["last_error"], note["last_status"]) == ("timeout", None)
    server.wait_done()
    assert server.finished == [False]  # cut off mid-drip, not waited out


def test_a_huge_answer_is_not_read(svc: Services, raw_servers: Callable[..., RawServer]) -> None:
    server = raw_servers(huge_body)
    step, note = deliver(svc, f"http://127.0.0.1:{server.port}/hook", WebhookSender(["127.0.0.1"]))
    assert step is Step.DONE  # the status decides; the body is read up to 64 KiB, then dropped
    assert note["last_status"] == 200 and note["last_error"] is None
    server.wait_done()
    assert server.finished == [False]  # the server could not write its 64 MiB


# --- the vocabulary --------------------------------------------------------------------------------


def test_each_failure_is_one_word(
    svc: Services, httpserver: HTTPServer, raw_servers: Callable[..., RawServer]
) -> None:
    # Bound but not listening: connections are refused, and no other process can take the port
    # meanwhile (a closed port was once taken by the suite's background benchmark, which answered).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    try:
        httpserver.expect_request("/gone", method="POST").respond_with_data("no", status=404)
        httpserver.expect_request("/busy", method="POST").respond_with_data("later", status=503)
        local = WebhookSender(["127.0.0.1"])
        cases = {
            "refused": (f"http://127.0.0.1:{closed_port}/hook", local),
            "http_4xx": (httpserver.url_for("/gone"), None),
            "http_5xx": (httpserver.url_for("/busy"), None),
            "error": (f"http://127.0.0.1:{raw_servers(not_http).port}/hook", local),
            "timeout": (
                f"http://127.0.0.1:{raw_servers(drip_headers).port}/",
                WebhookSender(["127.0.0.1"], deadline_seconds=0.5),
            ),
            "blocked_address": (
                "http://hooks.example.com/",
                WebhookSender(resolver=rebinding_resolver("10.0.0.1")),
            ),
        }
        seen = {}
        for word, (url, sender) in cases.items():
            step, note = deliver(svc, url, sender)
            assert step is Step.RETRY, word
            seen[word] = note["last_error"]
        assert seen == {word: word for word in cases}
        assert set(seen) | {"redirect"} == VOCABULARY  # redirect: test_a_redirect_is_not_followed
    finally:
        closed.close()


def test_rows_from_before_the_vocabulary_show_a_word() -> None:
    assert shown_error("ConnectionError") == "error"
    assert shown_error("HTTP 503") == "http_5xx"
    assert shown_error("HTTP 404") == "http_4xx"
    assert shown_error("timeout") == "timeout"
    assert shown_error(None) is None


def test_openapi_lists_the_vocabulary() -> None:
    schema = openapi_document()["components"]["schemas"]["Notification"]["properties"]["last_error"]
    assert set(schema["enum"]) == VOCABULARY | {None}
