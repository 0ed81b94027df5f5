"""The webhook's gunicorn settings: loaded by every launcher, and the worker heap frozen after load."""

from __future__ import annotations

import gc

from klingctl.ops import GUNICORN_CONFIG, gunicorn_argv
from webhook import gunicorn_conf


def test_post_worker_init_freezes_the_loaded_app_out_of_gc() -> None:
    gc.unfreeze()
    try:
        gunicorn_conf.post_worker_init(worker=None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_klingctl_webhook_passes_the_settings_module_to_gunicorn() -> None:
    argv = gunicorn_argv("127.0.0.1", 8000, 2)
    assert argv[argv.index("--config") + 1] == GUNICORN_CONFIG == "python:webhook.gunicorn_conf"
