"""Fixtures of the worker tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from kling import KlingClient
from models.db import make_engine
from models.settings import Settings
from tests.conftest import TEST_ACCESS_KEY, TEST_API_TOKEN, TEST_SECRET_KEY, TEST_WEBHOOK_SECRET
from tests.fixtures.services import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY
from tests.worker.harness import Harness
from worker.accounts import AccountGate
from worker.limiter import RedisSlotLimiter
from worker.poll_gate import PollGate
from worker.s3 import make_s3_client
from worker.services import Services

# The downstream receivers of the notify/delivery tests: httpserver's name, listed as an operator
# lists an internal consumer (127.0.0.1 itself is NOT listed).
RECEIVER_HOSTS = ("localhost",)


@pytest.fixture
def svc(committed_pg_url: str) -> Iterator[Services]:
    """Services for downstream notifications (test_notify.py, test_delivery.py): signed with
    TEST_WEBHOOK_SECRET, delivering only to RECEIVER_HOSTS."""
    settings = Settings(
        database_url=committed_pg_url,
        notify_secret=SecretStr(TEST_WEBHOOK_SECRET),
        api_token=SecretStr(TEST_API_TOKEN),
        notify_allowed_hosts=RECEIVER_HOSTS,
    )
    engine = make_engine(committed_pg_url)
    yield Services(settings, engine=engine)
    engine.dispose()


@pytest.fixture
def harness(
    committed_pg_url: str, s3_endpoint: str, s3_bucket: str, simulator_factory, redis_client
) -> Iterator[Harness]:
    sim = simulator_factory(concurrency=10)
    prefix = f"test:limiter:{secrets.token_hex(4)}"
    settings = Settings(
        database_url=committed_pg_url,
        kling_api_base=sim.base_url,
        kling_access_key=TEST_ACCESS_KEY,
        kling_secret_key=TEST_SECRET_KEY,
        kling_concurrency=10,
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
        archive_allowed_hosts="127.0.0.1",
        reconcile_after_seconds=0,
    )
    engine = make_engine(committed_pg_url)
    svc = Services(
        settings,
        engine=engine,
        provider=KlingClient(
            access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, base_url=sim.base_url, max_retries=0
        ),
        limiter=RedisSlotLimiter(redis_client, limit=10, lease_seconds=60, key_prefix=prefix),
        s3=make_s3_client(
            s3_endpoint, "us-east-1", access_key_id=S3_TEST_ACCESS_KEY, secret_access_key=S3_TEST_SECRET_KEY
        ),
        poll_gate=PollGate(redis_client, f"{prefix}:poll"),
        account_gate=AccountGate(
            redis_client, f"{prefix}:account", probe_seconds=settings.account_probe_seconds
        ),
    )
    yield Harness(svc, sim)
    engine.dispose()
    keys = list(redis_client.scan_iter(match=f"*{prefix}*"))
    if keys:
        redis_client.delete(*keys)
