"""Who may sign in (登录): the roster read model, credentials, sign-ins and browser sessions.

Shared by the web app (`web.auth`, `web.app`) and `starter.py user ...`.

- The roster (名册) of each loaded plan is kept in `people` (`store_roster`, from `plan load`);
  an actor's roles are the union over every plan naming it.
- A credential is a random password issued from the command line (`issue`), shown once and
  stored only as an Argon2id hash (salted, memory-hard). Issuing again or revoking ends the
  earlier one, and with it every session opened with it.
- Every attempt is recorded in `sign_ins`. After `FREE_FAILURES` failed attempts for the same
  actor or from the same remote address within `WINDOW`, attempts are refused without looking
  at the password until `BASE_DELAY` seconds (doubling per further failure, at most
  `MAX_DELAY`) have passed since the latest failure. Refused attempts are recorded
  ("throttled") but do not lengthen the wait: only passwords actually checked count, so the
  wait bounds the rate of guesses without locking a patient user out for good. A successful
  sign-in clears the actor's count, not the address's (an attacker holding one good account
  must not be able to reset the count for an address that sprays guesses at others).
- A session cookie carries a random token; only its SHA-256 is stored, with the session's
  CSRF token, its credential and expiry.

Every time comes from a `now` argument, so that tests (and audits) are deterministic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from infra.db.engine import write_options
from infra.db.models import CredentialRow, PersonRow, SignInRow, WebSessionRow

__all__ = [
    "BAD_CREDENTIALS",
    "ROLE_ORDER",
    "CredentialInfo",
    "NotOnRoster",
    "Person",
    "SessionInfo",
    "SignInRecord",
    "SignInResult",
    "authenticate",
    "close_session",
    "issue",
    "list_credentials",
    "open_session",
    "person",
    "recent_sign_ins",
    "revoke",
    "session",
    "store_roster",
]

people_t = cast(Table, PersonRow.__table__)
credentials_t = cast(Table, CredentialRow.__table__)
sign_ins_t = cast(Table, SignInRow.__table__)
sessions_t = cast(Table, WebSessionRow.__table__)

ROLE_ORDER = ("member", "head", "lead", "supervisor", "auditor", "office", "leader", "discipline")

WINDOW = dt.timedelta(minutes=15)
FREE_FAILURES = 5
BASE_DELAY = 30  # seconds
MAX_DELAY = 15 * 60  # seconds

# One message for an unknown actor and a wrong password: the page must not tell which actors
# exist.
BAD_CREDENTIALS = "账号或口令不正确"
NOT_ON_ROSTER = "该账号不在任何已下达计划的名册中，请联系督查办"

# Reasons recorded in sign_ins.reason (short codes; the page shows the Chinese text).
OK = "ok"
BAD_PASSWORD = "bad_password"
UNKNOWN_ACTOR = "unknown_actor"
NO_CREDENTIAL = "no_credential"  # on the roster, but nothing issued (or all revoked)
OFF_ROSTER = "not_on_roster"  # right password, but no longer on any plan's roster
THROTTLED = "throttled"
# Failures that count towards throttling: the password guesses (a throttled attempt checked
# nothing; an off-roster one had the right password).
_GUESSES = (BAD_PASSWORD, UNKNOWN_ACTOR, NO_CREDENTIAL)

_ACTOR_MAX = 200
_REMOTE_MAX = 100


class NotOnRoster(ValueError):
    """`issue` for an actor that no loaded plan names."""


@dataclass(frozen=True)
class SignInResult:
    ok: bool
    actor: str
    reason: str  # Chinese, shown on the sign-in page
    retry_after: int | None = None  # seconds, when throttled


@dataclass(frozen=True)
class SessionInfo:
    actor: str
    csrf: str


@dataclass(frozen=True)
class Person:
    actor: str
    name: str
    unit: str
    unit_name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class CredentialInfo:
    id: int
    actor: str
    name: str | None  # from the roster; None once off every plan's roster
    issued_at: dt.datetime
    issued_by: str
    revoked_at: dt.datetime | None

    @property
    def live(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class SignInRecord:
    at: dt.datetime
    actor: str
    ok: bool
    remote: str
    reason: str


class RosterMember(Protocol):
    """What `store_roster` needs of a roster entry (domain.plan.Member has it)."""

    @property
    def actor(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def roles(self) -> tuple[str, ...]: ...


# --- hashing ---------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # Argon2id, the library's current recommended parameters


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified against when there is no credential, so that an unknown actor costs as much
    # time as a wrong password (no timing oracle for which actors exist).
    return _hasher().hash(secrets.token_urlsafe(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(dt.UTC)


def _write(engine: Engine) -> Connection:
    """A connection for a write transaction (BEGIN IMMEDIATE on SQLite)."""
    return engine.connect().execution_options(**write_options())


# --- roster ----------------------------------------------------------------------------------

def store_roster(engine: Engine, plan_code: str, members: Iterable[RosterMember],
                 unit_names: Mapping[str, str], *, now: dt.datetime | None = None) -> int:
    """Replace the roster of `plan_code` with `members`; returns how many were stored."""
    at = _aware(now) if now is not None else dt.datetime.now(dt.UTC)
    rows = [{"plan_code": plan_code, "actor": m.actor, "name": m.name, "unit": m.unit,
             "unit_name": unit_names.get(m.unit, m.unit), "roles": list(m.roles),
             "loaded_at": at} for m in members]
    with _write(engine) as conn, conn.begin():
        conn.execute(delete(people_t).where(people_t.c.plan_code == plan_code))
        if rows:
            conn.execute(insert(people_t), rows)
    return len(rows)


def _role_key(role: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


def person(engine: Engine, actor: str) -> Person | None:
    """The actor as the roster knows it: roles from every plan naming it, name and unit from
    the plan loaded most recently."""
    q = (select(people_t).where(people_t.c.actor == actor)
         .order_by(people_t.c.loaded_at.desc(), people_t.c.plan_code.desc()))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    if not rows:
        return None
    latest = rows[0]
    roles = {r for row in rows for r in row.roles}
    return Person(actor=latest.actor, name=latest.name, unit=latest.unit,
                  unit_name=latest.unit_name, roles=tuple(sorted(roles, key=_role_key)))


def _on_roster(conn: Connection, actor: str) -> bool:
    return conn.execute(select(people_t.c.actor).where(people_t.c.actor == actor)
                        .limit(1)).first() is not None


# --- credentials -----------------------------------------------------------------------------

def _live_credential(conn: Connection, actor: str) -> Any:
    return conn.execute(
        select(credentials_t).where(credentials_t.c.actor == actor,
                                    credentials_t.c.revoked_at.is_(None))
        .order_by(credentials_t.c.id.desc()).limit(1)).first()


def _revoke_live(conn: Connection, actor: str, now: dt.datetime) -> int:
    """Revoke the actor's live credential(s) and close the sessions opened with them."""
    ids = [r.id for r in conn.execute(
        select(credentials_t.c.id).where(credentials_t.c.actor == actor,
                                         credentials_t.c.revoked_at.is_(None)))]
    if not ids:
        return 0
    conn.execute(update(credentials_t).where(credentials_t.c.id.in_(ids))
                 .values(revoked_at=now))
    # `session` refuses them anyway (it joins the credential); closing records when they ended.
    conn.execute(update(sessions_t).where(sessions_t.c.credential_id.in_(ids),
                                          sessions_t.c.closed_at.is_(None))
                 .values(closed_at=now))
    return len(ids)


def issue(engine: Engine, actor: str, *, now: dt.datetime, issued_by: str) -> str:
    """Issue a fresh random password to `actor` (on a loaded plan's roster) and return it:
    the only time it exists in clear. The actor's earlier credential is revoked."""
    now = _aware(now)
    password = secrets.token_urlsafe(12)
    hashed = _hasher().hash(password)
    with _write(engine) as conn, conn.begin():
        if not _on_roster(conn, actor):
            raise NotOnRoster(f"{actor!r} is not on the roster of any loaded plan "
                              f"(load the plan first: starter.py plan load FILE)")
        _revoke_live(conn, actor, now)
        conn.execute(insert(credentials_t).values(
            actor=actor, password_hash=hashed, issued_at=now, issued_by=issued_by[:_ACTOR_MAX]))
    return password


def revoke(engine: Engine, actor: str, *, now: dt.datetime) -> bool:
    """Revoke the actor's credential; its sessions end at once. False if it had none live."""
    now = _aware(now)
    with _write(engine) as conn, conn.begin():
        return _revoke_live(conn, actor, now) > 0


def list_credentials(engine: Engine) -> list[CredentialInfo]:
    """Every credential issued, by actor, newest first within an actor."""
    q = select(credentials_t).order_by(credentials_t.c.actor, credentials_t.c.id.desc())
    with engine.connect() as conn:
        rows = conn.execute(q).all()
        actors = sorted({r.actor for r in rows})
        names: dict[str, str] = {}
        if actors:
            for p in conn.execute(select(people_t.c.actor, people_t.c.name)
                                  .where(people_t.c.actor.in_(actors))
                                  .order_by(people_t.c.loaded_at)):
                names[p.actor] = p.name  # the latest plan's name wins
    return [CredentialInfo(id=r.id, actor=r.actor, name=names.get(r.actor),
                           issued_at=r.issued_at, issued_by=r.issued_by,
                           revoked_at=r.revoked_at) for r in rows]


# --- sign-in ---------------------------------------------------------------------------------

def _wait(failures: list[dt.datetime], now: dt.datetime) -> int | None:
    """Seconds still to wait after these counted failures (ascending), or None."""
    extra = len(failures) - FREE_FAILURES
    if extra < 0:
        return None
    delay = min(BASE_DELAY * 2 ** min(extra, 16), MAX_DELAY)
    until = failures[-1] + dt.timedelta(seconds=delay)
    if now >= until:
        return None
    return max(1, math.ceil((until - now).total_seconds()))


def _failures(conn: Connection, column: Any, value: str, since: dt.datetime,
              now: dt.datetime) -> list[dt.datetime]:
    q = (select(sign_ins_t.c.at)
         .where(column == value, sign_ins_t.c.ok.is_(False),
                sign_ins_t.c.reason.in_(_GUESSES),
                sign_ins_t.c.at > since, sign_ins_t.c.at <= now)
         .order_by(sign_ins_t.c.at))
    return [r.at for r in conn.execute(q)]


def _throttled(conn: Connection, actor: str, remote: str, now: dt.datetime) -> int | None:
    since = now - WINDOW
    last_ok = conn.execute(select(func.max(sign_ins_t.c.at))
                           .where(sign_ins_t.c.actor == actor, sign_ins_t.c.ok.is_(True),
                                  sign_ins_t.c.at <= now)).scalar()
    by_actor = _failures(conn, sign_ins_t.c.actor, actor,
                         max(since, last_ok) if last_ok is not None else since, now)
    by_remote = _failures(conn, sign_ins_t.c.remote, remote, since, now)
    waits = [w for w in (_wait(by_actor, now), _wait(by_remote, now)) if w is not None]
    return max(waits) if waits else None


def _wait_text(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} 秒"
    return f"{math.ceil(seconds / 60)} 分钟"


def authenticate(engine: Engine, actor: str, password: str, *, remote: str,
                 now: dt.datetime) -> SignInResult:
    """Check a sign-in and record it, whatever the outcome."""
    now = _aware(now)
    actor = actor[:_ACTOR_MAX]
    remote = (remote or "unknown")[:_REMOTE_MAX]
    # Read, then hash outside any transaction (Argon2 takes tens of milliseconds and must not
    # hold SQLite's write lock), then record. Concurrent attempts may slip a guess or two past
    # the count: the doubling wait still bounds the rate.
    with engine.connect() as conn:
        wait = _throttled(conn, actor, remote, now)
        cred = None if wait is not None else _live_credential(conn, actor)
        on_roster = wait is None and _on_roster(conn, actor)

    result: SignInResult
    if wait is not None:
        code = THROTTLED
        result = SignInResult(False, actor, f"登录失败次数过多，请 {_wait_text(wait)}后再试",
                              retry_after=wait)
    else:
        good = _verify(cred.password_hash if cred is not None else _dummy_hash(), password)
        if cred is None:
            code = NO_CREDENTIAL if on_roster else UNKNOWN_ACTOR
        elif not good:
            code = BAD_PASSWORD
        elif not on_roster:
            code = OFF_ROSTER
        else:
            code = OK
        if code == OK:
            result = SignInResult(True, actor, "登录成功")
            _rehash_if_needed(engine, cred, password)
        else:
            result = SignInResult(False, actor, NOT_ON_ROSTER if code == OFF_ROSTER
                                  else BAD_CREDENTIALS)
    with _write(engine) as conn, conn.begin():
        conn.execute(insert(sign_ins_t).values(actor=actor, at=now, ok=code == OK,
                                               remote=remote, reason=code))
    return result


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _rehash_if_needed(engine: Engine, cred: Any, password: str) -> None:
    """Keep hashes at the library's current parameters as they are raised over the years."""
    if not _hasher().check_needs_rehash(cred.password_hash):
        return
    with _write(engine) as conn, conn.begin():
        conn.execute(update(credentials_t).where(credentials_t.c.id == cred.id)
                     .values(password_hash=_hasher().hash(password)))


def recent_sign_ins(engine: Engine, limit: int = 50, *,
                    actor: str | None = None) -> list[SignInRecord]:
    """The latest sign-in attempts, newest first (optionally one actor's)."""
    q = select(sign_ins_t)
    if actor is not None:
        q = q.where(sign_ins_t.c.actor == actor)
    q = q.order_by(sign_ins_t.c.at.desc(), sign_ins_t.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [SignInRecord(at=r.at, actor=r.actor, ok=bool(r.ok), remote=r.remote,
                             reason=r.reason) for r in conn.execute(q)]


# --- sessions --------------------------------------------------------------------------------

def open_session(engine: Engine, actor: str, *, now: dt.datetime,
                 max_age: int) -> tuple[str, str]:
    """A new session for `actor` (just authenticated) on its live credential: (token, csrf).
    Only the token's SHA-256 is stored."""
    now = _aware(now)
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    with _write(engine) as conn, conn.begin():
        cred = _live_credential(conn, actor)
        if cred is None:
            raise ValueError(f"{actor!r} has no live credential")
        conn.execute(insert(sessions_t).values(
            token_hash=_token_hash(token), actor=actor, credential_id=cred.id, csrf=csrf,
            created_at=now, expires_at=now + dt.timedelta(seconds=max_age)))
    return token, csrf


def session(engine: Engine, token: str, *, now: dt.datetime) -> SessionInfo | None:
    """The session of a cookie's token, or None: unknown, expired, closed, or its credential
    revoked since it was opened."""
    now = _aware(now)
    q = (select(sessions_t.c.actor, sessions_t.c.csrf)
         .join(credentials_t, credentials_t.c.id == sessions_t.c.credential_id)
         .where(sessions_t.c.token_hash == _token_hash(token),
                sessions_t.c.closed_at.is_(None), sessions_t.c.expires_at > now,
                credentials_t.c.revoked_at.is_(None)))
    with engine.connect() as conn:
        row = conn.execute(q).first()
    return SessionInfo(actor=row.actor, csrf=row.csrf) if row is not None else None


def close_session(engine: Engine, token: str, *, now: dt.datetime | None = None) -> None:
    """Sign out: the session ends now (idempotent)."""
    at = _aware(now) if now is not None else dt.datetime.now(dt.UTC)
    with _write(engine) as conn, conn.begin():
        conn.execute(update(sessions_t).where(sessions_t.c.token_hash == _token_hash(token),
                                              sessions_t.c.closed_at.is_(None))
                     .values(closed_at=at))
