"""The `Simulator` handle: state, clock, faults and the threaded HTTP server that serves them."""

from __future__ import annotations

import itertools
import json
import random
import socket
import string
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from kling.errors import CODE_TABLE
from kling.kinds import KINDS
from kling.simulator import accounts as acc
from kling.simulator.account_api import AccountsMixin
from kling.simulator.accounts import DEFAULT, AccountBook, CreateRefused
from kling.simulator.config import CALLBACK_FAULT_KNOBS, SimulatorConfig
from kling.simulator.dispatch import CallbackDelivery, Dispatcher, Pending
from kling.simulator.image_api import ImagesMixin, VideosMixin
from kling.simulator.state import Kind, SimTask, Status

_ID_ALPHABET = string.ascii_letters + string.digits + "-_"
# How often the clock thread looks for due status changes while tasks are running.
_TICK_SECONDS = 0.01


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request: benchmarks send thousands."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


__all__ = ["CreateRefused", "Simulator"]


class Simulator(AccountsMixin, ImagesMixin, VideosMixin):
    """Simulated Kling accounts served over HTTP. Thread-safe; start it, use `base_url`, stop it."""

    def __init__(self, config: SimulatorConfig | None = None, **knobs: Any) -> None:
        base = config if config is not None else SimulatorConfig()
        self._config = base.updated(**knobs) if knobs else base
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._rng = random.Random(self._config.seed)  # noqa: S311 - fault dice and ids, not secrets
        self._tasks: dict[str, SimTask] = {}
        # The tasks not final yet: the clock advances only these (a backlog benchmark leaves
        # 20,000 finished ones behind, and walking them every tick took most of a core).
        self._live: dict[str, SimTask] = {}
        self._by_ext: dict[str, str] = {}
        self._accounts = AccountBook()
        self._sync_default_pack()
        self._create_count = 0
        self._max_slots = 0
        self._codes: Counter[int] = Counter()
        self._dropped_connections = 0
        self._query_count = 0  # single-task lookups answered
        self._list_count = 0  # list pages answered
        # A held-back callback per task, sent after the task's next one (reorder fault).
        self._held: dict[str, Pending] = {}
        self._dispatcher = Dispatcher()
        self._server: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._base_url = ""

    # --- lifecycle of the server ------------------------------------------------------------------
    def start(self) -> Simulator:
        from kling.simulator.app import create_app

        if self._server is not None:
            return self
        cfg = self.config
        # Bind here so a busy port raises OSError; werkzeug would print and sys.exit() instead.
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        listener = socket.create_server((cfg.host, cfg.port), family=family, backlog=128)
        try:
            self._server = make_server(
                cfg.host,
                listener.getsockname()[1],
                create_app(self),
                threaded=True,
                request_handler=_QuietHandler,
                fd=listener.fileno(),
            )
        finally:
            listener.close()  # werkzeug holds its own duplicate of the descriptor
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host  # noqa: S104
        self._base_url = f"http://{host}:{self._server.port}"
        self._dispatcher.webhook_secret = cfg.webhook_secret
        self._dispatcher.timeout = cfg.callback_timeout_seconds
        self._dispatcher.start()
        self._stopping = False
        self._threads = [
            # A short poll interval keeps stop() fast: shutdown waits for the next poll.
            threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="sim-http",
                daemon=True,
            ),
            threading.Thread(target=self._clock_loop, name="sim-clock", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._dispatcher.stop()
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def public_url(self) -> str:
        return (self.config.public_url or self.base_url).rstrip("/")

    # --- knobs ------------------------------------------------------------------------------------
    @property
    def config(self) -> SimulatorConfig:
        with self._lock:
            return self._config

    def configure(self, **knobs: Any) -> SimulatorConfig:
        """Change knobs at run time; unknown names or bad values raise ValueError, nothing changes."""
        for fixed in ("host", "port"):
            if fixed in knobs:
                raise ValueError(f"{fixed} cannot change while running")
        with self._lock:
            self._config = self._config.updated(**knobs)
            if "seed" in knobs:
                self._rng.seed(self._config.seed)
            self._dispatcher.webhook_secret = self._config.webhook_secret
            self._dispatcher.timeout = self._config.callback_timeout_seconds
            if {"pack_dry_after_creates", "pack_dry_seconds"} & set(knobs):
                self._sync_default_pack()
            self._wake.notify_all()
            return self._config

    def _sync_default_pack(self) -> None:
        # The global dry-pack knobs belong to the default account (the one without own keys).
        cfg = self._config
        knobs = {
            "pack_dry_after_creates": cfg.pack_dry_after_creates,
            "pack_dry_seconds": cfg.pack_dry_seconds,
        }
        self._accounts.upsert(DEFAULT, knobs, self.now())

    def roll(self, rate: float) -> bool:
        """A seeded coin toss that comes up True with probability `rate`."""
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    # --- inspection -------------------------------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        """Every task, oldest first, as `/_sim/tasks` shows it."""
        with self._lock:
            self._advance()
            now, cfg = self.now(), self._config
            return [t.inspect(self.public_url, now, cfg.retention_seconds) for t in self._tasks.values()]

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._advance()
            t = self._tasks.get(task_id)
            return t.inspect(self.public_url, self.now(), self._config.retention_seconds) if t else None

    def tasks_by_external_id(self, external_task_id: str) -> list[dict[str, Any]]:
        """Every provider task one external id produced (never more than one, if the client is right)."""
        return [t for t in self.tasks() if t["external_task_id"] == external_task_id]

    @property
    def create_count(self) -> int:
        with self._lock:
            return self._create_count

    @property
    def slots_in_use(self) -> int:
        with self._lock:
            self._advance()
            return self._slots_in_use()

    @property
    def max_slots_in_use(self) -> int:
        with self._lock:
            return self._max_slots

    @property
    def count_by_code(self) -> dict[int, int]:
        with self._lock:
            return dict(self._codes)

    @property
    def dropped_connections(self) -> int:
        """Creates answered by resetting the connection (accept_then_drop)."""
        with self._lock:
            return self._dropped_connections

    @property
    def deliveries(self) -> list[CallbackDelivery]:
        """Every callback delivery attempt, including those the fault knobs dropped."""
        return self._dispatcher.deliveries()

    callbacks = deliveries

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance()
            return {
                "tasks": len(self._tasks),
                "create_count": self._create_count,
                "slots_in_use": self._slots_in_use(),
                "max_slots_in_use": self._max_slots,
                "concurrency": self._config.concurrency,
                "count_by_code": {str(k): v for k, v in self._codes.items()},
                "dropped_connections": self._dropped_connections,
                "query_count": self._query_count,
                "list_count": self._list_count,
                "callbacks_pending": self._dispatcher.pending_count() + len(self._held),
                "deliveries": len(self._dispatcher.deliveries()),
            }

    def expire(self, task_id: str) -> None:
        """Make the task's image URLs answer 404 from now on (as after Kling's 30-day deletion)."""
        with self._lock:
            self._get(task_id).expired = True

    def reset(self) -> None:
        """Forget every task, counter and delivery (knobs stay)."""
        with self._lock:
            self._tasks.clear()
            self._live.clear()
            self._by_ext.clear()
            self._held.clear()
            self._create_count = 0
            self._max_slots = 0
            self._dropped_connections = 0
            self._query_count = 0
            self._list_count = 0
            self._codes.clear()
            self._dispatcher.clear()
            for a in self._accounts.accounts.values():
                a.creates, a.max_slots, a.units_used, a.costs_requests, a.costs_refused = 0, 0, 0.0, 0, 0
                a.refused.clear()

    # --- used by the HTTP app ---------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self._config.clock_offset_seconds

    def record_dropped_connection(self) -> None:
        with self._lock:
            self._dropped_connections += 1

    def record_code(self, code: int) -> None:
        with self._lock:
            self._codes[code] += 1

    def create_task(self, kind: Kind, params: dict[str, Any], account: str = DEFAULT) -> dict[str, Any]:
        """Create a task on `account` or raise CreateRefused (the `account_code` knob, 1201
        duplicate external id, 1102 pack cannot cover it, 1303 no free slots)."""
        with self._lock:
            self._advance()
            acct = self._accounts.get(account)
            try:
                return self._create(kind, params, acct)
            except CreateRefused as exc:
                acct.refused[exc.code] += 1
                raise

    def _create(self, kind: Kind, params: dict[str, Any], acct: acc.SimAccount) -> dict[str, Any]:
        cfg = self._config
        now = self.now()
        self._accounts.refresh(acct, now)
        code = acct.account_code
        if code is None and acct.name == DEFAULT:
            code = cfg.account_code
        if code is not None:
            raise CreateRefused(code, CODE_TABLE[code].__doc__ or "account refused")
        ext = params.get("external_task_id") or None
        if ext is not None and acc.ext_key(acct.name, ext) in self._by_ext:
            raise CreateRefused(1201, "external_task_id already exists")
        # Slots and output count come from the registry, like everything kind-specific.
        task_kind = KINDS[kind]
        series = kind == "omni_image" and params.get("result_type") == "series"
        count = task_kind.output_count(params)
        slots = task_kind.slots(params)
        cost = cfg.unit_cost_per_image * count
        refusal = acc.admission_code(
            acct,
            slots=slots,
            cost=cost,
            in_use=self._account_slots(acct.name),
            reserved=self._account_reserved(acct.name),
            concurrency=self._concurrency_of(acct),
        )
        if refusal == 1102:
            raise CreateRefused(1102, "resource pack exhausted or expired")
        if refusal == 1303:
            raise CreateRefused(1303, "parallel task over resource pack limit")
        prompt = str(params.get("prompt") or "")
        task = SimTask(
            task_id=self._new_id(),
            kind=kind,
            external_task_id=ext,
            params=dict(params),
            slots=slots,
            image_count=count,
            series=series,
            callback_url=params.get("callback_url") or None,
            created_at=self.now(),
            submitted_seconds=cfg.submitted_seconds,
            processing_seconds=cfg.processing_seconds,
            will_fail=bool(cfg.fail_marker) and cfg.fail_marker in prompt,
            fail_message=cfg.fail_message,
            image_spec=(cfg.image_width, cfg.image_height, cfg.image_bytes),
            account=acct.name,
            units=cost,
            yields=task_kind.yields,
            video_bytes=cfg.video_bytes,
        )
        self._tasks[task.task_id] = task
        self._live[task.task_id] = task
        if ext is not None:
            self._by_ext[acc.ext_key(acct.name, ext)] = task.task_id
        self._create_count += 1
        self._max_slots = max(self._max_slots, self._slots_in_use())
        acc.after_create(acct, now, self._account_slots(acct.name))
        self._emit(task, "submitted", task.created_at)
        self._wake.notify_all()
        return task.task_object(self.public_url)

    def find_task(self, key: str, kind: Kind, account: str = DEFAULT) -> dict[str, Any] | None:
        """Task object by task_id or external_task_id; an account sees only its own tasks."""
        with self._lock:
            self._advance()
            self._query_count += 1
            t = self._tasks.get(key)
            if t is None or t.account != account:
                t = self._tasks.get(self._by_ext.get(acc.ext_key(account, key), ""))
            if t is None or t.kind != kind or t.account != account:
                return None
            return t.task_object(self.public_url)

    def list_tasks(
        self, kind: Kind, page_num: int, page_size: int, account: str = DEFAULT
    ) -> list[dict[str, Any]]:
        """Newest first, like Kling's list."""
        with self._lock:
            self._advance()
            self._list_count += 1
            # Newest first, reading only as far as the page: a benchmark leaves 20,000 tasks behind.
            start = (page_num - 1) * page_size
            chosen = itertools.islice(
                (t for t in reversed(self._tasks.values()) if t.kind == kind and t.account == account),
                start,
                start + page_size,
            )
            return [t.task_object(self.public_url) for t in chosen]

    # --- internals (call with the lock held) ------------------------------------------------------
    def _get(self, task_id: str) -> SimTask:
        t = self._tasks.get(task_id) or self._tasks.get(self._by_ext.get(task_id, ""))
        if t is None:
            raise KeyError(f"unknown task {task_id}")
        return t

    def _new_id(self) -> str:
        while True:
            candidate = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(22))
            if candidate not in self._tasks:
                return candidate

    def _slots_in_use(self) -> int:
        return sum(t.slots for t in self._live.values() if not t.is_final)

    def _advance(self) -> None:
        """Apply every status change that is due, emitting its callbacks in order."""
        now = self.now()
        for t in list(self._live.values()):
            if not t.is_final:
                for status in t.advance(now):
                    self._emit(t, status, t.updated_at if status == t.status else now)
                    if status == "succeed":
                        acc.settle(self._accounts.get(t.account), t.units, now)
            if t.is_final:
                del self._live[t.task_id]

    def _emit(self, task: SimTask, status: Status, at: float) -> None:
        if not task.callback_url:
            return
        cfg = self._config
        knobs: dict[str, float] = {k: getattr(cfg, k) for k in CALLBACK_FAULT_KNOBS}
        for key in (task.task_id, task.external_task_id):
            if key and key in cfg.task_overrides:
                knobs.update(cfg.task_overrides[key])
        history_at = dict(task.history).get(status, at)
        if cfg.callback_shape == "v3":
            obj = task.standard_object(self.public_url, status, history_at)
        else:
            obj = task.task_object(self.public_url, status, history_at)
        body = json.dumps(obj).encode()
        pending = Pending(task.task_id, task.callback_url, status, body)
        if self._rng.random() < knobs["callback_drop_rate"]:
            self._dispatcher.record_drop(pending)
            return
        delay = 0.0
        if self._rng.random() < knobs["callback_delay_rate"]:
            delay = knobs["callback_delay_seconds"]
            pending.delayed = True
        batch = [pending]
        if self._rng.random() < knobs["callback_duplicate_rate"]:
            batch.append(Pending(task.task_id, task.callback_url, status, body, pending.webhook_id, True))
        held = self._held.pop(task.task_id, None)
        if held is not None:
            batch.append(held)
        elif status not in ("succeed", "failed") and self._rng.random() < knobs["callback_reorder_rate"]:
            # Held back until the task's next callback has gone out.
            pending.reordered = True
            self._held[task.task_id] = pending
            batch.remove(pending)
        for p in batch:
            self._dispatcher.schedule(p, delay if p is pending else 0.0)

    def _clock_loop(self) -> None:
        with self._lock:
            while not self._stopping:
                self._advance()
                busy = bool(self._live)
                self._wake.wait(_TICK_SECONDS if busy else 0.5)
