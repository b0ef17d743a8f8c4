"""The web front-end's pages, under ``/ui``: server-side templates over the same library
calls as the CLI commands (no logic of their own beyond presenting), each call made
through the operator API's ``api.call``: run as the logged-in operator
(``audit.acting_as``), its errors given the API's statuses and words (a database that
cannot be used is a 503 with the reason)."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from campaignctl import api, db
from campaignctl.errors import CampaignctlError, InputError
from campaignctl.web import views
from campaignctl.web.forms import CampaignForm
from campaignctl.web.sessions import COOKIE, MAX_AGE, PATH, Sessions, public_origin, same_origin

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: Largest form body read (a campaign's device names and values fit well within).
MAX_FORM = 1 << 20
#: How often pages refresh their data while a campaign runs (milliseconds, for the script).
REFRESH_MS = 2000
#: What the browser may load: this site's own scripts and styles, nothing inline, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: Messages a redirect may ask a page to show (by code: a link cannot make a page say anything).
DONE = {
    "created": "Draft saved.",
    "updated": "Draft updated.",
    "unchanged": "Nothing changed.",
    "launched": "Launched: the rollout engine of campaignctl serve delivers it.",
    "scheduled": "Scheduled: it starts at its start time.",
    "paused": "Paused.",
    "resumed": "Resumed.",
    "cancelled": "Cancelled.",
    "retried": "Retrying the failed devices.",
    "deleted": "Draft deleted.",
}
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}


#: The last page of a campaign's device table asked for: its offset stays a 64-bit number.
MAX_PAGE = 2**62 // views.PAGE_SIZE


def no_nul(request: Request) -> None:
    """Refuse a NUL in the path or the query, as the operator API does: no name or
    option holds one, and PostgreSQL's text cannot."""
    if api.has_nul(request):
        raise api.refusal(InputError(api.NUL, field="url"))


def router(engine: "Engine", touch: api.Touches, public_url: str | None = None) -> APIRouter:
    """``public_url``: where browsers reach the front-end (``serve --public-url``):
    form posts must come from its origin, and the session cookie is Secure when it
    is https."""
    from jinja2 import Environment, PackageLoader

    public = None if public_url is None else public_origin(public_url)
    sessions = Sessions(engine)
    env = Environment(
        loader=PackageLoader("campaignctl.web", "templates"),
        autoescape=True,  # every value a device, a manifest or a user wrote is escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(views.FILTERS)
    env.globals.update(
        STATUS_COLORS=views.STATUS_COLORS,
        BAR_STATES=views.BAR_STATES,
        LIST_STATES=views.LIST_STATES,
        LIST_SIZE=views.LIST_SIZE,
        REFRESH_MS=REFRESH_MS,
    )
    ui = APIRouter(prefix=PATH, include_in_schema=False, dependencies=[Depends(no_nul)])

    def render(template: str, code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=code, headers=SECURITY_HEADERS)

    def fragment(template: str, **context: Any) -> str:
        return env.get_template(template).render(**context)

    async def operator_of(request: Request) -> tuple[str | None, str]:
        """The logged-in operator (None: not logged in) and the session cookie; the
        operator is looked up in the database, in a worker thread (a database that
        cannot be used: the API's 503)."""
        cookie = request.cookies.get(COOKIE, "")
        if not cookie:
            return None, cookie
        operator = await call("anonymous", sessions.operator, cookie)
        if operator is not None:
            touch(operator)
        return operator, cookie

    async def call(operator: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A library call in a worker thread, as the API makes it (``api.call``):
        attributed to the operator, its errors an ``api.Refusal``."""
        return await run_in_threadpool(api.call, engine, operator, function, *args, **kwargs)

    def refused(exc: api.Refusal, **context: Any) -> HTMLResponse:
        return render("error.html", exc.status, error=exc.body["error"], **context)

    def refused_json(exc: api.Refusal) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=SECURITY_HEADERS)

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PATH}/login?{urlencode({'next': target})}", status_code=303)

    async def page(request: Request, template: str, build: Callable[..., dict[str, Any]], *args: Any) -> Response:
        """A logged-in page: ``build(*args)`` gives its data (in a worker thread); a
        domain error (an unknown name) becomes an error page."""
        operator, cookie = await operator_of(request)
        if operator is None:
            return to_login(request)
        base: dict[str, Any] = {
            "operator": operator,
            "csrf": sessions.csrf(cookie),
            "done": DONE.get(request.query_params.get("done", "")),
        }
        try:
            data = await call(operator, build, *args)
        except api.Refusal as exc:
            return refused(exc, **base)
        return render(template, **base, **data)

    async def live(request: Request, template: str, build: Callable[..., dict[str, Any]], *args: Any) -> Response:
        """The data part of a page, for the page's script to swap in: JSON with the
        rendered HTML, whether to keep refreshing, and the time it was read."""
        operator, cookie = await operator_of(request)
        if operator is None:
            return JSONResponse({"error": "log in again"}, status_code=401, headers=SECURITY_HEADERS)
        try:
            data = await call(operator, build, *args)
        except api.Refusal as exc:
            return refused_json(exc)
        return JSONResponse(
            {
                "html": fragment(template, operator=operator, csrf=sessions.csrf(cookie), **data),
                "live": bool(data.get("live")),
                "updated": datetime.now(timezone.utc).strftime("%H:%M:%S"),
            },
            headers=SECURITY_HEADERS,
        )

    async def form_of(request: Request) -> dict[str, list[str]]:
        try:
            body = await api.bounded_body(request, MAX_FORM)
        except api.TooLarge:
            raise InputError(f"the form is larger than {MAX_FORM} bytes") from None
        try:
            return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=100_000)
        except (UnicodeDecodeError, ValueError):
            raise InputError("the form could not be read") from None

    async def posted(request: Request) -> tuple[str, dict[str, list[str]]] | Response:
        """The operator and fields of a state-changing form post, once it is known to
        come from this site (Origin, CSRF token); else the response that refuses it."""
        operator, cookie = await operator_of(request)
        if not from_here(request):
            return render("error.html", 403, operator=operator, error="refused: the request came from another site")
        if operator is None:
            return to_login(request)
        try:
            fields = await form_of(request)
        except InputError as exc:
            return render("error.html", 400, operator=operator, error=exc.message)
        if not sessions.csrf_ok(cookie, (fields.get("csrf") or [""])[0]):
            return render(
                "error.html",
                403,
                operator=operator,
                error="refused: the form's security token is missing or stale; reload the page",
            )
        return operator, fields

    def from_here(request: Request) -> bool:
        headers = request.headers
        return same_origin(headers.get("origin"), headers.get("referer"), headers.get("host"), public)

    @ui.get("")
    @ui.get("/")
    async def home() -> Response:
        return RedirectResponse(f"{PATH}/campaigns", status_code=303)

    @ui.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        body = resources.files("campaignctl.web").joinpath("static").joinpath(name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    @ui.get("/login")
    async def login_page(request: Request) -> Response:
        if (await operator_of(request))[0] is not None:
            return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
        return render("login.html", operator=None, next=_next(request.query_params.get("next")), error=None)

    @ui.post("/login")
    async def login(request: Request) -> Response:
        if not from_here(request):
            return render("error.html", 403, operator=None, error="refused: the request came from another site")
        try:
            fields = await form_of(request)
        except InputError as exc:
            return render("login.html", 400, operator=None, next=f"{PATH}/campaigns", error=exc.message)
        token = (fields.get("token") or [""])[0].strip()
        target = _next((fields.get("next") or [""])[0])

        def authenticate() -> str | None:
            from campaignctl.operators import authenticate

            with db.read(engine) as conn:
                return authenticate(conn, token)

        try:
            name = await call("anonymous", authenticate) if token else None
        except api.Refusal as exc:
            return refused(exc, operator=None)
        if name is None:
            return render(
                "login.html",
                401,
                operator=None,
                next=target,
                error="That token is not valid: it is wrong, or its operator was revoked.",
            )
        touch(name)
        try:
            cookie = await call(name, sessions.issue, name)
        except api.Refusal as exc:
            return refused(exc, operator=None)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=MAX_AGE,
            path=PATH,
            httponly=True,
            samesite="strict",
            # Behind a TLS proxy serve sees http: the public URL tells.
            secure=request.url.scheme == "https" or (public or "").startswith("https:"),
        )
        return response

    @ui.post("/logout")
    async def logout(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        response = RedirectResponse(f"{PATH}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
        return response

    @ui.get("/campaigns")
    async def campaigns_page(request: Request) -> Response:
        return await page(request, "campaigns.html", views.campaigns, engine, _page_number(request))

    @ui.get("/campaigns.json")
    async def campaigns_live(request: Request) -> Response:
        return await live(request, "_campaigns.html", views.campaigns, engine, _page_number(request))

    @ui.get("/campaigns/new")
    async def new_page(request: Request) -> Response:
        return await page(request, "form.html", views.form_page, engine, CampaignForm(), None, None)

    @ui.post("/campaigns/new")
    async def new(request: Request) -> Response:
        return await save(request, None)

    @ui.get("/campaigns/{name}/edit")
    async def edit_page(request: Request, name: str) -> Response:
        return await page(request, "form.html", views.edit_page, engine, name)

    @ui.post("/campaigns/{name}/edit")
    async def edit(request: Request, name: str) -> Response:
        return await save(request, name)

    async def save(request: Request, editing: str | None) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        operator, fields = checked
        form = CampaignForm.from_fields(fields)
        if editing is not None:
            form.name = editing  # the name of a draft is not edited: it is the draft
        try:
            action = await call(operator, _outcome, views.save_campaign, engine, form, editing is not None)
            if isinstance(action, CampaignctlError):  # shown on the form, with its field
                data = await call(operator, views.form_page, engine, form, editing, action)
        except api.Refusal as exc:
            return refused(exc, operator=operator)
        if isinstance(action, CampaignctlError):
            return render(
                "form.html",
                api.refusal(action).status,
                operator=operator,
                csrf=sessions.csrf(request.cookies.get(COOKIE, "")),
                done=None,
                **data,
            )
        return RedirectResponse(f"{PATH}/campaigns/{quote(form.name)}?done={action}", status_code=303)

    @ui.get("/campaigns/{name}")
    async def campaign_page(request: Request, name: str) -> Response:
        return await page(request, "campaign.html", views.campaign, engine, name, _table_query(request))

    @ui.get("/campaigns/{name}/live.json")
    async def campaign_live(request: Request, name: str) -> Response:
        return await live(request, "_campaign.html", views.campaign, engine, name, _table_query(request))

    @ui.get("/campaigns/{name}/launch")
    async def launch_page(request: Request, name: str) -> Response:
        return await page(request, "launch.html", views.launch_page, engine, name)

    @ui.post("/campaigns/{name}/{action}")
    async def act(request: Request, name: str, action: str) -> Response:
        if action not in views.ACTIONS:
            return render("error.html", 404, operator=(await operator_of(request))[0], error=f"no action {action!r}")
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        operator, _ = checked
        try:
            done = await call(operator, views.ACTIONS[action], engine, name)
        except api.Refusal as exc:
            return refused(
                exc,
                operator=operator,
                csrf=sessions.csrf(request.cookies.get(COOKIE, "")),
                back=f"{PATH}/campaigns/{quote(name)}",
            )
        target = f"{PATH}/campaigns" if done == "deleted" else f"{PATH}/campaigns/{quote(name)}"
        return RedirectResponse(f"{target}?done={done}", status_code=303)

    @ui.get("/devices/{name}")
    async def device_page(request: Request, name: str) -> Response:
        return await page(request, "device.html", views.device, engine, name)

    @ui.get("/firmwares")
    async def firmwares_page(request: Request) -> Response:
        return await page(request, "firmwares.html", views.firmwares, engine)

    @ui.get("/jobs")
    async def jobs_page(request: Request) -> Response:
        return await page(request, "jobs.html", views.jobs, engine)

    async def data(request: Request, function: Callable[..., Any], *args: Any) -> Response:
        """JSON for a page's script (the form's helpers), as the logged-in operator."""
        operator, _ = await operator_of(request)
        if operator is None:
            return JSONResponse({"error": "log in again"}, status_code=401, headers=SECURITY_HEADERS)
        try:
            return JSONResponse(await call(operator, function, engine, *args), headers=SECURITY_HEADERS)
        except api.Refusal as exc:
            return refused_json(exc)

    @ui.get("/form/count")
    async def count(request: Request) -> Response:
        """The live count of the devices the form's selection matches."""
        form = CampaignForm.from_fields({k: request.query_params.getlist(k) for k in request.query_params})
        return await data(request, views.count_devices, form)

    @ui.get("/form/firmwares")
    async def firmware_options(request: Request) -> Response:
        """The registry's firmwares for a device type, with the keys they fill (never a token)."""
        return await data(request, views.firmware_options, request.query_params.get("device_type", ""))

    return ui


def _next(target: str | None) -> str:
    """Where to go after logging in: a page of the front-end only (no open redirect)."""
    if target and target.startswith(f"{PATH}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PATH}/campaigns"


def _outcome(function: Callable[..., Any], *args: Any) -> Any:
    """``function``'s result, or the domain error it raised (for a form to show beside
    its field); a database fault still goes up to ``api.call``."""
    try:
        return function(*args)
    except CampaignctlError as exc:
        return exc


def _page_number(request: Request) -> int:
    """``?page=``; one that is no number, or past any list (its offset would overflow
    the database's 64-bit numbers), is the first."""
    try:
        return max(api.parse_int(request.query_params.get("page"), "page", 1, MAX_PAGE), 1)
    except InputError:
        return 1


def _table_query(request: Request) -> dict[str, Any]:
    """The device table's filter, search and page."""
    params = request.query_params
    return {"status": params.get("status", ""), "q": params.get("q", "").strip()[:128], "page": _page_number(request)}
