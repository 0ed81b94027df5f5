"""A closed-loop HTTP load client: N threads, one keep-alive connection each, bounded count and time.

Python threads with http.client are enough here: the client spends its time waiting on sockets,
and the same client drives the service and its baseline, so its own cost cancels in the ratio.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TIMEOUT = 30.0


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def run_load(
    base_url: str,
    requests: list[tuple[str, str, bytes | None]],
    *,
    connections: int = 16,
    max_seconds: float = 60.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Send `(method, path, body)` requests in order from `connections` threads until done or out of time."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counter = itertools.count()  # next() on it is atomic under the GIL
    result = LoadResult()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + max_seconds
    base_headers = {"Content-Type": "application/json", **(headers or {})}

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        local_lat: list[float] = []
        local_status: Counter[int] = Counter()
        local_err: Counter[str] = Counter()
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= len(requests):
                    break
                method, path, body = requests[i]
                t0 = time.perf_counter()
                try:
                    conn.request(method, path, body=body, headers=base_headers)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    local_err[type(exc).__name__] += 1
                    conn.close()
                    continue
                local_lat.append(time.perf_counter() - t0)
                local_status[resp.status] += 1
                if resp.will_close:
                    conn.close()  # sync gunicorn workers close after each answer; reconnect next time
        finally:
            conn.close()
            with lock:
                result.latencies.extend(local_lat)
                result.statuses.update(local_status)
                result.errors.update(local_err)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_seconds + TIMEOUT + 10)
    result.elapsed = time.perf_counter() - start
    return result
