"""Account alerts: an account pausing or resuming is a signed event to `ALERT_WEBHOOK_URL`.

`account.paused` (code, message, since) and `account.resumed` are sent like downstream job events:
Standard Webhooks signature with `NOTIFY_SECRET`, through the SSRF-guarded sender
(worker/delivery.py; the alert URL's own host may be private, it is the operator's), retried with
backoff for `GIVE_UP_AFTER`. The `webhook-id` is stable per account, event and pause, so a receiver
can drop repeats. The WARNING log line and the dashboard banner do not depend on it.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kling.callbacks import sign_callback
from kling.http import backoff
from models.outbox import ALERT
from worker.delivery import WebhookSender
from worker.outcome import Outcome, Step
from worker.services import Services

if TYPE_CHECKING:
    from celery import Celery

    from worker.accounts import AccountState
    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)

PAUSED, RESUMED = "account.paused", "account.resumed"
ENDPOINT_DISABLED = "delivery.disabled"
MAX_BACKOFF_SECONDS = 600.0
GIVE_UP_AFTER = 6 * 3600.0


def alert_payload(event: str, state: AccountState, at: float) -> dict[str, Any]:
    """The event body: which account, and for a pause why and since when."""
    data: dict[str, Any] = {"account": state.name, "state": "paused" if event == PAUSED else "active"}
    if event == PAUSED:
        data |= {"code": state.code, "message": state.message, "since": _iso(state.since or at)}
    return {"type": event, "timestamp": _iso(at), "data": data}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_changed(svc: Services, event: str, state: AccountState) -> None:
    """Queue the alert for a pause or resume this process just made (no-op without a URL or a
    broker). Best effort: a failed publish is logged; the log line and banner already tell."""
    if not svc.settings.alert_webhook_url or svc.publish is None:
        return
    payload = alert_payload(event, state, time.time())
    try:
        svc.publish(ALERT, [payload, f"msg_{state.name}_{event}_{int((state.since or 0) * 1000)}"])
    except Exception as exc:  # noqa: BLE001  (an alert must never fail the submit that paused)
        log.warning("alert %s for account %s not queued: %s", event, state.name, type(exc).__name__)


def endpoint_disabled(svc: Services, url: str, failing_since: datetime) -> None:
    """Queue `delivery.disabled` for a downstream endpoint no longer called. Names its host and
    the URL's SHA-256, never the URL: it may carry a token."""
    if not svc.settings.alert_webhook_url or svc.publish is None:
        return
    from worker.endpoints import url_key  # here: endpoints is a leaf the notifier imports too

    now = time.time()
    data = {
        "host": urlsplit(url).hostname,
        "url_sha256": url_key(url),
        "failing_since": _iso(failing_since.timestamp()),
    }
    payload = {"type": ENDPOINT_DISABLED, "timestamp": _iso(now), "data": data}
    try:
        svc.publish(ALERT, [payload, f"msg_{url_key(url)[:16]}_{ENDPOINT_DISABLED}_{int(now)}"])
    except Exception as exc:  # noqa: BLE001  (best effort, like the account alerts)
        log.warning("alert %s not queued: %s", ENDPOINT_DISABLED, type(exc).__name__)


def send_alert(
    svc: Services,
    payload: dict[str, Any],
    msg_id: str,
    *,
    attempt: int = 0,
    sender: WebhookSender | None = None,
) -> Outcome:
    """One delivery attempt; RETRY with backoff until `GIVE_UP_AFTER` from the event."""
    url = svc.settings.alert_webhook_url
    if not url:
        return Outcome(Step.DONE, detail="no ALERT_WEBHOOK_URL")
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    secret = svc.settings.notify_secret
    if secret is not None:
        headers["webhook-signature"] = sign_callback(secret.get_secret_value(), msg_id, timestamp, body)
    sender = sender or WebhookSender([urlsplit(url).hostname or ""])
    delivery = sender.post(url, body, headers)
    if delivery.error is None:
        return Outcome(Step.DONE)
    sent_at = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")).timestamp()
    if time.time() - sent_at > GIVE_UP_AFTER:
        log.error("alert %s: giving up after %d attempts (%s)", msg_id, attempt + 1, delivery.error.value)
        return Outcome(Step.FAILED, detail=delivery.error.value)
    delay = backoff(attempt, base=5.0, cap=MAX_BACKOFF_SECONDS)
    log.warning("alert %s failed (%s), retry in %.0f s", msg_id, delivery.error.value, delay)
    return Outcome(Step.RETRY, retry_in=delay, detail=delivery.error.value)


def register(app: Celery) -> Schedule:
    """The alert task."""
    from worker.tasks import ALERT_TASK, KlingTask

    @app.task(bind=True, base=KlingTask, shared=False, name=ALERT_TASK.name)
    def alert_task(self: KlingTask, payload: dict[str, Any], msg_id: str) -> str:
        return self.finish(send_alert(self.services, payload, msg_id, attempt=self.request.retries))

    return {}
