"""Answer times of the API and the callback receiver while a dependency is stalled.

One thread per kind of request (read a job, create a job, post a callback) asks the webhook again
and again and records how long each answer took. A request may fail while a dependency does not
answer, but only quickly and in a way a client can act on: 200/202, or 503 (with Retry-After on
the API), within ANSWER_LIMIT seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from chaos.procs import POLL
from chaos.stack import ChaosStack, JobSpec
from models.tokens import callback_url

ANSWER_LIMIT = 5.0
# Far longer than the limit, so a slow answer is measured, not cut short.
PROBE_HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Answer:
    kind: str
    status: int  # 0: no HTTP answer at all
    seconds: float
    retry_after: bool
    error: str = ""


class Probe:
    """Ask the webhook about `job_id` (which has a provider task) until `stop()`."""

    def __init__(self, stack: ChaosStack, job_id: str, task_id: str, tag: str) -> None:
        self.stack = stack
        self.job_id = job_id
        self.task_id = task_id
        self.tag = tag
        self.answers: list[Answer] = []
        self.keys: list[str] = []  # Idempotency-Keys of the jobs the probe asked to create
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._http = requests.Session()

    def start(self) -> Probe:
        for kind, ask in (("GET job", self._get), ("POST job", self._create), ("callback", self._callback)):
            thread = threading.Thread(target=self._loop, args=(kind, ask), name=f"probe {kind}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=PROBE_HTTP_TIMEOUT + 5)
        self._http.close()

    # --- the requests -------------------------------------------------------------------------------
    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.api_token}"}

    def _get(self) -> requests.Response:
        return self._http.get(
            f"{self.stack.web_url}/v1/jobs/{self.job_id}", headers=self._auth, timeout=PROBE_HTTP_TIMEOUT
        )

    def _create(self) -> requests.Response:
        with self._lock:
            key = f"{self.tag}-probe-{len(self.keys)}"
            self.keys.append(key)
        body = {"prompt": f"chaos probe {key}", "n": 1, "aspect_ratio": "1:1"}
        return self._http.post(
            f"{self.stack.web_url}/v1/jobs",
            json=body,
            headers={**self._auth, "Idempotency-Key": key},
            timeout=PROBE_HTTP_TIMEOUT,
        )

    def _callback(self) -> requests.Response:
        # A `processing` report for a task the provider is running or has finished: applied, a
        # duplicate or stale, never a change the provider would not make itself.
        body = {
            "task_id": self.task_id,
            "task_status": "processing",
            "task_status_msg": "",
            "task_info": {"external_task_id": self.job_id},
            "created_at": int(time.time() * 1000),
            "updated_at": int(time.time() * 1000),
        }
        url = callback_url(self.stack.web_url, self.stack.callback_secret, self.job_id)
        return self._http.post(
            url,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=PROBE_HTTP_TIMEOUT,
        )

    def _loop(self, kind: str, ask: Callable[[], requests.Response]) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                resp = ask()
                took = time.monotonic() - began
                answer = Answer(kind, resp.status_code, took, "Retry-After" in resp.headers)
            except requests.RequestException as exc:
                answer = Answer(kind, 0, time.monotonic() - began, False, type(exc).__name__)
            with self._lock:
                self.answers.append(answer)
            self._stopping.wait(POLL)

    # --- the verdict --------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        found: list[str] = []
        for a in self.answers:
            ok = a.status in (200, 202) or (a.status == 503 and (a.retry_after or a.kind == "callback"))
            if not ok:
                found.append(f"{a.kind}: HTTP {a.status or a.error} after {a.seconds:.1f} s")
            elif a.seconds > ANSWER_LIMIT:
                found.append(f"{a.kind}: HTTP {a.status} after {a.seconds:.1f} s, over {ANSWER_LIMIT:.0f} s")
        return found

    def summary(self) -> str:
        parts = []
        for kind in ("GET job", "POST job", "callback"):
            mine = [a for a in self.answers if a.kind == kind]
            if mine:
                codes = sorted({a.status for a in mine})
                slowest = max(a.seconds for a in mine)
                parts.append(f"{kind}: {len(mine)} answers {codes}, slowest {slowest:.1f} s")
        return "; ".join(parts)

    def created_jobs(self, *, timeout: float) -> list[JobSpec]:
        """Every job the probe asked to create, found again by its Idempotency-Key as a client
        would after a 503 or a lost answer: the same key never makes a second job."""
        specs = []
        for key in self.keys:
            body = {"prompt": f"chaos probe {key}", "n": 1, "aspect_ratio": "1:1"}
            job_id = self.stack.post_job(body, idempotency_key=key, timeout=timeout)
            specs.append(JobSpec(job_id, 1, "archived"))
        return specs
