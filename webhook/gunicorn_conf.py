"""gunicorn settings for the webhook: `gunicorn -c python:webhook.gunicorn_conf 'webhook:create_app()'`.

Every way this project starts the webhook (`klingctl webhook`, the Dockerfile, docker-compose, the
benchmarks, the chaos suite) passes this module; command-line flags still override it.

The webhook faces the network (Kling's callbacks come from the internet), so the defaults bound what
one client can hold: `gthread` workers (a connection waiting for bytes sits in the worker's poller,
not in a thread), a request line, header count and header size limit, and socket timeouts. Slow
senders can still occupy a thread while a request is being read: put a buffering proxy (nginx,
Caddy, a cloud load balancer) in front for TLS and full request buffering (SECURITY.md).
"""

from __future__ import annotations

import gc
from typing import Any

worker_class = "gthread"
# Requests wait on PostgreSQL and Redis, not CPU: a few threads per process keep it busy.
threads = 4
# A worker silent this long (a request stuck past every client/DB timeout) is killed and replaced.
timeout = 30
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = 20
# Idle keep-alive connections are closed after this; a load balancer's idle timeout should be longer.
keepalive = 5
# Callback paths are ~150 characters, list queries carry a cursor; 4 KiB is gunicorn's own ceiling.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# No access log: callback paths carry per-job tokens (the app's own logs redact them).
accesslog = None


def post_worker_init(worker: Any) -> None:
    from webhook.db import warm_publisher

    # In each worker, after the fork: connections must not be shared with the parent.
    warm_publisher(worker.wsgi)
    # The loaded app is ~140,000 long-lived objects (Flask, SQLAlchemy, boto3, Celery). A full
    # collection walks all of them, ~90 ms on a small VM, and every request in flight waits for it.
    # Frozen objects are left out of collections; only what requests allocate is walked.
    gc.freeze()
