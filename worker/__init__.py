"""Celery entry point: `celery -A worker worker` / `celery -A worker beat`."""

from worker.factory import make_celery

app = make_celery()
