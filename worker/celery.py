"""Celery entry point: `celery -A worker worker` / `celery -A worker beat` load the app from here."""

from worker.factory import make_celery

app = make_celery()
