"""Delivery of 督办单 to people (送达): the worker that reads the outbox and sends each copy.

The KeyTask workflow only writes `outbox` rows (one per notice and recipient, in its
`record_batch` activity); this worker runs beside it and never talks to the workflow, so a mail
server or robot that is down delays copies here and never blocks or fails a task.

1. Expand: an outbox row without copies is resolved through the plan's 通讯录 (`directory`,
   stored by `plan load` before the plan's tasks start) into copies, one per channel and
   address: "t02:unit" → unit t02's addresses; "t02:unit_head" → the addresses of t02's
   members holding "head"; "lead" → the task's lead unit; any other role ("leader", "office",
   ...) → the addresses of the plan's members holding it. Every copy of a unit-scoped
   recipient also lands in the unit's inbox in the web app (channel "inbox", delivered at
   once: the web app reads the notices table). A recipient that resolves to nobody gets a dead
   copy of channel "none" saying so. Copies are unique per (outbox row, channel, address).
2. Claim: a due copy (pending, or failed and due for a retry, or attempting whose lease ran
   out) is claimed by compare-and-set: status "attempting", attempts + 1, a lease, the
   worker's id, where the status and attempts are still what this worker read. Two workers
   never both hold a copy; the claim is committed before anything is sent.
3. Send through the channel's transport (infra/channels.py) with the copy's idempotency key,
   then record: delivered; or failed with the error and the next attempt after exponential
   backoff; or dead (the dead-letter list) after `max_attempts`, or at once if the address
   refuses the copy for good. The record is fenced by (status, worker, attempts): a worker
   whose lease was taken over records nothing.

A worker killed between sending and recording leaves the copy "attempting"; once its lease
has run out another worker (or the same one, restarted) sends it again with the SAME key, and
the receiver drops the repeat (the e-mail's Message-ID, the webhook's Idempotency-Key). Hence
at-least-once sending, exactly-once receipt for receivers that dedupe on the key.

Every time comes from a `now` argument (tests control retries and leases without sleeping).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from infra.channels import (
    Attachment,
    DeliveryError,
    Outgoing,
    SmtpConfig,
    SmtpTransport,
    Transport,
    WebhookTransport,
)
from infra.db.engine import write_options
from infra.db.models import DeliveryRow, DirectoryRow, NoticeRow, OutboxRow, TaskRow

__all__ = [
    "STATUSES",
    "Address",
    "Book",
    "DeliveryPolicy",
    "DeliveryWorker",
    "dead_letters",
    "delivery_counts",
    "delivery_counts_by_channel",
    "idempotency_key",
    "list_deliveries",
    "read_directory",
    "requeue",
    "resolve_recipient",
    "store_directory",
]

log = structlog.get_logger("duban.delivery")

directory_t = cast(Table, DirectoryRow.__table__)
deliveries_t = cast(Table, DeliveryRow.__table__)
outbox_t = cast(Table, OutboxRow.__table__)
notices_t = cast(Table, NoticeRow.__table__)
tasks_t = cast(Table, TaskRow.__table__)

PENDING, ATTEMPTING, DELIVERED, FAILED, DEAD = (
    "pending", "attempting", "delivered", "failed", "dead")
STATUSES = (PENDING, ATTEMPTING, DELIVERED, FAILED, DEAD)
INBOX, EMAIL, WEBHOOK, NONE = "inbox", "email", "webhook", "none"
_ERROR_MAX = 2000


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(dt.UTC)


def _write(engine: Engine) -> Connection:
    """A connection for a write transaction (BEGIN IMMEDIATE on SQLite)."""
    return engine.connect().execution_options(**write_options())


def _insert(engine: Engine, table: Table) -> Any:
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


# --- policy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retries: attempt n failed → the next at `base_delay` × 2^(n-1), at most `max_delay`;
    after `max_attempts` attempts the copy is dead. `lease`: how long a claimed copy is the
    claimant's before another worker may take it over (longer than any send's timeout)."""

    max_attempts: int = 5
    base_delay: dt.timedelta = dt.timedelta(seconds=30)
    max_delay: dt.timedelta = dt.timedelta(hours=1)
    lease: dt.timedelta = dt.timedelta(minutes=5)
    batch: int = 100

    def backoff(self, attempts: int) -> dt.timedelta:
        delay: dt.timedelta = self.base_delay * (2 ** max(attempts - 1, 0))
        return min(delay, self.max_delay)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeliveryPolicy:
        """DUBAN_DELIVERY_MAX_ATTEMPTS (5), DUBAN_DELIVERY_BASE_DELAY (30 s),
        DUBAN_DELIVERY_MAX_DELAY (3600 s), DUBAN_DELIVERY_LEASE (300 s)."""
        e = os.environ if env is None else env

        def seconds(name: str, default: dt.timedelta) -> dt.timedelta:
            value = e.get(name)
            return dt.timedelta(seconds=float(value)) if value else default

        attempts = int(e.get("DUBAN_DELIVERY_MAX_ATTEMPTS") or cls.max_attempts)
        if attempts < 1:
            raise ValueError("DUBAN_DELIVERY_MAX_ATTEMPTS must be at least 1")
        return cls(max_attempts=attempts,
                   base_delay=seconds("DUBAN_DELIVERY_BASE_DELAY", cls.base_delay),
                   max_delay=seconds("DUBAN_DELIVERY_MAX_DELAY", cls.max_delay),
                   lease=seconds("DUBAN_DELIVERY_LEASE", cls.lease))


# --- the directory (通讯录) --------------------------------------------------------------------


def store_directory(engine: Engine, plan: Any, *, now: dt.datetime | None = None) -> int:
    """Replace the 通讯录 of `plan` (a domain.plan.Plan): a row per unit and per roster member,
    with their addresses from `plan.directory`. Returns how many rows were stored."""
    at = _aware(now) if now is not None else dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    for u in plan.units:
        a = plan.directory.units.get(u.code)
        rows.append(_directory_row(plan.code, "unit", u.code, u.code, u.name, [], a, at))
    for m in plan.roster:
        a = plan.directory.members.get(m.actor)
        rows.append(_directory_row(plan.code, "member", m.actor, m.unit, m.name, list(m.roles),
                                   a, at))
    with _write(engine) as conn, conn.begin():
        conn.execute(delete(directory_t).where(directory_t.c.plan_code == plan.code))
        if rows:
            conn.execute(insert(directory_t), rows)
    return len(rows)


def _directory_row(plan_code: str, kind: str, code: str, unit: str, name: str,
                   roles: list[str], a: Any, at: dt.datetime) -> dict[str, Any]:
    return {"plan_code": plan_code, "kind": kind, "code": code, "unit": unit, "name": name,
            "roles": roles, "emails": list(a.email) if a is not None else [],
            "webhook": a.webhook if a is not None else None,
            "webhook_secret_env": a.webhook_secret_env if a is not None else None,
            "loaded_at": at}


@dataclass(frozen=True)
class Address:
    channel: str
    address: str
    secret_env: str | None = None


@dataclass
class Book:
    """One plan's directory rows, read once per expansion pass."""

    units: dict[str, Any] = field(default_factory=dict)
    members: list[Any] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.units and not self.members


def read_directory(conn: Connection, plan_code: str) -> Book:
    """A plan's 通讯录 as stored by `store_directory` (empty if the plan has none)."""
    book = Book()
    for row in conn.execute(select(directory_t).where(directory_t.c.plan_code == plan_code)
                            .order_by(directory_t.c.kind, directory_t.c.code)):
        if row.kind == "unit":
            book.units[row.code] = row
        else:
            book.members.append(row)
    return book


def _addresses_of(row: Any) -> list[Address]:
    out = [Address(EMAIL, e) for e in row.emails or []]
    if row.webhook:
        out.append(Address(WEBHOOK, row.webhook, row.webhook_secret_env))
    return out


def resolve_recipient(book: Book, recipient: str, *,
                      lead_unit: str | None = None) -> tuple[list[Address], str | None]:
    """The addresses of one outbox recipient (deduplicated, in a stable order), and when there
    are none, why."""
    found: list[Address] = []
    unit, _, scope = recipient.rpartition(":")
    if unit and scope in ("unit", "unit_head"):
        found.append(Address(INBOX, unit))
        if scope == "unit":
            if unit in book.units:
                found += _addresses_of(book.units[unit])
        else:
            for m in book.members:
                if m.unit == unit and "head" in (m.roles or []):
                    found += _addresses_of(m)
    elif recipient == "lead" and lead_unit is not None:
        found.append(Address(INBOX, lead_unit))
        if lead_unit in book.units:
            found += _addresses_of(book.units[lead_unit])
    else:
        holders = [m for m in book.members if recipient in (m.roles or [])]
        for m in holders:
            found.append(Address(INBOX, m.unit))
            found += _addresses_of(m)
        if not holders:
            return [], f"no one on the plan's roster holds the role {recipient!r}"
    return list(dict.fromkeys(found)), None


def idempotency_key(task_id: str, step_key: str, recipient: str, channel: str,
                    address: str) -> str:
    """Stable per copy (the same for every attempt, and if the outbox were written again)."""
    text = "\n".join((task_id, step_key, recipient, channel, address))
    return "duban-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _plan_of(task_id: str) -> str:
    return task_id.split("/", 1)[0]


def _of_plans(plans: Iterable[str]) -> ColumnElement[bool]:
    """Outbox rows of these plans (task ids are "<plan>/<task>/<unit>")."""
    return or_(false(), *(outbox_t.c.task_id.startswith(f"{p}/", autoescape=True)
                          for p in plans))


# --- reading ---------------------------------------------------------------------------------


def delivery_counts(bind: Engine | Connection, *, plan_code: str | None = None,
                    channel: str | None = None) -> dict[str, int]:
    """Copies by status (every status present, 0 if none): what metrics and the board show.
    `bind`: an engine, or a connection already open (the board's)."""
    stmt = select(deliveries_t.c.status, func.count()).group_by(deliveries_t.c.status)
    if plan_code is not None:
        stmt = stmt.where(deliveries_t.c.plan_code == plan_code)
    if channel is not None:
        stmt = stmt.where(deliveries_t.c.channel == channel)
    counts = dict.fromkeys(STATUSES, 0)
    with _reading(bind) as conn:
        for status, n in conn.execute(stmt):
            counts[status] = int(n)
    return counts


@contextmanager
def _reading(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def delivery_counts_by_channel(engine: Engine) -> dict[tuple[str, str], int]:
    """Copies by (channel, status), only the pairs that occur."""
    stmt = (select(deliveries_t.c.channel, deliveries_t.c.status, func.count())
            .group_by(deliveries_t.c.channel, deliveries_t.c.status))
    with engine.connect() as conn:
        return {(c, s): int(n) for c, s, n in conn.execute(stmt)}


def list_deliveries(engine: Engine, *, status: str | None = None, task_id: str | None = None,
                    plan_code: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    stmt = select(deliveries_t).order_by(deliveries_t.c.id).limit(limit)
    if status is not None:
        stmt = stmt.where(deliveries_t.c.status == status)
    if task_id is not None:
        stmt = stmt.where(deliveries_t.c.task_id == task_id)
    if plan_code is not None:
        stmt = stmt.where(deliveries_t.c.plan_code == plan_code)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def dead_letters(engine: Engine, *, plan_code: str | None = None,
                 limit: int = 200) -> list[dict[str, Any]]:
    """The dead-letter list: copies given up on, with their last error."""
    return list_deliveries(engine, status=DEAD, plan_code=plan_code, limit=limit)


def requeue(engine: Engine, delivery_id: int, *, now: dt.datetime) -> bool:
    """Give a dead copy a fresh set of attempts (after its address or the channel was fixed);
    the same idempotency key goes out again. True if it was dead."""
    at = _aware(now)
    stmt = (update(deliveries_t)
            .where(deliveries_t.c.id == delivery_id, deliveries_t.c.status == DEAD,
                   deliveries_t.c.channel != NONE)
            .values(status=PENDING, attempts=0, next_attempt_at=at, lease_until=None,
                    claimed_by=None, updated_at=at))
    with _write(engine) as conn, conn.begin():
        return conn.execute(stmt).rowcount == 1


# --- the worker ------------------------------------------------------------------------------


@dataclass
class RunResult:
    expanded: int = 0  # outbox rows turned into copies
    unresolved: int = 0  # outbox rows left for later: their plan has no directory yet
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0  # copies another worker claimed first

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def default_transports(env: Mapping[str, str] | None = None) -> dict[str, Transport]:
    return {EMAIL: SmtpTransport(SmtpConfig.from_env(env)), WEBHOOK: WebhookTransport(env)}


# Builds the attachment of an e-mail from the notice row and the outbox body; replaceable.
AttachmentMaker = Callable[[Mapping[str, Any] | None, Mapping[str, Any]], Attachment | None]


def markdown_attachment(notice: Mapping[str, Any] | None,
                        body: Mapping[str, Any]) -> Attachment | None:
    """The 督办单 as rendered text (Markdown): what goes when its PDF cannot be made."""
    document = body.get("document") or (notice or {}).get("document")
    if not document:
        return None
    name = _file_stem(notice, body)
    return Attachment(f"{name}.md", str(document).encode("utf-8"), "text/markdown")


def pdf_attachment(engine: Engine) -> AttachmentMaker:
    """The 督办单 as its A4 PDF (activities/notice_pdf.py), built from the notice's row and its
    task's record; the same notice gives the same bytes, so a retried e-mail carries an
    identical file. Without a record or a Chinese font, the Markdown goes instead (the copy
    is not held back for want of a font)."""
    from activities.notice_document import load_notice_record
    from activities.notice_pdf import notice_pdf
    from infra.db.store import EventStore

    store = EventStore(engine)

    def make(notice: Mapping[str, Any] | None, body: Mapping[str, Any]) -> Attachment | None:
        if notice is None:
            return markdown_attachment(notice, body)
        try:
            content = notice_pdf(notice, load_notice_record(store, str(notice["task_id"])))
        except Exception as exc:  # noqa: BLE001 - the text still reaches the recipient
            log.warning("delivery.pdf_failed", task_id=notice.get("task_id"),
                        step_key=notice.get("step_key"), error=repr(exc))
            return markdown_attachment(notice, body)
        return Attachment(f"{_file_stem(notice, body)}.pdf", content, "application/pdf")

    return make


def _file_stem(notice: Mapping[str, Any] | None, body: Mapping[str, Any]) -> str:
    if notice and notice.get("number") and notice.get("year"):
        return f"督办单〔{notice['year']}〕第{notice['number']}号"
    step = str(body.get("step") or (notice or {}).get("step") or "notice")
    return f"督办单-{step}"


class DeliveryWorker:
    """Expands, claims and sends; one instance per process (its id marks its claims)."""

    def __init__(self, engine: Engine, *, transports: Mapping[str, Transport] | None = None,
                 policy: DeliveryPolicy | None = None, plans: Sequence[str] | None = None,
                 attachment: AttachmentMaker | None = None,
                 worker_id: str | None = None) -> None:
        self.engine = engine
        self.transports = dict(transports) if transports is not None else default_transports()
        self.policy = policy or DeliveryPolicy()
        self.plans = tuple(plans) if plans else None
        self.attachment = attachment if attachment is not None else pdf_attachment(engine)
        self._warned: set[str] = set()  # plans without a directory, said once
        self.worker_id = worker_id or (
            f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}")

    # -- one pass --

    def run_once(self, now: dt.datetime) -> RunResult:
        """Expand new outbox rows, then send every copy due at `now` (one pass)."""
        at = _aware(now)
        result = RunResult()
        self.expand(at, result)
        for copy in self._due(at):
            self._attempt(copy, at, result)
        return result

    def run_forever(self, stop: threading.Event, *, interval: float = 5.0,
                    clock: Callable[[], dt.datetime] | None = None) -> None:
        """Passes every `interval` seconds until `stop` is set. A pass that fails (the database
        away) is logged and the next one tries again."""
        tick = clock or (lambda: dt.datetime.now(dt.UTC))
        while not stop.is_set():
            try:
                result = self.run_once(tick())
                counts = result.as_dict()
                if any(v for k, v in counts.items() if k != "unresolved"):  # not every 5 s
                    log.info("delivery.pass", **counts)
            except Exception as exc:  # noqa: BLE001 - keep serving; the next pass retries
                log.error("delivery.pass_failed", error=repr(exc))
            stop.wait(interval)

    # -- expansion --

    def expand(self, now: dt.datetime, result: RunResult | None = None) -> int:
        """Turn outbox rows that have no copies yet into copies. Idempotent (unique copies).

        Only rows of plans whose directory is stored are taken, so rows of a plan loaded before
        there were directories wait without holding up the others. Only open rows (outbox
        `delivered_at` null, an index) are looked at: a delivered row has its copies."""
        result = result or RunResult()
        o = outbox_t.c
        waiting = and_(o.delivered_at.is_(None),
                       ~exists().where(deliveries_t.c.outbox_id == o.id))
        if self.plans is not None:
            waiting = and_(waiting, _of_plans(self.plans))
        with self.engine.connect() as conn:
            known = sorted(set(conn.execute(select(directory_t.c.plan_code).distinct()).scalars()))
            if self.plans is not None:
                known = [p for p in known if p in self.plans]
            rows = [dict(r) for r in conn.execute(
                select(outbox_t).where(waiting, _of_plans(known))
                .order_by(o.id).limit(self.policy.batch)).mappings()] if known else []
            unknown = waiting if not known else and_(waiting, ~_of_plans(known))
            stray = list(conn.execute(select(o.task_id).where(unknown).limit(1000)).scalars())
            result.unresolved += len(stray)
            plans_without = {_plan_of(t) for t in stray}
            books = {plan: read_directory(conn, plan) for plan in {_plan_of(r["task_id"])
                                                                  for r in rows}}
            leads: dict[str, str | None] = {}
            planned: list[tuple[Mapping[str, Any], list[dict[str, Any]]]] = []
            for row in rows:
                if row["task_id"] not in leads:
                    leads[row["task_id"]] = conn.execute(
                        select(tasks_t.c.lead_unit).where(tasks_t.c.task_id == row["task_id"])
                    ).scalar()
                planned.append((row, self._copies(row, books[_plan_of(row["task_id"])],
                                                  leads[row["task_id"]], now)))
        for plan in sorted(plans_without - self._warned):
            self._warned.add(plan)
            log.warning("delivery.no_directory", plan=plan,
                        hint="load the plan again (starter.py plan load) to store its 通讯录")
        for source, copies in planned:
            with _write(self.engine) as conn, conn.begin():
                stmt = _insert(self.engine, deliveries_t).on_conflict_do_nothing(
                    index_elements=["outbox_id", "channel", "address"])
                conn.execute(stmt, copies)
                self._close_outbox_if_done(conn, source["id"], now)
            result.expanded += 1
            result.dead += sum(c["status"] == DEAD for c in copies)
        return result.expanded

    def _copies(self, row: Mapping[str, Any], book: Book, lead_unit: str | None,
                now: dt.datetime) -> list[dict[str, Any]]:
        addresses, problem = resolve_recipient(book, row["recipient"], lead_unit=lead_unit)
        base = {"outbox_id": row["id"], "plan_code": _plan_of(row["task_id"]),
                "task_id": row["task_id"], "step_key": row["step_key"],
                "recipient": row["recipient"], "attempts": 0, "next_attempt_at": now,
                "created_at": now, "updated_at": now, "lease_until": None,
                "claimed_by": None, "last_error": None, "delivered_at": None}
        if not addresses:
            log.warning("delivery.no_address", task_id=row["task_id"], step_key=row["step_key"],
                        recipient=row["recipient"], problem=problem)
            return [{**base, "channel": NONE, "address": row["recipient"], "secret_env": None,
                     "idempotency_key": idempotency_key(row["task_id"], row["step_key"],
                                                        row["recipient"], NONE, ""),
                     "status": DEAD, "last_error": problem or "no address"}]
        out = []
        for a in addresses:
            inbox = a.channel == INBOX
            out.append({**base, "channel": a.channel, "address": a.address,
                        "secret_env": a.secret_env,
                        "idempotency_key": idempotency_key(row["task_id"], row["step_key"],
                                                           row["recipient"], a.channel,
                                                           a.address),
                        # The inbox is the web app's view of the notices table: nothing to send.
                        "status": DELIVERED if inbox else PENDING,
                        "delivered_at": now if inbox else None})
        return out

    def _close_outbox_if_done(self, conn: Connection, outbox_id: int, now: dt.datetime) -> None:
        """outbox.delivered_at: set once every copy of the row is delivered."""
        undelivered = exists().where(deliveries_t.c.outbox_id == outbox_id,
                                     deliveries_t.c.status != DELIVERED)
        conn.execute(update(outbox_t)
                     .where(outbox_t.c.id == outbox_id, outbox_t.c.delivered_at.is_(None),
                            ~undelivered)
                     .values(delivered_at=now))

    # -- claiming and sending --

    def _due(self, now: dt.datetime) -> list[dict[str, Any]]:
        c = deliveries_t.c
        stmt = (select(deliveries_t)
                .where(or_(and_(c.status.in_((PENDING, FAILED)), c.next_attempt_at <= now),
                           and_(c.status == ATTEMPTING, c.lease_until < now)))
                .order_by(c.next_attempt_at, c.id).limit(self.policy.batch))
        if self.plans is not None:
            stmt = stmt.where(c.plan_code.in_(self.plans))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def claim(self, copy: Mapping[str, Any], now: dt.datetime) -> bool:
        """Compare-and-set: the copy becomes this worker's attempt if its status and attempts
        are still those read; committed before anything is sent ("attempting", with the key)."""
        c = deliveries_t.c
        stmt = (update(deliveries_t)
                .where(c.id == copy["id"], c.status == copy["status"],
                       c.attempts == copy["attempts"])
                .values(status=ATTEMPTING, attempts=copy["attempts"] + 1,
                        lease_until=now + self.policy.lease, claimed_by=self.worker_id,
                        updated_at=now))
        with _write(self.engine) as conn, conn.begin():
            return conn.execute(stmt).rowcount == 1

    def _attempt(self, copy: dict[str, Any], now: dt.datetime, result: RunResult) -> None:
        lost = copy["status"] == ATTEMPTING  # its worker died (or hung) past the lease
        if lost and copy["attempts"] >= self.policy.max_attempts:
            error = (f"the worker sending attempt {copy['attempts']} was lost; it may have "
                     "arrived (receivers dedupe on the key)")
            if self._finish(copy, copy["attempts"], DEAD, now, holder=copy["claimed_by"],
                            error=error):
                result.dead += 1
            return
        if not self.claim(copy, now):
            result.skipped += 1
            return
        attempt = copy["attempts"] + 1
        if lost:
            log.warning("delivery.lease_expired", delivery_id=copy["id"],
                        key=copy["idempotency_key"], previous=copy["claimed_by"])
        transport = self.transports.get(copy["channel"])
        try:
            if transport is None:
                raise DeliveryError(f"no transport for channel {copy['channel']!r}")
            transport.send(self._outgoing(copy), now=now)
        except Exception as exc:  # noqa: BLE001 - a bug in one copy must not stop the others
            failure = exc if isinstance(exc, DeliveryError) else DeliveryError(
                f"unexpected: {exc!r}")
            if failure is not exc:
                log.exception("delivery.error", delivery_id=copy["id"])
            dead = failure.permanent or attempt >= self.policy.max_attempts
            self._finish(copy, attempt, DEAD if dead else FAILED, now, holder=self.worker_id,
                         error=str(failure),
                         retry_at=None if dead else now + self.policy.backoff(attempt))
            log.warning("delivery.failed", delivery_id=copy["id"], channel=copy["channel"],
                        task_id=copy["task_id"], step_key=copy["step_key"], attempt=attempt,
                        dead=dead, permanent=failure.permanent, error=str(failure))
            if dead:
                result.dead += 1
            else:
                result.failed += 1
            return
        if self._finish(copy, attempt, DELIVERED, now, holder=self.worker_id):
            result.delivered += 1
            log.info("delivery.delivered", delivery_id=copy["id"], channel=copy["channel"],
                     task_id=copy["task_id"], step_key=copy["step_key"],
                     recipient=copy["recipient"], attempt=attempt, key=copy["idempotency_key"])

    def _finish(self, copy: Mapping[str, Any], attempt: int, status: str, now: dt.datetime, *,
                holder: str | None, error: str | None = None,
                retry_at: dt.datetime | None = None) -> bool:
        """Record an attempt's outcome, fenced: only while the copy is still attempt number
        `attempt` held by `holder` (a worker whose lease was taken over records nothing)."""
        c = deliveries_t.c
        values: dict[str, Any] = {"status": status, "lease_until": None, "updated_at": now}
        if status == DELIVERED:
            values.update(delivered_at=now, last_error=None)
        else:
            values["last_error"] = (error or "")[:_ERROR_MAX]
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        stmt = (update(deliveries_t)
                .where(c.id == copy["id"], c.status == ATTEMPTING, c.attempts == attempt,
                       c.claimed_by == holder if holder is not None else c.claimed_by.is_(None))
                .values(**values))
        with _write(self.engine) as conn, conn.begin():
            done = conn.execute(stmt).rowcount == 1
            if done and status == DELIVERED:
                self._close_outbox_if_done(conn, copy["outbox_id"], now)
        if not done:
            log.warning("delivery.fenced", delivery_id=copy["id"], status=status,
                        hint="the lease was taken over; the other worker records this copy")
        return done

    def _outgoing(self, copy: Mapping[str, Any]) -> Outgoing:
        with self.engine.connect() as conn:
            outbox = conn.execute(select(outbox_t).where(outbox_t.c.id == copy["outbox_id"])
                                  ).mappings().first()
            notice = conn.execute(select(notices_t).where(
                notices_t.c.task_id == copy["task_id"],
                notices_t.c.step_key == copy["step_key"])).mappings().first()
        if outbox is None:
            raise DeliveryError(f"outbox row {copy['outbox_id']} is gone", permanent=True)
        body: Mapping[str, Any] = outbox["body"] or {}
        notice_row = dict(notice) if notice is not None else None
        number = _number(notice_row)
        subject = str(outbox["subject"])
        if number and number not in subject:
            subject = f"{number} {subject}"
        meta = {"task_id": copy["task_id"], "step_key": copy["step_key"],
                "recipient": copy["recipient"], "number": number,
                **{k: body.get(k) for k in ("title", "ladder", "step", "level", "action")},
                "reply_by": (notice_row["reply_by"].isoformat()
                             if notice_row and notice_row.get("reply_by") else None)}
        return Outgoing(
            key=copy["idempotency_key"], channel=copy["channel"], address=copy["address"],
            subject=subject, text=str(body.get("document") or subject),
            secret_env=copy["secret_env"],
            attachment=self.attachment(notice_row, body) if copy["channel"] == EMAIL else None,
            meta=meta)


def _number(notice: Mapping[str, Any] | None) -> str | None:
    """〔2026〕第15号, when the notice has been numbered (migration 0005)."""
    if notice and notice.get("number") and notice.get("year"):
        return f"〔{notice['year']}〕第{notice['number']}号"
    return None

