"""The webhook's gunicorn settings: loaded by every launcher, and the worker heap frozen after load."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.app.wsgiapp import WSGIApplication

from klingctl.ops import GUNICORN_CONFIG, gunicorn_argv
from tests.api.conftest import make_settings
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
