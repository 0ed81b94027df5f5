"""Schemathesis against the real app (real PostgreSQL, moto S3) with the document it serves.

Every operation in `/openapi.json` is fuzzed with schema-valid and schema-invalid requests; a 5xx,
an undocumented status code, header or content type, a body that breaks its schema, or invalid
data that is accepted fails the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from models.tenants import create_tenant
from tests.api.conftest import AUTH, build_app, make_settings
from webhook.db import set_publisher
from webhook.openapi import openapi_document

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Not `negative_data_rejection`: the test adds the bearer token to every case, which turns the
# fuzzer's "missing Authorization" mutations into valid requests that it then flags as accepted.
# Rejection of bad input is tested directly (tests/api/test_api.py: auth, fields, query names).
EXCLUDED = [negative_data_rejection]


@pytest.fixture(scope="module")
def app(db_engine: Engine, s3_client: Any) -> Iterator[Flask]:
    # One rolled-back connection for the whole run: the fuzzer's jobs never outlive it.
    with db_engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        # /healthz?deep=1 answers 200 only with every dependency up, the bucket included.
        bucket = f"openapi-{uuid.uuid4().hex[:12]}"
        s3_client.create_bucket(Bucket=bucket)
        app, _ = build_app(make_settings(s3_bucket=bucket), factory, s3_client)
        set_publisher(app, lambda name, args: None)
        try:
            yield app
        finally:
            outer.rollback()


# The module's document; test_served_document_is_the_module_document proves the app serves it.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    # The same examples on every run: CI must not pass or fail by the luck of the draw.
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_matches_its_openapi_document(app: Flask, case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(app=app, headers=AUTH, checks=CHECKS, excluded_checks=EXCLUDED)


@pytest.fixture(scope="module")
def tenant_auth(app: Flask) -> dict[str, str]:
    """A tenant's key, made in the run's rolled-back connection."""
    with app.extensions["kling.sessions"]() as session:
        _, key = create_tenant(session, "fuzz")
        session.commit()
    return {"Authorization": f"Bearer {key}"}


# Where a tenant key is answered differently: its own jobs only (404 for others'), 403 on the
# operator's routes. Not createJob: the operator's run fuzzes its `tenant` field already (and
# it is the slow one).
TENANT_OPERATIONS = ["listJobs", "getJob", "cancelJob", "listAccounts", "getDashboard"]


@schema.include(operation_id=TENANT_OPERATIONS).parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_tenant_key_answers_match_the_document(
    app: Flask, tenant_auth: dict[str, str], case: schemathesis.Case[Any]
) -> None:
    case.call_and_validate(app=app, headers=tenant_auth, checks=CHECKS, excluded_checks=EXCLUDED)


def test_served_document_is_the_module_document(app: Flask) -> None:
    served = app.test_client().get("/openapi.json").get_json()
    assert served == openapi_document()
    assert served["openapi"].startswith("3.")
    create = served["paths"]["/v1/jobs"]["post"]["responses"]
    assert set(create) == {"200", "202", "400", "401", "413", "415", "422", "503"}


def test_the_document_describes_tenants() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    variants = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["JobRequest"]["oneOf"]]
    assert variants and all("tenant" in schemas[name]["properties"] for name in variants)
    assert "tenant" in schemas["Job"]["required"]
    jobs = doc["paths"]["/v1/jobs"]
    assert "tenant" in [p["name"] for p in jobs["get"]["parameters"]]
    for path in ("/v1/accounts", "/v1/dashboard"):
        assert "403" in doc["paths"][path]["get"]["responses"]
    assert "kt_" in doc["components"]["securitySchemes"]["bearer"]["description"]
