"""KLING_ACCOUNTS_FILE (models/accounts.py): the TOML contract, one-line errors naming the account
and the key, the `default` account without a file, the legacy-settings warning, redaction."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from kling.kinds import KIND_NAMES
from klingctl.errors import describe
from models.accounts import DEFAULT_ACCOUNT, AccountsConfigError
from models.logging import secret_values
from models.settings import Settings

SECRET = "sk-" + "s" * 40
API_KEY = "ak-" + "a" * 40
GOOD = f"""
[[account]]
name = "main"
provider = "kling"
api_base = "https://api-singapore.klingai.com/"
access_key = "ak-main"
secret_key = "{SECRET}"
concurrency = 5
daily_unit_budget = 500

[[account]]
name = "spare-2"
api_key = "{API_KEY}"
concurrency = 2

[[account]]
name = "gw"
provider = "appypie"
subscription_key = "sub-{"g" * 40}"
concurrency = 1
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return str(path)


def test_the_file_defines_every_account_in_order(tmp_path: Path) -> None:
    accounts = Settings(kling_accounts_file=write(tmp_path, GOOD)).accounts
    assert [(a.name, a.provider, a.concurrency) for a in accounts] == [
        ("main", "kling", 5),
        ("spare-2", "kling", 2),
        ("gw", "appypie", 1),
    ]
    main = accounts[0]
    assert main.api_base == "https://api-singapore.klingai.com"
    assert main.daily_unit_budget == 500.0
    assert main.secret_key is not None and main.secret_key.get_secret_value() == SECRET
    assert SECRET not in repr(main)
    assert accounts[2].api_base == "https://gateway.appypie.com"


def test_kinds_route_task_kinds_to_an_account_and_default_to_all_its_provider_offers(tmp_path: Path) -> None:
    text = GOOD.replace(
        "concurrency = 2\n", 'concurrency = 2\nkinds = ["text_to_video", "try_on", "try_on"]\n'
    )
    main, spare, gateway = Settings(kling_accounts_file=write(tmp_path, text)).accounts
    assert main.kinds == KIND_NAMES
    assert spare.kinds == ("text_to_video", "try_on")
    assert spare.serves_kind("try_on") and not spare.serves_kind("image")
    # The gateway offers image generation only (kling/kinds.py).
    assert gateway.kinds == ("image",)


def test_without_a_file_one_default_account_comes_from_the_settings() -> None:
    (account,) = Settings(kling_access_key="ak", kling_secret_key=SECRET, kling_concurrency=7).accounts
    assert (account.name, account.provider, account.concurrency) == (DEFAULT_ACCOUNT, "kling", 7)
    assert account.configured


ACCOUNT = '[[account]]\nname = "main"\napi_key = "k"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[account]]\nname = "Main!"\napi_key = "k"\n', "account 'Main!': name must match [a-z0-9-]+"),
        ('[[account]]\napi_key = "k"\n', "account #1: name must match"),
        (ACCOUNT + ACCOUNT, "account 'main': name is a duplicate"),
        ('[[account]]\nname = "main"\n', "account 'main': credentials missing: set access_key and"),
        ('[[account]]\nname = "main"\naccess_key = "a"\n', "account 'main': credentials missing"),
        (
            '[[account]]\nname = "gw"\nprovider = "appypie"\napi_key = "k"\n',
            "account 'gw': credentials missing: set subscription_key",
        ),
        (ACCOUNT.replace("main", "x") + 'provider = "openai"\n', "account 'x': provider must be one of"),
        (ACCOUNT + "concurrency = 0\n", "account 'main': concurrency must be an integer >= 1"),
        (ACCOUNT + 'concurrency = "5"\n', "account 'main': concurrency must be an integer >= 1"),
        (ACCOUNT + "daily_unit_budget = -1\n", "account 'main': daily_unit_budget must be a number > 0"),
        (ACCOUNT + "secretkey = 'oops'\n", "account 'main': unknown key secretkey"),
        (
            ACCOUNT + 'kinds = ["image", "video"]\n',
            "account 'main': kinds: unknown kind 'video' (one of image,",
        ),
        (ACCOUNT + "kinds = []\n", "account 'main': kinds must be a non-empty list of kind names"),
        (ACCOUNT + 'kinds = "image"\n', "account 'main': kinds must be a non-empty list of kind names"),
        (ACCOUNT + "kinds = [1]\n", "account 'main': kinds must be a non-empty list of kind names"),
        (
            '[[account]]\nname = "gw"\nprovider = "appypie"\nsubscription_key = "k"\nkinds = ["try_on"]\n',
            "account 'gw': kinds: try_on is not offered by the appypie provider",
        ),
        ('name = "main"\n', "accounts file: no [[account]] table"),
        ("[[account]\n", "accounts file: not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_one_line_naming_the_account_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(AccountsConfigError) as refused:
        Settings(kling_accounts_file=write(tmp_path, text))
    line = str(refused.value)
    assert message in line
    assert "\n" not in line
    assert describe(refused.value) == (f"configuration: {line}", 2)


def test_a_missing_file_is_refused_by_its_setting(tmp_path: Path) -> None:
    with pytest.raises(AccountsConfigError, match="KLING_ACCOUNTS_FILE: cannot read"):
        Settings(kling_accounts_file=str(tmp_path / "nope.toml"))


def test_a_secret_in_a_bad_file_is_never_echoed(tmp_path: Path) -> None:
    text = f'[[account]]\nname = "main"\nsecret_key = "{SECRET}"\nconcurrency = 0\n'
    with pytest.raises(AccountsConfigError) as refused:
        Settings(kling_accounts_file=write(tmp_path, text))
    assert SECRET not in str(refused.value)


def test_legacy_settings_beside_the_file_give_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, GOOD)
    with caplog.at_level(logging.WARNING, logger="models.settings"):
        Settings(kling_accounts_file=path)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="models.settings"):
        Settings(kling_accounts_file=path, kling_api_key=API_KEY, kling_concurrency=3)
    (record,) = caplog.records
    assert "KLING_API_KEY, KLING_CONCURRENCY ignored" in record.getMessage()
    assert API_KEY not in record.getMessage()


def test_account_secrets_are_redacted_from_logs(tmp_path: Path) -> None:
    values = secret_values(Settings(kling_accounts_file=write(tmp_path, GOOD)))
    assert {SECRET, API_KEY, "sub-" + "g" * 40} <= values


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "klingctl", "jobs"],
        ["-c", "import webhook; webhook.create_app()"],
        ["-c", "from worker.factory import make_celery; make_celery()"],
    ],
)
def test_every_process_stops_at_start_on_a_bad_file(tmp_path: Path, argv: list[str]) -> None:
    path = write(tmp_path, ACCOUNT + "concurrency = 0\n")
    env = {"KLING_ACCOUNTS_FILE": path, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, *argv], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "account 'main': concurrency must be an integer >= 1" in done.stderr


def test_a_process_stops_at_start_on_an_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path, ACCOUNT + 'kinds = ["image", "text2video"]\n')
    env = {"KLING_ACCOUNTS_FILE": path, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "klingctl", "jobs"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: configuration: account 'main': kinds: unknown kind 'text2video'")
