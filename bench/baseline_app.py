"""Ingest baseline: a bare Flask endpoint, one INSERT per request (`bench.baseline_app:create_app()`).

Same URL shape, same engine factory (pool, driver) and same gunicorn settings as the real receiver,
so the ratio shows what the token check, the state machine, the event row and the outbox cost.
"""

from __future__ import annotations

import os

from flask import Flask, request
from sqlalchemy import Column, Integer, MetaData, String, Table, Text

from models.db import make_engine

metadata = MetaData()
events = Table(
    "bench_baseline_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", String(36), nullable=False),
    Column("body", Text, nullable=False),
)


def create_app() -> Flask:
    engine = make_engine(os.environ["DATABASE_URL"])
    app = Flask(__name__)

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/callbacks/kling/<job_id>/<token>")
    def receive(job_id: str, token: str) -> tuple[dict[str, str], int]:
        body = request.get_data(cache=False)
        with engine.begin() as conn:
            conn.execute(events.insert().values(job_id=job_id, body=body.decode("utf-8", "replace")))
        return {"outcome": "stored"}, 200

    return app
