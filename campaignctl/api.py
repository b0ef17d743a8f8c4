"""The operator API (``/api/v1/``): what the CLI does, over HTTP, for scripts and other
platforms, served by ``campaignctl serve`` beside the device API.

Every route calls the library function the CLI command calls and answers with the
dictionary the command prints with ``-o json``: the rules, the errors and the shapes are
the CLI's. Callers are operators (``campaignctl operators add NAME``) with their token as
a bearer token; what they change is attributed to them in the audit events.

Nothing here reads the server's environment on a caller's behalf: ``${VAR}`` in a
manifest takes its value from the request (``variables``), and a firmware's download
token comes in the request body. Secret values are never sent back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from campaignctl import audit, db, operators
from campaignctl.errors import CampaignctlError, ConflictError, InputError, NotFoundError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

PREFIX = "/api/v1"
#: Largest request body: a manifest naming 100,000 devices fits several times over.
MAX_BODY = 4 * 1024 * 1024
#: Devices listed per page when ``limit`` is not given, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 5000
#: ``last_used_at`` is written at most this often per operator: a hint for people
#: (which tokens are still in use), not worth a write transaction per request.
TOUCH_SECONDS = 60.0
#: Where request-body errors point, as a file name does for the CLI.
BODY = "request body"
SCHEME = "operatorToken"
#: Names and options are text the database stores as is: PostgreSQL's text holds no NUL
#: (the CLI cannot pass one in an argument; a request can).
NUL = "NUL characters are not accepted"

#: Domain error → HTTP status; the first class that matches decides. Any other domain
#: error (exit code 1 in the CLI: a valid request the current state refuses) is a 422.
STATUS_OF: tuple[tuple[type[CampaignctlError], int], ...] = (
    (InputError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (CampaignctlError, 422),
)

log = logging.getLogger("campaignctl.api")
T = TypeVar("T")


class Refusal(Exception):
    """An answer other than success, with its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body


#: The library's errors name the CLI's options; the API's callers know its fields.
FIELD_OF_OPTION = {
    "--tag": "tag",
    "--device": "devices",
    "--device-type": "device_type",
    "--firmware-type": "firmware_type",
    "--version": "version",
    "--url": "url",
    "--sha256": "sha256",
    "--size": "size",
    "--token-env": "token",
    "--comment": "comment",
}


def refusal(exc: CampaignctlError) -> Refusal:
    """A domain error as the API answers it: its status, and the CLI's message (with the
    source, field and line of bad input)."""
    if isinstance(exc, InputError) and exc.field in FIELD_OF_OPTION:
        exc = InputError(exc.detail, source=exc.source, field=FIELD_OF_OPTION[exc.field], line=exc.line)
    status = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
    body: dict[str, Any] = {"error": exc.message}
    if isinstance(exc, InputError):
        body.update(source=exc.source, field=exc.field, line=exc.line)
    return Refusal(status, body)


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON as the CLI writes it; ASCII-escaped, so that any stored text (a lone
    surrogate a device once reported) can be encoded."""
    body = json.dumps(data, ensure_ascii=True, default=str, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class Touches:
    """``operators.touch``, at most once per ``TOUCH_SECONDS`` per operator and process,
    shared by the API and the web front-end. The write runs in a thread of its own and
    nobody waits for it: on SQLite a long write (a launch of 100k devices) holds the
    database's lock, and a hint must not hold a request (or a worker thread) behind it.
    A touch that cannot be written is logged and dropped."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(name, -TOUCH_SECONDS) < TOUCH_SECONDS:
                return
            self.last[name] = now
        threading.Thread(target=self._write, args=(name,), name="operator-touch", daemon=True).start()

    def _write(self, name: str) -> None:
        try:
            operators.touch(self.engine, name)
        except Exception as exc:  # noqa: BLE001 - a hint only: a busy database must not refuse the request
            log.warning("operator %s: last use not recorded: %s", name, db.describe(exc, self.engine))


def call(engine: "Engine", operator: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function`` run as ``operator`` (the audit events name them); domain errors and
    database faults become refusals, in the words the CLI uses. The API and the web
    front-end both call the library through this: one mapping of errors to statuses."""
    from sqlalchemy.exc import DBAPIError

    with audit.acting_as(operator):
        try:
            return function(*args, **kwargs)
        except CampaignctlError as exc:
            if unavailable(exc):
                raise Refusal(503, {"error": exc.message}) from None
            raise refusal(exc) from None
        except DBAPIError as exc:  # the database is down, locked or full: no SQL, no values
            raise Refusal(503, {"error": db.describe(exc, engine)}) from None
        except db.UnreadableData as exc:  # stored data damaged or changed outside campaignctl
            raise Refusal(500, {"error": db.unreadable_data(exc, db.location_of(engine)).message}) from None


def unavailable(exc: CampaignctlError) -> bool:
    """Whether a domain error says the database cannot be used (``db`` turns a failed
    connection into the CLI's one-line message, the driver's error as its context): a
    503, as a database fault met later is, not a refusal of the request."""
    from sqlalchemy.exc import OperationalError

    return type(exc) is CampaignctlError and isinstance(exc.__context__, OperationalError)


def has_nul(request: Request) -> bool:
    """Whether the request's path or query holds a NUL (``%00``): no name or option can."""
    return "\x00" in request.url.path or b"%00" in request.scope.get("query_string", b"")


class TooLarge(Exception):
    """A request body past its limit (the device API, the operator API and the web
    front-end each answer it in their own shape)."""


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (TooLarge) past ``limit`` bytes before more is read."""
    length = request.headers.get("content-length")
    if length is not None and digits(length) and int(length) > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    return bytes(body)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, a 413 past ``limit`` bytes."""
    try:
        return await bounded_body(request, limit)
    except TooLarge as exc:
        raise Refusal(413, {"error": str(exc)}) from None


def digits(text: str) -> bool:
    """Only 0-9 (``str.isdigit`` also takes ``²`` and other digits ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def json_value(text: str) -> Any:
    """JSON from a request: nesting too deep for Python, or past the depth the device
    API allows a state, is bad input like any other (never a RecursionError)."""
    from campaignctl.values import MAX_STATE_DEPTH, depth, loads

    try:
        value = loads(text)
    except ValueError as exc:
        raise InputError(f"not JSON ({exc})", source=BODY) from None
    if depth(value) > MAX_STATE_DEPTH:
        raise InputError(f"nested too deeply (more than {MAX_STATE_DEPTH} levels of objects and arrays)", source=BODY)
    return value


def body_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=BODY) from None


#: An option's Python type, as the error names it.
_TYPE_NAMES = {
    bool: "true or false",
    int: "a whole number",
    str: "a string",
    dict: "an object",
    list: "a list of strings",
}


def options(raw: bytes, known: Mapping[str, tuple[type, Any]]) -> dict[str, Any]:
    """A JSON object of options (an empty body: the defaults); ``known``: name → (type,
    default). Unknown names are refused, as the CLI refuses unknown flags."""
    values = {name: default for name, (_kind, default) in known.items()}
    text = body_text(raw).strip()
    if not text:
        return values
    given = json_value(text)
    if not isinstance(given, dict):
        raise InputError("expected a JSON object", source=BODY)
    for name, value in given.items():
        if name not in known:
            raise InputError(f"unknown option; expected one of: {', '.join(known)}", source=BODY, field=name)
        kind = known[name][0]
        texts: list[Any] = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        wrong = isinstance(value, bool) and kind is not bool  # JSON's true is no number
        if wrong or not isinstance(value, kind) or not all(isinstance(v, str) for v in texts):
            raise InputError(f"must be {_TYPE_NAMES[kind]}", source=BODY, field=name)
        if any("\x00" in v for v in texts):
            raise InputError(NUL, source=BODY, field=name)
        values[name] = value
    return values


def manifest(raw: bytes, content_type: str) -> tuple[str, dict[str, str]]:
    """The manifest's text and the values of its ``${VAR}``: the body is the manifest
    (YAML or JSON), or, as JSON, ``{"manifest": TEXT, "variables": {"VAR": "value"}}``."""
    text = body_text(raw)
    if not content_type.split(";")[0].strip().lower().endswith("json"):
        return text, {}
    try:
        data = json_value(text)
    except InputError:
        return text, {}  # the manifest parser says where it is wrong
    if not (isinstance(data, dict) and "manifest" in data):
        return text, {}
    wrapped = options(raw, {"manifest": (str, ""), "variables": (dict, {})})
    variables = wrapped["variables"]
    for name, value in variables.items():
        if not isinstance(value, str):
            raise InputError("must be a string", source=BODY, field=f"variables.{name}")
    return wrapped["manifest"], variables


def parse_int(value: str | None, name: str, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not digits(value) or int(value) > maximum:
        raise InputError(f"expected a whole number from 0 to {maximum}", field=name)
    return int(value)


def page(request: Request) -> tuple[int, int]:
    """(limit, offset) of a listing's query."""
    query = request.query_params
    return (
        parse_int(query.get("limit"), "limit", DEFAULT_LIMIT, MAX_LIMIT),
        parse_int(query.get("offset"), "offset", 0, 2**62),
    )


# The library calls the CLI makes around its own, for the routes that answer more than
# one function gives.


def launch_detached(engine: "Engine", name: str, *, now: bool, force: bool) -> dict[str, Any]:
    """``launch --detach -o json``: the job is created and left to the rollout engine of
    ``serve`` (or any ``run``); the request does not wait for the rollout."""
    from campaignctl import jobs
    from campaignctl.supervision import campaign_status

    job_id = jobs.launch_detached(engine, name, now=now, force=force)
    if job_id is None:
        start_at = campaign_status(engine, name, limit=0)["start_at"]
        return {"campaign": name, "status": "scheduled", "start_at": start_at, "job": None}
    return jobs.show(engine, job_id)


def status_page(engine: "Engine", name: str, only: str | None, limit: int, offset: int) -> dict[str, Any]:
    """``status -o json``, its device list cut to one page (read no further than it)."""
    from campaignctl.supervision import DEVICE_STATES, open_status

    if only is not None and only not in DEVICE_STATES:
        raise InputError(f"must be one of {', '.join(DEVICE_STATES)}", field="status")
    with open_status(engine, name, only=None if only is None else {only}, limit=limit, offset=offset) as data:
        data["devices"] = list(data["devices"])
    return data


def device_page(
    engine: "Engine", type: str | None, tags: list[str], interface: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """``devices list -o json``: one page of it, and how many devices match."""
    from campaignctl import fleet
    from campaignctl.cli.common import parse_tags

    selected: dict[str, Any] = {"type": type, "tags": parse_tags(tags), "interface": interface}
    return fleet.list_devices(engine, **selected, limit=limit, offset=offset), fleet.count_devices(engine, **selected)


def cancel_now(engine: "Engine", name: str) -> dict[str, Any]:
    """``cancel`` for the API and the web front-end: no waiting for the process that
    drives the job (it stops at its next step), so no request is held for it."""
    from campaignctl import control

    return control.cancel(engine, name, wait=0)


def retry_failed(engine: "Engine", name: str, devices: list[str] | None, timed_out: bool) -> tuple[int, list[str]]:
    """``retry``; ``devices`` left out: every failed device; an empty list is refused
    (it would otherwise retry every failed device, the opposite of what was asked)."""
    from campaignctl import control

    if devices is not None and not devices:
        raise InputError("give at least one device, or leave devices out to retry every failed device", field="devices")
    return control.retry(engine, name, devices=devices, timed_out=timed_out)


def job_number(text: str) -> int:
    if not digits(text) or len(text) > 18:
        raise InputError(f"{text!r} is not a job number", field="id")
    return int(text)


# OpenAPI: what FastAPI cannot see in routes that read their own query and body.

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "The CLI's message for the same error"},
        "source": {"type": "string", "nullable": True, "description": "Bad input: where (request body)"},
        "field": {"type": "string", "nullable": True, "description": "Bad input: the field, e.g. rollout.batches"},
        "line": {"type": "integer", "nullable": True, "description": "Bad input: the body's line"},
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/OperatorApiError"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
    for code, text in (
        (400, "Bad input (a manifest, an option, a query parameter)"),
        (401, "No operator token, or one unknown or revoked"),
        (404, "No such campaign, device, firmware type or job"),
        (409, "Refused in the current state (launched, not paused, exists...)"),
        (413, "Body too large"),
        (422, "Refused for another reason the CLI gives"),
        (500, "The database holds data campaignctl cannot read"),
        (503, "The database cannot be used"),
    )
}


def _ok(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"schema": {}}}}, **_ERRORS}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_PAGE = [
    _query("limit", f"At most this many (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})", {"type": "integer"}),
    _query("offset", "Skip this many first", {"type": "integer"}),
]


def _json_body(properties: dict[str, Any], required: bool = False) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


_MANIFEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "A campaign manifest (docs/manifests.md), as YAML or JSON; or, as JSON, "
        '{"manifest": TEXT, "variables": {"VAR": "value"}} to give the values of its ${VAR}',
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


def describe(spec: dict[str, Any]) -> None:
    """Add the operator token's scheme to the OpenAPI description, and require it on
    every operator route."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["OperatorApiError"] = _ERROR_SCHEMA
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator's token: campaignctl operators add NAME",
    }
    for path, operations in spec["paths"].items():
        if path.startswith(PREFIX + "/"):
            for operation in operations.values():
                operation["security"] = [{SCHEME: []}]


def install(app: FastAPI, engine: "Engine", touch: Touches) -> None:
    """Serve the operator API on ``app``."""

    @app.exception_handler(Refusal)
    async def _refused(_request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    app.include_router(router(engine, touch))


def router(engine: "Engine", touch: Touches) -> APIRouter:
    from campaignctl import approvals, campaigns, control, firmwares, fleet, jobs
    from campaignctl.server import ApiError, bearer_token
    from campaignctl.supervision import campaign_status

    api = APIRouter(prefix=PREFIX, tags=["operator API"])

    def operator(request: Request) -> str:
        """The operator whose token the request carries (a dependency of every route)."""
        token = bearer_token(request.headers.get("authorization"), "operator token")

        def find() -> str | None:
            with db.read(engine) as conn:
                return operators.authenticate(conn, token)

        name = call(engine, "anonymous", find)
        if name is None:
            raise ApiError(401, "invalid operator token")
        touch(name)
        if has_nul(request):
            raise refusal(InputError(NUL, field="url"))
        return name

    Operator = Depends(operator)

    def run(who: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call(engine, who, function, engine, *args, **kwargs)

    async def with_options(
        request: Request, who: str, known: Mapping[str, tuple[type, Any]], act: Callable[[dict[str, Any]], T]
    ) -> T:
        """``act`` on the body's JSON options (``options``), as the operator, off the event loop."""
        raw = await read_body(request)
        return await run_in_threadpool(call, engine, who, lambda: act(options(raw, known)))

    # Campaigns

    @api.get(
        "/campaigns",
        summary="List campaigns (list -o json), one page",
        responses=_ok("The campaigns, oldest first; the X-Total-Count header: how many there are"),
        openapi_extra={"parameters": _PAGE},
    )
    def list_campaigns(request: Request, who: str = Operator) -> Response:
        limit, offset = call(engine, who, page, request)
        listed = run(who, campaigns.list_campaigns)  # one query, no status computed per campaign
        return reply(listed[offset : offset + limit], headers={"X-Total-Count": str(len(listed))})

    @api.post(
        "/campaigns",
        summary="Create a campaign, or update a draft (apply)",
        status_code=201,
        responses={
            201: {"description": "Created: {name, action, changes}"},
            **_ok("Updated or unchanged: {name, action, changes}"),
        },
        openapi_extra=_MANIFEST_BODY,
    )
    async def apply_campaign(request: Request, who: str = Operator) -> Response:
        from campaignctl.manifests import parse_campaign

        raw = await read_body(request)

        def apply() -> Any:
            text, variables = manifest(raw, request.headers.get("content-type", ""))
            return campaigns.apply(engine, parse_campaign(text, source=BODY, environ=variables))

        result = await run_in_threadpool(call, engine, who, apply)
        answer = {"name": result.name, "action": result.action, "changes": result.changes}
        return reply(answer, 201 if result.action == "created" else 200)

    @api.get("/campaigns/{name}", summary="A campaign's definition (show -o json)", responses=_ok("The campaign"))
    def show_campaign(name: str, who: str = Operator) -> Response:
        return reply(run(who, campaigns.show, name))

    @api.delete(
        "/campaigns/{name}",
        summary="Delete a draft",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "Deleted"}, **_ERRORS},
    )
    def delete_campaign(name: str, who: str = Operator) -> Response:
        run(who, campaigns.delete, name)
        return Response(status_code=204)

    @api.post(
        "/campaigns/{name}/launch",
        summary="Launch a draft; the rollout engine of serve delivers it (launch --detach -o json)",
        responses=_ok("The job (jobs show -o json), or {campaign, status: scheduled, start_at, job: null}"),
        openapi_extra=_json_body(
            {
                "now": {"type": "boolean", "description": "Start now even if the manifest has a later start_at"},
                "force": {"type": "boolean", "description": "Launch despite competing campaigns"},
            }
        ),
    )
    async def launch(name: str, request: Request, who: str = Operator) -> Response:
        known = {"now": (bool, False), "force": (bool, False)}
        return reply(await with_options(request, who, known, lambda given: launch_detached(engine, name, **given)))

    def then_status(change: Callable[..., Any]) -> Callable[..., Response]:
        def route(name: str, who: str = Operator) -> Response:
            run(who, change, name)
            return reply(run(who, campaign_status, name, limit=0))

        return route

    for verb, change, summary in (
        ("pause", control.pause, "Pause a running campaign (pause)"),
        ("resume", control.resume, "Resume a paused campaign (resume); the rollout engine of serve goes on with it"),
    ):
        api.post(
            f"/campaigns/{{name}}/{verb}",
            name=verb,
            summary=summary,
            responses=_ok("Its status (status -o json, no devices)"),
        )(then_status(change))

    @api.post(
        "/campaigns/{name}/cancel",
        summary="Cancel a campaign (cancel -o json)",
        responses=_ok("{job: the job's summary, or null}"),
    )
    def cancel(name: str, who: str = Operator) -> Response:
        return reply(run(who, cancel_now, name))

    @api.post(
        "/campaigns/{name}/retry",
        summary="Deliver again to failed (and timed-out) devices (retry); the rollout engine of serve does it",
        responses=_ok("{campaign, job, devices: the devices retried}"),
        openapi_extra=_json_body(
            {
                "devices": {"type": "array", "items": {"type": "string"}, "description": "Only these devices"},
                "timed_out": {"type": "boolean", "description": "Timed-out devices too"},
            }
        ),
    )
    async def retry(name: str, request: Request, who: str = Operator) -> Response:
        job_id, targets = await with_options(
            request,
            who,
            {"devices": (list, None), "timed_out": (bool, False)},
            lambda given: retry_failed(engine, name, given["devices"], given["timed_out"]),
        )
        return reply({"campaign": name, "job": job_id, "devices": targets})

    def verdict_route(verdict: str) -> Callable[..., Any]:
        async def route(name: str, request: Request, who: str = Operator) -> Response:
            found = await with_options(
                request,
                who,
                {"comment": (str, None)},
                lambda given: approvals.give(engine, name, verdict, given["comment"]),
            )
            return reply({"campaign": name, **found})

        return route

    for verb, verdict, summary in (
        ("approve", "approve", "Approve a campaign before it starts, as the operator (approve -o json)"),
        ("reject", "reject", "Reject a campaign before it starts, as the operator (reject -o json); comment required"),
    ):
        api.post(
            f"/campaigns/{{name}}/{verb}",
            name=verb,
            summary=summary,
            responses=_ok("The campaign's approvals: required, approved, missing, rejected, verdicts"),
            openapi_extra=_json_body({"comment": {"type": "string", "description": "Why, for the others to read"}}),
        )(verdict_route(verdict))

    @api.get(
        "/campaigns/{name}/status",
        summary="The supervision (status -o json), one page of devices",
        responses=_ok("The status; devices: the page asked for, in name order"),
        openapi_extra={
            "parameters": [_query("status", "Only devices with this supervision status", {"type": "string"}), *_PAGE]
        },
    )
    def status(name: str, request: Request, who: str = Operator) -> Response:
        limit, offset = call(engine, who, page, request)
        return reply(run(who, status_page, name, request.query_params.get("status"), limit, offset))

    # Devices

    @api.get(
        "/devices",
        summary="List devices (devices list -o json), one page",
        responses=_ok("The devices, in name order; the X-Total-Count header: how many match"),
        openapi_extra={
            "parameters": [
                _query("type", "Only devices of this device type", {"type": "string"}),
                _query("tag", "KEY=VALUE: only devices with this tag (repeatable)", {"type": "string"}),
                _query("interface", "Only devices on this interface", {"type": "string"}),
                *_PAGE,
            ]
        },
    )
    def list_devices(request: Request, who: str = Operator) -> Response:
        query = request.query_params
        limit, offset = call(engine, who, page, request)
        rows, total = run(
            who, device_page, query.get("type"), query.getlist("tag"), query.get("interface"), limit, offset
        )
        return reply(rows, headers={"X-Total-Count": str(total)})

    @api.get("/devices/{name}", summary="A device (devices show -o json)", responses=_ok("The device"))
    def show_device(name: str, who: str = Operator) -> Response:
        return reply(run(who, fleet.show_device, name))

    @api.post(
        "/devices/{name}/config",
        summary="Set desired values and deliver them (devices set-config -o json)",
        responses=_ok("{device, version, delivered, error}: error tells a delivery that failed (the values are saved)"),
        openapi_extra=_json_body(
            {
                "values": {"type": "object", "description": "key → any JSON value"},
                "secret": {"type": "boolean", "description": "Mark these values secret (never shown)"},
                "deliver": {"type": "boolean", "description": "Deliver now (default true)"},
            },
            required=True,
        ),
    )
    async def set_config(name: str, request: Request, who: str = Operator) -> Response:
        def go(given: dict[str, Any]) -> Any:
            if not given["values"]:
                raise InputError("give at least one value", source=BODY, field="values")
            # Values nest no deeper than a device may report a state: the whole body
            # was held to the state's depth (json_value).
            return fleet.set_config(engine, name, given["values"], secret=given["secret"], deliver=given["deliver"])

        known = {"values": (dict, None), "secret": (bool, False), "deliver": (bool, True)}
        result = await with_options(request, who, known, go)
        return reply(
            {"device": result.device, "version": result.version, "delivered": result.delivered, "error": result.error}
        )

    # Firmwares

    @api.get(
        "/firmwares",
        summary="The firmware registry (firmwares list -o json); tokens are never shown",
        responses=_ok("The firmwares"),
        openapi_extra={"parameters": [_query("device_type", "Only firmwares of this device type", {"type": "string"})]},
    )
    def list_firmwares(request: Request, who: str = Operator) -> Response:
        return reply(run(who, firmwares.list_firmwares, device_type=request.query_params.get("device_type")))

    _firmware = {
        "device_type": (str, None),
        "firmware_type": (str, None),
        "version": (str, None),
        "url": (str, None),
        "token": (str, None),
        "sha256": (str, None),
        "size": (int, None),
        "description": (str, None),
    }

    @api.post(
        "/firmwares",
        summary="Add a firmware version (firmwares add)",
        status_code=201,
        responses={201: {"description": "{device_type, firmware_type, version}"}, **_ERRORS},
        openapi_extra=_json_body(
            {
                **{k: {"type": "string"} for k in ("device_type", "firmware_type", "version", "url", "sha256")},
                "token": {"type": "string", "description": "The download token (secret: stored, never shown)"},
                "size": {"type": "integer"},
                "description": {"type": "string"},
            },
            required=True,
        ),
    )
    async def add_firmware(request: Request, who: str = Operator) -> Response:
        def go(given: dict[str, Any]) -> Any:
            for name in ("device_type", "firmware_type", "version", "url"):
                if given[name] is None:
                    raise InputError("is required", source=BODY, field=name)
            return firmwares.add(engine, **given)

        return reply(await with_options(request, who, _firmware, go), 201)

    # Jobs

    @api.get(
        "/jobs",
        summary="List jobs (jobs list -o json), one page",
        responses=_ok("The jobs, oldest first; the X-Total-Count header: how many there are"),
        openapi_extra={"parameters": _PAGE},
    )
    def list_jobs(request: Request, who: str = Operator) -> Response:
        limit, offset = call(engine, who, page, request)
        listed = run(who, jobs.list_jobs, limit=limit, offset=offset)
        return reply(listed, headers={"X-Total-Count": str(run(who, jobs.count_jobs))})

    @api.get("/jobs/{id}", summary="A job (jobs show -o json)", responses=_ok("The job"))
    def show_job(id: str, who: str = Operator) -> Response:
        return reply(run(who, jobs.show, call(engine, who, job_number, id)))

    return api
