"""``campaignctl serve``: the HTTP device API, and the MQTT state listeners, in one process.

Devices on ``http`` interfaces poll ``GET /v1/devices/{name}/configuration`` with their
secret as a bearer token, and report with ``PUT /v1/devices/{name}/state``. Serving a
document counts as delivering it: the jobs that wrote it see the device move from
``syncing`` to ``delivered``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from campaignctl import __version__, counting, credentials, db, dialect, metrics
from campaignctl.errors import CampaignctlError, InputError
from campaignctl.interfaces.base import document
from campaignctl.names import name_problem
from campaignctl.values import MAX_STATE_BYTES

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql.elements import TextClause

MAX_BODY = MAX_STATE_BYTES  # the same limit as MQTT state messages

log = logging.getLogger("campaignctl.serve")

_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
_HEALTHY = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["ok"]}},
            }
        }
    }
}
_UNHEALTHY = {
    "description": "Part of serve stopped: the MQTT listeners, the rollout engine, or the database cannot be used",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status", "error", "stopped"],
                "properties": {
                    "status": {"type": "string", "enum": ["unhealthy"]},
                    "error": {"type": "string", "description": "stopped: followed by the names below"},
                    "stopped": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "mqtt_listeners, rollout_engine, database → why",
                    },
                },
            }
        }
    },
}
_DOCUMENT = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["configuration", "version"],
                "properties": {
                    "configuration": {
                        "type": "object",
                        "additionalProperties": True,
                        "description": "Every desired entry of the device: key → any JSON value.",
                    },
                    "version": {"type": "integer", "description": "Only grows; also the ETag."},
                },
            }
        }
    },
    "headers": {"ETag": {"schema": {"type": "string"}, "description": 'The version, quoted: "42".'}},
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="campaignctl"'}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def bearer_token(authorization: str | None, what: str = "device secret") -> str:
    """The bearer token of an Authorization header (``what``: the token expected, for the error)."""
    if not authorization:
        raise ApiError(401, "missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, f"expected Authorization: Bearer <{what}>")
    return token.strip()


def _etag_matches(if_none_match: str | None, version: int) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or f'"{version}"' in tags


class RequestCounter:
    """Counts the device API's requests by route template (``/v1/devices/{name}/state``:
    device names would make a series per device), method and status code. Plain ASGI,
    not a BaseHTTPMiddleware: a device poll must not pay for a second task."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True  # counted before the client has its answer: a scrape then sees it
                self._count(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            if not started:  # an exception escaping the app becomes a 500
                self._count(scope, 500)
            raise

    def _count(self, scope: Any, status: int) -> None:
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        self.counter.labels(template, scope["method"], str(status)).inc()


def _metrics_allowed(token: str | None, authorization: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def read_metrics_token(variable: str) -> str:
    """The operator token in the environment variable ``variable`` (never on the command
    line, where ``ps`` shows it)."""
    token = os.environ.get(variable, "").strip()
    if not token:
        raise InputError(f"the environment variable {variable} holds no metrics token", field="--metrics-token-env")
    return token


def create_app(
    engine: "Engine", *, max_body: int = MAX_BODY, metrics_token: str | None = None, public_url: str | None = None
) -> FastAPI:
    """The device API; ``metrics_token``: GET /metrics then wants it as a bearer token;
    ``public_url``: where browsers reach the web front-end (behind a TLS proxy)."""
    app = FastAPI(
        title="campaignctl device API",
        version=__version__,
        description="Devices on http interfaces fetch their desired configuration and report their state. "
        "Every /v1 call takes `Authorization: Bearer <device secret>` "
        "(`campaignctl devices credentials NAME`). "
        "The operator API (/api/v1/) takes `Authorization: Bearer <operator token>` (`campaignctl operators add NAME`).",
    )

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods: the same error shape, and the headers Starlette
        # gives (a 405's Allow, listing the path's methods).
        return _error(exc.status_code, str(exc.detail), dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        # A bug or a database fault: still the documented shape (uvicorn logs the traceback).
        return _error(500, "internal error")

    # Components of ``serve`` that stopped, name → why: Server fills it, /healthz reports it.
    app.state.stopped = {}
    app.state.metrics = measured = metrics.AppMetrics(engine)
    app.add_middleware(RequestCounter, counter=measured.requests)

    reader = app.state.reader = Reader(engine)

    def authenticated(statement: Any, name: str, request: Request) -> Any:
        """The row of ``statement`` (id, secret hash, ...) for the device the request's
        bearer token is the secret of."""
        token = bearer_token(request.headers.get("authorization"))
        # A name no device can have (a NUL byte, which PostgreSQL text cannot hold) is
        # not worth a query: it is an unknown device.
        row = None if name_problem(name) else reader.one(statement, {"name": name})
        # Unknown device, device on another interface and wrong secret look the same:
        # names are not disclosed.
        if row is None or not credentials.matches(row[1], token):
            raise ApiError(401, "invalid device secret")
        return row

    @app.get("/healthz", summary="Liveness", response_class=JSONResponse, responses={200: _HEALTHY, 503: _UNHEALTHY})
    def healthz() -> JSONResponse:
        stopped = dict(app.state.stopped)
        try:
            with db.read(engine) as conn:
                db.run(conn, "SELECT 1").scalar()
        except Exception as exc:  # noqa: BLE001 - whatever keeps the database away, serve is unhealthy
            stopped["database"] = db.describe(exc, engine)
        if stopped:
            return JSONResponse(
                {"status": "unhealthy", "error": "stopped: " + ", ".join(sorted(stopped)), "stopped": stopped},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def metrics_text(request: Request) -> Response:
        if not _metrics_allowed(metrics_token, request.headers.get("authorization")):
            raise ApiError(401, "expected Authorization: Bearer <metrics token>")
        try:
            body = measured.exposition()
        except Exception as exc:  # noqa: BLE001 - the database's figures cannot be read: say so, go on serving
            why = db.describe(exc, engine)
            log.warning("metrics: %s", why)
            return _error(503, f"metrics unavailable: {why}")
        return Response(body, media_type=metrics.CONTENT_TYPE)

    @app.get(
        "/v1/devices/{name}/configuration",
        summary="The device's desired configuration",
        response_class=Response,
        responses={200: _DOCUMENT, 304: {"description": "If-None-Match holds the current version"}, 401: _ERROR},
        openapi_extra={
            "parameters": [
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "The ETag of the document the device has",
                }
            ]
        },
    )
    async def get_configuration(name: str, request: Request) -> Response:
        device_id, _, version, configuration, waiting, interface = authenticated(_configuration_query, name, request)
        if waiting is not None and waiting <= version:  # a job waits for the device to fetch this
            await run_in_threadpool(_record_fetch, engine, device_id, version)
            counting.fetched(interface)
        etag = f'"{version}"'
        if _etag_matches(request.headers.get("if-none-match"), version):
            return Response(status_code=304, headers={"ETag": etag})
        return Response(document(version, configuration or "{}"), media_type="application/json", headers={"ETag": etag})

    @app.put(
        "/v1/devices/{name}/state",
        summary="Report the device's state",
        status_code=204,
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": True,
                            "description": "key → any JSON value; keys: 1-255 characters, no whitespace, '#', '$' or '.'",
                        }
                    }
                },
            }
        },
        responses={204: {"description": "Recorded"}, 400: _ERROR, 401: _ERROR, 413: _ERROR},
    )
    async def put_state(name: str, request: Request) -> Response:
        from campaignctl.api import TooLarge, bounded_body
        from campaignctl.fleet import parse_state_payload
        from campaignctl.listen import write_state

        device_id = authenticated(_AUTHENTICATE, name, request)[0]
        try:
            body = await bounded_body(request, max_body)
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        try:
            values = parse_state_payload(bytes(body))
            now = db.utcnow()
            await run_in_threadpool(write_state, engine, [(device_id, k, v, now) for k, v in values.items()])
        except InputError as exc:
            counting.state_reports("http", 0, 1)
            raise ApiError(400, exc.message) from None
        counting.state_reports("http", 1, 0)
        return Response(status_code=204)

    from campaignctl import api

    touch = api.Touches(engine)  # operators' last use: one record for the API and the web front-end
    api.install(app, engine, touch)  # the operator API, /api/v1/

    from campaignctl.web import mount as mount_ui

    mount_ui(app, engine, touch, public_url)  # the web front-end, under /ui (left out of the OpenAPI description)

    def openapi() -> dict[str, Any]:
        """FastAPI's description, told the truth: bearer authentication on /v1, and no
        422 (path parameters are plain strings, bodies are checked by the endpoint)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = {
                "deviceSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The device's secret: campaignctl devices credentials NAME",
                }
            }
            for schema in ("HTTPValidationError", "ValidationError"):
                spec["components"].get("schemas", {}).pop(schema, None)
            if not spec["components"].get("schemas"):
                spec["components"].pop("schemas", None)
            for path, operations in spec["paths"].items():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
                    if path.startswith("/v1/"):
                        operation["security"] = [{"deviceSecret": []}]
            api.describe(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class Reader:
    """The device API's reads, each one statement, on one connection of their own used
    from the event loop's thread only. A device poll is a few index lookups, cheaper
    than handing it to a worker thread, which costs more than the query (measured on
    both backends); writes, which may wait for a lock, go to worker threads.

    The statements are written with named parameters and compiled by SQLAlchemy once;
    they run on the connection's DB-API cursor in autocommit (no BEGIN and COMMIT), as
    SQLAlchemy's per-statement work would cost several times the query itself. The
    connection is opened on first use, and again after an error."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.conn: "Connection | None" = None
        self._compiled: dict[int, tuple[str, tuple[str, ...] | None]] = {}

    def one(self, statement: "TextClause | Callable[[Connection], TextClause]", params: dict[str, Any]) -> Any:
        """The first row of ``statement`` (or of the statement that function builds for
        this connection's dialect), a plain tuple, or None."""
        while True:
            fresh = self.conn is None
            conn = self.conn = dialect.autocommit(self.engine.connect()) if self.conn is None else self.conn
            clause = statement if not callable(statement) else statement(conn)
            compiled = self._compiled.get(id(clause))
            if compiled is None:
                done = clause.compile(dialect=conn.dialect)
                order = tuple(done.positiontup or ()) if done.positional else None
                compiled = self._compiled[id(clause)] = (done.string, order)
            sql, order = compiled
            try:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]  # open: never None
                try:
                    cursor.execute(sql, params if order is None else tuple(params[name] for name in order))
                    return cursor.fetchone()
                finally:
                    cursor.close()
            except Exception:
                # Whatever went wrong, the next read starts afresh; a connection that
                # served before may just have been dropped (a database restart): this
                # read is tried once more on a new one.
                self.close(invalidate=True)
                if fresh:
                    raise

    def close(self, *, invalidate: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if invalidate:
                conn.invalidate()
            conn.close()


_AUTHENTICATE = db.sql(
    "SELECT d.id, d.secret_hash FROM device d JOIN interface i ON i.id = d.interface_id "
    "WHERE d.name = :name AND i.type = 'http'"
)
_CONFIGURATION: dict[str, "TextClause"] = {}


def _configuration_query(conn: "Connection") -> "TextClause":
    """In one statement (one round trip), for the http device ``:name``: its id and
    secret hash, its document's version and configuration object (built as
    ``load_documents`` builds them), the lowest revision among its job items that
    wait for it to fetch a document, and its interface's name."""
    name = conn.dialect.name
    if name not in _CONFIGURATION:
        configuration = dialect.document_object(conn, "c.key", "c.desired", "c.desired IS NOT NULL")
        _CONFIGURATION[name] = db.sql(
            f"SELECT d.id, d.secret_hash, coalesce(max(c.desired_revision), 0), {configuration}, "
            "(SELECT min(ji.revision) FROM job_item ji WHERE ji.device_id = d.id AND ji.status = 'syncing'), "
            "i.name FROM device d JOIN interface i ON i.id = d.interface_id "
            "LEFT JOIN device_config c ON c.device_id = d.id AND c.desired_revision IS NOT NULL "
            "WHERE d.name = :name AND i.type = 'http' GROUP BY d.id, i.name"
        )
    return _CONFIGURATION[name]


def _record_fetch(engine: "Engine", device_id: int, version: int) -> None:
    """The device now has every write up to ``version``: its job items are delivered
    (the rollout engine moves the jobs on)."""
    now = db.utcnow()
    with db.write(engine) as conn:
        db.run(
            conn,
            "UPDATE job_item SET status = 'delivered', attempts = attempts + 1, error = NULL, "
            "updated_at = :now, delivered_at = :now "
            "WHERE device_id = :id AND status = 'syncing' AND revision <= :version",
            {"now": now, "id": device_id, "version": version},
        )


class Server:
    """uvicorn in a thread, plus the MQTT state listeners: for ``serve``, the demo and tests."""

    def __init__(
        self,
        engine: "Engine",
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        listen_mqtt: bool = True,
        engine_interval: float | None = 2.0,
        info: Callable[[str], None] = log.info,
        warn: Callable[[str], None] = log.warning,
        access_log: bool = False,
        share: str | None = None,
        max_connections: int | None = None,
        header_timeout: float = 10.0,
        keep_alive: float = 5.0,
        metrics_token: str | None = None,
        public_url: str | None = None,
    ) -> None:
        import uvicorn

        from campaignctl import connections
        from campaignctl.logs import route_uvicorn

        self.engine, self.info, self.warn = engine, info, warn
        # Slow, idle and surplus clients are bounded by the protocol (see campaignctl.connections),
        # below the file limit, raised as far as allowed: enough room for thousands of devices.
        file_limit = connections.raise_file_limit()
        self.limits = connections.Limits(
            connections.connection_cap(max_connections, file_limit),
            header_timeout=header_timeout,
            keep_alive=keep_alive,
        )
        self.backlog = connections.accept_backlog(file_limit)
        connections.quiet_repeated_logs()
        self.app = create_app(engine, metrics_token=metrics_token, public_url=public_url)
        self.host, self.requested_port = host, port
        # uvicorn configures no logging of its own: its records go to the handler of
        # campaignctl.logs, in the format and at the level chosen for the whole command.
        config = uvicorn.Config(
            connections.ignoring_client_disconnects(self.app),
            host=host,
            port=port,
            log_level=None,
            access_log=access_log,
            lifespan="off",
            log_config=None,
            http=connections.guarded_protocol(self.limits),
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # uvicorn takes floats
            backlog=self.backlog,
        )
        route_uvicorn(logging.getLogger("campaignctl").getEffectiveLevel(), access_log=access_log)
        self.server = uvicorn.Server(config)
        self._socket: Any = None
        self.listen_mqtt, self.share = listen_mqtt, share
        self.engine_interval = engine_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, timeout: float = 10.0) -> "Server":
        import socket
        import time

        # Bind here, not in uvicorn: a busy port is then a clean error, and port 0 a
        # known port before anything is served.
        try:
            self._socket = socket.create_server((self.host, self.requested_port), backlog=self.backlog)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CampaignctlError(f"cannot serve on {self.host}:{self.requested_port}: {reason}") from None
        thread = threading.Thread(target=self._run_http, name="serve-http", daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.errors or not thread.is_alive():
                raise self.errors[0] if self.errors else RuntimeError("the HTTP server did not start")
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start in time")
            time.sleep(0.01)
        if self.listen_mqtt:
            self.start_listeners()
        if self.engine_interval is not None:
            rollout = threading.Thread(target=self._run_engine, name="serve-engine", daemon=True)
            rollout.start()
            self._threads.append(rollout)
        return self

    def _run_engine(self) -> None:
        """The rollout engine: devices fetching their documents, bake times and
        schedules move campaigns on without anyone running commands."""
        from campaignctl.worker import run_worker

        try:
            run_worker(self.engine, interval=self.engine_interval or 2.0, stop=self._stop, info=self.info)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.app.state.stopped["rollout_engine"] = why = db.describe(exc, self.engine)
            self.warn(f"rollout engine stopped: {why}")  # never the SQL text and its values

    def start_listeners(self) -> bool:
        """Start ingesting state from the MQTT interfaces known now; False if there are none."""
        from campaignctl.listen import mqtt_interfaces

        if not mqtt_interfaces(self.engine):
            return False
        mqtt = threading.Thread(target=self._run_mqtt, name="serve-mqtt", daemon=True)
        mqtt.start()
        self._threads.append(mqtt)
        return True

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    def description(self) -> str:
        """What serves, for the log line that says it started."""
        return (
            f"serving the device API on http://{self.host}:{self.port} (OpenAPI: /docs, /openapi.json), "
            "the web front-end on /ui/ and the operator API on /api/v1/; Ctrl-C stops"
        )

    def _run_http(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.errors.append(exc)

    def _run_mqtt(self) -> None:
        from campaignctl.listen import listen

        try:
            listen(
                self.engine,
                stop=self._stop,
                info=self.info,
                warn=self.warn,
                share=self.share,
                health=self._listeners_health,
            )
        except Exception as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.app.state.stopped["mqtt_listeners"] = why = db.describe(exc, self.engine)
            self.warn(f"MQTT listeners stopped: {why}")

    def _listeners_health(self, problem: str | None) -> None:
        if problem is None:
            self.app.state.stopped.pop("mqtt_listeners", None)
        else:
            self.app.state.stopped["mqtt_listeners"] = problem

    def stop(self) -> None:
        self._stop.set()
        self.server.should_exit = True
        for thread in self._threads:
            thread.join(10)
        self.app.state.reader.close()
        if self._socket is not None:
            self._socket.close()

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C) or the HTTP server stops."""
        try:
            while any(t.is_alive() for t in self._threads[:1]):
                self._threads[0].join(0.5)
        finally:
            self.stop()
