"""Small builders the OpenAPI modules share (`webhook.openapi`, `openapi_requests`, `openapi_jobs`)."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
Schema = dict[str, Any]
TIME: Schema = {"type": "string", "format": "date-time"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


NULLABLE_TIME = nullable(TIME)


def document(fields: tuple[str, ...], properties: dict[str, Schema]) -> Schema:
    """The schema of a job document part: every field of `models.documents` is always present."""
    if tuple(properties) != fields:
        raise ValueError(f"schema properties {list(properties)} are not the document's fields {list(fields)}")
    return {"type": "object", "required": list(fields), "properties": properties}


__all__ = ["JSON", "NULLABLE_TIME", "TIME", "Schema", "document", "nullable", "ref"]
