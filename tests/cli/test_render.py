"""`klingctl jobs` and `klingctl show` print caller and provider text safely (issue 16): no crash, no
rich markup read from it, no control character (terminal escape, carriage return, bidi override)
reaching the terminal; each is shown as a visible escape instead."""

from __future__ import annotations

import io
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from sqlalchemy import Engine, event, update

from klingctl.render import plain
from models.db import make_engine
from models.tables import Job
from tests.cli.conftest import Run, add_job

# What must never reach a terminal: C0/C1 controls but newline, and the bidi overrides.
FORBIDDEN = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b[2J\x1b]0;pwned\x07 [/] [bold]loud[/bold] \x9b31m \r\x08 \u202eevil"


def test_jobs_and_show_print_hostile_text_as_visible_escapes(cli: Run, committed_pg_url: str) -> None:
    engine = make_engine(committed_pg_url)
    try:
        queued = add_job(engine, "queued", prompt="p" + HOSTILE)
        failed = add_job(engine, "failed", prompt="second")
        with engine.begin() as conn:
            conn.execute(
                update(Job)
                .where(Job.id == queued)
                .values(webhook_url="https://example.com/" + HOSTILE, meta={"note": HOSTILE})
            )
            conn.execute(
                update(Job)
                .where(Job.id == failed)
                .values(error_message=HOSTILE, provider_task_id="task-[/]\x1b[31m")
            )
    finally:
        engine.dispose()

    listed = cli(["jobs"], DATABASE_URL=committed_pg_url)
    assert listed.exit_code == 0, listed.output
    shown = cli(["show", queued], DATABASE_URL=committed_pg_url)
    assert shown.exit_code == 0, shown.output
    shown_failed = cli(["show", failed], DATABASE_URL=committed_pg_url)
    assert shown_failed.exit_code == 0, shown_failed.output
    for out in (listed.stdout, shown.stdout, shown_failed.stdout):
        assert not FORBIDDEN.search(out), repr(out)
    assert "\\x1b[2J" in listed.stdout and "[/]" in listed.stdout
    assert "[bold]loud[/bold]" in shown.stdout and "\\u202eevil" in shown.stdout
    assert "webhook" in shown.stdout and "metadata" in shown.stdout
    assert "task-[/]\\x1b[31m" in shown_failed.stdout and "\\x9b31m" in shown_failed.stdout


def test_jobs_never_reads_inline_images(cli: Run, committed_pg_url: str) -> None:
    """`klingctl jobs` reads the request as the API's pages do: the image's size, not its bytes."""
    image_chars = 9_800 * 1024
    engine = make_engine(committed_pg_url)
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not many and "FROM jobs" in statement:
            statements.append((statement, parameters))

    try:
        ids = [add_job(engine, "queued", prompt=f"restyle {i}") for i in range(2)]
        with engine.begin() as conn:
            for i, job_id in enumerate(ids):
                params = {"prompt": f"restyle {i}", "image": "AB"[i] * image_chars, "n": 1}
                conn.execute(update(Job).where(Job.id == job_id).values(params=params))
        event.listen(Engine, "after_cursor_execute", record)
        try:
            listed = cli(["jobs"], DATABASE_URL=committed_pg_url)
        finally:
            event.remove(Engine, "after_cursor_execute", record)
        assert listed.exit_code == 0, listed.output
        assert "restyle 0" in listed.stdout and "restyle 1" in listed.stdout
        assert statements
        with engine.connect() as conn:
            for statement, parameters in statements:
                for row in conn.exec_driver_sql(statement, parameters):
                    assert sum(len(str(value)) for value in row) < 64 * 1024
    finally:
        engine.dispose()


def rendered(text: str) -> str:
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None, force_terminal=False).print(plain(text))
    return out.getvalue()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_plain_never_lets_a_control_character_through(text: str) -> None:
    assert not FORBIDDEN.search(rendered(text).rstrip("\n"))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_text_is_shown_exactly_never_as_markup(text: str) -> None:
    assert plain(text).plain == text
    assert rendered(text).rstrip(" \n") == text.rstrip(" ")
