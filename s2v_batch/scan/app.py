"""The scanning page's ASGI app (Starlette): the page, its JSON API and the stamp images.

Routes (all answers to bad requests are a 4xx with one line of JSON, ``{"error": "..."}``, and
write nothing):

- ``GET /``: the page (``?scanner=NAME&order=best|threshold|disagree`` preset the form);
- ``POST /api/session`` ``{"scanner", "order"}``: a session (its queue order) -> ``{"session"}``;
- ``GET /api/next?session=S&n=K``: up to K more candidates for the session, held for it;
- ``POST /api/verdict`` ``{"session", "season", "stamp_id", "verdict", "seconds"}``: one verdict,
  written in its own transaction before the answer (404 unknown session or stamp, 422 a verdict
  not real/bogus/skip or bad seconds, 409 judged already);
- ``POST /api/undo`` ``{"session"}``: the scanner's last standing verdict taken back (a row);
- ``GET /img/<season>/<night>/<stamp_id>.png``: the stamp's srch | temp | diff.

:class:`Guard` wraps the app: it refuses bodies over ``max_body`` bytes (413) and, when the
server was given a token (any host but loopback), every request without it (401), comparing in
constant time. The token comes as ``?token=``, an ``Authorization: Bearer`` header, or the cookie
the page sets when it is opened with ``?token=``.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from s2v_batch.scan.images import StampImages
from s2v_batch.scan.queue import ORDERS, Candidates, QueueError
from s2v_batch.store.verdicts import (
    MAX_SECONDS,
    VERDICTS,
    AlreadyJudgedError,
    VerdictDB,
    VerdictError,
)

__all__ = ["MAX_BODY", "Guard", "build_app"]

HERE = Path(__file__).resolve().parent
#: The largest request body accepted (a verdict is about 150 bytes).
MAX_BODY = 16 * 1024
#: A scanner's name: what the verdict rows and the report show.
SCANNER_RE = re.compile(r"^[\w.@ -]{1,64}$")
COOKIE = "s2v_token"
MAX_PREFETCH = 20


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """ASGI middleware: a body limit and, with a token, the token on every request."""

    def __init__(self, app: Any, token: str | None, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    def _token_of(self, scope: dict[str, Any]) -> str | None:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0]
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.lower().startswith(b"bearer "):
                return value[7:].decode("latin-1").strip()
            if name == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == COOKIE:
                        return v
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None:
            given = self._token_of(scope) or ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return await _error(
                    401, "a valid token is required (open the URL the server printed)"
                )(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return await _error(400, "bad Content-Length")(scope, receive, send)
                if size > self.max_body:
                    return await _error(413, f"request body over {self.max_body} bytes")(
                        scope, receive, send
                    )
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # a chunked body with no Content-Length
                raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        await self.app(scope, limited, send)


async def _body(request: Request) -> dict[str, Any]:
    try:
        doc = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body must be JSON") from None
    if not isinstance(doc, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return doc


def _item(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "img": f"img/{row['season']}/{row['night']}/{row['stamp_id']}.png"}


def build_app(
    candidates: Candidates,
    db: VerdictDB,
    images: StampImages,
    *,
    token: str | None = None,
    max_body: int = MAX_BODY,
    title: str = "s2v scan",
) -> Guard:
    """The scanning app (wrapped in its :class:`Guard`).

    Parameters
    ----------
    candidates : Candidates
        What is scanned (:func:`s2v_batch.scan.queue.load_candidates`).
    db : VerdictDB
        Where the verdicts go.
    images : StampImages
        The stamps' pixels.
    token : str, optional
        Required on every request when given.
    max_body : int
        Largest request body in bytes.
    title : str
        The page's title (names the scores scanned).
    """
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    seasons = candidates.seasons()

    async def page(request: Request) -> Response:
        resp = templates.TemplateResponse(
            request,
            "scan.html",
            {
                "title": title,
                "orders": ORDERS,
                "available": list(candidates.orders),
                "n_candidates": len(candidates),
                "per_stamp": candidates.per_stamp,
                "keys": KEYS,
            },  # fmt: skip
        )
        given = request.query_params.get("token")
        if token is not None and given:  # the Guard has checked it already
            resp.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return resp

    async def open_session(request: Request) -> Response:
        doc = await _body(request)
        scanner = doc.get("scanner")
        if not isinstance(scanner, str) or not SCANNER_RE.match(scanner.strip() or "!"):
            raise HTTPException(422, "scanner: a name of 1-64 letters, digits, spaces, . _ @ -")
        scanner = scanner.strip()
        order = doc.get("order", "best")
        if not isinstance(order, str):
            raise HTTPException(422, "order must be a string")

        def judged() -> set[tuple[str, int]]:
            return {(s, i) for s in seasons for i in db.judged(scanner, s)}

        s = candidates.open_session(scanner, order, await run_in_threadpool(judged))
        return JSONResponse({"session": s.id, "scanner": scanner, "order": order,
                             "progress": candidates.progress(s)})  # fmt: skip

    async def next_items(request: Request) -> Response:
        s = candidates.session(request.query_params.get("session"))
        try:
            n = int(request.query_params.get("n", "5"))
        except ValueError:
            raise HTTPException(422, "n must be an integer") from None
        if not 1 <= n <= MAX_PREFETCH:
            raise HTTPException(422, f"n must be in 1..{MAX_PREFETCH}")
        items = [_item(r) for r in candidates.next(s, n)]
        return JSONResponse({"items": items, "progress": candidates.progress(s)})

    async def verdict(request: Request) -> Response:
        doc = await _body(request)
        s = candidates.session(doc.get("session"))
        v = doc.get("verdict")
        if v not in VERDICTS:
            raise HTTPException(422, f"verdict must be one of {', '.join(VERDICTS)}")
        sid = doc.get("stamp_id")
        if isinstance(sid, bool) or not isinstance(sid, int):
            raise HTTPException(422, "stamp_id must be an integer")
        season = doc.get("season", seasons[0] if len(seasons) == 1 else None)
        if not isinstance(season, str):
            raise HTTPException(422, "season must be a string")
        row = candidates.row(season, sid)
        sec = doc.get("seconds")
        if (
            isinstance(sec, bool)
            or not isinstance(sec, int | float)
            or not (math.isfinite(sec) and 0 <= sec <= MAX_SECONDS)
        ):
            raise HTTPException(422, f"seconds must be a number in [0, {MAX_SECONDS:g}]")
        rid = await run_in_threadpool(
            lambda: db.record(
                stamp_id=sid, season=season, night=row["night"], scanner=s.scanner, verdict=v,
                seconds=float(sec), model_version=row.get("model_version"),
                model_sha256=row.get("model_sha256"), score=row["score"], session=s.id,
            )
        )  # fmt: skip
        candidates.judge(s, (season, sid), v)
        return JSONResponse({"id": rid, "progress": candidates.progress(s)})

    async def undo(request: Request) -> Response:
        doc = await _body(request)
        s = candidates.session(doc.get("session"))
        last = await run_in_threadpool(db.undo_last, s.scanner, s.id)
        if last is None:
            return JSONResponse({"undone": None, "progress": candidates.progress(s)})
        key = (last["season"], int(last["stamp_id"]))
        candidates.unjudge(s, key, last["verdict"])
        i = candidates.index.get(key)
        item = _item(candidates.rows[i]) if i is not None else None
        return JSONResponse({"undone": {"id": last["id"], "verdict": last["verdict"],
                                        "item": item}, "progress": candidates.progress(s)})  # fmt: skip

    async def image(request: Request) -> Response:
        p = request.path_params
        candidates.row(p["season"], p["stamp_id"])  # 404 for a stamp that is not a candidate
        png = await run_in_threadpool(images.png, p["season"], p["night"], p["stamp_id"])
        if png is None:
            raise HTTPException(404, f"stamp {p['stamp_id']} is not in the store")
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = (
            exc.detail
            if exc.status_code not in (404, 405)
            or exc.detail not in ("Not Found", "Method Not Allowed")
            else f"{exc.detail.lower()}: {request.url.path}"
        )
        return _error(exc.status_code, str(detail))  # fmt: skip

    async def queue_error(request: Request, exc: Exception) -> Response:
        return _error(getattr(exc, "status", 400), str(exc))

    async def verdict_error(request: Request, exc: Exception) -> Response:
        return _error(409 if isinstance(exc, AlreadyJudgedError) else 422, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/session", open_session, methods=["POST"]),
            Route("/api/next", next_items),
            Route("/api/verdict", verdict, methods=["POST"]),
            Route("/api/undo", undo, methods=["POST"]),
            Route("/img/{season:str}/{night:int}/{stamp_id:int}.png", image),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={
            HTTPException: http_error,
            QueueError: queue_error,
            VerdictError: verdict_error,
            Exception: server_error,
        },
    )
    return Guard(app, token, max_body)


#: The keys of the page, for its help.
KEYS: tuple[tuple[str, str], ...] = (
    ("r", "real"),
    ("b", "bogus"),
    ("s", "skip"),
    ("u", "undo the last verdict"),
    ("?", "this help"),
)
