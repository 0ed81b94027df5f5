"""The service's own fields of a create request (`provider`, `webhook_url`, `metadata`) split from
the provider's params and checked, with the rule for which hosts a `webhook_url` may name.
Errors come back as `FieldError`s for the view to answer (webhook/api.py)."""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from kling.errors import FieldError
from kling.validation import Provider
from models.settings import Settings
from webhook.body import MAX_WEBHOOK_URL, long_urls
from worker.fetch import METADATA_ADDRESSES, embedded_ipv4

PROVIDERS: tuple[Provider, ...] = ("kling", "appypie")
# Provider fields the service fills in itself.
RESERVED_FIELDS = ("callback_url", "external_task_id")
MAX_METADATA_BYTES = 16 * 1024


def split_body(
    body: dict[str, Any], settings: Settings
) -> tuple[Provider, str | None, dict[str, Any] | None, dict[str, Any], list[FieldError]]:
    """(provider, webhook_url, metadata, provider params, errors so far); nulls count as absent."""
    errors: list[FieldError] = []
    provider: Provider = settings.kling_provider
    requested = body.pop("provider", None)
    if requested in PROVIDERS:
        provider = requested
    elif requested is not None:
        errors.append(FieldError("provider", "enum", f"must be one of {', '.join(PROVIDERS)}"))

    webhook_url = body.pop("webhook_url", None)
    if isinstance(webhook_url, str) and len(webhook_url) > MAX_WEBHOOK_URL:
        errors.append(
            FieldError("webhook_url", "max_length", f"must be at most {MAX_WEBHOOK_URL} characters")
        )
        webhook_url = None
    elif webhook_url is not None and not is_http_url(webhook_url):
        errors.append(FieldError("webhook_url", "url", "must be an http(s) URL with a host"))
        webhook_url = None
    elif webhook_url is not None and not public_host(urlsplit(webhook_url).hostname or "", settings):
        errors.append(FieldError("webhook_url", "public", "must point at a public host, not a private one"))
        webhook_url = None

    metadata = body.pop("metadata", None)
    if metadata is not None and not isinstance(metadata, dict):
        errors.append(FieldError("metadata", "type", "must be a JSON object"))
        metadata = None
    elif metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        errors.append(FieldError("metadata", "size", f"must be at most {MAX_METADATA_BYTES} bytes as JSON"))
        metadata = None

    for name in RESERVED_FIELDS:
        if name in body:
            body.pop(name)
            errors.append(FieldError(name, "reserved", "is set by the service, not by clients"))
    params = {k: v for k, v in body.items() if v is not None}
    errors += long_urls(params)
    return provider, webhook_url, metadata, params, errors


def is_http_url(value: object) -> bool:
    if not isinstance(value, str) or len(value) > MAX_WEBHOOK_URL:
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def public_host(host: str, settings: Settings) -> bool:
    """False for a host that is, in any spelling, a non-public address (`2130706433`, `0x7f.1`,
    `[::ffff:169.254.169.254]`) or a local name, unless listed in NOTIFY_ALLOWED_HOSTS."""
    host = host.rstrip(".").lower()
    if host in settings.notify_allowed_hosts:
        return True
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return False
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms inet_aton reads: 2130706433, 0x7f.1, 127.1, 0177.0.0.1
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return True  # a name
    ip = embedded_ipv4(ip)
    return ip.is_global and ip not in METADATA_ADDRESSES
