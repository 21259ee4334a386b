"""Sign-in (service.users): credentials, throttling, sessions, the roster read model; the
`starter.py user ...` commands; `starter.py serve`; the demo's sign-in block.

Store tests run on SQLite and, with DUBAN_TEST_POSTGRES_URL, on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from infra.db.engine import make_engine
from infra.db.migrate import upgrade
from infra.settings import REPO_ROOT, Settings
from infra.temporal.devserver import free_port
from service import users

UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
REMOTE = "10.0.0.7"


@dataclass(frozen=True)
class M:
    actor: str
    name: str
    unit: str
    roles: tuple[str, ...] = ("member",)


ROSTER = [
    M("zhang.san", "张三", "v01"),
    M("li.si", "李四", "v01", ("head",)),
    M("wang.wu", "王五", "dcs", ("supervisor",)),
    M("zhao.liu", "赵六", "sjj", ("auditor",)),
    M("qian.qi", "钱七", "v02"),
    M("sun.ba", "孙八", "v02"),
]
UNITS = {"v01": "一村", "v02": "二村", "dcs": "督查室", "sjj": "审计局"}


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at test-sized cost (the production parameters take ~0.1 s a hash, by design)."""
    from argon2 import PasswordHasher

    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(users, "_hasher", lambda: quick)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    upgrade(db_url)
    eng = make_engine(db_url)
    users.store_roster(eng, "P1", ROSTER, UNITS, now=T0)
    try:
        yield eng
    finally:
        eng.dispose()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def sign_in(engine: Engine, actor: str, password: str, when: dt.datetime,
            remote: str = REMOTE) -> users.SignInResult:
    return users.authenticate(engine, actor, password, remote=remote, now=when)


def reasons(engine: Engine) -> list[str]:
    return [r.reason for r in reversed(users.recent_sign_ins(engine, 100))]


# --- credentials and sign-in -----------------------------------------------------------------

def test_an_issued_password_signs_in_and_opens_a_session(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    result = sign_in(engine, "zhang.san", password, at(10))
    assert result.ok and result.actor == "zhang.san" and result.retry_after is None
    token, csrf = users.open_session(engine, "zhang.san", now=at(10), max_age=3600)
    got = users.session(engine, token, now=at(20))
    assert got == users.SessionInfo(actor="zhang.san", csrf=csrf)
    [record] = users.recent_sign_ins(engine, 10)
    assert (record.actor, record.ok, record.remote, record.reason) == (
        "zhang.san", True, REMOTE, "ok")


def test_unknown_actor_and_wrong_password_get_the_same_message(engine: Engine) -> None:
    users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    wrong = sign_in(engine, "zhang.san", "not-it", at(1))
    unknown = sign_in(engine, "nobody.here", "not-it", at(2))
    nothing_issued = sign_in(engine, "li.si", "not-it", at(3))  # on the roster, no credential
    assert not wrong.ok and not unknown.ok and not nothing_issued.ok
    assert wrong.reason == unknown.reason == nothing_issued.reason == "账号或口令不正确"
    assert wrong.retry_after is None and unknown.retry_after is None
    # The record tells them apart (for the office), the page does not.
    assert reasons(engine) == ["bad_password", "unknown_actor", "no_credential"]


def test_issue_refuses_an_actor_on_no_roster(engine: Engine) -> None:
    with pytest.raises(users.NotOnRoster, match="not on the roster"):
        users.issue(engine, "nobody.here", now=T0, issued_by="admin")
    assert users.list_credentials(engine) == []


def test_issuing_again_revokes_the_earlier_password_and_its_sessions(engine: Engine) -> None:
    first = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    assert sign_in(engine, "zhang.san", first, at(1)).ok
    token, _ = users.open_session(engine, "zhang.san", now=at(1), max_age=3600)
    second = users.issue(engine, "zhang.san", now=at(60), issued_by="admin")
    assert second != first
    assert users.session(engine, token, now=at(61)) is None
    assert not sign_in(engine, "zhang.san", first, at(62)).ok
    assert sign_in(engine, "zhang.san", second, at(63)).ok
    creds = users.list_credentials(engine)
    assert [(c.actor, c.live, c.revoked_at) for c in creds] == [
        ("zhang.san", True, None), ("zhang.san", False, at(60))]
    assert creds[0].name == "张三" and creds[0].issued_by == "admin"


def test_revoking_ends_a_live_session_at_once(engine: Engine) -> None:
    password = users.issue(engine, "wang.wu", now=T0, issued_by="admin")
    assert sign_in(engine, "wang.wu", password, at(1)).ok
    token, _ = users.open_session(engine, "wang.wu", now=at(1), max_age=3600)
    assert users.session(engine, token, now=at(2)) is not None
    assert users.revoke(engine, "wang.wu", now=at(3)) is True
    assert users.session(engine, token, now=at(3)) is None
    assert not sign_in(engine, "wang.wu", password, at(4)).ok
    assert users.revoke(engine, "wang.wu", now=at(5)) is False  # nothing live any more
    with pytest.raises(ValueError, match="no live credential"):
        users.open_session(engine, "wang.wu", now=at(6), max_age=3600)


def test_a_revoked_credential_kills_its_session_even_if_not_closed(engine: Engine) -> None:
    """`session` joins the credential: a revocation written by anything (another process, an
    operator's SQL) is enough, whatever became of the session row."""
    users.issue(engine, "wang.wu", now=T0, issued_by="admin")
    token, _ = users.open_session(engine, "wang.wu", now=at(1), max_age=3600)
    with engine.begin() as conn:
        conn.execute(users.credentials_t.update().values(revoked_at=at(2)))
    assert users.session(engine, token, now=at(3)) is None


def test_a_session_expires_and_closes(engine: Engine) -> None:
    users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    token, _ = users.open_session(engine, "zhang.san", now=at(0), max_age=60)
    assert users.session(engine, token, now=at(59)) is not None
    assert users.session(engine, token, now=at(60)) is None
    other, _ = users.open_session(engine, "zhang.san", now=at(0), max_age=60)
    users.close_session(engine, other, now=at(10))
    assert users.session(engine, other, now=at(11)) is None
    users.close_session(engine, other, now=at(12))  # signing out twice is harmless
    assert users.session(engine, "no-such-token", now=at(11)) is None


def test_each_session_gets_its_own_token_and_csrf(engine: Engine) -> None:
    users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    a = users.open_session(engine, "zhang.san", now=at(0), max_age=60)
    b = users.open_session(engine, "zhang.san", now=at(0), max_age=60)
    assert a[0] != b[0] and a[1] != b[1]
    assert len(a[0]) >= 40 and len(a[1]) >= 40  # 256 bits, URL-safe base64
    assert users.session(engine, a[0], now=at(1)).csrf == a[1]  # type: ignore[union-attr]
    assert users.session(engine, b[0], now=at(1)).csrf == b[1]  # type: ignore[union-attr]


def test_only_hashes_are_stored(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    assert sign_in(engine, "zhang.san", password, at(1)).ok
    token, _ = users.open_session(engine, "zhang.san", now=at(1), max_age=60)
    dump = []
    with engine.connect() as conn:
        for table in (users.people_t, users.credentials_t, users.sign_ins_t, users.sessions_t):
            dump += [json.dumps([str(v) for v in row]) for row in conn.execute(select(table))]
        stored_hash = conn.execute(select(users.credentials_t.c.password_hash)).scalar_one()
        token_hashes = list(conn.execute(select(users.sessions_t.c.token_hash)).scalars())
    everything = "\n".join(dump)
    assert password not in everything and token not in everything
    assert stored_hash.startswith("$argon2id$")  # salted, memory-hard
    assert token_hashes == [hashlib.sha256(token.encode()).hexdigest()]


# --- throttling ------------------------------------------------------------------------------

def test_five_failures_throttle_even_the_right_password(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i in range(5):
        assert sign_in(engine, "zhang.san", "guess", at(i)).retry_after is None
    # Latest failure at +4 s: 30 s from then, so 29 s to wait at +5 s. The right password is
    # refused unchecked.
    refused = sign_in(engine, "zhang.san", password, at(5))
    assert not refused.ok and refused.retry_after == 29
    assert "29 秒" in refused.reason
    assert reasons(engine)[-1] == "throttled"
    # Waiting does not get longer for attempts refused unchecked.
    assert sign_in(engine, "zhang.san", password, at(20)).retry_after == 14
    assert sign_in(engine, "zhang.san", password, at(34)).ok


def test_the_wait_doubles_per_further_failure(engine: Engine) -> None:
    users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i in range(5):
        sign_in(engine, "zhang.san", "guess", at(i))
    t = 4.0
    for delay, then in ((30, 60), (60, 120), (120, 240), (240, 480)):
        assert sign_in(engine, "zhang.san", "guess", at(t + delay - 1)).retry_after == 1
        t += delay
        assert sign_in(engine, "zhang.san", "guess", at(t)).retry_after is None  # checked
        assert sign_in(engine, "zhang.san", "guess", at(t)).retry_after == then
    # 480 s after the ninth failure (at +454 s), the first five are out of the 15-minute
    # window: four counted failures remain, so guesses are checked again. Waited out, the
    # doubling bounds guesses to about nine per quarter of an hour.
    assert sign_in(engine, "zhang.san", "guess", at(t + 480)).retry_after is None


def test_the_wait_is_capped_at_fifteen_minutes() -> None:
    failures = [T0] * 12  # e.g. concurrent attempts all checked before any was recorded
    assert users._wait(failures, T0) == 900
    assert users._wait(failures[:5], T0) == 30
    assert users._wait(failures[:4], T0) is None


def test_failures_older_than_fifteen_minutes_do_not_count(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i in range(4):
        sign_in(engine, "zhang.san", "guess", at(i))
    # 15 minutes later the four have aged out: four more failures still do not throttle.
    for i in range(4):
        assert sign_in(engine, "zhang.san", "guess", at(901 + i)).retry_after is None
    assert sign_in(engine, "zhang.san", password, at(906)).ok


def test_a_success_clears_the_actors_count(engine: Engine) -> None:
    """(From other addresses each time: an address's count is not cleared by a success, or an
    attacker holding one account could clear it between guesses at others.)"""
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i in range(4):
        sign_in(engine, "zhang.san", "guess", at(i), remote=f"198.51.100.{i}")
    assert sign_in(engine, "zhang.san", password, at(5), remote="198.51.100.5").ok
    for i in range(4):
        assert sign_in(engine, "zhang.san", "guess", at(6 + i),
                       remote=f"192.0.2.{i}").retry_after is None
    assert sign_in(engine, "zhang.san", password, at(11), remote="192.0.2.9").ok


def test_a_success_does_not_clear_the_addresss_count(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i, actor in enumerate(("li.si", "wang.wu", "zhao.liu", "qian.qi")):
        sign_in(engine, actor, "guess", at(i))
    assert sign_in(engine, "zhang.san", password, at(4)).ok
    sign_in(engine, "sun.ba", "guess", at(5))  # the fifth failure from this address
    assert sign_in(engine, "zhang.san", password, at(6)).retry_after == 29


def test_one_address_spraying_many_actors_is_throttled(engine: Engine) -> None:
    password = users.issue(engine, "sun.ba", now=T0, issued_by="admin")
    for i, actor in enumerate(("zhang.san", "li.si", "wang.wu", "zhao.liu", "qian.qi")):
        sign_in(engine, actor, "guess", at(i), remote="203.0.113.9")
    refused = sign_in(engine, "sun.ba", password, at(5), remote="203.0.113.9")
    assert not refused.ok and refused.retry_after == 29
    # The same person from elsewhere is not held back by that address.
    assert sign_in(engine, "sun.ba", password, at(6), remote="198.51.100.1").ok


def test_an_actor_guessed_at_from_many_addresses_is_throttled(engine: Engine) -> None:
    password = users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    for i in range(5):
        sign_in(engine, "zhang.san", "guess", at(i), remote=f"198.51.100.{i}")
    refused = sign_in(engine, "zhang.san", password, at(5), remote="192.0.2.1")
    assert refused.retry_after == 29


# --- roster ----------------------------------------------------------------------------------

def test_person_unions_roles_over_plans_with_the_latest_plans_unit(engine: Engine) -> None:
    assert users.person(engine, "zhang.san") == users.Person(
        "zhang.san", "张三", "v01", "一村", ("member",))
    users.store_roster(engine, "P2", [M("zhang.san", "张三", "zfw", ("lead", "head"))],
                       {"zfw": "住建局"}, now=at(60))
    assert users.person(engine, "zhang.san") == users.Person(
        "zhang.san", "张三", "zfw", "住建局", ("member", "head", "lead"))
    assert users.person(engine, "nobody.here") is None


def test_loading_a_plan_again_replaces_its_roster(engine: Engine) -> None:
    password = users.issue(engine, "qian.qi", now=T0, issued_by="admin")
    users.store_roster(engine, "P1", [m for m in ROSTER if m.actor != "qian.qi"], UNITS,
                       now=at(60))
    assert users.person(engine, "qian.qi") is None
    assert users.person(engine, "zhang.san") is not None
    # The right password of someone taken off the roster: refused, with a reason of its own.
    result = sign_in(engine, "qian.qi", password, at(61))
    assert not result.ok and "名册" in result.reason
    assert reasons(engine)[-1] == "not_on_roster"


def test_naive_times_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="aware"):
        users.authenticate(engine, "zhang.san", "x", remote=REMOTE, now=dt.datetime(2026, 1, 1))


def test_the_plan_loads_roster_names_units(engine: Engine, db_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan load` stores the plan's roster (the helper it calls after starting the tasks)."""
    import starter
    from infra.settings import get_settings
    from planfiles import read_plan

    plan = read_plan(REPO_ROOT / "plans" / "sample-2026.yaml")
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        assert starter._store_roster(plan) == len(plan.roster)
    finally:
        get_settings.cache_clear()
    he = users.person(engine, "he.min.khb")
    assert he is not None and he.roles == ("auditor",) and he.unit == "khb"
    assert he.unit_name == {u.code: u.name for u in plan.units}["khb"]


# --- the command line ------------------------------------------------------------------------

@pytest.fixture
def cli(cli: Any, engine: Engine) -> Any:
    """tests/fixtures_db.py's `cli`, after this module's database is set up."""
    return cli


def test_cli_user_issue_list_revoke(cli: Any, engine: Engine) -> None:
    issued = cli("user", "issue", "li.si", "--by", "office")
    assert issued.exit_code == 0, issued.output
    password = issued.stdout.strip().splitlines()[-1]
    assert "李四" in issued.stdout and "one-time password" in issued.stdout
    assert sign_in(engine, "li.si", password, dt.datetime.now(UTC)).ok

    listed = cli("user", "list", "--json")
    assert listed.exit_code == 0, listed.output
    [cred] = json.loads(listed.stdout)
    assert (cred["actor"], cred["name"], cred["issued_by"], cred["live"]) == (
        "li.si", "李四", "office", True)
    table = cli("user", "list")
    assert "li.si" in table.stdout and "live" in table.stdout

    revoked = cli("user", "revoke", "li.si")
    assert revoked.exit_code == 0, revoked.output
    assert not sign_in(engine, "li.si", password, dt.datetime.now(UTC)).ok
    assert json.loads(cli("user", "list", "--json").stdout)[0]["live"] is False
    again = cli("user", "revoke", "li.si")
    assert again.exit_code == 1 and "no live credential" in again.output


def test_cli_user_issue_json_and_unknown_actor(cli: Any, engine: Engine) -> None:
    issued = cli("user", "issue", "wang.wu", "--json")
    assert issued.exit_code == 0, issued.output
    doc = json.loads(issued.stdout)
    assert doc["actor"] == "wang.wu" and doc["roles"] == ["supervisor"]
    assert sign_in(engine, "wang.wu", doc["password"], dt.datetime.now(UTC)).ok
    unknown = cli("user", "issue", "nobody.here")
    assert unknown.exit_code == 2 and "not on the roster" in unknown.output


def test_cli_user_sign_ins(cli: Any, engine: Engine) -> None:
    users.issue(engine, "zhang.san", now=T0, issued_by="admin")
    sign_in(engine, "zhang.san", "guess", at(1))
    sign_in(engine, "nobody.here", "guess", at(2))
    result = cli("user", "sign-ins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["actor"], r["ok"], r["reason"]) for r in rows] == [
        ("nobody.here", False, "unknown_actor"), ("zhang.san", False, "bad_password")]
    one = json.loads(cli("user", "sign-ins", "--actor", "zhang.san", "--json").stdout)
    assert [r["actor"] for r in one] == ["zhang.san"]
    table = cli("user", "sign-ins")
    assert "bad_password" in table.stdout and "10.0.0.7" in table.stdout


# --- starter.py serve ------------------------------------------------------------------------

def test_serve_answers_the_sign_in_page(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, DUBAN_HOME=str(tmp_path), PYTHONUNBUFFERED="1",
               DATABASE_URL=f"sqlite:///{tmp_path / 'duban.db'}", DUBAN_WEB_PORT=str(port))
    env.pop("DUBAN_SIGNING_KEY", None)
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "starter.py"), "serve"],
                            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        # uvicorn says when it listens; a start-up failure ends the output instead.
        for line in proc.stderr:
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        assert f"127.0.0.1:{port}" in "".join(seen), "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as resp:
            assert resp.status == 200
            assert "登录" in resp.read().decode()
        assert (tmp_path / "evidence").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --- make demo -------------------------------------------------------------------------------

def _demo_plan() -> Any:
    from planfiles import read_plan
    from planfiles.demo_plan import demo_plan

    return demo_plan(dt.datetime.now(UTC), read_plan(REPO_ROOT / "plans" / "sample-2026.yaml"))


def test_demo_picks_one_person_per_role() -> None:
    from domain.plan import resolve_plan
    from planfiles import load_ladders
    from service.demo import SIGN_IN_ROLES, pick_sign_ins

    plan = _demo_plan()
    specs = resolve_plan(plan, load_ladders())
    picks = pick_sign_ins(plan, specs)
    assert [role for role, _ in picks] == list(SIGN_IN_ROLES)
    assert len({m.actor for _, m in picks}) == len(picks)  # one credential each
    for role, m in picks:
        assert role in m.roles
    # Units that have work, so no view is empty.
    by_role = dict(picks)
    assert by_role["member"].unit in {s.unit.code for s in specs}
    assert by_role["head"].unit in {s.unit.code for s in specs}
    assert by_role["lead"].unit in {s.lead_unit.code for s in specs}
    # Each role's own view, not a mixture: the lead sign-in holds no role that sees all.
    assert by_role["auditor"].roles == ("auditor",)
    assert not {"supervisor", "auditor", "office", "leader"} & set(by_role["lead"].roles)


def test_demo_sign_in_block_has_one_line_per_role() -> None:
    from service.demo import SIGN_IN_ROLES, SignIn, sign_in_block

    sign_ins = [SignIn(role, f"{role}.actor", f"名{i}", f"单位{i}", f"pw-{role}")
                for i, role in enumerate(SIGN_IN_ROLES)]
    lines = sign_in_block("http://127.0.0.1:8081", sign_ins)
    assert lines[0].strip().startswith("登录（每个角色一个）")
    assert "http://127.0.0.1:8081/login" in lines[0]
    assert len(lines) == 1 + len(SIGN_IN_ROLES)
    for line, s in zip(lines[1:], sign_ins, strict=True):
        for part in (s.role, s.actor, s.name, s.unit_name, s.password):
            assert part in line


def test_demo_issues_sign_ins_that_work_and_reissues_on_rerun(db_url: str,
                                                              tmp_path: Path) -> None:
    from planfiles.yaml_format import write_plan_yaml
    from service.demo import SIGN_IN_ROLES, issue_sign_ins

    plan = _demo_plan()
    plan_file = tmp_path / "demo-plan.yaml"
    write_plan_yaml(plan, plan_file)
    upgrade(db_url)
    eng = make_engine(db_url)
    try:
        users.store_roster(eng, plan.code, plan.roster, {u.code: u.name for u in plan.units})
        settings = Settings.from_env({"DATABASE_URL": db_url, "DUBAN_HOME": str(tmp_path)})
        first = issue_sign_ins(settings, plan_file)
        assert [s.role for s in first] == list(SIGN_IN_ROLES)
        now = dt.datetime.now(UTC)
        for s in first:
            assert users.authenticate(eng, s.actor, s.password, remote=f"r-{s.role}",
                                      now=now).ok, s
        second = issue_sign_ins(settings, plan_file)
        for old, new in zip(first, second, strict=True):
            assert old.actor == new.actor and old.password != new.password
            assert not users.authenticate(eng, old.actor, old.password, remote="r2", now=now).ok
    finally:
        eng.dispose()
