"""Prometheus metrics the worker updates (the webhook serves /metrics; DB-derived gauges are
computed at scrape time there)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

provider_errors = Counter(
    "kling_provider_errors_total", "Provider answers that were errors, by code", ["code"]
)
archive_bytes = Counter("kling_archive_bytes_total", "Bytes copied into S3")
archive_seconds = Histogram(
    "kling_archive_seconds",
    "Time to archive one image (fetch + upload + verify)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
images_at_risk = Gauge(
    "kling_images_at_risk", "Images not archived within 5 days of the provider's deletion (last sweep)"
)
tasks_total = Counter("kling_worker_tasks_total", "Worker task runs by task and outcome", ["task", "outcome"])
