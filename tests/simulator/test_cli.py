"""`klingctl simulator` in its own process, inspected over `/_sim`."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest
import requests

from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.simulator.helpers import auth_headers

# The simulator served over HTTP in a child process.
pytestmark = pytest.mark.integration


def test_serves_until_terminated():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klingctl",
            "simulator",
            "--port",
            "0",
            "--access-key",
            TEST_ACCESS_KEY,
            "--secret-key",
            TEST_SECRET_KEY,
            "--concurrency",
            "2",
            "--task-seconds",
            "0.2",
            "--set",
            "fault_1302_rate=0",
            "--set",
            "fail_marker=BREAK",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        base = match.group(1)
        cfg = requests.get(f"{base}/_sim/config", timeout=5).json()
        assert cfg["concurrency"] == 2 and cfg["fail_marker"] == "BREAK"
        assert cfg["submitted_seconds"] == 0.05 and cfg["processing_seconds"] == 0.15000000000000002
        resp = requests.post(
            f"{base}/v1/images/generations", json={"prompt": "x", "n": 2}, headers=auth_headers(), timeout=5
        )
        assert resp.json()["code"] == 0
        assert requests.get(f"{base}/_sim/stats", timeout=5).json()["slots_in_use"] in (0, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_port_in_use_is_one_clear_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "klingctl", "simulator", "--port", str(port)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_bad_knob_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "klingctl", "simulator", "--port", "0", "--set", "callback_drop_rate=3"],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "callback_drop_rate must be between 0 and 1" in result.stderr
