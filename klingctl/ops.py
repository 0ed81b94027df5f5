"""Running the service: `webhook`, `worker`, `beat` (each execs the real server), `db upgrade`, `sweep`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from klingctl.common import celery_publisher, safe_url, settings

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


# The webhook's gunicorn settings module (webhook/gunicorn_conf.py).
GUNICORN_CONFIG = "python:webhook.gunicorn_conf"


def gunicorn_argv(host: str, port: int, workers: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        GUNICORN_CONFIG,
        "--workers",
        str(workers),
        "--bind",
        f"{host}:{port}",
        *extra,
        "webhook:create_app()",
    ]


def celery_argv(kind: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", kind, *extra]


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606  (the server replaces this process, as `exec` in a shell)


@click.command(context_settings=PASS_THROUGH)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0 = all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="gunicorn workers.")
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def webhook(*, host: str, port: int, workers: int, gunicorn_args: tuple[str, ...]) -> None:
    """Serve the callback receiver, job API, dashboard and metrics with gunicorn.

    Extra arguments go to gunicorn as they are (e.g. `klingctl webhook -- --timeout 60`).
    """
    settings()  # a configuration error shows here as one line, not in every gunicorn worker
    _exec(gunicorn_argv(host, port, workers, gunicorn_args))


@click.command(context_settings=PASS_THROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(*, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (`celery -A worker worker ARGS...`), e.g. `klingctl worker --concurrency 8`."""
    settings()
    _exec(celery_argv("worker", celery_args))


@click.command(context_settings=PASS_THROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(*, celery_args: tuple[str, ...]) -> None:
    """Run the Celery beat scheduler (`celery -A worker beat ARGS...`): outbox relay, reconcile, sweep."""
    settings()
    _exec(celery_argv("beat", celery_args))


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(*, revision: str) -> None:
    """Apply the migrations (`alembic upgrade head`); creates a SQLite file's directory."""
    from models.db import upgrade as run_upgrade

    url = settings().database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    run_upgrade(url, revision)
    click.echo(f"Database {safe_url(url)} is at {revision}.")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only report; queue no archive tasks, delete no rows.")
def sweep(*, dry_run: bool) -> None:
    """Find images not archived yet, queue their archive (unless --dry-run), report those at risk;
    prune outbox rows and callback events past their keep days (only count them with --dry-run)."""
    from worker import repair
    from worker.services import Services

    cfg = settings()
    svc = Services(cfg)
    if not dry_run:
        _, svc.publish = celery_publisher(cfg)
    try:
        report = repair.sweep(svc, dry_run=dry_run)
    finally:
        svc.engine.dispose()
    verb = "would queue" if dry_run else "queued"
    click.echo(f"Jobs to archive: {len(report.jobs)} ({verb} an archive task for each)")
    for job_id in report.jobs:
        click.echo(f"  {job_id}")
    click.echo(f"Pending images: {report.pending_images}")
    click.echo(
        f"Images at risk (not archived, older than {cfg.alert_after_days} days of "
        f"the provider's {cfg.retention_days}): {report.at_risk}"
    )
    verb = "Would prune" if dry_run else "Pruned"
    click.echo(
        f"{verb}: {report.pruned.outbox} outbox rows published over {cfg.outbox_keep_days} days ago, "
        f"{report.pruned.callback_events} callback events over {cfg.callback_events_keep_days} days old"
    )
