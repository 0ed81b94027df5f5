"""Shared test configuration.

Fixtures live in `tests/fixtures/*.py` (one plugin per area) so every test directory can use
the simulator, the database, Redis and the S3 endpoint.
"""

from __future__ import annotations

import os

import pytest

from tests.background import BACKGROUND, Background, planned_runs

# Long keys: PyJWT warns (and our pytest config errors) on HMAC keys shorter than 32 bytes.
TEST_ACCESS_KEY = "test-access-key-0123456789"
TEST_SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnop"
TEST_WEBHOOK_SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="
TEST_CALLBACK_SECRET = "test-callback-secret-0123456789-abcdefghijkl"
TEST_API_TOKEN = "test-api-token-0123456789-abcdefghijklmnop"
# create_app refuses to start without API_TOKEN; tests that build Settings() get the test token
# from the environment (a test checking the refusal passes api_token=None explicitly).
os.environ.setdefault("API_TOKEN", TEST_API_TOKEN)

# Real services the integration tests talk to (CI starts them; see .ci/run).
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

pytest_plugins = [
    name
    for name in (
        "tests.fixtures.simulator",
        "tests.fixtures.db",
        "tests.fixtures.services",
        "tests.fixtures.browser",
    )
    if os.path.exists(os.path.join(os.path.dirname(__file__), "fixtures", name.rsplit(".", 1)[1] + ".py"))
]

# Fixtures that stand for a service or a tool (PostgreSQL, Redis, the S3 endpoint, the simulator,
# Chromium): a test using one, even through another fixture, is an integration test.
SERVICE_FIXTURES = frozenset(
    {"pg_url", "redis_url", "redis_client", "s3_endpoint", "simulator_factory", "browser"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `integration` every test that needs a service, so `pytest -m "not integration"` runs anywhere.

    Besides the fixtures above, the PostgreSQL case of a test parametrized over database backends
    (it asks for the database with `request.getfixturevalue`, which collection cannot see).
    """
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if fixtures & SERVICE_FIXTURES or any(
            value == "postgresql" for value in params if isinstance(value, str)
        ):
            item.add_marker(pytest.mark.integration)
    # Last, tests that must not share the machine with the background runs (they run after those
    # have ended, so they wait least there), then the tests of those runs (tests/background.py).
    items.sort(key=lambda item: 2 if item.get_closest_marker("background") else int(_quiet(item)))


def _quiet(item: pytest.Item) -> bool:
    return item.get_closest_marker("quiet") is not None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the runs the selected `background` tests check, as soon as the selection is known."""
    if session.config.option.collectonly:
        return
    names = [m.args[0] for item in session.items if (m := item.get_closest_marker("background"))]
    if names:
        background = Background(planned_runs(names))
        session.config.stash[BACKGROUND] = background
        background.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    background = session.config.stash.get(BACKGROUND, None)
    if background is not None:
        background.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """How long each background run took (--durations shows only its test's wait)."""
    background = config.stash.get(BACKGROUND, None)
    if background is not None:
        terminalreporter.write_line(background.summary())


@pytest.fixture
def background(request: pytest.FixtureRequest) -> Background:
    """The runs started at collection (tests/background.py); a test marked `background` reads its own."""
    return request.config.stash[BACKGROUND]
