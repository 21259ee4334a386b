"""Who is asking (登录与权限): the session cookie, the viewer's roles from the plan's roster, CSRF.

The viewer's actor comes from the session only; no form field or query parameter can name
another one. Roles and unit are read from the roster on every request, so a change to the
roster (or a revoked credential) applies at once.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request

from service import users
from web.context import WebContext

SESSION_COOKIE = "duban_session"
# Roles that see every unit's tasks; everyone else sees only the tasks of their own unit and
# those their unit leads (牵头).
SEE_ALL = frozenset({"supervisor", "auditor", "office", "leader", "discipline"})
# Roles that may read but never command (审计/纪委/考核办).
READ_ONLY = frozenset({"auditor", "discipline"})


@dataclass(frozen=True)
class Viewer:
    actor: str
    name: str
    unit: str
    unit_name: str
    roles: frozenset[str]
    csrf: str

    @property
    def sees_all(self) -> bool:
        return bool(self.roles & SEE_ALL)

    @property
    def read_only(self) -> bool:
        """An auditor reads everything and commands nothing, whatever other role it holds."""
        return bool(self.roles & READ_ONLY)

    @property
    def is_supervisor(self) -> bool:
        return "supervisor" in self.roles


class SignInRequired(Exception):
    """Raised by `current_viewer`; the app answers with a redirect to the sign-in page."""


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def current_viewer(request: Request) -> Viewer:
    """The signed-in viewer, or SignInRequired (expired, revoked or absent session)."""
    ctx = ctx_of(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = users.session(ctx.engine, token, now=now()) if token else None
    if session is None:
        raise SignInRequired()
    person = users.person(ctx.engine, session.actor)
    if person is None:  # taken off the roster since signing in
        raise SignInRequired()
    viewer = Viewer(actor=person.actor, name=person.name, unit=person.unit,
                    unit_name=person.unit_name, roles=frozenset(person.roles), csrf=session.csrf)
    request.state.viewer = viewer
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def check_csrf(viewer: ViewerDep, csrf: Annotated[str, Form()] = "") -> Viewer:
    """Every form that changes something carries the session's token (a hidden field)."""
    if not csrf or not secrets.compare_digest(csrf, viewer.csrf):
        raise HTTPException(status_code=403, detail="表单已失效（CSRF 校验失败），请刷新页面后重试")
    return viewer


CsrfViewerDep = Annotated[Viewer, Depends(check_csrf)]
