"""The web app (前台): FastAPI, server-rendered, Chinese labels; `create_app(ctx)` builds it.

Pages read the read models; commands go through `service.commands` (the same path as
`starter.py`), signed by the app's key for the signed-in actor.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from service import users
from web import board, evidence, forms, inspection_forms, notice_pages, task_pages
from web.auth import SESSION_COOKIE, SignInRequired, now
from web.context import WebContext
from web.templating import render

SESSION_MAX_AGE = 12 * 3600  # a working day; the store's session row expires with it


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="督办 Duban", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")),
              name="static")

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _exc: SignInRequired) -> Response:
        if request.method != "GET":
            return HTMLResponse("请先登录", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return render(request, "error.html", status_code=exc.status_code,
                      message=str(exc.detail), headers=exc.headers)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> Response:
        return render(request, "login.html", next=_safe_next(next), error=None, actor="")

    @app.post("/login")
    async def login(request: Request, actor: Annotated[str, Form()] = "",
                    password: Annotated[str, Form()] = "",
                    next: Annotated[str, Form()] = "/") -> Response:
        remote = request.client.host if request.client else "unknown"
        result = users.authenticate(ctx.engine, actor.strip(), password, remote=remote, now=now())
        if not result.ok:
            headers = ({"Retry-After": str(result.retry_after)} if result.retry_after else None)
            return render(request, "login.html", status_code=429 if result.retry_after else 401,
                          next=_safe_next(next), error=result.reason, actor=actor.strip(),
                          headers=headers)
        token, _csrf = users.open_session(ctx.engine, result.actor, now=now(),
                                          max_age=SESSION_MAX_AGE)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, httponly=True,
                        samesite="lax", secure=ctx.secure_cookies, path="/")
        return resp

    @app.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        # Signing out is a change too: another site must not be able to sign a user out.
        token = request.cookies.get(SESSION_COOKIE)
        session = users.session(ctx.engine, token, now=now()) if token else None
        if session is not None:
            if not csrf or not secrets.compare_digest(csrf, session.csrf):
                raise HTTPException(status_code=403,
                                    detail="表单已失效（CSRF 校验失败），请刷新页面后重试")
            users.close_session(ctx.engine, token or "")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    app.include_router(board.router)
    app.include_router(task_pages.router)
    app.include_router(forms.router)
    app.include_router(inspection_forms.router)
    app.include_router(evidence.router)
    app.include_router(notice_pages.router)
    return app


def _safe_next(target: str) -> str:
    """Only a path on this site: `next` must never send a signed-in user elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
