"""Account pauses: Kling codes that describe the account, not the job (1100 account exception,
1101 arrears, 1102 resource pack depleted, 1304 IP whitelist, 5001 maintenance) pause submitting
instead of failing jobs. While an account is paused, queued jobs stay queued and at most one create per
`ACCOUNT_PROBE_SECONDS`, across all workers, goes out to see whether the account works again.

`pauses_account` decides, with no I/O; `AccountGate` keeps the state in Redis (like
`worker.poll_gate.PollGate`), `LocalAccountGate` in one process (the demo's embedded broker).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from kling import KlingError
from kling.errors import AccountError, IPWhitelistError, PermissionDenied, ServiceUnavailable

# One account for now; the name is a parameter everywhere so several can follow.
DEFAULT_ACCOUNT = "default"
DEFAULT_PROBE_SECONDS = 30.0
# 1103 (no access to this API or model) marks the account unusable for the model this long.
DENY_SECONDS = 3600.0


@dataclass(frozen=True)
class AccountState:
    name: str
    paused: bool
    code: int | None = None
    message: str = ""
    since: float | None = None  # epoch seconds of the first refusal of this pause


def pauses_account(exc: KlingError) -> bool:
    """An answer about the account, not the job: the next create would be refused the same way.

    1103 (`PermissionDenied`, e.g. a model the account may not use) stays a job failure: other
    jobs of the same account can still go through.
    """
    if isinstance(exc, PermissionDenied):
        return False
    if isinstance(exc, ServiceUnavailable):
        return exc.code == ServiceUnavailable.default_code  # Kling's 5001, not any 503
    return isinstance(exc, AccountError | IPWhitelistError)


def denies_model(exc: KlingError) -> bool:
    """1103: this account may not use this API or model; another account may."""
    return isinstance(exc, PermissionDenied)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AccountGate:
    """Per account, in Redis: paused (with the code, message and time of the refusal) or active,
    and the probe turn, one create per `probe_seconds` across all workers (`SET NX PX`)."""

    def __init__(
        self, client: redis.Redis, prefix: str, *, probe_seconds: float = DEFAULT_PROBE_SECONDS
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.probe_seconds = probe_seconds

    def _state_key(self, name: str) -> str:
        return f"{self._prefix}:{name}:state"

    def _probe_key(self, name: str) -> str:
        return f"{self._prefix}:{name}:probe"

    def state(self, name: str) -> AccountState:
        fields = {_decode(k): _decode(v) for k, v in self._redis.hgetall(self._state_key(name)).items()}
        if not fields:
            return AccountState(name, paused=False)
        code = fields.get("code")
        since = fields.get("since")
        return AccountState(
            name,
            paused=True,
            code=int(code) if code else None,
            message=fields.get("message", ""),
            since=float(since) if since else None,
        )

    def paused(self, name: str) -> bool:
        return bool(self._redis.exists(self._state_key(name)))

    def _deny_key(self, name: str, model: str) -> str:
        return f"{self._prefix}:{name}:deny:{model}"

    def check(self, name: str, model: str) -> tuple[bool, bool]:
        """(paused, denied for `model`) in one round trip: what `paused` alone cost before."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self._state_key(name))
        pipe.exists(self._deny_key(name, model))
        paused, denied = pipe.execute()
        return bool(paused), bool(denied)

    def deny(self, name: str, model: str, seconds: float = DENY_SECONDS) -> None:
        self._redis.set(self._deny_key(name, model), "1", px=int(seconds * 1000))

    def denied(self, name: str, model: str) -> bool:
        return bool(self._redis.exists(self._deny_key(name, model)))

    def pause(self, name: str, code: int | None, message: str) -> bool:
        """Pause the account; True when it was active until now. The first probe waits a full
        `probe_seconds`: a create right after the refusal would surely be refused too."""
        key = self._state_key(name)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(key, "since", repr(time.time()))
        pipe.hset(key, mapping={"code": "" if code is None else str(code), "message": message})
        pipe.set(self._probe_key(name), "1", px=int(self.probe_seconds * 1000))
        newly, *_ = pipe.execute()
        return bool(newly)

    def resume(self, name: str) -> bool:
        """Mark the account active; True when it was paused."""
        return bool(self._redis.delete(self._state_key(name)))

    def probe_turn(self, name: str) -> bool:
        """True for at most one caller per `probe_seconds`: that run may send one create."""
        return bool(self._redis.set(self._probe_key(name), "1", nx=True, px=int(self.probe_seconds * 1000)))

    def probe_now(self, name: str) -> None:
        """Let the next submit probe at once (e.g. right after the pack was topped up)."""
        self._redis.delete(self._probe_key(name))

    def costs_turn(self, name: str) -> bool:
        """True for at most one caller per `probe_seconds`: that run may ask for the pack list
        (its own turn: the list is free, and it must not use up the probe create's)."""
        key = f"{self._prefix}:{name}:costs"
        return bool(self._redis.set(key, "1", nx=True, px=int(self.probe_seconds * 1000)))


class LocalAccountGate:
    """The same rules in one process (the demo's embedded broker, which has no Redis)."""

    def __init__(self, *, probe_seconds: float = DEFAULT_PROBE_SECONDS) -> None:
        self.probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._states: dict[str, AccountState] = {}
        self._next_probe: dict[str, float] = {}  # time.monotonic() from which a probe may go
        self._denied: dict[tuple[str, str], float] = {}  # (account, model) -> monotonic expiry
        self._next_costs: dict[str, float] = {}

    def state(self, name: str) -> AccountState:
        with self._lock:
            return self._states.get(name) or AccountState(name, paused=False)

    def paused(self, name: str) -> bool:
        with self._lock:
            return name in self._states

    def check(self, name: str, model: str) -> tuple[bool, bool]:
        return self.paused(name), self.denied(name, model)

    def deny(self, name: str, model: str, seconds: float = DENY_SECONDS) -> None:
        with self._lock:
            self._denied[(name, model)] = time.monotonic() + seconds

    def denied(self, name: str, model: str) -> bool:
        with self._lock:
            return self._denied.get((name, model), 0.0) > time.monotonic()

    def pause(self, name: str, code: int | None, message: str) -> bool:
        with self._lock:
            earlier = self._states.get(name)
            since = earlier.since if earlier is not None else time.time()
            self._states[name] = AccountState(name, paused=True, code=code, message=message, since=since)
            self._next_probe[name] = time.monotonic() + self.probe_seconds
            return earlier is None

    def resume(self, name: str) -> bool:
        with self._lock:
            return self._states.pop(name, None) is not None

    def probe_turn(self, name: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe.get(name, 0.0):
                return False
            self._next_probe[name] = now + self.probe_seconds
            return True

    def probe_now(self, name: str) -> None:
        with self._lock:
            self._next_probe.pop(name, None)

    def costs_turn(self, name: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next_costs.get(name, 0.0):
                return False
            self._next_costs[name] = now + self.probe_seconds
            return True
