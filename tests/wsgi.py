"""Serve a WSGI app over real HTTP on 127.0.0.1 for a test (a thread, stopped at exit)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


@contextmanager
def serve_wsgi(app: Callable[..., Any]) -> Iterator[str]:
    """The app's base URL while the block runs."""
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
