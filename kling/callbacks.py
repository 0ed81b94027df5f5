"""Callback payloads: parse both shapes Kling sends, verify Standard Webhooks signatures."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from kling.errors import CallbackError, SignatureError, UnexpectedResponseError
from kling.types import Task

SIGNATURE_TOLERANCE_SECONDS = 300
# Kling's bodies nest 4 levels (task, task_result, images, image); room to spare, no more.
MAX_DEPTH = 32


def parse_callback(body: bytes) -> Task:
    """Parse a callback body, legacy (`task_id`, `task_status: succeed`) or newer (`id`, `status`).

    Raises `CallbackError` (a `ValueError`) for anything that is not one of those shapes.
    """
    try:
        # UTF-8 only: json.loads would take UTF-16 bytes too, whose NULs the stored body cannot hold.
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CallbackError(f"callback body is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise CallbackError("callback body is nested too deeply") from None
    if not isinstance(data, Mapping):
        raise CallbackError(f"callback body must be a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise CallbackError(f"callback body is nested deeper than {MAX_DEPTH} levels")
    # Some senders wrap the task in the usual envelope.
    if "task_id" not in data and "id" not in data and isinstance(data.get("data"), Mapping):
        data = data["data"]
    try:
        if "task_id" in data:
            return Task.from_kling(data)
        if "id" in data:
            return Task.from_standard(data)
    except UnexpectedResponseError as exc:
        raise CallbackError(exc.message) from None
    raise CallbackError("callback body has neither task_id nor id")


def _depth(value: object) -> int:
    """How deeply a parsed JSON value nests (iterative: hostile depth must not recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, Mapping):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def sign_callback(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for a body (used by the simulator and by our notifier)."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


def verify_callback_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Check a Standard Webhooks signature over the raw body; raise `SignatureError` if it fails.

    `now` (Unix seconds) is injectable so the official test vector can be checked.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts = lower.get("webhook-timestamp")
    sig_header = lower.get("webhook-signature")
    if not (msg_id and ts and sig_header):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(ts)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError("webhook-timestamp is outside the allowed window")
    try:
        expected = base64.b64decode(sign_callback(secret, msg_id, timestamp, body).split(",", 1)[1])
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise SignatureError("cannot compute a signature for this body or secret") from None
    for entry in sig_header.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise SignatureError("no matching signature")
