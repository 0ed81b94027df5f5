"""klingctl submit / jobs / show / db upgrade / sweep against real databases (SQLite file, PostgreSQL)."""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from PIL import Image as PILImage
from sqlalchemy import Engine, func, insert, inspect, select

from klingctl.cli import main
from models.base import utcnow
from models.db import make_engine, make_sessionmaker, session_scope
from models.tables import CallbackEvent, Job, Outbox
from tests.cli.conftest import Run, add_job, age_images, archive_images

pytestmark = pytest.mark.integration

MEMORY = "memory://"


def drain(queue: str = "celery") -> list[tuple[str, list[Any]]]:
    """Every (task name, args) waiting in this process's in-memory broker, consumed."""
    got = []
    with Connection(MEMORY) as conn:
        q = conn.SimpleQueue(queue)
        while True:
            try:
                msg = q.get(block=False)
            except q.Empty:
                break
            args, _kwargs, _embed = msg.decode()
            got.append((msg.headers["task"], list(args)))
            msg.ack()
        q.close()
    return got


def jobs_in(engine: Engine) -> list[Job]:
    with session_scope(make_sessionmaker(engine)) as s:
        return list(s.scalars(select(Job).order_by(Job.created_at)))


def png_bytes(width: int = 320, height: int = 320) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["submit"],
        ["jobs"],
        ["show"],
        ["webhook"],
        ["worker"],
        ["beat"],
        ["simulator"],
        ["db"],
        ["db", "upgrade"],
        ["sweep"],
        ["demo"],
        ["accounts"],
        ["accounts", "disable"],
        ["accounts", "enable"],
        ["cancel"],
        ["retry"],
    ],
)
def test_every_command_has_help(cli: Run, command: list[str]) -> None:
    result = cli([*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert "Show this message and exit." in result.output


# --- db upgrade ---------------------------------------------------------------------------------------
def test_db_upgrade_creates_the_sqlite_directory_and_schema(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "not" / "there" / "kling.db"
    result = cli(["db", "upgrade"], DATABASE_URL=f"sqlite:///{path}")
    assert result.exit_code == 0, result.output
    assert "is at head" in result.stdout
    engine = make_engine(f"sqlite:///{path}")
    try:
        assert {"jobs", "images", "transitions", "outbox", "alembic_version"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
    # Running it again is harmless.
    assert cli(["db", "upgrade"], DATABASE_URL=f"sqlite:///{path}").exit_code == 0


# --- submit -------------------------------------------------------------------------------------------
def test_submit_writes_the_job_and_sends_its_submit_message(
    cli: Run, fresh_sqlite: tuple[str, Engine]
) -> None:
    url, engine = fresh_sqlite
    drain()
    result = cli(
        [
            "submit",
            "a lighthouse at dawn",
            "--n",
            "3",
            "--aspect-ratio",
            "16:9",
            "--model",
            "kling-v3",
            "--resolution",
            "2k",
            "--negative-prompt",
            "blur",
            "--webhook-url",
            "https://example.com/hook",
            "--metadata",
            '{"order": 42}',
        ],
        DATABASE_URL=url,
        CELERY_BROKER_URL=MEMORY,
    )
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    [job] = jobs_in(engine)
    assert job.id == job_id
    assert job.status == "queued"
    assert job.slots == 3
    assert job.params == {
        "prompt": "a lighthouse at dawn",
        "n": 3,
        "aspect_ratio": "16:9",
        "model_name": "kling-v3",
        "resolution": "2k",
        "negative_prompt": "blur",
    }
    assert job.webhook_url == "https://example.com/hook"
    assert job.meta == {"order": 42}
    assert drain() == [("kling.submit_job", [job_id])]
    with session_scope(make_sessionmaker(engine)) as s:
        assert s.scalar(select(func.count()).select_from(Outbox).where(Outbox.dispatched_at.is_(None))) == 0


def test_submit_reads_a_local_image_as_bare_base64(
    cli: Run, fresh_sqlite: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = fresh_sqlite
    image = tmp_path / "ref.png"
    image.write_bytes(png_bytes())
    result = cli(["submit", "like this", "--image", str(image)], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    drain()
    [job] = jobs_in(engine)
    assert base64.b64decode(job.params["image"]) == image.read_bytes()


def test_submit_passes_an_image_url_through(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    result = cli(
        ["submit", "like this", "--image", "https://example.com/ref.png"],
        DATABASE_URL=url,
        CELERY_BROKER_URL=MEMORY,
    )
    assert result.exit_code == 0, result.output
    drain()
    assert jobs_in(engine)[0].params["image"] == "https://example.com/ref.png"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--n", "12"], "n: must be between 1 and 9 (got 12)"),
        (["--aspect-ratio", "5:4"], "aspect_ratio: must be one of"),
        (["--model", "kling-v1", "--resolution", "2k"], "resolution: must be one of 1k on kling-v1"),
        (["--metadata", "[1, 2]"], "metadata: must be a JSON object"),
        (["--metadata", "{oops"], "metadata: is not valid JSON"),
        (["--image", "/no/such/file.png"], "image: cannot read /no/such/file.png"),
        (["--webhook-url", "ftp://x"], "webhook_url: must be an http(s) URL"),
    ],
)
def test_invalid_submit_is_one_line_exit_2_and_changes_nothing(
    cli: Run, fresh_sqlite: tuple[str, Engine], args: list[str], expected: str
) -> None:
    url, engine = fresh_sqlite
    result = cli(["submit", "a cat", *args], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: ")
    assert expected in result.stderr
    assert jobs_in(engine) == []


def test_a_small_local_image_names_the_image_rule(
    cli: Run, fresh_sqlite: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = fresh_sqlite
    image = tmp_path / "tiny.png"
    image.write_bytes(png_bytes(64, 64))
    result = cli(["submit", "x", "--image", str(image)], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 2
    assert "image: width and height must be at least 300 px (got 64x64)" in result.stderr
    assert jobs_in(engine) == []


# --- jobs / show --------------------------------------------------------------------------------------
def test_caller_text_is_printed_as_it_is_never_as_markup(cli: Run, committed_pg_url: str) -> None:
    engine = make_engine(committed_pg_url)
    try:
        job_id = add_job(engine, "queued", prompt="a [/] closing tag and [bold]not bold[/bold]")
    finally:
        engine.dispose()
    listed = cli(["jobs"], DATABASE_URL=committed_pg_url)
    assert listed.exit_code == 0, listed.output
    assert "a [/] closing tag" in listed.stdout
    shown = cli(["show", job_id], DATABASE_URL=committed_pg_url)
    assert shown.exit_code == 0, shown.output
    assert "[bold]not bold[/bold]" in shown.stdout


def test_jobs_lists_newest_first_with_status_filter_and_limit(cli: Run, committed_pg_url: str) -> None:
    engine = make_engine(committed_pg_url)
    try:
        queued = add_job(engine, "queued", prompt="first")
        failed = add_job(engine, "failed", prompt="second")
        archived = add_job(engine, "succeeded", n=2, prompt="third")
        archive_images(engine, archived, "bucket-a")
    finally:
        engine.dispose()

    everything = cli(["jobs"], DATABASE_URL=committed_pg_url)
    assert everything.exit_code == 0, everything.output
    out = everything.stdout
    assert out.index(archived) < out.index(failed) < out.index(queued)
    assert "1301: policy" in out

    only_failed = cli(["jobs", "--status", "failed"], DATABASE_URL=committed_pg_url)
    assert failed in only_failed.stdout
    assert queued not in only_failed.stdout and archived not in only_failed.stdout

    newest = cli(["jobs", "--limit", "1"], DATABASE_URL=committed_pg_url)
    assert archived in newest.stdout and failed not in newest.stdout

    none = cli(["jobs", "--status", "processing"], DATABASE_URL=committed_pg_url)
    assert none.stdout.strip() == "No jobs with status processing."

    bad = cli(["jobs", "--status", "done"], DATABASE_URL=committed_pg_url)
    assert bad.exit_code == 2


def test_show_prints_the_timeline_images_s3_uris_and_checksums(cli: Run, committed_pg_url: str) -> None:
    engine = make_engine(committed_pg_url)
    try:
        job_id = add_job(engine, "succeeded", n=2)
        images = archive_images(engine, job_id, "bucket-b")
    finally:
        engine.dispose()
    result = cli(["show", job_id], DATABASE_URL=committed_pg_url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for img in images:
        assert f"s3://bucket-b/images/{job_id}/{img.index}.png" in out
        assert img.sha256 is not None and img.sha256 in out
    timeline = out[out.index("Transitions") : out.index("Images")]
    steps = [line for line in timeline.splitlines() if line.startswith("│")]
    assert [s.split("│")[3].strip() for s in steps] == ["queued", "submitted", "succeeded", "archived"]
    assert [s.split("│")[4].strip() for s in steps] == ["api", "worker", "callback", "archiver"]


def test_show_unknown_job_is_one_line(cli: Run, committed_pg_url: str) -> None:
    result = cli(["show", "00000000-0000-0000-0000-000000000000"], DATABASE_URL=committed_pg_url)
    assert result.exit_code == 1
    assert result.stderr == "Error: no job 00000000-0000-0000-0000-000000000000\n"


# --- sweep --------------------------------------------------------------------------------------------
def test_sweep_reports_pending_and_at_risk_images_and_queues_archives(
    cli: Run, fresh_sqlite: tuple[str, Engine]
) -> None:
    url, engine = fresh_sqlite
    recent = add_job(engine, "succeeded", n=1)
    old = add_job(engine, "succeeded", n=3)
    age_images(engine, old, days=26)
    add_job(engine, "queued")
    drain()

    dry = cli(["sweep", "--dry-run"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert dry.exit_code == 0, dry.output
    assert "Jobs to archive: 2 (would queue" in dry.stdout
    assert dry.stdout.index(old) < dry.stdout.index(recent)  # oldest provider copy first
    assert "Pending images: 4" in dry.stdout
    assert "older than 25 days of the provider's 30): 3" in dry.stdout
    assert drain() == []

    real = cli(["sweep"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert real.exit_code == 0, real.output
    assert "Jobs to archive: 2 (queued" in real.stdout
    assert drain() == [("kling.archive_job", [old]), ("kling.archive_job", [recent])]


def test_sweep_prunes_old_outbox_rows_and_callback_events(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    old, recent = utcnow() - timedelta(days=8), utcnow() - timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            insert(Outbox),
            [{"task": "notify", "args": ["j"], "dispatched_at": at} for at in (old, old, recent, None)],
        )
        conn.execute(
            insert(CallbackEvent),
            [
                {
                    "dedupe_key": "k",
                    "body": "{}",
                    "outcome": "applied",
                    "received_at": old - timedelta(days=90),
                }
            ],
        )
    dry = cli(["sweep", "--dry-run"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert dry.exit_code == 0, dry.output
    assert (
        "Would prune: 2 outbox rows published over 7 days ago, 1 callback events over 90 days old"
        in dry.stdout
    )
    real = cli(["sweep"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY, OUTBOX_KEEP_DAYS="9")
    assert real.exit_code == 0, real.output
    assert (
        "Pruned: 0 outbox rows published over 9 days ago, 1 callback events over 90 days old" in real.stdout
    )
    real = cli(["sweep"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert "Pruned: 2 outbox rows published over 7 days ago, 0 callback events" in real.stdout
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Outbox)) == 2
        assert conn.scalar(select(func.count()).select_from(CallbackEvent)) == 0


def test_every_command_is_registered() -> None:
    assert sorted(main.commands) == [
        "accounts",
        "beat",
        "cancel",
        "db",
        "demo",
        "jobs",
        "retry",
        "show",
        "simulator",
        "submit",
        "sweep",
        "tenants",
        "webhook",
        "worker",
    ]
