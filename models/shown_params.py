"""A job's request as documents show it: inline (base64) images replaced by short markers.

`stored_params()` does it in the query on PostgreSQL and SQLite, so a page of jobs never brings
megabytes of image into this process; other databases read the whole column and `public_params`
hides the images in Python. Image fields are those of every task kind (`kling.kind_rules`): a
top-level string that is not an http(s) URL is shown as `<base64 image, N characters>`; a list
of images (`subject_image_list`, ...) longer than `MAX_SHOWN_LIST` characters of JSON as
`LIST_MARKER` (a list of URLs stays far below it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Text, and_, case, cast, func, literal, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from models.base import JSONType
from models.tables import Job

IMAGE_MARKER = "<base64 image, "
# Top-level fields that may hold one inline image, across the task kinds.
INLINE_IMAGE_FIELDS = (
    "image",
    "human_image",
    "cloth_image",
    "image_tail",
    "static_mask",
    "scene_image",
    "style_image",
)
# Lists whose items may hold inline images.
INLINE_IMAGE_LISTS = ("subject_image_list", "image_list", "dynamic_masks")
MAX_SHOWN_LIST = 16 * 1024
LIST_MARKER = f"<images, not shown: over {MAX_SHOWN_LIST} characters>"


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The request as stored, with inline base64 images replaced by short markers."""
    out = dict(params)
    for name in INLINE_IMAGE_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and not value.startswith(("http://", "https://", IMAGE_MARKER)):
            out[name] = f"{IMAGE_MARKER}{len(value)} characters>"
    for name in INLINE_IMAGE_LISTS:
        value = out.get(name)
        if isinstance(value, list) and len(json.dumps(value)) > MAX_SHOWN_LIST:
            out[name] = LIST_MARKER
    return out


class stored_params(FunctionElement[Any]):
    """`jobs.params` for a document, its inline images replaced by markers in the database."""

    type = JSONType
    inherit_cache = True


@compiles(stored_params)
def _stored_params(element: stored_params, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(Job.params, **kw))


@compiles(stored_params, "sqlite")
def _stored_params_sqlite(element: stored_params, compiler: Any, **kw: Any) -> str:
    # JSON1: json_replace changes only keys that exist. GLOB, unlike LIKE, is case-sensitive as
    # `public_params` is. json() keeps a kept list JSON (not a string) inside json_replace.
    params = Job.params
    changes: list[Any] = []
    for name in INLINE_IMAGE_FIELDS:
        path = f"$.{name}"
        value = func.json_extract(params, path)
        inline = and_(
            func.json_type(params, path) == "text",
            value.op("NOT GLOB")("http://*"),
            value.op("NOT GLOB")("https://*"),
        )
        size = literal(IMAGE_MARKER).concat(func.length(value)).concat(" characters>")
        changes += [path, case((inline, size), else_=value)]
    for name in INLINE_IMAGE_LISTS:
        path = f"$.{name}"
        value = func.json_extract(params, path)
        long = and_(func.json_type(params, path) == "array", func.length(value) > MAX_SHOWN_LIST)
        changes += [path, case((long, literal(LIST_MARKER)), else_=func.json(value))]
    return str(compiler.process(func.json_replace(params, *changes), **{**kw, "literal_binds": True}))


@compiles(stored_params, "postgresql")
def _stored_params_postgresql(element: stored_params, compiler: Any, **kw: Any) -> str:
    # One object of markers, null where a field is not inline (stripped), laid over the params.
    params = type_coerce(Job.params, JSONB())
    markers: list[Any] = []
    for name in INLINE_IMAGE_FIELDS:
        value = params[name].astext
        inline = and_(
            func.jsonb_typeof(params[name]) == "string",
            value.not_like("http://%"),
            value.not_like("https://%"),
        )
        markers += [name, case((inline, func.concat(IMAGE_MARKER, func.length(value), " characters>")))]
    for name in INLINE_IMAGE_LISTS:
        long = and_(
            func.jsonb_typeof(params[name]) == "array", func.length(cast(params[name], Text)) > MAX_SHOWN_LIST
        )
        markers += [name, case((long, literal(LIST_MARKER)))]
    expr = params.op("||")(func.jsonb_strip_nulls(func.jsonb_build_object(*markers)))
    # Constants inline: with 50 parameters or more psycopg re-parses the statement on every run.
    return str(compiler.process(expr, **{**kw, "literal_binds": True}))


__all__ = ["IMAGE_MARKER", "LIST_MARKER", "public_params", "stored_params"]
