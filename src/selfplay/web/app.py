"""`selfplay serve RUNS_DIR`: a local web app for the people in the loop, on FastAPI (routing, forms, errors) with
Jinja2 templates (escaping every value by default) and uvicorn (the server).

    GET  /                                 every run: status, stage, progress bars (the page refreshes itself)
    GET  /runs/NAME                        one run: figures per iteration, the guard table, alarms, what waits
    GET  /runs/NAME/report                 its report.html, under a policy that runs no script
    GET  /runs/NAME/lineage?example=ID     one training example traced to its problem, sample and verdict
    GET  /runs/NAME/review                 the training examples waiting for review
    POST /runs/NAME/review                 approve (with examples rejected or pairs flipped) or stop the run
    GET  /runs/NAME/blind                  the next pair of a blind human evaluation
    POST /runs/NAME/blind/ITER/PAIR        a verdict on one pair: left, right or tie
    GET  /api/runs                         the runs as JSON

The app writes only a review's decision file and the blind evaluation's verdict files, each created once, so the
first of two people deciding at once stands. It never writes a run's data. The run, in its own process, polls
for those files and goes on when they appear.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfplay.errors import UserError
from selfplay.files import read_json
from selfplay.loop import human_eval, review
from selfplay.web import runs as views
from selfplay.web.security import (
    Refused,
    cookie_name,
    csrf_for,
    file_inside,
    host_allowed,
    run_folder,
    same,
    sign,
)

HERE = Path(__file__).parent
log = logging.getLogger("selfplay.serve")

# No script runs on any page: the app needs none, and model text that slipped through would find no way to run.
PAGE_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'none'"
WHO_COOKIE = "selfplay_who"


def create_app(runs_dir: Path, token: str, port: int, loopback: bool = True, refresh_seconds: int = 3) -> FastAPI:
    root = Path(runs_dir)
    csrf = csrf_for(token)
    cookie = cookie_name(port)  # one per port: two apps on one machine do not log each other out
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["pct"] = lambda v: f"{v:.1%}" if isinstance(v, (int, float)) else "–"
    app = FastAPI(title="selfplay", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        done, sig = request.query_params.get("done", ""), request.query_params.get("sig", "")
        flash = done if done and same(sig, sign(token, done)) else ""  # only what this app said, not a link's text
        html = env.get_template(template).render(csrf=csrf, who=request.cookies.get(WHO_COOKIE, ""),
                                             refresh=refresh_seconds, flash=flash, **context)
        return HTMLResponse(html, status_code=status)

    def refuse(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "text/html"):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status=status, status_code=status, message=message)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if loopback and not host_allowed(request.headers.get("host")):
            response = refuse(request, 421, f"Host {request.headers.get('host')!r} is not this app's loopback "
                              "address; open the URL `selfplay serve` printed")
        elif request.url.path.startswith("/static/"):
            response = await call_next(request)
        elif request.method == "GET" and same(request.query_params.get("token"), token):
            # The printed URL: keep the token in a cookie no other site can send, and drop it from the address.
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
        elif not (same(request.cookies.get(cookie), token)
                  or same(request.headers.get("authorization", "").removeprefix("Bearer "), token)):
            response = refuse(request, 401, "this app needs its token: open the URL `selfplay serve` printed "
                              "(…/?token=…)")
        elif request.method not in ("GET", "HEAD") and not _same_origin(request):
            response = refuse(request, 403, "refused: the request came from another site")
        else:
            try:
                response = await call_next(request)
            except Exception:  # the console gets the traceback; the person gets one line
                log.exception("error serving %s", request.url.path)
                response = refuse(request, 500, "internal error; the server's console has the details")
        # Referrer-Policy same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on a POST.
        for key, value in {"Content-Security-Policy": response.headers.get("Content-Security-Policy", PAGE_POLICY),
                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                           "Cache-Control": "no-store"}.items():
            response.headers[key] = value
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return refuse(request, exc.status, exc.message)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return refuse(request, 409, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return refuse(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return refuse(request, 400, f"bad request: {where}: {first.get('msg', 'invalid')}")

    def run_path(name: str) -> Path:
        return run_folder(root, name)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, "index.html", runs=views.runs(root), root=root)

    @app.get("/api/runs")
    def api_runs():
        return [{"name": v.name, "status": v.status, "recipe": v.recipe, "iteration": v.iteration,
                 "iterations": v.iterations, "stage": v.stage, "done": v.done, "total": v.total, "unit": v.unit,
                 "waiting_review": v.waiting_review, "waiting_blind": v.waiting_blind} for v in views.runs(root)]

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run(request: Request, name: str):
        path = run_path(name)
        shown, rows = views.guard_rows(path)
        return page(request, "run.html", run=views.view(path), guards=shown, guard_rows=rows,
                    has_report=(path / "report.html").is_file())

    @app.get("/runs/{name}/report")
    def report(name: str):
        path = run_path(name)
        file = file_inside(path, root, "report.html")
        return FileResponse(file, media_type="text/html", headers={"Content-Security-Policy": REPORT_POLICY})

    @app.get("/runs/{name}/lineage", response_class=HTMLResponse)
    def lineage(request: Request, name: str, example: str = ""):
        path = run_path(name)
        found = views.lineage(path, example) if example else None
        if example and found is None:
            raise Refused(404, f"no training example with id {example[:200]!r} in run {name}")
        return page(request, "lineage.html", name=name, example=example, found=found)

    @app.get("/runs/{name}/review", response_class=HTMLResponse)
    def review_page(request: Request, name: str):
        path = run_path(name)
        it_dir, request_data, decision = views.review_request(path)
        return page(request, "review.html", name=name, it_dir=it_dir, req=request_data, decision=decision)

    @app.post("/runs/{name}/review")
    async def review_post(request: Request, name: str):
        path = run_path(name)
        form = await request.form()
        _check_csrf(form, csrf)
        action = str(form.get("action", ""))
        who = str(form.get("who", ""))[:80]
        if action not in ("approve", "reject"):
            raise Refused(400, f"action: {action[:40]!r} is not approve or reject")
        try:
            iteration = int(str(form.get("iteration", "")))
        except ValueError:
            raise Refused(400, "iteration: the form names no iteration (reload the review page)") from None
        it_dir = path / f"iter-{iteration:03d}"
        if not 0 < iteration < 1000 or not (it_dir / review.REQUEST).is_file():
            raise Refused(404, f"{name}: iteration {iteration} asked for no review")
        request_data = read_json(it_dir / review.REQUEST)
        shown = {ex["id"] for ex in request_data["shown"]}
        strays = [k for k in form.keys() if k.startswith("ex:") and k[3:] not in shown]
        choices = {k[3:]: str(form[k]) for k in strays}  # refused below, with the rest, when not a choice
        choices.update({i: str(form.get(f"ex:{i}", "keep")) for i in shown})
        bad = {k: v for k, v in choices.items() if v not in ("keep", "confirm", "flip", "reject")}
        if bad:
            key = next(iter(bad))
            raise Refused(400, f"ex:{key}: {bad[key][:40]!r} is not keep, confirm, flip or reject")
        reason = str(form.get("reason", ""))[:2000]
        if action == "approve":
            calls = {c: [k for k, v in choices.items() if v == c] for c in ("reject", "flip", "confirm")}
            message = review.decide(path, "approved", calls["reject"], reason=reason or None, who=who,
                                    flipped_ids=calls["flip"], confirmed_ids=calls["confirm"], iteration=iteration)
        else:
            message = review.decide(path, "rejected", reason=reason or None, who=who, iteration=iteration)
        return _back(f"/runs/{quote(name)}/review?done={quote(message)}&sig={sign(token, message)}", who)

    @app.get("/runs/{name}/blind", response_class=HTMLResponse)
    def blind(request: Request, name: str):
        path = run_path(name)
        it_dir, request_data, given = views.blind_state(path)
        pairs = request_data["pairs"] if request_data else []
        todo = [p for p in pairs if p["id"] not in given]
        # People judging at once start at different pairs (by name), so they seldom race for the same one.
        who = request.cookies.get(WHO_COOKIE, "")
        start = int(hashlib.sha256(who.encode()).hexdigest(), 16) % len(todo) if todo and who else 0
        return page(request, "blind.html", name=name, it_dir=it_dir, req=request_data,
                    pair=todo[start] if todo else None, left=len(todo), judged=len(pairs) - len(todo),
                    total=len(pairs))

    @app.post("/runs/{name}/blind/{iteration}/{pair_id}")
    async def blind_post(request: Request, name: str, iteration: int, pair_id: str):
        path = run_path(name)
        form = await request.form()
        _check_csrf(form, csrf)
        it_dir = path / f"iter-{iteration:03d}"
        if not 0 < iteration < 1000 or not (it_dir / human_eval.REQUEST).is_file():
            raise Refused(404, f"{name}: iteration {iteration} has no blind evaluation")
        who = str(form.get("who", ""))[:80]
        message = human_eval.vote(it_dir, pair_id, str(form.get("choice", ""))[:10], who,
                                  str(form.get("note", "")))
        return _back(f"/runs/{quote(name)}/blind?done={quote(message)}&sig={sign(token, message)}", who)

    return app


def _check_csrf(form, csrf: str) -> None:
    if not same(str(form.get("csrf", "")), csrf):
        raise Refused(403, "refused: the form's csrf field is missing or wrong (reload the page and try again)")


def _same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # a script with the token, not a browser's form (browsers send Origin on a POST)
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _back(url: str, who: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if who:
        response.set_cookie(WHO_COOKIE, who, httponly=True, samesite="strict", path="/",
                            expires=int(time.time()) + 90 * 86400)
    return response
