"""The dashboard plays video outputs, in headless Debian Chromium against the app served over HTTP
with real PostgreSQL and the moto S3 endpoint: an output row of type `video` is a
`<video controls preload="metadata">` on the archived object's presigned URL, or on its source URL
while it is not archived; images stay `<img>`; no media element carries inline (data:) bytes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from models.enums import ImageStatus, JobStatus
from models.tables import Image, Job
from tests.api.conftest import Served
from tests.api.test_dashboard import WAIT_SECONDS
from tests.conftest import TEST_API_TOKEN
from tests.factories import make_job, make_video_job

# One script run per read: the page re-renders every few seconds (see test_dashboard.rows).
MEDIA = """
return Object.fromEntries([...document.querySelectorAll('#gallery figure')].map(f => {
  const m = f.querySelector('img, video');
  return [f.dataset.image, {
    type: f.dataset.type, tag: m.tagName.toLowerCase(), src: m.getAttribute('src'),
    controls: m.hasAttribute('controls'), preload: m.getAttribute('preload'), kept: m.dataset.kept || null,
  }];
}));
"""


def media(driver: webdriver.Chrome) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = driver.execute_script(MEDIA)
    return result


def is_presigned(url: str, s3_client: Any, bucket: str, key: str) -> bool:
    """A presigned GET of bucket/key on the test S3 endpoint (path-style, signed query)."""
    parsed, endpoint = urlparse(url), urlparse(s3_client.meta.endpoint_url)
    query = parse_qs(parsed.query)
    signed = "X-Amz-Signature" in query or "Signature" in query
    return parsed.netloc == endpoint.netloc and parsed.path == f"/{bucket}/{key}" and signed


def test_video_outputs_play_in_a_video_element(
    served_api: Served, browser: webdriver.Chrome, s3_client: Any, s3_bucket: str
) -> None:
    # Source URLs on the served app itself: the browser's metadata request stays on this machine.
    with served_api.sessions() as session:
        archived = make_video_job(
            session, archived=True, source_url=f"{served_api.url}/cdn/a.mp4", bucket=s3_bucket
        ).id
        at_source = make_video_job(session, archived=False, source_url=f"{served_api.url}/cdn/b.mp4").id
        picture = make_job(session, JobStatus.ARCHIVED, bucket=s3_bucket).id
        session.commit()

    browser.get(f"{served_api.url}/#token={TEST_API_TOKEN}")
    wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
    expected = {f"{archived}/0", f"{at_source}/0", f"{picture}/0"}
    wait.until(lambda d: set(media(d)) == expected)
    shown = media(browser)

    for key in (f"{archived}/0", f"{at_source}/0"):
        video = shown[key]
        assert (video["type"], video["tag"], video["controls"], video["preload"]) == (
            "video",
            "video",
            True,
            "metadata",
        )
    assert is_presigned(shown[f"{archived}/0"]["src"], s3_client, s3_bucket, f"images/{archived}/0.mp4")
    assert shown[f"{at_source}/0"]["src"] == f"{served_api.url}/cdn/b.mp4"
    image = shown[f"{picture}/0"]
    assert (image["type"], image["tag"]) == ("image", "img")
    assert is_presigned(image["src"], s3_client, s3_bucket, f"images/{picture}/0.png")
    # Only URLs: the page never carries an output's bytes inline.
    assert all(m["src"].startswith(("http://", "https://")) for m in shown.values())

    # A refresh keeps the element a video is playing in (a new one would stop it) ...
    browser.execute_script(
        "document.querySelector(`#gallery figure[data-image='${arguments[0]}'] video`).dataset.kept = 'yes';",
        f"{archived}/0",
    )
    before = browser.execute_script("return document.getElementById('updated').textContent;")
    wait.until(lambda d: d.execute_script("return document.getElementById('updated').textContent;") != before)
    assert media(browser)[f"{archived}/0"]["kept"] == "yes"

    # ... and a video archived meanwhile switches from its source to the archived copy.
    with served_api.sessions() as session:
        job = session.get(Job, at_source)
        assert job is not None
        (video_row,) = job.images
        assert isinstance(video_row, Image)
        video_row.status = ImageStatus.ARCHIVED.value
        video_row.s3_bucket, video_row.s3_key = s3_bucket, f"images/{at_source}/0.mp4"
        session.commit()
    wait.until(
        lambda d: is_presigned(
            media(d)[f"{at_source}/0"]["src"], s3_client, s3_bucket, f"images/{at_source}/0.mp4"
        )
    )
