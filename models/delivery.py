"""The fixed vocabulary of downstream delivery errors (`notifications.last_error`, shown by the API).

A receiver, or whoever controls a job's `webhook_url`, learns only these words: never an exception
name or message, which would describe our network (a port-scan oracle) or leak internals.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryError(StrEnum):
    TIMEOUT = "timeout"  # no complete answer before the attempt's overall deadline
    REFUSED = "refused"  # the receiver could not be reached: connection refused, unknown name
    BLOCKED_ADDRESS = "blocked_address"  # the name led to a non-public address: nothing was sent
    REDIRECT = "redirect"  # a 3xx answer: redirects are never followed, so the event was not delivered
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    ERROR = "error"  # anything else: TLS failure, a reply that is not HTTP, a reset mid-answer


VOCABULARY = frozenset(e.value for e in DeliveryError)


def status_error(status: int) -> DeliveryError | None:
    """The error an HTTP status means for a delivery; None for 2xx (delivered)."""
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return DeliveryError.REDIRECT
    if 400 <= status < 500:
        return DeliveryError.HTTP_4XX
    if 500 <= status < 600:
        return DeliveryError.HTTP_5XX
    return DeliveryError.ERROR


def shown_error(stored: str | None) -> str | None:
    """What the API shows for a stored `last_error`: a vocabulary word; rows written before the
    vocabulary (an exception name, `HTTP 503`) show as the word they mean, or `error`."""
    if stored is None:
        return None
    if stored in VOCABULARY:
        return stored
    if stored.startswith("HTTP ") and stored[5:].isascii() and stored[5:].isdigit():
        return status_error(int(stored[5:])) or DeliveryError.ERROR
    return DeliveryError.ERROR.value
