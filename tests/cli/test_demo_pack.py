"""The demo's dry-pack step: the pack runs dry mid-run, jobs wait in `queued`, then all finish."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from kling.simulator import Simulator
from klingctl.demo_pack import ACCOUNT_CODES, DRY_SECONDS, PROBE_SECONDS, PackOutage, dry_after
from models.db import make_engine, make_sessionmaker, session_scope
from models.tables import Job
from tests.cli.conftest import KLINGCTL, ROOT, clean_env
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.simulator.helpers import create, post


def test_dry_after_is_mid_run() -> None:
    assert [dry_after(n) for n in (1, 4, 6, 12)] == [1, 1, 2, 4]


def test_outage_runs_the_pack_dry_and_reports_it() -> None:
    with Simulator(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, concurrency=10) as sim:
        outage = PackOutage(after_creates=2, dry_seconds=600)
        outage.arm(sim)
        assert PackOutage.state(sim) == "online"
        assert outage.summary(sim, 0) == (False, "Resource pack: did not run dry (too few jobs).")
        create(sim)
        create(sim)
        assert post(sim, "/v1/images/generations", {"prompt": "x"}).json()["code"] == 1102
        assert PackOutage.state(sim) == "dry (1102 x 1)"
        ran, line = outage.summary(sim, 0)
        assert ran and "ran dry after 2 creates" in line and "1 creates answered 1102" in line
        assert line.endswith("none failed for it.")
        assert outage.summary(sim, 3)[1].endswith("3 jobs FAILED with an account code.")


@pytest.mark.integration
@pytest.mark.slow
def test_demo_pack_runs_dry_and_every_job_still_finishes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [KLINGCTL, "demo", "--jobs", "6", "--no-kinds", "--data-dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(COLUMNS="200"),
        cwd=ROOT,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "PASS 6/6 jobs reached their expected state" in out
    found = re.search(r"ran dry after 2 creates .* (\d+) creates answered 1102 meanwhile", out)
    assert found, out[-3000:]
    refused = int(found.group(1))
    # Probing, not hammering: the first refusal, then at most one create per probe interval.
    assert 1 <= refused <= DRY_SECONDS / PROBE_SECONDS + 2
    assert "none failed for it" in out
    log = next(tmp_path.glob("demo-*.log")).read_text()
    assert "account default paused: 1102" in log
    assert "account default resumed" in log

    [db_file] = tmp_path.glob("demo-*.db")
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            jobs = list(s.scalars(select(Job)))
            assert sorted(j.status for j in jobs) == ["archived"] * 5 + ["failed"]
            assert not [j.error_code for j in jobs if j.error_code in ACCOUNT_CODES]
    finally:
        engine.dispose()
