"""The webhook's gunicorn settings: loaded by every launcher, and the worker heap frozen after load."""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.app.wsgiapp import WSGIApplication

from klingctl.ops import GUNICORN_CONFIG, gunicorn_argv
from tests.api.conftest import make_settings
from tests.conftest import TEST_API_TOKEN
from webhook import create_app, gunicorn_conf
from webhook.db import _PUBLISH

ROOT = Path(__file__).resolve().parents[2]


def test_post_worker_init_prepares_the_publisher_and_freezes_the_loaded_app_out_of_gc() -> None:
    app = create_app(make_settings(celery_broker_url="memory://"))
    publisher = app.extensions[_PUBLISH]
    assert publisher._publish is None  # nothing built at create_app (the master process)
    gc.unfreeze()
    try:
        gunicorn_conf.post_worker_init(worker=SimpleNamespace(wsgi=app))
        # The first callback that publishes finds the Celery app built and its connection open.
        assert publisher._publish is not None
        with publisher._app.producer_or_acquire() as producer:
            assert producer.connection.connected
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_klingctl_webhook_passes_the_settings_module_to_gunicorn() -> None:
    argv = gunicorn_argv("127.0.0.1", 8000, 2)
    assert argv[argv.index("--config") + 1] == GUNICORN_CONFIG == "python:webhook.gunicorn_conf"


def loaded_config(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings gunicorn itself ends up with for a command line (config module, then flags)."""
    monkeypatch.setattr(sys, "argv", ["gunicorn", *argv])
    return WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg


NETWORK_FACING = {
    "worker_class_str": "gthread",
    "threads": 4,
    "timeout": 30,
    "graceful_timeout": 20,
    "keepalive": 5,
    "limit_request_line": 4094,
    "limit_request_fields": 50,
    "limit_request_field_size": 8190,
}


def test_every_launcher_gets_threaded_workers_with_socket_timeouts_and_request_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both files write the command as a JSON array (YAML flow sequence / Docker exec form).
    compose_cmd = next(
        json.loads(line.strip().removeprefix("command: "))
        for line in (ROOT / "docker-compose.yml").read_text().splitlines()
        if line.strip().startswith('command: ["gunicorn"')
    )
    dockerfile_cmd = next(
        json.loads(line.removeprefix("CMD "))
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD ")
    )
    launchers = {
        "klingctl webhook": gunicorn_argv("127.0.0.1", 8000, 2)[3:],
        "docker-compose": compose_cmd[1:],
        "Dockerfile": dockerfile_cmd[1:],
    }
    for name, argv in launchers.items():
        cfg = loaded_config(argv, monkeypatch)
        got = {key: getattr(cfg, key) for key in NETWORK_FACING}
        assert got == NETWORK_FACING, name
        assert cfg.accesslog is None, name  # callback paths carry tokens


def test_flags_still_override_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = loaded_config(gunicorn_argv("127.0.0.1", 8000, 2, ("--timeout", "60"))[3:], monkeypatch)
    assert cfg.timeout == 60 and cfg.worker_class_str == "gthread"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """The webhook under real gunicorn, started the way `klingctl webhook` starts it."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'kling.db'}",
        "CELERY_BROKER_URL": "memory://",
        "API_TOKEN": TEST_API_TOKEN,
    }
    proc = subprocess.Popen(
        gunicorn_argv("127.0.0.1", 0, 1), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            found = [
                m for line in list(lines) if (m := re.search(r"Listening at: http://127.0.0.1:(\d+)", line))
            ]
            booted = any("Booting worker" in line for line in list(lines))
            port = int(found[0].group(1)) if found and booted else None
            time.sleep(0.05)
        yield "127.0.0.1", port, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def status_of(host: str, port: int, request: bytes) -> int:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_the_served_webhook_refuses_oversized_request_lines_and_headers(
    served: tuple[str, int, list[str]],
) -> None:
    host, port, lines = served
    assert status_of(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 200
    assert any("Using worker: gthread" in line for line in lines)
    long_line = b"GET /healthz?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n"
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    # 60 headers pass gunicorn's own default (100): the 431 comes from our limit of 50.
    assert [status_of(host, port, r) for r in (long_line, many, big)] == [414, 431, 431]
    # A request inside the limits is still served after those.
    assert status_of(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 200
