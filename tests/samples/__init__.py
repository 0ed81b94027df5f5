"""Provider payloads recorded from Kling's and the Appy Pie gateway's documentation (README.md here).

`load("kling/query-succeed-200")` is a sample's decoded JSON; `raw(...)` its exact bytes, for
signatures, which are computed over bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parent


def raw(name: str) -> bytes:
    return (SAMPLES / f"{name}.json").read_bytes()


def load(name: str) -> dict[str, Any]:
    body = json.loads(raw(name))
    if not isinstance(body, dict):
        raise TypeError(f"sample {name} is not a JSON object")
    return body


def names() -> list[str]:
    """Every sample, as `load` takes it."""
    return sorted(str(path.relative_to(SAMPLES).with_suffix("")) for path in SAMPLES.rglob("*.json"))
