"""The pack-runs-dry scenario's own rules (the scenario itself runs in `python -m chaos`)."""

from __future__ import annotations

from chaos.accounts import ACCOUNT_CODES, probe_bound
from chaos.scenarios import FULL, NAMES, SCENARIOS, SHORT


def test_probe_bound_allows_the_creates_in_flight_then_one_per_interval() -> None:
    assert probe_bound(30, 5, 6) == 6 + 6 + 1
    assert probe_bound(30, 30, 6) == 6 + 1 + 1
    assert probe_bound(4, 5, 1) == 1 + 0 + 1


def test_pack_runs_dry_is_selectable_and_dry_for_30_seconds() -> None:
    assert "pack-runs-dry" in NAMES
    scenario = next(s for s in SCENARIOS if s.name == "pack-runs-dry")
    assert scenario.after is not None
    assert FULL.pack_dry_seconds == SHORT.pack_dry_seconds == 30
    assert {"1100", "1101", "1102", "1103", "1304", "5001"} == set(ACCOUNT_CODES)
