"""Where a callback's time goes: `python -m bench.profile_ingest [N]`.

Sends N callbacks (the ingest benchmark's mix) through the real app in-process, counts the SQL
statements and commits per callback, and prints cProfile's top functions by cumulative time.
"""

from __future__ import annotations

import cProfile
import pstats
import random
import sys
import time
from typing import Any

from sqlalchemy import event

from bench import infra
from bench.ingest import build_requests
from bench.seed import seed_jobs
from webhook import create_app
from webhook.db import sessions


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with infra.private_database() as url:
        ids = seed_jobs(url, count, statuses={"submitted": 1.0}, keep_ids=count).job_ids_by_status[
            "submitted"
        ]
        reqs = build_requests(ids, random.Random(3))
        app = create_app(infra.bench_settings(database_url=url))
        client = app.test_client()
        with app.app_context():
            engine = sessions().kw["bind"]
        statements: list[str] = []
        commits: list[int] = []

        def on_sql(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement.split(None, 1)[0].upper())

        event.listen(engine, "before_cursor_execute", on_sql)
        event.listen(engine, "commit", lambda conn: commits.append(1))
        infra.flush_redis()
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _, path, body in reqs:
            resp = client.post(path, data=body, content_type="application/json")
            assert resp.status_code == 200, resp.get_data(as_text=True)
        profiler.disable()
        elapsed = time.perf_counter() - start
        infra.flush_redis()
        engine.dispose()
    n = len(reqs)
    kinds: dict[str, int] = {}
    for s in statements:
        kinds[s] = kinds.get(s, 0) + 1
    print(
        f"{n} callbacks in {elapsed:.2f} s = {n / elapsed:.0f}/s on one thread, "
        f"{1000 * elapsed / n:.2f} ms each"
    )
    print(f"SQL statements per callback: {len(statements) / n:.1f} {sorted(kinds.items())}")
    print(f"commits per callback: {len(commits) / n:.2f}")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
