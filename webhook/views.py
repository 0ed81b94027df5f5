"""What the app's JSON views return: Flask turns the tuple into the response."""

from __future__ import annotations

from typing import Any

# (JSON body, HTTP status) or (JSON body, HTTP status, extra headers).
ViewResult = tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]

__all__ = ["ViewResult"]
