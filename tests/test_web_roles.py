"""Who may do what through the web app (权限矩阵), over HTTP with FastAPI's TestClient.

Every role × every page and every command, against a matrix written out below; then the
guards around them: CSRF, a revoked credential, sign-in throttling, the session cookie, the
actor taken from the session, the proof recorded for a command sent through the web.

The app runs on the live stack of tests/web_harness.py (a second plan, `webroles`, one task
per command and allowed role, each arranged in the state its command needs). A TestClient
blocks its caller until the app answers, and the workflows are run by the worker in this
event loop: every request is made from a thread (`asyncio.to_thread`) so the loop stays free
to decide the command the request is waiting for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from domain.plan import NodeSpec, Plan, RecheckPolicy, TaskDef
from infra.db.models import WebSessionRow
from service import users
from tests.web_harness import (
    ACTORS,
    OFFICE,
    ROLES,
    ROSTER,
    SPARE,
    UNITS,
    WebStack,
    task_id,
)

pytestmark = pytest.mark.slow

ROLES_PLAN = "webroles"
TZ = ZoneInfo("Asia/Shanghai")

# --- the expected matrix -----------------------------------------------------------------------
# Y: allowed (the page answers 200; the command is sent and recorded), N: refused (403 before
# anything is read or sent), H: hidden (404, exactly like a task that does not exist).
#                                 member head lead supervisor auditor office leader
PAGES: dict[str, str] = {
    "/":                           "Y      Y    Y    Y          Y       Y      Y",
    "/tasks":                      "Y      Y    Y    Y          Y       Y      Y",
    "/tasks/{own}":                "Y      Y    Y    Y          Y       Y      Y",
    "/tasks/{other}":              "H      H    Y    Y          Y       Y      Y",
    "/gantt":                      "Y      Y    Y    Y          Y       Y      Y",
    "/export.xlsx":                "Y      Y    Y    Y          Y       Y      Y",
    "/inspect":                    "N      N    N    Y          N       N      N",
    "/inspections/upload":         "N      N    N    Y          N       N      N",
    "/evidence/{own}":             "Y      Y    Y    Y          Y       Y      Y",
    "/evidence/{other}":           "H      H    Y    Y          Y       Y      Y",
}
COMMANDS: dict[str, str] = {
    "acknowledge":                 "Y      Y    N    N          N       N      N",
    "progress":                    "Y      Y    N    N          N       N      N",
    "claim":                       "Y      Y    N    N          N       N      N",
    "request_extension":           "Y      Y    N    N          N       N      N",
    "report_rectification":        "Y      Y    N    N          N       N      N",
    "accept":                      "N      N    Y    Y          N       N      N",
    "reject_claim":                "N      N    Y    Y          N       N      N",
    "decide_extension":            "N      N    Y    N          N       N      Y",
    "inspect":                     "N      N    N    Y          N       N      N",
    "verify_rectification":        "N      N    N    Y          N       N      N",
}
STATUS = {"Y": 200, "N": 403, "H": 404}
EVENT_OF = {
    "acknowledge": "Acknowledged", "progress": "ProgressReported", "claim": "NodeClaimed",
    "request_extension": "ExtensionRequested", "report_rectification": "RectificationReported",
    "accept": "NodeAccepted", "reject_claim": "ClaimRejected",
    "decide_extension": "ExtensionDecided", "inspect": "InspectionRecorded",
    "verify_rectification": "RectificationVerified",
}
# The task page's form a command is sent from (accept and reject share the acceptance form).
FORM_OF = {"accept": "acceptance", "reject_claim": "acceptance"}


def row(marks: str) -> dict[str, str]:
    values = marks.split()
    assert len(values) == len(ROLES)
    return dict(zip(ROLES, values, strict=True))


def allowed(command: str) -> list[str]:
    return [r for r, m in row(COMMANDS[command]).items() if m == "Y"]


def case_task(command: str, role: str) -> str:
    return task_id(f"{command.replace('_', '-')}-{role}", "wv11", ROLES_PLAN)


def roles_plan(now: dt.datetime) -> Plan:
    """One task at wv11 per (command, allowed role), and a page task at wv11 and wv21."""
    nodes = (NodeSpec(code="N1", title="第一阶段", due_at=now + dt.timedelta(days=10),
                      planned_progress=30),
             NodeSpec(code="N2", title="第二阶段", due_at=now + dt.timedelta(days=30),
                      planned_progress=100))
    tasks = [TaskDef(code="page", title="页面权限任务", lead_unit=OFFICE,
                     responsible=("wv11", "wv21"), nodes=nodes)]
    tasks += [TaskDef(code=f"{c.replace('_', '-')}-{r}", title=f"指令{c}·{r}", lead_unit=OFFICE,
                      responsible=("wv11",), nodes=nodes)
              for c in COMMANDS for r in allowed(c)]
    tasks.append(TaskDef(code="guards", title="防护检查任务", lead_unit=OFFICE,
                         responsible=("wv11",), nodes=nodes))
    return Plan(code=ROLES_PLAN, title="权限矩阵计划", start=(now - dt.timedelta(days=2)).date(),
                start_at=now - dt.timedelta(days=1), units=UNITS, roster=ROSTER,
                recheck=RecheckPolicy(percent=0), tasks=tuple(tasks))


# --- clients -----------------------------------------------------------------------------------


class Client:
    """One role's TestClient (its own app and cookie jar); every call made from a thread."""

    def __init__(self, stack: WebStack, *, remote: str = "testclient", secure: bool = False):
        app = stack.app()
        app.state.ctx.secure_cookies = secure
        base = "https://testserver" if secure else "http://testserver"
        self.http = TestClient(app, base_url=base, follow_redirects=False,
                               client=(remote, 50000))
        self.stack = stack
        self.csrf = ""

    async def open(self) -> Client:
        await asyncio.to_thread(self.http.__enter__)
        return self

    async def close(self) -> None:
        await asyncio.to_thread(self.http.__exit__, None, None, None)

    async def get(self, path: str, **kw: Any) -> Any:
        return await asyncio.to_thread(self.http.get, path, **kw)

    async def post(self, path: str, data: dict[str, Any] | None = None, *,
                   csrf: bool = True, **kw: Any) -> Any:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        # multipart, as the pages send it (enctype="multipart/form-data")
        files = kw.pop("files", None) or {"_": ("", b"", "application/octet-stream")}
        return await asyncio.to_thread(self.http.post, path, data=form, files=files, **kw)

    async def sign_in(self, actor: str, password: str) -> Any:
        resp = await asyncio.to_thread(self.http.post, "/login",
                                       data={"actor": actor, "password": password, "next": "/"})
        if resp.status_code == 303:
            token = self.http.cookies.get("duban_session")
            info = users.session(self.stack.engine, token, now=dt.datetime.now(dt.UTC))
            assert info is not None
            self.csrf = info.csrf
        return resp


@dataclass
class Fixture:
    stack: WebStack
    clients: dict[str, Client]
    evidence: dict[str, str]  # "own"/"other" -> SHA-256 of a photo on that task


def tiny_file(label: str) -> bytes:
    return f"佐证材料 {label}".encode()


def local(moment: dt.datetime) -> str:
    return moment.astimezone(TZ).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture(scope="module")
async def roles(web_stack: WebStack) -> AsyncIterator[Fixture]:
    stack = web_stack
    await stack.sync_clock()
    await stack.load_plan(roles_plan(await stack.now()))
    clients: dict[str, Client] = {}
    try:
        for role in ROLES:
            c = await Client(stack).open()
            clients[role] = c
            resp = await c.sign_in(ACTORS[role], stack.password(role))
            assert resp.status_code == 303, resp.text
        # Evidence on each page task, uploaded through the phone form by the supervisor.
        evidence: dict[str, str] = {}
        for which, unit in (("own", "wv11"), ("other", "wv21")):
            tid = task_id("page", unit, ROLES_PLAN)
            photo = tiny_file(which)
            resp = await clients["supervisor"].post("/inspect", {
                "task": tid, "place": "村部", "outcome": "基本达标",
                "visited_at": local(await stack.now()), "inspection_id": f"ev-{which}",
                "finding_0_severity": "一般", "finding_0_description": "台账不全",
            }, files={"finding_0_photos": ("photo.jpg", photo, "image/jpeg")})
            assert resp.status_code == 303, resp.text
            evidence[which] = hashlib.sha256(photo).hexdigest()
            await stack.settle(tid)
        yield Fixture(stack, clients, evidence)
    finally:
        for c in clients.values():
            await c.close()


# --- pages -------------------------------------------------------------------------------------


def page_url(page: str, fx: Fixture) -> str:
    which = "own" if "{own}" in page else "other"
    if page.startswith("/evidence/"):
        return "/evidence/" + fx.evidence[which]
    return page.replace("{" + which + "}", task_id("page", "wv11" if which == "own" else "wv21",
                                                  ROLES_PLAN))


@pytest.mark.parametrize("page", list(PAGES))
async def test_every_role_on_every_page(roles: Fixture, page: str) -> None:
    path = page_url(page, roles)
    if path in ("/", "/tasks", "/gantt", "/export.xlsx"):
        path += f"?plan={ROLES_PLAN}"
    got = {role: (await roles.clients[role].get(path)).status_code for role in ROLES}
    expected = {role: STATUS[m] for role, m in row(PAGES[page]).items()}
    assert got == expected, page


async def test_a_hidden_task_and_a_missing_one_answer_alike(roles: Fixture) -> None:
    member = roles.clients["member"]
    hidden = await member.get(page_url("/tasks/{other}", roles))
    missing = await member.get(f"/tasks/{ROLES_PLAN}/page/nowhere")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text
    hidden_file = await member.get("/evidence/" + roles.evidence["other"])
    missing_file = await member.get("/evidence/" + "0" * 64)
    assert hidden_file.status_code == missing_file.status_code == 404
    assert hidden_file.text == missing_file.text


# --- commands ----------------------------------------------------------------------------------


async def arrange(stack: WebStack, command: str, tid: str) -> dict[str, str]:
    """Put the task in the state `command` needs; returns the form's fields for it."""
    member, supervisor = ACTORS["member"], ACTORS["supervisor"]
    now = await stack.now()
    finding = {"actor": supervisor, "inspection_id": "arr", "visited_at": now.isoformat(),
               "place": "村部", "outcome": "不达标",
               "findings": [{"finding_id": "F1", "severity": "一般", "description": "问题"}]}
    if command in ("accept", "reject_claim"):
        await stack.send(tid, "claim", {"actor": member, "node": "N1"})
    elif command == "decide_extension":
        await stack.send(tid, "request_extension", {
            "actor": member, "node": "N1", "reason": "雨季施工受阻",
            "proposed_due": (now + dt.timedelta(days=15)).astimezone(TZ).date().isoformat()})
    elif command == "report_rectification":
        await stack.send(tid, "inspect", finding)
    elif command == "verify_rectification":
        await stack.send(tid, "inspect", finding)
        await stack.send(tid, "report_rectification", {"actor": member, "finding_id": "F1",
                                                       "note": "已整改"})
    await stack.settle(tid)
    return {
        "acknowledge": {"note": "已收悉"},
        "progress": {"percent": "40", "note": "推进中"},
        "claim": {"node": "N1", "note": "已完成"},
        "request_extension": {
            "node": "N1", "reason": "需协调",
            "proposed_due": (now + dt.timedelta(days=20)).astimezone(TZ).date().isoformat()},
        "report_rectification": {"finding_id": "F1", "note": "已整改到位"},
        "accept": {"node": "N1", "decision": "accept", "note": "符合要求"},
        "reject_claim": {"node": "N1", "decision": "reject", "note": "材料不全"},
        "decide_extension": {"node": "N1", "approve": "yes", "reason": "同意"},
        "inspect": {"task": tid, "node": f"{tid}|N1", "place": "村部", "outcome": "达标",
                    "visited_at": local(now), "inspection_id": f"web-{command}"},
        "verify_rectification": {"finding_id": "F1", "passed": "yes", "note": "核查到位"},
    }[command]


def command_url(command: str, tid: str) -> str:
    if command == "inspect":
        return "/inspect"
    return f"/tasks/{tid}/commands/{FORM_OF.get(command, command)}"


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_every_role_and_every_command(roles: Fixture, command: str) -> None:
    stack = roles.stack
    expected = row(COMMANDS[command])
    tasks = {role: case_task(command, role) for role in allowed(command)}
    forms = {role: await arrange(stack, command, tid) for role, tid in tasks.items()}
    first = next(iter(tasks.values()))

    # refused: 403 before anything is sent; the task's record is unchanged (not even a
    # refusal is recorded), though the task is in the state the command needs
    refused = [role for role, m in expected.items() if m == "N"]
    before = stack.events(first)
    for role in refused:
        resp = await roles.clients[role].post(command_url(command, first),
                                              forms[next(iter(forms))])
        assert resp.status_code == 403, (role, resp.status_code, resp.text[:300])
    await stack.settle(first)
    assert stack.events(first) == before, refused

    # allowed: sent, decided and recorded, the actor being the signed-in role, proven by
    # the app's signature
    for role, tid in tasks.items():
        head = stack.store.head(tid).seq
        resp = await roles.clients[role].post(command_url(command, tid), forms[role])
        assert resp.status_code == 303, (role, resp.status_code, resp.text[:500])
        assert resp.headers["location"].startswith(f"/tasks/{tid}?done="), resp.headers
        await stack.settle(tid)
        new = [e for e in stack.events(tid) if e["seq"] > head]
        mine = [e for e in new if e["type"] == EVENT_OF[command]]
        assert len(mine) == 1, (role, [e["type"] for e in new])
        assert mine[0]["actor"] == ACTORS[role]
        assert mine[0]["proof"]["method"] == "signed", mine[0]
        assert mine[0]["proof"]["sender"] == "web"
        assert mine[0]["proof"]["key"] == stack.signer.fingerprint
        assert not [e for e in new if e["type"] == "CommandRejected"]


def test_the_matrix_counts() -> None:
    """The role matrix in numbers, written to stdout (shown with pytest -s)."""
    lines = ["role matrix: allowed / refused per role (pages: 404 counted as refused)",
             f"{'role':<12}{'pages':>12}{'commands':>12}"]
    totals = [0, 0, 0, 0]
    for role in ROLES:
        p = [row(m)[role] for m in PAGES.values()]
        c = [row(m)[role] for m in COMMANDS.values()]
        pa, ca = p.count("Y"), c.count("Y")
        totals = [totals[0] + pa, totals[1] + len(p) - pa, totals[2] + ca, totals[3] + len(c) - ca]
        lines.append(f"{role:<12}{f'{pa}/{len(p) - pa}':>12}{f'{ca}/{len(c) - ca}':>12}")
    lines.append(f"{'total':<12}{f'{totals[0]}/{totals[1]}':>12}{f'{totals[2]}/{totals[3]}':>12}")
    print("\n" + "\n".join(lines))
    assert totals[0] + totals[1] == len(ROLES) * len(PAGES)
    assert totals[2] + totals[3] == len(ROLES) * len(COMMANDS)
    assert totals[2] == 18  # 5 unit commands × 2 + accept/reject × 2 + decide × 2 + 2 supervisor


# --- guards ------------------------------------------------------------------------------------


GUARDS = task_id("guards", "wv11", ROLES_PLAN)


async def test_a_form_without_or_with_a_wrong_csrf_token_is_refused_and_nothing_sent(
        roles: Fixture) -> None:
    stack, member = roles.stack, roles.clients["member"]
    await stack.settle(GUARDS)
    before = stack.events(GUARDS)
    url = f"/tasks/{GUARDS}/commands/progress"
    missing = await member.post(url, {"percent": "30"}, csrf=False)
    wrong = await member.post(url, {"percent": "30", "csrf": "x" + member.csrf[1:]})
    other = await member.post(url, {"percent": "30", "csrf": roles.clients["head"].csrf})
    inspect = await roles.clients["supervisor"].post("/inspect", {
        "task": GUARDS, "place": "村部", "outcome": "达标", "visited_at": "2026-12-01T09:00"},
        csrf=False)
    assert [r.status_code for r in (missing, wrong, other, inspect)] == [403] * 4
    assert "CSRF" in missing.text
    await stack.settle(GUARDS)
    assert stack.events(GUARDS) == before
    # the same form with the session's token goes through
    ok = await member.post(url, {"percent": "30"})
    assert ok.status_code == 303


async def test_the_actor_comes_from_the_session_not_the_form(roles: Fixture) -> None:
    stack, member = roles.stack, roles.clients["member"]
    head = stack.store.head(GUARDS).seq
    resp = await member.post(f"/tasks/{GUARDS}/commands/progress",
                             {"percent": "35", "note": "冒名", "actor": ACTORS["head"]})
    assert resp.status_code == 303, resp.text[:300]
    await stack.settle(GUARDS)
    [reported] = [e for e in stack.events(GUARDS)
                  if e["seq"] > head and e["type"] == "ProgressReported"]
    assert reported["actor"] == ACTORS["member"] and reported["percent"] == 35
    assert reported["proof"]["method"] == "signed" and reported["proof"]["sender"] == "web"


async def test_a_session_is_refused_as_soon_as_its_credential_is_revoked(
        roles: Fixture) -> None:
    stack = roles.stack
    stack.issue_all([SPARE])
    spare = await Client(stack).open()
    try:
        assert (await spare.sign_in(SPARE, stack.password(SPARE))).status_code == 303
        assert (await spare.get(f"/tasks?plan={ROLES_PLAN}")).status_code == 200
        assert users.revoke(stack.engine, SPARE, now=dt.datetime.now(dt.UTC))
        page = await spare.get(f"/tasks?plan={ROLES_PLAN}")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login?next=/tasks")
        form = await spare.post(f"/tasks/{GUARDS}/commands/progress", {"percent": "1"})
        assert form.status_code == 401
        # and the revoked password no longer signs in
        again = await spare.sign_in(SPARE, stack.password(SPARE))
        assert again.status_code == 401
    finally:
        await spare.close()


async def test_signing_out_needs_the_sessions_token(roles: Fixture) -> None:
    """Another site cannot sign a user out: /logout without the session's CSRF token is refused
    and the session lives on; with it, the session ends."""
    stack = roles.stack
    stack.issue_all([SPARE])
    spare = await Client(stack).open()
    try:
        assert (await spare.sign_in(SPARE, stack.password(SPARE))).status_code == 303
        forged = await spare.post("/logout", csrf=False)
        assert forged.status_code == 403
        assert (await spare.get(f"/tasks?plan={ROLES_PLAN}")).status_code == 200
        out = await spare.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        token = spare.http.cookies.get("duban_session")
        assert token is None or users.session(stack.engine, token,
                                              now=dt.datetime.now(dt.UTC)) is None
        assert (await spare.get(f"/tasks?plan={ROLES_PLAN}")).status_code == 303
    finally:
        await spare.close()


async def test_repeated_sign_in_failures_are_slowed_down(roles: Fixture) -> None:
    stack = roles.stack
    stack.issue_all([SPARE])
    guesser = await Client(stack, remote="10.66.0.1").open()
    try:
        codes = [(await guesser.sign_in("nobody.here", f"guess{i}")).status_code
                 for i in range(users.FREE_FAILURES)]
        assert codes == [401] * users.FREE_FAILURES
        throttled = await guesser.sign_in("nobody.here", "guess-again")
        assert throttled.status_code == 429
        wait = int(throttled.headers["retry-after"])
        assert 0 < wait <= users.BASE_DELAY
        assert "登录失败次数过多" in throttled.text
        # from that address even the right password waits
        right = await guesser.sign_in(SPARE, stack.password(SPARE))
        assert right.status_code == 429 and "duban_session" not in right.headers.get(
            "set-cookie", "")
    finally:
        await guesser.close()
    # another address is not slowed down by it
    elsewhere = await Client(stack, remote="10.66.0.2").open()
    try:
        assert (await elsewhere.sign_in(SPARE, stack.password(SPARE))).status_code == 303
    finally:
        await elsewhere.close()


def cookie_attributes(header: str) -> dict[str, str]:
    parts = [p.strip() for p in header.split(";")]
    out = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        out[k.lower()] = v.lower()
    return out


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
async def test_the_session_cookie_is_httponly_and_samesite(roles: Fixture,
                                                           secure: bool) -> None:
    stack = roles.stack
    c = await Client(stack, secure=secure).open()
    try:
        resp = await c.sign_in(ACTORS["leader"], stack.password("leader"))
        assert resp.status_code == 303
        [header] = [v for k, v in resp.headers.multi_items()
                    if k == "set-cookie" and v.startswith("duban_session=")]
        attrs = cookie_attributes(header)
        assert "httponly" in attrs
        assert attrs.get("samesite") in ("lax", "strict")
        assert attrs.get("path") == "/"
        assert ("secure" in attrs) is secure
        # only the token's hash is stored: the cookie's value itself is nowhere in the store
        token = header.split(";")[0].split("=", 1)[1]
        with stack.engine.connect() as conn:
            stored = [r[0] for r in conn.execute(select(WebSessionRow.token_hash))]
        assert hashlib.sha256(token.encode()).hexdigest() in stored and token not in stored
    finally:
        await c.close()


async def test_a_hidden_tasks_form_answers_like_a_missing_task_and_sends_nothing(
        roles: Fixture) -> None:
    stack = roles.stack
    other = task_id("page", "wv21", ROLES_PLAN)
    await stack.settle(other)
    before = stack.events(other)
    for role in ("member", "head"):
        resp = await roles.clients[role].post(f"/tasks/{other}/commands/progress",
                                              {"percent": "90"})
        assert resp.status_code == 404, role
    await stack.settle(other)
    assert stack.events(other) == before


async def test_a_round_sheet_is_a_supervisors_and_each_row_is_answered(roles: Fixture) -> None:
    stack = roles.stack
    # the importer takes a time with its zone offset (a bare local time is refused per row)
    visited = (await stack.now()).astimezone(TZ).isoformat(timespec="minutes")
    sheet = ("任务ID,检查编号,督查人,检查时间,地点,结果\n"
             f"{GUARDS},round-1,,{visited},村部,达标\n"
             f"{GUARDS},round-2,{ACTORS['leader']},{visited},村部,达标\n").encode("utf-8-sig")
    upload = {"sheet": ("round.csv", sheet, "text/csv")}
    await stack.settle(GUARDS)
    before = stack.events(GUARDS)
    for role in ROLES:
        if role != "supervisor":
            resp = await roles.clients[role].post("/inspections/upload", files=upload)
            assert resp.status_code == 403, role
    await stack.settle(GUARDS)
    assert stack.events(GUARDS) == before

    resp = await roles.clients["supervisor"].post("/inspections/upload", files=upload)
    assert resp.status_code == 200, resp.text[:500]
    main = resp.text[resp.text.index('id="verdicts"'):]
    assert "已记录 1 行" in main and "被拒绝 1 行" in main, re.sub(r"<[^>]+>", " ", main)
    assert "只能导入本人" in resp.text  # the row naming another inspector: refused, not sent
    await stack.settle(GUARDS)
    new = [e for e in stack.events(GUARDS) if e["seq"] > before[-1]["seq"]]
    [recorded] = [e for e in new if e["type"] == "InspectionRecorded"]
    assert recorded["inspection_id"] == "round-1"
    assert recorded["actor"] == ACTORS["supervisor"]
    assert recorded["proof"]["method"] == "signed" and recorded["proof"]["sender"] == "web"
    assert not [e for e in new if e["type"] == "CommandRejected"]
