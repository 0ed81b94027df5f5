"""A reverse proxy in front of moto that answers 503 SlowDown while `failing` is set.

moto keeps its objects in memory, so stopping it would lose the archive; the proxy lets the suite
take S3 "down" without losing data.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import urllib3

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>ServiceUnavailable</Code><Message>chaos: S3 is down</Message></Error>"
)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A worker SIGKILLed mid-upload resets its connection: expected here, not worth a traceback.
        return


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.failing = threading.Event()
        self.refused = 0
        self._pool = urllib3.PoolManager(maxsize=16, timeout=urllib3.Timeout(connect=5, read=60))
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits forever for a loop that never started
            self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._pool.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return  # the proxy is silent; the worker logs say what S3 answered

            def _read(self, size: int) -> bytes:
                data = self.rfile.read(size)
                if len(data) < size:
                    # The client went away mid-request (a SIGKILLed worker): a real store never
                    # sees that request complete, so it must not reach moto, which would store
                    # the truncated body (it does not check Content-MD5).
                    raise ConnectionAbortedError(f"request body cut short: {len(data)} of {size} bytes")
                return data

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        line = self.rfile.readline()
                        if not line.endswith(b"\n"):
                            raise ConnectionAbortedError("chunked request body cut short")
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self._read(size))
                        self._read(2)  # the CRLF after each chunk
                return self._read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if proxy.failing.is_set():
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(UNAVAILABLE)))
                    self.end_headers()
                    self.wfile.write(UNAVAILABLE)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                resp = proxy._pool.request(
                    self.command,
                    proxy.upstream + self.path,
                    body=body,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    decode_content=False,
                )
                data = resp.data
                self.send_response(resp.status)
                for key, value in resp.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                # A HEAD answer carries the object's length, not the (empty) body's.
                length = resp.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
