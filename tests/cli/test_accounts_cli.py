"""`klingctl accounts` (table), `accounts disable NAME` / `enable NAME`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from models.db import make_engine, make_sessionmaker, session_scope
from models.tables import DisabledAccount
from tests.cli.conftest import Run, closed_port
from worker.accounts import AccountGate

SECRET = "sk-" + "q" * 40


@pytest.fixture
def env(
    tmp_path: Path, committed_pg_url: str, redis_url: str, redis_client: redis.Redis
) -> Iterator[dict[str, str]]:
    path = tmp_path / "accounts.toml"
    base = f"http://127.0.0.1:{closed_port()}"
    path.write_text(
        f'[[account]]\nname = "main"\napi_base = "{base}"\naccess_key = "ak"\nsecret_key = "{SECRET}"\n'
        f'concurrency = 3\n\n[[account]]\nname = "spare"\napi_base = "{base}"\napi_key = "{SECRET}x"\n'
        'concurrency = 2\nkinds = ["try_on"]\n'
    )
    prefix = f"test:cli:{secrets.token_hex(4)}"
    yield {
        "DATABASE_URL": committed_pg_url,
        "REDIS_URL": redis_url,
        "LIMITER_KEY_PREFIX": prefix,
        "KLING_ACCOUNTS_FILE": str(path),
    }
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)
    engine = make_engine(committed_pg_url)
    with session_scope(make_sessionmaker(engine)) as s:
        s.query(DisabledAccount).delete()
    engine.dispose()


def disabled(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            return set(s.scalars(select(DisabledAccount.name)))
    finally:
        engine.dispose()


def test_accounts_lists_every_account_without_secrets(
    cli: Run, env: dict[str, str], redis_client: redis.Redis
) -> None:
    AccountGate(redis_client, f"{env['LIMITER_KEY_PREFIX']}:account").pause("main", 1102, "pack dry")
    result = cli(["accounts"], **env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    main = next(line for line in lines if " main " in line)
    spare = next(line for line in lines if " spare " in line)
    assert "paused: 1102 pack dry" in main and "0/3" in main
    assert "active" in spare and "0/2" in spare
    # The task kinds each account takes: every kind (the default), or the file's list.
    assert " all " in main and " try_on " in spare
    assert SECRET not in result.output


def test_disable_and_enable_an_account(cli: Run, env: dict[str, str]) -> None:
    done = cli(["accounts", "disable", "spare"], **env)
    assert done.exit_code == 0, done.output
    assert "account spare disabled" in done.stdout
    assert disabled(env["DATABASE_URL"]) == {"spare"}
    assert cli(["accounts", "disable", "spare"], **env).exit_code == 0  # twice is harmless
    listed = cli(["accounts", "--no-packs"], **env).stdout
    assert "disabled" in next(line for line in listed.splitlines() if " spare " in line)
    again = cli(["accounts", "enable", "spare"], **env)
    assert again.exit_code == 0 and disabled(env["DATABASE_URL"]) == set()


def test_an_unknown_account_is_one_line_exit_2(cli: Run, env: dict[str, str]) -> None:
    result = cli(["accounts", "disable", "nope"], **env)
    assert result.exit_code == 2
    assert "unknown account 'nope' (configured: main, spare)" in result.output
    assert disabled(env["DATABASE_URL"]) == set()
