"""The webhook's gunicorn settings: loaded by every launcher, and the worker heap frozen after load."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from klingctl.ops import GUNICORN_CONFIG, gunicorn_argv
from tests.api.conftest import make_settings
from webhook import create_app, gunicorn_conf
from webhook.db import _PUBLISH


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
