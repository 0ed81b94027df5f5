"""`SimulatorRemote`: the inspection side of `Simulator`, for one running in another process."""

from __future__ import annotations

from typing import Any

import requests

TIMEOUT = 10.0


class SimulatorRemote:
    """Talks to `/_sim/...` of a simulator started with `klingctl simulator`."""

    def __init__(self, base_url: str, *, timeout: float = TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SimulatorRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._session.request(method, f"{self.base_url}/_sim{path}", timeout=self._timeout, **kwargs)
        if resp.status_code == 404:
            raise KeyError(resp.json().get("error", path))
        if resp.status_code == 400:
            raise ValueError(resp.json().get("error", "bad request"))
        resp.raise_for_status()
        return resp.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/config", json=knobs)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/config")
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def tasks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/tasks")
        return result

    def tasks_by_external_id(self, external_task_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", "/tasks", params={"external_task_id": external_task_id}
        )
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/tasks/{task_id}")
        return result

    def expire(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}/expire")

    def image_sha256(self, task_id: str, index: int, *, watermark: bool = False) -> str:
        params = {"watermark": "1"} if watermark else {}
        return str(self._call("GET", f"/tasks/{task_id}/images/{index}", params=params)["sha256"])

    def video_sha256(self, task_id: str, index: int, *, watermark: bool = False) -> str:
        params = {"watermark": "1"} if watermark else {}
        return str(self._call("GET", f"/tasks/{task_id}/videos/{index}", params=params)["sha256"])

    def deliveries(self, task_id: str | None = None) -> list[dict[str, Any]]:
        params = {"task_id": task_id} if task_id else {}
        result: list[dict[str, Any]] = self._call("GET", "/callbacks", params=params)
        return result

    # --- accounts (see Simulator.add_account and friends) ----------------------------------------
    def add_account(self, name: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/accounts", json={"name": name, **fields})
        return result

    def accounts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/accounts")
        return result

    def account(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/accounts/{name}")
        return result

    def set_pack(self, name: str, *, units: float | None = None, status: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("units", units), ("status", status)) if v is not None}
        result: dict[str, Any] = self._call("POST", f"/accounts/{name}/pack", json=body)
        return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    @property
    def create_count(self) -> int:
        return int(self.stats()["create_count"])

    @property
    def slots_in_use(self) -> int:
        return int(self.stats()["slots_in_use"])

    @property
    def max_slots_in_use(self) -> int:
        return int(self.stats()["max_slots_in_use"])

    @property
    def count_by_code(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.stats()["count_by_code"].items()}
