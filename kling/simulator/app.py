"""The simulator's HTTP surface: official API (every kind), Appy Pie gateway, media URLs, `/_sim`."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from kling.errors import CODE_TABLE
from kling.kinds import KINDS
from kling.simulator.account_routes import register_account_routes
from kling.simulator.state import Kind

if TYPE_CHECKING:
    from kling.simulator.server import Simulator

MESSAGES = {code: cls.__doc__ or cls.__name__ for code, cls in CODE_TABLE.items()}
MESSAGES[0] = "SUCCEED"
FAULT_CODES = (5000, 5001, 5002, 1302)
# The gateway answers plain HTTP errors; these are its documented bodies.
GATEWAY_ERRORS = {
    400: "Invalid request parameters",
    401: "Invalid or missing authentication",
    403: "Access denied for this operation",
    404: "Endpoint not found",
    429: "Rate limit exceeded, please retry later",
    500: "An unexpected error occurred, please try again later",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _http_status(code: int) -> int:
    cls = CODE_TABLE.get(code)
    return (cls.default_http_status if cls else None) or (200 if code == 0 else 500)


def drop_connection(environ: dict[str, Any]) -> None:
    """Reset the client's connection after the request was processed (it sees a network error)."""
    sock = environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        raise RuntimeError("the server does not expose its socket; cannot drop the connection")
    # Linger 0 turns the close into a TCP RST: the client cannot mistake it for a clean answer.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.shutdown(socket.SHUT_RDWR)


def create_app(sim: Simulator) -> Flask:
    app = Flask("kling.simulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    # --- answers ----------------------------------------------------------------------------------
    def envelope(code: int, message: str | None = None, data: Any = None) -> Response:
        sim.record_code(code)
        request_id = uuid.uuid4().hex
        body = {
            "code": code,
            "message": message or MESSAGES.get(code, ""),
            "request_id": request_id,
            "data": data,
        }
        resp = jsonify(body)
        resp.status_code = _http_status(code)
        if code in (1302, 1303, 5001):
            resp.headers["Retry-After"] = "1"
        return resp

    def gateway_error(status: int, message: str | None = None, code: int | None = None) -> Response:
        sim.record_code(code if code is not None else status)
        resp = jsonify({"error": message or GATEWAY_ERRORS.get(status, "error")})
        resp.status_code = status
        return resp

    def rolled_fault(create: bool) -> int | None:
        cfg = sim.config
        if cfg.faults_on_create_only and not create:
            return None
        for code in FAULT_CODES:
            if sim.roll(getattr(cfg, f"fault_{code}_rate")):
                return code
        return None

    def json_body() -> dict[str, Any] | None:
        data = request.get_json(silent=True, force=True)
        return data if isinstance(data, dict) else None

    # --- official API -----------------------------------------------------------------------------
    def official_guard(create: bool) -> tuple[str, Response | None]:
        """(the account the credentials name, an error answer or None)."""
        cfg = sim.config
        if cfg.response_delay_seconds:
            time.sleep(cfg.response_delay_seconds)
        account, code = sim.resolve_account(request.headers.get("Authorization"))
        if code:
            return account, envelope(code)
        fault = rolled_fault(create)
        return account, envelope(fault) if fault is not None else None

    def official_create(kind: Kind) -> Response:
        from kling.simulator.server import CreateRefused

        account, refused = official_guard(create=True)
        if refused is not None:
            return refused
        params = json_body()
        if params is None:
            return envelope(1200, "request body must be a JSON object")
        errors = KINDS[kind].validate(params, "kling")
        if errors:
            code = 1200 if all(e.rule == "required" for e in errors) else 1201
            return envelope(code, "; ".join(str(e) for e in errors))
        cfg = sim.config
        if cfg.policy_marker and cfg.policy_marker in str(params.get("prompt", "")):
            return envelope(1301, "Failure to pass the risk control system")
        try:
            task = sim.create_task(kind, params, account)
        except CreateRefused as exc:
            return envelope(exc.code, exc.message)
        return after_create(envelope(0, "SUCCEED", task), lambda: envelope(5000))

    def after_create(ok: Response, error: Callable[[], Response]) -> Response:
        cfg = sim.config
        if sim.roll(cfg.accept_then_drop_rate):
            sim.record_dropped_connection()
            drop_connection(request.environ)
            return Response(status=500)  # never reaches the client
        if sim.roll(cfg.accept_then_error_rate):
            return error()
        return ok

    def official_get(kind: Kind, key: str) -> Response:
        account, refused = official_guard(create=False)
        if refused is not None:
            return refused
        task = sim.find_task(key, kind, account)
        if task is None:
            return envelope(1203, f"task not found: {key}")
        return envelope(0, "SUCCEED", task)

    def official_list(kind: Kind) -> Response:
        account, refused = official_guard(create=False)
        if refused is not None:
            return refused
        bounds = {"pageNum": (1, 1000, 1), "pageSize": (1, 500, 30)}
        values: dict[str, int] = {}
        for name, (low, high, default) in bounds.items():
            raw = request.args.get(name)
            try:
                values[name] = default if raw is None else int(raw)
            except ValueError:
                values[name] = low - 1
            if not low <= values[name] <= high:
                return envelope(1201, f"{name} must be an integer between {low} and {high}")
        return envelope(0, "SUCCEED", sim.list_tasks(kind, values["pageNum"], values["pageSize"], account))

    @app.get("/account/costs")
    def account_costs() -> Response:
        from kling.simulator.server import CreateRefused

        account, refused = official_guard(create=False)
        if refused is not None:
            return refused
        for name in ("start_time", "end_time"):
            if not (request.args.get(name) or "").isdigit():
                return envelope(1200, f"{name} is required (Unix milliseconds)")
        try:
            return envelope(0, "SUCCEED", sim.account_costs(account))
        except CreateRefused as exc:
            return envelope(exc.code, exc.message)

    # One create/list/query route triple per registered kind, on the kind's own path.
    for name, task_kind in KINDS.items():
        app.add_url_rule(
            task_kind.path, f"{name}_create", lambda name=name: official_create(name), methods=["POST"]
        )
        app.add_url_rule(
            task_kind.path, f"{name}_list", lambda name=name: official_list(name), methods=["GET"]
        )
        app.add_url_rule(
            f"{task_kind.path}/<key>",
            f"{name}_get",
            lambda key, name=name: official_get(name, key),
            methods=["GET"],
        )

    # --- Appy Pie gateway -------------------------------------------------------------------------
    def gateway_guard(create: bool) -> tuple[str, Response | None]:
        cfg = sim.config
        if cfg.response_delay_seconds:
            time.sleep(cfg.response_delay_seconds)
        account = sim.resolve_gateway_account(request.headers.get("Ocp-Apim-Subscription-Key"))
        if account is None:
            return "", gateway_error(401, code=1000)
        fault = rolled_fault(create)
        if fault is not None:
            return account, gateway_error(_http_status(fault), code=fault)
        return account, None

    @app.post("/kling-ai-image/v1/getImageTask")
    def gateway_create() -> Response:
        from kling.simulator.server import CreateRefused
        from kling.validation import validate_image_params

        account, refused = gateway_guard(create=True)
        if refused is not None:
            return refused
        params = json_body()
        if params is None:
            return gateway_error(400, "Invalid request parameters: body must be a JSON object", 1200)
        errors = validate_image_params(params, provider="appypie")
        if errors:
            detail = "; ".join(str(e) for e in errors)
            return gateway_error(400, f"Invalid request parameters: {detail}", 1201)
        cfg = sim.config
        if cfg.policy_marker and cfg.policy_marker in str(params.get("prompt", "")):
            return gateway_error(400, "Failure to pass the risk control system", 1301)
        try:
            task = sim.create_task("image", params, account)
        except CreateRefused as exc:
            return gateway_error(_http_status(exc.code), exc.message, exc.code)
        sim.record_code(0)
        wrapped = {"code": 0, "message": "SUCCEED", "request_id": task["task_id"], "data": task}
        return after_create(jsonify({"data": wrapped}), lambda: gateway_error(500, code=5000))

    @app.post("/kling-ai-polling/v1/getImageStatus")
    def gateway_status() -> Response:
        account, refused = gateway_guard(create=False)
        if refused is not None:
            return refused
        params = json_body()
        task_id = params.get("task_id") if params else None
        if not isinstance(task_id, str) or not task_id:
            return gateway_error(400, "Invalid request parameters: task_id is required", 1200)
        task = sim.find_task(task_id, "image", account)
        sim.record_code(0)
        if task is None:
            return jsonify({"task_status": "failed", "task_status_msg": "task not found"})
        return jsonify(task)

    # --- image URLs -------------------------------------------------------------------------------
    @app.get("/images/<task_id>/<name>")
    def image(task_id: str, name: str) -> Response:
        stem = name.removesuffix(".png")
        watermark = stem.endswith("-watermark")
        index_text = stem.removesuffix("-watermark")
        if not name.endswith(".png") or not index_text.isdigit():
            return Response("not found\n", status=404, mimetype="text/plain")
        try:
            size, chunks = sim.image_stream(task_id, int(index_text), watermark=watermark)
        except KeyError:
            return Response("not found\n", status=404, mimetype="text/plain")
        resp = Response(chunks, mimetype="image/png", direct_passthrough=True)
        resp.content_length = size
        return resp

    @app.get("/videos/<task_id>/<name>")
    def video(task_id: str, name: str) -> Response:
        stem = name.removesuffix(".mp4")
        watermark = stem.endswith("-watermark")
        index_text = stem.removesuffix("-watermark")
        if not name.endswith(".mp4") or not index_text.isdigit():
            return Response("not found\n", status=404, mimetype="text/plain")
        try:
            size, chunks = sim.video_stream(task_id, int(index_text), watermark=watermark)
        except KeyError:
            return Response("not found\n", status=404, mimetype="text/plain")
        resp = Response(chunks, mimetype="video/mp4", direct_passthrough=True)
        resp.content_length = size
        return resp

    # --- inspection -------------------------------------------------------------------------------
    def sim_error(status: int, message: str) -> Response:
        resp = jsonify({"error": message})
        resp.status_code = status
        return resp

    @app.get("/_sim/health")
    def sim_health() -> Response:
        return jsonify({"ok": True, "base_url": sim.base_url})

    @app.get("/_sim/stats")
    def sim_stats() -> Response:
        return jsonify(sim.stats())

    @app.get("/_sim/config")
    def sim_config() -> Response:
        return jsonify(sim.config.to_dict())

    @app.route("/_sim/config", methods=["POST", "PATCH"])
    def sim_configure() -> Response:
        knobs = json_body()
        if knobs is None:
            return sim_error(400, "body must be a JSON object of knobs")
        try:
            cfg = sim.configure(**knobs)
        except (TypeError, ValueError) as exc:
            return sim_error(400, str(exc))
        return jsonify(cfg.to_dict())

    @app.get("/_sim/tasks")
    def sim_tasks() -> Response:
        ext = request.args.get("external_task_id")
        return jsonify(sim.tasks_by_external_id(ext) if ext is not None else sim.tasks())

    @app.get("/_sim/tasks/<task_id>")
    def sim_task(task_id: str) -> Response:
        task = sim.task(task_id)
        return jsonify(task) if task is not None else sim_error(404, f"unknown task {task_id}")

    @app.post("/_sim/tasks/<task_id>/expire")
    def sim_expire(task_id: str) -> Response:
        try:
            sim.expire(task_id)
        except KeyError:
            return sim_error(404, f"unknown task {task_id}")
        return jsonify({"expired": True})

    @app.get("/_sim/tasks/<task_id>/images/<int:index>")
    def sim_image(task_id: str, index: int) -> Response:
        watermark = request.args.get("watermark") in ("1", "true")
        try:
            size, chunks = sim.image_stream(task_id, index, watermark=watermark)
        except KeyError as exc:
            return sim_error(404, str(exc.args[0]))
        from kling.simulator.images import sha256_of

        return jsonify({"sha256": sha256_of(chunks), "bytes": size})

    @app.get("/_sim/tasks/<task_id>/videos/<int:index>")
    def sim_video(task_id: str, index: int) -> Response:
        watermark = request.args.get("watermark") in ("1", "true")
        try:
            size, chunks = sim.video_stream(task_id, index, watermark=watermark)
        except KeyError as exc:
            return sim_error(404, str(exc.args[0]))
        from kling.simulator.images import sha256_of

        return jsonify({"sha256": sha256_of(chunks), "bytes": size})

    @app.get("/_sim/callbacks")
    def sim_callbacks() -> Response:
        task_id = request.args.get("task_id")
        return jsonify([d.to_dict() for d in sim.deliveries if task_id is None or d.task_id == task_id])

    register_account_routes(app, sim)

    @app.post("/_sim/reset")
    def sim_reset() -> Response:
        sim.reset()
        return jsonify({"reset": True})

    # --- unknown routes ---------------------------------------------------------------------------
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        path = request.path
        if path.startswith("/_sim/"):
            return sim_error(exc.code or 500, exc.description or "error")
        if path.startswith("/kling-ai-"):
            return gateway_error(404 if exc.code in (404, 405) else exc.code or 500)
        if exc.code in (404, 405):
            return envelope(1202, "The requested method is invalid")
        return envelope(1200, exc.description)

    return app
