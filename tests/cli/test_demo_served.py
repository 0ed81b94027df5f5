"""`klingctl demo --serve` as a new user runs it: a child process whose environment holds only PATH and
HOME (no AWS_* variables, no AWS config), its dashboard in headless Chromium, then `kill -TERM`."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import requests
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.cli.conftest import KLINGCTL, ROOT

START_SECONDS = 120
WAIT_SECONDS = 30
# The promise: SIGTERM ends the served demo within 5 s.
STOP_SECONDS = 5
SERVING = re.compile(r"Still serving: dashboard (?P<url>http://127\.0\.0\.1:\d+/)#token=(?P<token>\S+) ")
VERIFIED = re.compile(r"(?P<images>\d+) images and (?P<videos>\d+) videos read back from S3 and verified")


def scrubbed_env(home: Path) -> dict[str, str]:
    """What `env -i PATH=... HOME=...` leaves: a HOME with no ~/.aws in it."""
    home.mkdir()
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "COLUMNS": "200"}


def wait_for_output(log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, f"the demo exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern.pattern!r} after {START_SECONDS} s:\n{log.read_text()[-3000:]}")


def loaded_thumbnails(driver: webdriver.Chrome) -> list[int]:
    """naturalWidth of every gallery image the browser finished loading (0 = a broken image)."""
    widths: list[int] = driver.execute_script(
        "return [...document.querySelectorAll('#gallery img')]"
        ".filter(i => i.complete).map(i => i.naturalWidth);"
    )
    return widths


def test_served_demo_without_aws_variables_shows_thumbnails_and_stops_on_sigterm(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [KLINGCTL, "demo", "--serve", "--jobs", "3", "--data-dir", str(tmp_path / "var")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=scrubbed_env(tmp_path / "home"),
            cwd=ROOT,
        )
    try:
        serving = wait_for_output(log, SERVING, proc)
        verified = wait_for_output(log, VERIFIED, proc)
        images, videos = int(verified["images"]), int(verified["videos"])
        assert images > 0 and videos == 1  # the batch's text_to_video job
        url, token = serving["url"], serving["token"]

        browser.get(f"{url}#token={token}")
        wait = WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2)
        wait.until(lambda d: len(loaded_thumbnails(d)) == images)
        assert all(width > 0 for width in loaded_thumbnails(browser)), loaded_thumbnails(browser)
        # The video plays in place from its archived copy (a presigned S3 URL, not the simulator).
        sources = browser.execute_script(
            "return [...document.querySelectorAll('#gallery video[controls]')].map(v => v.src);"
        )
        assert len(sources) == videos, sources
        assert all(".mp4?" in src and "Signature=" in src for src in sources), sources
        assert not browser.find_element("id", "error").is_displayed()

        # A download: the API redirects to a presigned URL, which serves the PNG.
        auth = {"Authorization": f"Bearer {token}"}
        gallery = requests.get(f"{url}v1/dashboard", headers=auth, timeout=10).json()["gallery"]
        first = {output["type"]: output for output in reversed(gallery)}
        download = requests.get(url.rstrip("/") + first["image"]["href"], headers=auth, timeout=10)
        assert download.status_code == 200, download.text[:500]
        assert download.content.startswith(b"\x89PNG")
        assert [r.status_code for r in download.history] == [302]
        # The video's download is the archived MP4 (an ISO media file: `ftyp` box first).
        video = requests.get(url.rstrip("/") + first["video"]["href"], headers=auth, timeout=10)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp", video.content[:16]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_SECONDS) == 0, log.read_text()[-3000:]
        assert "SIGTERM: stopping." in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
