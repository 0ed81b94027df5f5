"""`klingctl tenants` (table), `tenants create NAME`, `set NAME`, `rotate-key NAME`, `revoke-key NAME`,
against the real PostgreSQL (committed, emptied after each test)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, select

from models.db import make_engine, make_sessionmaker, session_scope
from models.tables import Job, Tenant
from models.tenants import KEY_PREFIX, tenant_for_key
from tests.cli.conftest import Run, add_job


@pytest.fixture
def env(committed_pg_url: str) -> dict[str, str]:
    return {"DATABASE_URL": committed_pg_url}


@pytest.fixture
def engine(committed_pg_url: str) -> Iterator[Engine]:
    engine = make_engine(committed_pg_url)
    yield engine
    engine.dispose()


def owner(engine: Engine, key: str) -> str | None:
    with session_scope(make_sessionmaker(engine)) as s:
        return tenant_for_key(s, key)


COLUMNS = ("key_sha256", "key_hint", "max_slots", "daily_units", "weight")


def row(engine: Engine, name: str) -> dict[str, Any] | None:
    """The tenant's stored key digest, hint, limits and weight; None when there is no such tenant."""
    with session_scope(make_sessionmaker(engine)) as s:
        tenant = s.get(Tenant, name)
        return None if tenant is None else {c: getattr(tenant, c) for c in COLUMNS}


def limits(engine: Engine, name: str) -> tuple[Any, ...]:
    """(max_slots, daily_units, weight)."""
    stored = row(engine, name)
    assert stored is not None, f"no tenant {name}"
    return stored["max_slots"], stored["daily_units"], stored["weight"]


def table_row(result: Result, name: str) -> list[str]:
    """The cells of `name`'s line in the `klingctl tenants` table."""
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if f" {name} " in line)
    return line.replace("│", " ").split()


def printed_key(result: Result) -> str:
    """The key a command printed: stdout holds it alone (the words around it go to stderr)."""
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith(KEY_PREFIX) and "\n" not in key
    return key


def test_create_prints_a_key_that_authenticates_and_stores_only_its_digest(
    cli: Run, env: dict[str, str], engine: Engine
) -> None:
    result = cli(
        ["tenants", "create", "acme", "--max-slots", "4", "--daily-units", "250.5", "--weight", "3"], **env
    )
    key = printed_key(result)
    assert "shown once" in result.stderr
    assert owner(engine, key) == "acme"
    assert row(engine, "acme") == {
        "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        "key_hint": key[:8],
        "max_slots": 4,
        "daily_units": 250.5,
        "weight": 3,
    }
    # No limits given: none, weight 1; every tenant its own key.
    other = printed_key(cli(["tenants", "create", "beta"], **env))
    assert other != key and owner(engine, other) == "beta"
    assert limits(engine, "beta") == (None, None, 1)


@pytest.mark.parametrize("name", ["acme", "default"])
def test_a_taken_name_is_one_line_exit_2(cli: Run, env: dict[str, str], engine: Engine, name: str) -> None:
    first = printed_key(cli(["tenants", "create", "acme"], **env))
    result = cli(["tenants", "create", name], **env)
    assert result.exit_code == 2
    assert f"tenant '{name}' already exists" in result.output and KEY_PREFIX not in result.stdout
    assert owner(engine, first) == "acme"  # the first one's key still works


@pytest.mark.parametrize("name", ["Acme", "a b", "-acme", "_acme", "a" * 65, "acmé", ""])
def test_a_bad_name_is_refused(cli: Run, env: dict[str, str], engine: Engine, name: str) -> None:
    result = cli(["tenants", "create", "--", name], **env)  # `--`: "-acme" is a name, not an option
    assert result.exit_code == 2
    assert "must be 1 to 64 of a-z" in result.output
    assert row(engine, name) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-slots", "0"], "--max-slots must be at least 1"),
        (["--max-slots", "two"], "'two' is not a number"),
        (["--daily-units", "0"], "--daily-units must be more than 0"),
        (["--weight", "0"], "--weight must be from 1 to 1000"),
        (["--weight", "1001"], "--weight must be from 1 to 1000"),
    ],
)
def test_bad_limits_are_refused(
    cli: Run, env: dict[str, str], engine: Engine, args: list[str], message: str
) -> None:
    result = cli(["tenants", "create", "acme", *args], **env)
    assert result.exit_code == 2 and message in result.output
    assert row(engine, "acme") is None


def test_set_changes_limits_and_none_removes_a_cap(cli: Run, env: dict[str, str], engine: Engine) -> None:
    key = printed_key(cli(["tenants", "create", "acme", "--max-slots", "2", "--daily-units", "10"], **env))
    done = cli(["tenants", "set", "acme", "--max-slots", "5", "--weight", "7"], **env)
    assert done.exit_code == 0 and "tenant acme updated" in done.stdout
    assert limits(engine, "acme") == (5, 10, 7)
    assert cli(["tenants", "set", "acme", "--daily-units", "none"], **env).exit_code == 0
    assert cli(["tenants", "set", "acme", "--max-slots", "NONE"], **env).exit_code == 0
    assert limits(engine, "acme") == (None, None, 7)
    assert owner(engine, key) == "acme"  # limits leave the key alone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acme"], "nothing to set"),
        (["acme", "--max-slots", "0"], "--max-slots must be at least 1"),
        (["acme", "--weight", "0"], "--weight must be from 1 to 1000"),
        (["nobody", "--weight", "2"], "no tenant 'nobody' (`klingctl tenants` lists them)"),
    ],
)
def test_set_refuses_nothing_bad_values_and_unknown_tenants(
    cli: Run, env: dict[str, str], engine: Engine, args: list[str], message: str
) -> None:
    printed_key(cli(["tenants", "create", "acme", "--max-slots", "2"], **env))
    result = cli(["tenants", "set", *args], **env)
    assert result.exit_code == 2 and message in result.output
    assert limits(engine, "acme") == (2, None, 1)


def test_rotate_key_gives_a_new_key_and_the_old_one_stops(
    cli: Run, env: dict[str, str], engine: Engine
) -> None:
    old = printed_key(cli(["tenants", "create", "acme"], **env))
    result = cli(["tenants", "rotate-key", "acme"], **env)
    new = printed_key(result)
    assert new != old and "shown once" in result.stderr
    assert owner(engine, old) is None and owner(engine, new) == "acme"
    stored = row(engine, "acme")
    assert stored is not None and stored["key_hint"] == new[:8]


@pytest.mark.parametrize(
    ("name", "message"), [("default", "the default tenant has no key"), ("nobody", "no tenant")]
)
def test_rotate_key_refuses_the_default_and_unknown_tenants(
    cli: Run, env: dict[str, str], engine: Engine, name: str, message: str
) -> None:
    result = cli(["tenants", "rotate-key", name], **env)
    assert result.exit_code == 2 and message in result.output
    assert KEY_PREFIX not in result.stdout
    assert row(engine, "default") == dict.fromkeys(COLUMNS) | {"weight": 1}  # nothing made


def test_revoke_key_stops_the_key_and_keeps_the_tenant_and_its_jobs(
    cli: Run, env: dict[str, str], engine: Engine
) -> None:
    key = printed_key(cli(["tenants", "create", "acme"], **env))
    job_id = add_job(engine, tenant="acme")
    done = cli(["tenants", "revoke-key", "acme"], **env)
    assert done.exit_code == 0 and "tenant acme: key revoked" in done.stdout
    assert owner(engine, key) is None
    assert row(engine, "acme") == dict.fromkeys(COLUMNS) | {"weight": 1}
    assert table_row(cli(["tenants"], **env), "acme")[:2] == ["acme", "-"]
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.scalar(select(Job.tenant).where(Job.id == job_id)) == "acme"
    # A new key brings it back.
    assert owner(engine, printed_key(cli(["tenants", "rotate-key", "acme"], **env))) == "acme"
    assert cli(["tenants", "revoke-key", "nobody"], **env).exit_code == 2


def test_tenants_lists_each_with_its_key_hint_limits_and_live_jobs(
    cli: Run, env: dict[str, str], engine: Engine
) -> None:
    key = printed_key(cli(["tenants", "create", "acme", "--max-slots", "3", "--daily-units", "12.5"], **env))
    for status in ("queued", "queued", "submitted", "archived"):
        add_job(engine, status, tenant="acme")
    add_job(engine, "queued")  # the operator's: default
    result = cli(["tenants"], **env)
    # tenant, key hint, weight, max slots, daily units, queued, running (ended jobs not counted)
    assert table_row(result, "acme")[:7] == ["acme", f"{key[:8]}...", "1", "3", "12.5", "2", "1"]
    assert table_row(result, "default")[:7] == ["default", "-", "1", "-", "-", "1", "0"]
    assert key not in result.output


def test_submit_for_a_tenant_and_list_its_jobs(cli: Run, env: dict[str, str], engine: Engine) -> None:
    printed_key(cli(["tenants", "create", "acme"], **env))
    submitted = cli(["submit", "a fox", "--tenant", "acme"], CELERY_BROKER_URL="memory://", **env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    add_job(engine, "queued")  # the operator's
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.scalar(select(Job.tenant).where(Job.id == job_id)) == "acme"
    listed = cli(["jobs", "--tenant", "acme"], **env)
    assert listed.exit_code == 0 and job_id[:8] in listed.stdout and listed.stdout.count("a fox") == 1
    assert "a cat" not in listed.stdout
    unknown = cli(["submit", "a fox", "--tenant", "nobody"], CELERY_BROKER_URL="memory://", **env)
    assert unknown.exit_code == 2 and "no tenant 'nobody'" in unknown.stderr
