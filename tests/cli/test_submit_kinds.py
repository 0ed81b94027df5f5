"""`klingctl submit --kind` and `--param`: a job of any task kind, checked by that kind's rules."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.cli.conftest import Run
from tests.cli.test_commands import MEMORY, drain, jobs_in, png_bytes

pytestmark = pytest.mark.integration


def test_a_video_job_with_params(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    drain()
    result = cli(
        [
            "submit",
            "--kind",
            "text_to_video",
            "a fox runs",
            "--param",
            'duration="10"',
            "--param",
            "mode=pro",
        ],
        DATABASE_URL=url,
        CELERY_BROKER_URL=MEMORY,
    )
    assert result.exit_code == 0, result.output
    [job] = jobs_in(engine)
    assert (job.kind, job.slots) == ("text_to_video", 1)
    # JSON where it parses ("10" stays a string), text otherwise.
    assert job.params == {"prompt": "a fox runs", "duration": "10", "mode": "pro"}
    assert drain() == [("kling.submit_job", [job.id])]


def test_a_kind_without_a_prompt_reads_local_images(
    cli: Run, fresh_sqlite: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = fresh_sqlite
    person = tmp_path / "me.png"
    person.write_bytes(png_bytes())
    result = cli(
        [
            "submit",
            "--kind",
            "try_on",
            "--param",
            f"human_image=@{person}",
            "--param",
            "cloth_image=https://example.com/coat.png",
        ],
        DATABASE_URL=url,
        CELERY_BROKER_URL=MEMORY,
    )
    assert result.exit_code == 0, result.output
    drain()
    [job] = jobs_in(engine)
    assert job.kind == "try_on"
    assert base64.b64decode(job.params["human_image"]) == person.read_bytes()
    assert job.params["cloth_image"] == "https://example.com/coat.png"


def test_an_omni_series_holds_its_amount_of_slots(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    args = [
        "submit",
        "--kind",
        "omni_image",
        "a fox",
        "--param",
        "result_type=series",
        "--param",
        "series_amount=4",
    ]
    result = cli(args, DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    drain()
    [job] = jobs_in(engine)
    assert (job.kind, job.slots, job.params["series_amount"]) == ("omni_image", 4, 4)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--kind", "video", "x"], "Invalid value for '--kind'"),
        (
            ["--kind", "try_on", "--param", "human_image=https://example.com/a.png"],
            "cloth_image: is required",
        ),
        (["--kind", "text_to_video", "x", "--param", "duration=7"], "duration: must be one of 5, 10"),
        (["--kind", "text_to_video", "x", "--param", "oops"], "param: 'oops' is not NAME=VALUE"),
    ],
)
def test_a_bad_kind_or_param_exits_2_and_changes_nothing(
    cli: Run, fresh_sqlite: tuple[str, Engine], args: list[str], expected: str
) -> None:
    url, engine = fresh_sqlite
    result = cli(["submit", *args], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 2
    assert expected in result.stderr, result.stderr
    assert jobs_in(engine) == []
