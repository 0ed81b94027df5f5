"""The dashboard in headless Debian Chromium, against the app served over HTTP with real PostgreSQL and S3.

Jobs are created through the API; two are then archived by writing the rows the pipeline would
write and putting real PNGs in the moto S3 endpoint, so thumbnails load through presigned URLs.
The screenshot is kept in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from models.db import make_engine, make_sessionmaker
from models.tables import Job
from tests.api.conftest import AUTH, Served, archive_job, make_settings
from tests.conftest import TEST_API_TOKEN
from tests.wsgi import serve_wsgi
from webhook import create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_SECONDS = 30


def create(served: Served, prompt: str, n: int = 1) -> str:
    response = requests.post(
        f"{served.url}/v1/jobs", json={"prompt": prompt, "n": n}, headers=AUTH, timeout=10
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def loaded_thumbnails(driver: webdriver.Chrome) -> list[str]:
    script = (
        "return [...document.querySelectorAll('#gallery figure')]"
        ".filter(f => { const i = f.querySelector('img'); return i.complete && i.naturalWidth > 0; })"
        ".map(f => f.dataset.image);"
    )
    result: list[str] = driver.execute_script(script)
    return result


# The page re-renders every few seconds: read it in one script run, never through element handles
# that a refresh can make stale between two calls.
def rows(driver: webdriver.Chrome) -> dict[str, str]:
    result: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#jobs tr')]"
        ".map(r => [r.dataset.jobId || '', r.dataset.status || '']));"
    )
    return result


def timeline(driver: webdriver.Chrome, job_id: str) -> list[str]:
    result: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(`#jobs tr[data-job-id='${arguments[0]}'] .timeline .badge`)]"
        ".map(b => b.textContent.trim());",
        job_id,
    )
    return result


def counts(driver: webdriver.Chrome) -> dict[str, str]:
    result: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#counts [data-count]')]"
        ".map(e => [e.dataset.count, e.textContent.trim().split(/\\s+/).pop()]));"
    )
    return result


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    result: str = driver.execute_script(
        "return document.getElementById(arguments[0]).textContent.trim();", element_id
    )
    return result


def test_dashboard_shows_jobs_timelines_counts_and_thumbnails(
    served_api: Served, browser: webdriver.Chrome, s3_client: Any, s3_bucket: str
) -> None:
    fox, owl, queued = (
        create(served_api, "a fox", 2),
        create(served_api, "an owl"),
        create(served_api, "waiting"),
    )
    with served_api.sessions() as session:
        for job_id, colors in ((fox, [(220, 40, 40), (40, 40, 220)]), (owl, [(40, 160, 60)])):
            job = session.get(Job, job_id)
            assert job is not None
            archive_job(session, job, s3_client, s3_bucket, colors)
    served_api.limiter.acquire(queued, 1)

    browser.get(f"{served_api.url}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    expected_images = {f"{fox}/0", f"{fox}/1", f"{owl}/0"}
    wait.until(lambda d: set(loaded_thumbnails(d)) == expected_images)
    wait.until(lambda d: rows(d) == {fox: "archived", owl: "archived", queued: "queued"})

    # The token left the address bar (it lives in sessionStorage only).
    assert TEST_API_TOKEN not in browser.current_url
    assert timeline(browser, fox) == ["queued", "submitted", "succeeded", "archived"]
    shown = counts(browser)
    assert shown["archived"] == "2" and shown["queued"] == "1" and shown["failed"] == "0"
    assert text_of(browser, "slots") == "1 / 5"
    assert text_of(browser, "at-risk") == "0"

    # It refreshes itself: a job created now shows up without reloading the page.
    late = create(served_api, "a late job")
    wait.until(lambda d: rows(d).get(late) == "queued")

    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


def test_dashboard_asks_for_a_token_and_refuses_a_wrong_one(
    served_api: Served, browser: webdriver.Chrome
) -> None:
    browser.get(served_api.url + "/")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait.until(lambda d: d.find_element(By.ID, "login-error").is_displayed())
    assert not browser.find_element(By.ID, "main").is_displayed()
    browser.find_element(By.ID, "token").send_keys(TEST_API_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait.until(lambda d: d.find_element(By.ID, "main").is_displayed())


@pytest.fixture
def served_without_database() -> Iterator[str]:
    """The app served over HTTP with its database on a port nobody listens on: /v1/dashboard answers 503."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere")
    engine = make_engine(settings.database_url)
    app = create_app(settings, session_factory=make_sessionmaker(engine))
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        engine.dispose()


def test_dashboard_that_cannot_load_its_data_says_why(
    served_without_database: str, browser: webdriver.Chrome
) -> None:
    answer = requests.get(f"{served_without_database}/v1/dashboard", headers=AUTH, timeout=10)
    assert answer.status_code == 503
    message = answer.json()["error"]

    browser.get(f"{served_without_database}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    shown = text_of(browser, "error")
    assert "HTTP 503" in shown and message in shown, shown
    assert not browser.find_element(By.ID, "main").is_displayed()
    # The token was kept (it is not the token's fault), and it can still be forgotten.
    assert browser.find_element(By.ID, "logout").is_displayed()


def test_a_paused_account_shows_a_banner_until_it_resumes(
    served_api: Served, browser: webdriver.Chrome
) -> None:
    from webhook.accounts import SERVICES_KEY

    gate = served_api.app.extensions[SERVICES_KEY].account_gate
    browser.get(f"{served_api.url}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "main").is_displayed())
    banner = browser.find_element(By.ID, "accounts-banner")
    assert not banner.is_displayed()
    gate.pause("default", 1102, "dry")
    wait.until(lambda d: d.find_element(By.ID, "accounts-banner").is_displayed())
    assert "default: paused: 1102" in text_of(browser, "accounts-banner")
    gate.resume("default")
    wait.until(lambda d: not d.find_element(By.ID, "accounts-banner").is_displayed())


def test_a_queued_job_can_be_cancelled_from_the_dashboard_and_jobs_filtered_by_status(
    served_api: Served, browser: webdriver.Chrome
) -> None:
    keep, stop = create(served_api, "keep me"), create(served_api, "stop me")
    browser.get(f"{served_api.url}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    wait.until(lambda d: rows(d).get(stop) == "queued")
    # One click, by script: the page re-renders every few seconds (no stale element handles).
    browser.execute_script(f"document.querySelector(\"[data-cancel='{stop}']\").click();")
    wait.until(lambda d: rows(d).get(stop) == "cancelled")
    assert rows(browser).get(keep) == "queued"
    assert browser.execute_script(f"return document.querySelector(\"[data-cancel='{stop}']\");") is None
    answer = requests.get(f"{served_api.url}/v1/jobs/{stop}", headers=AUTH, timeout=10).json()
    assert answer["status"] == "cancelled"

    # The filter asks the server for that status only.
    browser.execute_script(
        "const f = document.getElementById('status-filter'); f.value = 'cancelled';"
        "f.dispatchEvent(new Event('change'));"
    )
    wait.until(lambda d: stop in rows(d) and keep not in rows(d))
    assert set(rows(browser).values()) == {"cancelled"}
    assert (
        requests.get(f"{served_api.url}/v1/dashboard?status=bogus", headers=AUTH, timeout=10).status_code
        == 400
    )
