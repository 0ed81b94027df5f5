"""Per-job callback tokens: only someone holding CALLBACK_SECRET can address a job's callback URL."""

from __future__ import annotations

import hashlib
import hmac


def callback_token(secret: str, job_id: str) -> str:
    return hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).hexdigest()


def check_callback_token(secret: str, job_id: str, token: str) -> bool:
    return hmac.compare_digest(callback_token(secret, job_id).encode(), token.encode())


def callback_url(public_base_url: str, secret: str, job_id: str) -> str:
    return f"{public_base_url.rstrip('/')}/callbacks/kling/{job_id}/{callback_token(secret, job_id)}"
