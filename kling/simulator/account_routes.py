"""`/_sim/accounts...`: add and configure accounts, top up or dry their packs, read their stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

if TYPE_CHECKING:
    from kling.simulator.server import Simulator


def register_account_routes(app: Flask, sim: Simulator) -> None:
    def error(status: int, message: str) -> Response:
        resp = jsonify({"error": message})
        resp.status_code = status
        return resp

    def body() -> dict[str, Any] | None:
        data = request.get_json(silent=True, force=True)
        return data if isinstance(data, dict) else None

    @app.get("/_sim/accounts")
    def sim_accounts() -> Response:
        return jsonify(sim.accounts())

    @app.post("/_sim/accounts")
    def sim_add_account() -> Response:
        fields = body()
        if fields is None or not isinstance(fields.get("name"), str):
            return error(400, "body must be a JSON object with a name")
        name = fields.pop("name")
        try:
            return jsonify(sim.add_account(name, **fields))
        except ValueError as exc:
            return error(400, str(exc))

    @app.get("/_sim/accounts/<name>")
    def sim_account(name: str) -> Response:
        try:
            return jsonify(sim.account(name))
        except KeyError:
            return error(404, f"unknown account {name}")

    @app.route("/_sim/accounts/<name>", methods=["POST", "PATCH"])
    def sim_change_account(name: str) -> Response:
        fields = body()
        if fields is None:
            return error(400, "body must be a JSON object of account fields")
        fields.pop("name", None)
        try:
            return jsonify(sim.add_account(name, **fields))
        except ValueError as exc:
            return error(400, str(exc))

    @app.post("/_sim/accounts/<name>/pack")
    def sim_pack(name: str) -> Response:
        fields = body()
        if fields is None or set(fields) - {"units", "status"}:
            return error(400, 'body must be {"units": N} and/or {"status": "online|runOut|expired"}')
        try:
            return jsonify(sim.set_pack(name, units=fields.get("units"), status=fields.get("status")))
        except KeyError:
            return error(404, f"unknown account {name}")
        except ValueError as exc:
            return error(400, str(exc))
