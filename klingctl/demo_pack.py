"""The demo's resource-pack step: the account's pack runs dry mid-run and is topped up seconds
later; jobs wait in `queued` (the worker pauses the account) and finish after the top-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Dry long enough to see jobs wait through a few probes, short enough for a brief demo.
DRY_SECONDS = 4.0
PROBE_SECONDS = 1.0
ACCOUNT = "default"
# Kling codes about the account, not the job: a job failed with one of these was failed wrongly.
ACCOUNT_CODES = ("1100", "1101", "1102", "1103", "1304", "5001")


def dry_after(count: int) -> int:
    """Mid-run: a third of the batch gets through before the pack runs dry."""
    return max(1, count // 3)


@dataclass(frozen=True)
class PackOutage:
    after_creates: int
    dry_seconds: float = DRY_SECONDS

    def arm(self, sim: Any) -> None:
        sim.configure(pack_dry_after_creates=self.after_creates, pack_dry_seconds=self.dry_seconds)

    @staticmethod
    def state(sim: Any) -> str:
        """One cell of the live panel: `online`, or `dry (1102 x N)` while it is dry."""
        acct = sim.account(ACCOUNT)
        refused = acct["refused_by_code"].get("1102", 0)
        return "online" if acct["status"] == "online" else f"dry (1102 x {refused})"

    def summary(self, sim: Any, failed_on_account: int) -> tuple[bool, str]:
        """(ran dry, one line for the report)."""
        acct = sim.account(ACCOUNT)
        refused = acct["refused_by_code"].get("1102", 0)
        if not acct["pack_dried"]:
            return False, "Resource pack: did not run dry (too few jobs)."
        return True, (
            f"Resource pack: ran dry after {self.after_creates} creates and was topped up "
            f"{self.dry_seconds:g} s later; {refused} creates answered 1102 meanwhile; "
            + (
                "the jobs waited in queued and none failed for it."
                if failed_on_account == 0
                else f"{failed_on_account} jobs FAILED with an account code."
            )
        )
