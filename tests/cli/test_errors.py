"""Every failure is one `Error: ...` line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from klingctl.errors import describe
from models.db import make_sessionmaker, session_scope
from models.tables import Job, Outbox
from tests.cli.conftest import KLINGCTL, Run, add_job, clean_env, closed_port


def assert_one_line(stderr: str, *needles: str) -> None:
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("Error: ")
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_unreachable_database(cli: Run) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/kling"
    result = cli(["jobs"], DATABASE_URL=url)
    assert result.exit_code == 1
    assert_one_line(result.stderr, "Error: database unreachable:")


def test_schema_missing_points_at_db_upgrade(cli: Run, tmp_path: Path) -> None:
    result = cli(["jobs"], DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.exit_code == 1
    assert_one_line(result.stderr, "no such table: jobs", "klingctl db upgrade")


def test_bad_configuration_names_the_variable(cli: Run) -> None:
    result = cli(["jobs"], KLING_CONCURRENCY="0")
    assert result.exit_code == 2
    assert_one_line(result.stderr, "configuration: KLING_CONCURRENCY:")


def test_unreachable_broker_on_sweep(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    add_job(engine, "succeeded", n=1)
    broker = f"redis://127.0.0.1:{closed_port()}/0"
    result = cli(["sweep"], DATABASE_URL=url, CELERY_BROKER_URL=broker)
    assert result.exit_code == 1
    assert_one_line(result.stderr, "unreachable")


def test_submit_keeps_the_job_when_the_broker_is_down(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    # The job is committed with its outbox row; the beat relays it once the broker is back.
    url, engine = fresh_sqlite
    broker = f"redis://127.0.0.1:{closed_port()}/0"
    result = cli(["submit", "a cat"], DATABASE_URL=url, CELERY_BROKER_URL=broker)
    assert result.exit_code == 0, result.output
    assert "stays in the outbox" in result.stderr
    job_id = result.stdout.strip()
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.get(Job, job_id) is not None
        rows = s.execute(select(Outbox.task, Outbox.args, Outbox.dispatched_at)).all()
    assert [tuple(r) for r in rows] == [("submit_job", [job_id], None)]


def test_invalid_n_in_a_real_process(tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}", CELERY_BROKER_URL="memory://")
    proc = subprocess.run(
        [KLINGCTL, "submit", "a cat", "--n", "12"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line(proc.stderr, "n: must be between 1 and 9 (got 12)")
    assert not (tmp_path / "x.db").exists()  # rejected before touching the database


def test_unexpected_errors_are_one_line_too() -> None:
    message, code = describe(RuntimeError("boom\nsecond line"))
    assert (message, code) == ("RuntimeError: boom", 1)


@pytest.mark.parametrize("args", [["show"], ["nonsense"], ["jobs", "--limit", "0"]])
def test_usage_errors_exit_2(cli: Run, args: list[str]) -> None:
    result = cli(args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
