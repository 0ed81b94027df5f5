"""Every knob of the simulator in one dataclass (see docs/simulator.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Knobs that may be overridden for one task (keyed by task_id or external_task_id).
CALLBACK_FAULT_KNOBS = (
    "callback_drop_rate",
    "callback_duplicate_rate",
    "callback_reorder_rate",
    "callback_delay_rate",
    "callback_delay_seconds",
)

CALLBACK_SHAPES = ("legacy", "v3")

# Codes about the account, not the request, that `account_code` may make every create answer.
ACCOUNT_CODES = frozenset({1100, 1101, 1102, 1103, 1304})


@dataclass
class SimulatorConfig:
    """Knobs of a simulated Kling account. Rates are probabilities in [0, 1]."""

    # Where to listen; port 0 lets the OS pick a free one.
    host: str = "127.0.0.1"
    port: int = 0
    # Base of the image URLs handed out; defaults to the server's own http://host:port.
    public_url: str | None = None

    # Auth: JWT (iss = access_key, HS256 with secret_key) and/or a static bearer key.
    access_key: str | None = None
    secret_key: str | None = None
    api_key: str | None = None
    # Appy Pie gateway key; None accepts any non-empty Ocp-Apim-Subscription-Key.
    subscription_key: str | None = None

    # Account concurrency in slots; an image task holds `n` slots until it ends.
    concurrency: int = 5
    # Lifecycle durations; `task_seconds` (if given) sets both: 1/4 submitted, 3/4 processing.
    submitted_seconds: float = 0.5
    processing_seconds: float = 1.5
    task_seconds: float | None = None

    # Standard Webhooks secret (`whsec_...`) to sign callbacks; None sends them unsigned.
    webhook_secret: str | None = None
    callback_timeout_seconds: float = 5.0

    # Images: pixel size, and a target byte size reached by padding the PNG (None = natural size).
    image_width: int = 64
    image_height: int = 64
    image_bytes: int | None = None
    # Videos: target byte size of each MP4 (padded with `free` boxes; None = natural, about 8 KB).
    video_bytes: int | None = None
    # Callback body shape: `legacy` (the task object, `task_status: succeed`) or `v3`
    # (Kling 3.0: `id`, `status: succeeded`, `outputs[]`, `billing[]`).
    callback_shape: str = "legacy"
    # Seconds after the task ends before its image URLs answer 404 (None = forever).
    retention_seconds: float | None = None
    # Shifts the simulator's clock (timestamps, lifecycle, retention) to jump ahead in time.
    clock_offset_seconds: float = 0.0

    # Prompt markers: refused at create with 1301, or task ends `failed` with `fail_message`.
    policy_marker: str = "[policy]"
    fail_marker: str = "[fail]"
    fail_message: str = "Failure to pass the risk control system"

    # Callback faults (probabilities) and per-task overrides of them.
    callback_drop_rate: float = 0.0
    callback_duplicate_rate: float = 0.0
    callback_reorder_rate: float = 0.0
    callback_delay_rate: float = 0.0
    callback_delay_seconds: float = 1.0
    task_overrides: dict[str, dict[str, float]] = field(default_factory=dict)

    # API faults: answered before the request is processed (nothing is created).
    fault_5000_rate: float = 0.0
    fault_5001_rate: float = 0.0
    fault_5002_rate: float = 0.0
    fault_1302_rate: float = 0.0
    # Only inject the faults above into create requests (queries stay clean).
    faults_on_create_only: bool = False
    # Create is processed (the task exists) and then the connection is reset / a 5000 is answered.
    accept_then_drop_rate: float = 0.0
    accept_then_error_rate: float = 0.0
    # Every create is refused with this account code (1100, 1101, 1102, 1304: a dry pack, arrears,
    # an IP not whitelisted), nothing created; None (the default) refuses none.
    account_code: int | None = None
    # Units each image of a succeeded task deducts from its account's pack (`final_unit_deduction`).
    unit_cost_per_image: float = 1.0
    # `GET /account/costs` reports the balance as it was this long ago (Kling's may lag by hours).
    costs_lag_seconds: float = 0.0
    # The default account's pack runs dry (runOut, creates answered 1102) after this many creates,
    # and is back after `pack_dry_seconds` (None = dry for good). None = never.
    pack_dry_after_creates: int | None = None
    pack_dry_seconds: float | None = None
    # Sleep this long before answering every API request.
    response_delay_seconds: float = 0.0

    # Seed of the fault dice and task ids, for reproducible runs (None = random).
    seed: int | None = None

    def __post_init__(self) -> None:
        self.apply_task_seconds()
        self.check()

    def apply_task_seconds(self) -> None:
        if self.task_seconds is not None:
            self.submitted_seconds = self.task_seconds / 4
            self.processing_seconds = self.task_seconds * 3 / 4

    def check(self) -> None:
        """Raise ValueError on a knob value that makes no sense."""
        if self.concurrency < 0:
            raise ValueError("concurrency must be >= 0")
        for name in (
            "submitted_seconds",
            "processing_seconds",
            "callback_timeout_seconds",
            "callback_delay_seconds",
            "response_delay_seconds",
            "unit_cost_per_image",
            "costs_lag_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for f in dataclasses.fields(self):
            if f.name.endswith("_rate") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1")
        if self.image_width < 1 or self.image_height < 1:
            raise ValueError("image_width and image_height must be >= 1")
        if self.image_bytes is not None and self.image_bytes < 0:
            raise ValueError("image_bytes must be >= 0")
        if self.video_bytes is not None and self.video_bytes < 0:
            raise ValueError("video_bytes must be >= 0")
        if self.callback_shape not in CALLBACK_SHAPES:
            raise ValueError(f"callback_shape must be one of {', '.join(CALLBACK_SHAPES)}")
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret must start with whsec_")
        if self.account_code is not None and self.account_code not in ACCOUNT_CODES:
            raise ValueError(f"account_code must be one of {sorted(ACCOUNT_CODES)} or null")
        if self.pack_dry_after_creates is not None and self.pack_dry_after_creates < 0:
            raise ValueError("pack_dry_after_creates must be >= 0 or null")
        if self.pack_dry_seconds is not None and self.pack_dry_seconds < 0:
            raise ValueError("pack_dry_seconds must be >= 0 or null")
        for key, over in self.task_overrides.items():
            unknown = set(over) - set(CALLBACK_FAULT_KNOBS)
            if unknown:
                raise ValueError(f"task_overrides[{key!r}] has unknown knobs: {sorted(unknown)}")

    def updated(self, **knobs: Any) -> SimulatorConfig:
        """A checked copy with `knobs` changed; unknown names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(knobs) - names
        if unknown:
            raise ValueError(f"unknown simulator knobs: {sorted(unknown)}")
        if "task_seconds" not in knobs and ("submitted_seconds" in knobs or "processing_seconds" in knobs):
            knobs["task_seconds"] = None
        return dataclasses.replace(self, **knobs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view with secrets masked."""
        out = dataclasses.asdict(self)
        for name in ("secret_key", "api_key", "subscription_key", "webhook_secret"):
            if out[name] is not None:
                out[name] = "***"
        return out
