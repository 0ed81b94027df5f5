"""Where the Celery app comes from: `celery -A worker` finds `worker/celery.py`, every other caller
builds one with `make_celery`, and importing the packages builds none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from models.settings import Settings
from worker.factory import make_celery
from worker.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    env = {**os.environ, "CELERY_BROKER_URL": "memory://", "DATABASE_URL": "sqlite://"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_celery_dash_a_worker_finds_the_app_with_every_task() -> None:
    found = _python(
        "import json; from celery.app.utils import find_app; app = find_app('worker'); "
        "print(json.dumps([app.main, sorted(n for n in app.tasks if n.startswith('kling.'))]))"
    )
    assert json.loads(found) == ["kling_orchestrator", sorted(spec.name for spec in TASKS)]


def test_importing_the_web_app_or_the_worker_package_loads_no_celery() -> None:
    loaded = _python(
        "import sys, webhook, worker, worker.repair, worker.slots; print('celery' in sys.modules)"
    )
    assert loaded == "False"


def test_each_workflow_puts_its_periodic_tasks_on_the_beat_schedule() -> None:
    settings = Settings(
        celery_broker_url="memory://",
        outbox_relay_seconds=3,
        reconcile_interval_seconds=7,
        sweep_interval_seconds=600,
        poll_interval_seconds=0.5,
    )
    app = make_celery(settings)
    assert app.conf.beat_schedule == {
        "relay-outbox": {"task": "kling.relay_outbox", "schedule": timedelta(seconds=3)},
        "reconcile": {"task": "kling.reconcile", "schedule": timedelta(seconds=7)},
        "sweep": {"task": "kling.sweep", "schedule": timedelta(seconds=600)},
    }
    assert {entry["task"] for entry in app.conf.beat_schedule.values()} <= set(app.tasks)
