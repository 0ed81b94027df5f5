"""gunicorn settings for the webhook: `gunicorn -c python:webhook.gunicorn_conf 'webhook:create_app()'`.

Every way this project starts the webhook (`klingctl webhook`, the Dockerfile, docker-compose, the
benchmarks, the chaos suite) passes this module; command-line flags still override it.
"""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    from webhook.db import warm_publisher

    # In each worker, after the fork: connections must not be shared with the parent.
    warm_publisher(worker.wsgi)
    # The loaded app is ~140,000 long-lived objects (Flask, SQLAlchemy, boto3, Celery). A full
    # collection walks all of them, ~90 ms on a small VM, and every request in flight waits for it.
    # Frozen objects are left out of collections; only what requests allocate is walked.
    gc.freeze()
