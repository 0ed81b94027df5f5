"""The dashboard in headless Debian Chromium, against the app served over HTTP with real PostgreSQL and S3.

Jobs are created through the API (some for tenants other than `default`); two are then archived
by writing the rows the pipeline would write and putting real PNGs in the moto S3 endpoint, so
thumbnails load through presigned URLs. The screenshot is kept in test-artifacts/dashboard.png.
The data route's filters are also checked in-process (`api`).
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
from models.enums import JobStatus
from models.tables import Job
from models.tenants import create_tenant
from tests.api.conftest import AUTH, Api, Served, archive_job, make_settings
from tests.conftest import TEST_API_TOKEN
from tests.factories import make_job
from tests.wsgi import serve_wsgi
from webhook import create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_SECONDS = 30


def create(served: Served, prompt: str, n: int = 1, tenant: str | None = None) -> str:
    body: dict[str, Any] = {"prompt": prompt, "n": n, **({"tenant": tenant} if tenant else {})}
    response = requests.post(f"{served.url}/v1/jobs", json=body, headers=AUTH, timeout=10)
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


def tenants_shown(driver: webdriver.Chrome) -> dict[str, str]:
    """Each row's job id and the text of its tenant cell."""
    result: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#jobs tr')]"
        ".map(r => [r.dataset.jobId || '', r.querySelector('td.tenant')?.textContent.trim() || '']));"
    )
    return result


def choose(driver: webdriver.Chrome, select_id: str, value: str) -> None:
    """Pick a filter's option the way a person does (only an existing option can be picked)."""
    driver.execute_script(
        "const f = document.getElementById(arguments[0]);"
        "const o = [...f.options].find(o => o.value === arguments[1]);"
        "if (!o) throw new Error(`no option ${arguments[1]} in ${arguments[0]}`);"
        "f.value = arguments[1]; f.dispatchEvent(new Event('change'));",
        select_id,
        value,
    )


def options(driver: webdriver.Chrome, select_id: str) -> list[str]:
    result: list[str] = driver.execute_script(
        "return [...document.getElementById(arguments[0]).options].map(o => o.value);", select_id
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


def test_jobs_filtered_by_tenant_and_status_with_each_row_showing_its_tenant(
    served_api: Served, browser: webdriver.Chrome
) -> None:
    with served_api.sessions() as session:
        for name in ("acme", "zeta"):
            create_tenant(session, name)
        session.commit()
    acme = [create(served_api, f"acme {i}", tenant="acme") for i in range(2)]
    zeta, ours = create(served_api, "zeta", tenant="zeta"), create(served_api, "the default's")
    stopped = requests.post(f"{served_api.url}/v1/jobs/{acme[0]}/cancel", headers=AUTH, timeout=10)
    assert stopped.status_code == 200, stopped.text
    owners = {acme[0]: "acme", acme[1]: "acme", zeta: "zeta", ours: "default"}

    browser.get(f"{served_api.url}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    wait.until(lambda d: tenants_shown(d) == owners)
    assert options(browser, "tenant-filter") == ["", "acme", "default", "zeta"]

    choose(browser, "tenant-filter", "acme")
    wait.until(lambda d: tenants_shown(d) == {acme[0]: "acme", acme[1]: "acme"})
    # With the status filter: that tenant's jobs in that status only.
    choose(browser, "status-filter", "cancelled")
    wait.until(lambda d: rows(d) == {acme[0]: "cancelled"})
    choose(browser, "status-filter", "queued")
    wait.until(lambda d: rows(d) == {acme[1]: "queued"})
    # The choice outlives a reload (sessionStorage), before the tenants list has even arrived.
    browser.refresh()
    wait.until(lambda d: d.find_element(By.ID, "main").is_displayed())
    wait.until(lambda d: rows(d) == {acme[1]: "queued"})
    choose(browser, "tenant-filter", "zeta")
    wait.until(lambda d: rows(d) == {zeta: "queued"})
    choose(browser, "tenant-filter", "")
    wait.until(lambda d: rows(d) == {acme[1]: "queued", zeta: "queued", ours: "queued"})


def test_dashboard_data_filters_recent_jobs_by_tenant(api: Api) -> None:
    for name in ("zeta", "acme"):
        create_tenant(api.session, name)
    _, key = create_tenant(api.session, "keyed")
    api.session.commit()
    acme = [api.create({"prompt": f"acme {i}", "tenant": "acme"}).get_json()["id"] for i in range(2)]
    zeta = api.create({"prompt": "zeta", "tenant": "zeta"}).get_json()["id"]
    ours = api.create({"prompt": "the default's"}).get_json()["id"]
    assert api.client.post(f"/v1/jobs/{acme[0]}/cancel", headers=AUTH).status_code == 200

    def shown(query: str) -> dict[str, tuple[str, str]]:
        answer = api.get(f"/v1/dashboard{query}")
        assert answer.status_code == 200, answer.get_json()
        return {job["id"]: (job["tenant"], job["status"]) for job in answer.get_json()["jobs"]}

    everything = api.get("/v1/dashboard").get_json()
    assert everything["tenants"] == ["acme", "default", "keyed", "zeta"]
    assert shown("") == {
        acme[0]: ("acme", "cancelled"),
        acme[1]: ("acme", "queued"),
        zeta: ("zeta", "queued"),
        ours: ("default", "queued"),
    }
    assert shown("?tenant=acme") == {acme[0]: ("acme", "cancelled"), acme[1]: ("acme", "queued")}
    assert shown("?tenant=default") == {ours: ("default", "queued")}
    assert shown("?tenant=acme&status=queued") == {acme[1]: ("acme", "queued")}
    assert shown("?status=cancelled&tenant=acme") == {acme[0]: ("acme", "cancelled")}
    assert shown("?tenant=zeta&status=cancelled") == {}
    assert shown("?tenant=keyed") == {}
    assert shown("?tenant=nobody") == {}  # well-formed, just no such tenant
    assert shown("?tenant=") == shown("")  # the page's "all tenants"

    # The gallery too shows only that tenant's outputs.
    archived = {t: make_job(api.session, JobStatus.ARCHIVED, tenant=t).id for t in ("acme", "zeta")}
    api.session.commit()

    def gallery(query: str) -> set[str]:
        return {item["job_id"] for item in api.get(f"/v1/dashboard{query}").get_json()["gallery"]}

    assert gallery("?tenant=acme") == {archived["acme"]}
    assert gallery("?tenant=zeta&status=queued") == {archived["zeta"]}
    assert set(archived.values()) <= gallery("")

    for bad in ("Acme", "acme!", "-acme", "a" * 65, "acme%20", "%C3%A9"):
        refused = api.get(f"/v1/dashboard?tenant={bad}")
        assert refused.status_code == 400, bad
        assert refused.get_json()["error"].startswith("tenant must be 1 to 64 of a-z"), bad
    assert api.get("/v1/dashboard?tenant=acme&status=bogus").status_code == 400
    # The dashboard is the operator's: a tenant key cannot read it, filtered to itself or not.
    for query in ("", "?tenant=keyed"):
        denied = api.client.get(f"/v1/dashboard{query}", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403
