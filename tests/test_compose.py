"""docker-compose.yml: valid with .env.example, secrets only from .env, nothing but the webhook published."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE = ROOT / ".env.example"


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env if env is not None else clean_env(),
    )


def clean_env() -> dict[str, str]:
    # The test's own environment must not fill in what .env is supposed to provide.
    variables = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in variables}


def test_the_compose_file_is_valid_with_the_example_settings() -> None:
    result = compose("--env-file", str(EXAMPLE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_every_variable_compose_reads_is_in_the_example() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    listed = set(re.findall(r"^(\w+)=", EXAMPLE.read_text(), re.MULTILINE))
    assert used - listed == set()


@pytest.mark.parametrize(
    "missing", ["API_TOKEN", "POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
)
def test_a_missing_credential_stops_compose_instead_of_a_default(missing: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(re.sub(rf"^{missing}=.*$", "", EXAMPLE.read_text(), flags=re.MULTILINE))
    result = compose("--env-file", str(env_file), "config", "-q")
    assert result.returncode != 0 and "set it in .env" in result.stderr
    assert "minioadmin" not in COMPOSE.read_text()


def test_only_loopback_ports_are_published_and_not_the_s3_api(tmp_path: Path) -> None:
    result = compose("--env-file", str(EXAMPLE), "config")
    assert result.returncode == 0, result.stderr
    published = re.findall(r"^\s+ports:\n((?:\s+- .*\n)+)", result.stdout, re.MULTILINE)
    bindings = [line.strip().removeprefix("- ") for block in published for line in block.splitlines()]
    assert sorted(bindings) == ["127.0.0.1:8000:8000/tcp", "127.0.0.1:9001:9001/tcp"]
    # Exposing the webhook is one explicit setting.
    exposed_env = EXAMPLE.read_text().replace(
        "WEBHOOK_PUBLISH=127.0.0.1:8000", "WEBHOOK_PUBLISH=0.0.0.0:8000"
    )
    exposed_file = tmp_path / "exposed.env"
    exposed_file.write_text(exposed_env)
    exposed = compose("--env-file", str(exposed_file), "config")
    assert "0.0.0.0:8000:8000/tcp" in exposed.stdout and ":9000" not in re.sub(
        r"minio:9000", "", exposed.stdout
    )


def test_env_files_are_ignored_by_git_and_the_example_is_not() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", ".env", ".env.production", ".env.example"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout.split() == [".env", ".env.production"]


def test_the_example_placeholders_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_TOKEN", raising=False)  # the test suite's own token would win
    with pytest.raises(ValidationError, match="API_TOKEN is 9 bytes"):
        Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
