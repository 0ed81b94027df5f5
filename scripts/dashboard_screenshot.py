"""Screenshot of the dashboard of a demo run, for the README: `make screenshot` writes docs/dashboard.png.

Runs `klingctl demo --serve` as a child process, opens the printed dashboard URL in headless Chromium,
waits until every archived image's thumbnail has loaded, saves the page, and stops the demo (SIGTERM).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
SERVING = re.compile(r"Still serving: dashboard (?P<url>\S+#token=\S+) ")
IMAGES = re.compile(r"(?P<images>\d+) images and \d+ videos read back from S3 and verified")
START_SECONDS = 180
LOAD_SECONDS = 60


def wait_for(log: Path, proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        serving, images = SERVING.search(text), IMAGES.search(text)
        if serving and images:
            return serving["url"], int(images["images"])
        if proc.poll() is not None:
            sys.exit(f"the demo exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    sys.exit(f"the demo did not start serving within {START_SECONDS} s (see {log})")


def browser(width: int, height: int) -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars")
    for flag in flags:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--size", default="1280x1300", help="Browser window, WIDTHxHEIGHT.")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    klingctl = str(Path(sys.executable).with_name("klingctl"))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "demo.out"
        with log.open("wb") as out:
            argv = [klingctl, "demo", "--serve", "--jobs", str(args.jobs), "--data-dir", tmp]
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: S603
        try:
            url, images = wait_for(log, proc)
            driver = browser(width, height)
            try:
                driver.get(url)
                loaded = (
                    "return [...document.querySelectorAll('#gallery img')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length;"
                )
                WebDriverWait(driver, LOAD_SECONDS, poll_frequency=0.2).until(
                    lambda d: d.execute_script(loaded) == images
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                if not driver.save_screenshot(str(args.out)):
                    sys.exit(f"could not write {args.out}")
            finally:
                driver.quit()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"wrote {args.out} ({images} thumbnails)")


if __name__ == "__main__":
    main()
