"""Checks on a parsed request body before anything is stored: pure functions, each problem a
`FieldError` whose field is the path of the value (`metadata.tags[2]`), so the caller can find it.

PostgreSQL refuses NUL, lone surrogates and infinite numbers in text and JSONB; nesting is
capped so no later walk of the body (ours, the JSON encoder's, the database's) can recurse deep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kling.errors import FieldError

MAX_JSON_DEPTH = 32
# Documented caps (README "Input limits"): a webhook URL, and any URL inside the provider params
# (signed CDN URLs run to a few hundred characters; 8,192 is what common servers accept).
MAX_WEBHOOK_URL = 2048
MAX_PARAM_URL = 8192
MAX_PATH_KEY = 64


def is_json_media_type(mimetype: str) -> bool:
    """`application/json` or a `+json` type (the request's mimetype, lower-case, no parameters)."""
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _key(name: str) -> str:
    """A key as it can be shown in an error: printable, valid UTF-8, short."""
    shown = name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return shown if len(shown) <= MAX_PATH_KEY else shown[:MAX_PATH_KEY] + "..."


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{_key(key)}" if path else _key(key)


def _text_problem(path: str, text: str) -> FieldError | None:
    if "\x00" in text:
        return FieldError(path, "nul", "strings in the body must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return FieldError(path, "unicode", "strings in the body must be valid Unicode (no lone surrogates)")
    return None


def unstorable(body: Mapping[str, Any]) -> FieldError | None:
    """The first value that cannot be stored, or None. A loop, not recursion: depth is the sender's."""
    stack: list[tuple[object, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return FieldError(path, "depth", f"the body must not nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str):
            problem = _text_problem(path or "(body)", value)
            if problem:
                return problem
        elif isinstance(value, dict):
            for key, item in value.items():
                # A bad key is named by where it sits (its own text cannot be shown as it is).
                problem = _text_problem(_child(path, key), key)
                if problem:
                    return problem
                stack.append((item, _child(path, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, _child(path, i), depth + 1) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            # `1e999` parses as infinity, which JSON (and JSONB) cannot hold.
            return FieldError(path or "(body)", "number", "numbers must be finite")
    return None


def long_urls(params: Mapping[str, Any]) -> list[FieldError]:
    """Every http(s) URL in the provider params longer than MAX_PARAM_URL, by its path."""
    found: list[FieldError] = []
    stack: list[tuple[object, str]] = [(params, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if value.startswith(("http://", "https://")) and len(value) > MAX_PARAM_URL:
                found.append(
                    FieldError(path, "max_length", f"a URL must be at most {MAX_PARAM_URL} characters")
                )
        elif isinstance(value, dict):
            stack.extend((item, _child(path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, _child(path, i)) for i, item in enumerate(value))
    return sorted(found, key=lambda e: e.field)


__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_PARAM_URL",
    "MAX_WEBHOOK_URL",
    "is_json_media_type",
    "long_urls",
    "unstorable",
]
