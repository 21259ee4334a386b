"""SQLAlchemy models of the store; portable between SQLite (default) and PostgreSQL.

`events` is the record (append-only, hash-chained); `tasks`, `inspections` and `findings` are
read models rebuilt from it at will; `notices` and `outbox` make side effects at-most-once;
`archives` keeps engine histories beyond Temporal's retention. `people` is the roster read model
(written when a plan is loaded); `credentials`, `sign_ins` and `web_sessions` are the web app's
sign-in state (only hashes of passwords and session tokens are stored). `directory` is each
plan's 通讯录 (delivery addresses) and `deliveries` the copies the delivery worker sends.

The migration in migrations/versions must match these models (a test compares them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones: SQLAlchemy would store an aware value's wall-clock digits and
    drop the offset, so values are converted to UTC first and marked UTC again when read.
    Naive values are refused rather than guessed (deadlines are legal facts). ISO strings are
    accepted because read models are often built from JSON-mode dumps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} (a time zone is required)")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        moment: dt.datetime = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is None:  # SQLite hands back the UTC wall clock, naive
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


# Deterministic constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class EventRow(Base):
    """One domain event. `payload` is the event exactly as the domain produced it, stored as
    its canonical JSON text; the other columns are copies for querying and are checked
    against the payload by `EventStore.verify`. Never updated or deleted."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("task_id", "seq", name="uq_events_task_seq"),
        # A page of the Gantt view reads a few event types of its tasks (migration 0004).
        Index("ix_events_task_type", "task_id", "type"),
        # With the unique key this makes every possible edit of `seq` visible as a break at
        # that event's own position (values below 1 would sort before seq 1).
        CheckConstraint("seq >= 1", name="seq_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(200), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(100))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    schema_version: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TaskRow(Base):
    """Read model: one row per task (task × responsible unit), for the board."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_plan_light", "plan_code", "light"),
        Index("ix_tasks_unit_plan", "unit_code", "plan_code"),  # was ix_tasks_unit (0004)
        Index("ix_tasks_light", "light"),
        Index("ix_tasks_status", "status"),
        Index("ix_tasks_plan_township", "plan_code", "township"),
        # The board (migration 0004): covering indexes for its per-township, per-unit and
        # per-task counts, index-ordered pages (urgency segments, the overdue list), and with
        # ix_tasks_unit_plan the two sides of a unit member's visibility.
        Index("ix_tasks_plan_town_unit", "plan_code", "township", "unit_code", "light",
              "status", "level"),
        Index("ix_tasks_plan_task", "plan_code", "task_code", "light", "status", "level"),
        Index("ix_tasks_plan_urgency", "plan_code", "light", "level", "next_due_at", "task_id"),
        Index("ix_tasks_plan_due", "plan_code", "next_due_at", "task_id"),
        Index("ix_tasks_lead_unit", "lead_unit", "plan_code"),
    )

    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    plan_code: Mapped[str] = mapped_column(String(100))
    task_code: Mapped[str] = mapped_column(String(100))
    unit_code: Mapped[str] = mapped_column(String(100))
    parent_unit: Mapped[str | None] = mapped_column(String(100))
    unit_name: Mapped[str | None] = mapped_column(Text)
    township: Mapped[str | None] = mapped_column(String(100))
    township_name: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    lead_unit: Mapped[str | None] = mapped_column(String(100))
    ladder: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(40))
    light: Mapped[str] = mapped_column(String(10))
    level: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    open_findings: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # 督办单 that missed their 反馈时限 (migration 0005; rows written before read 0).
    missed_replies: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class InspectionRow(Base):
    """Read model: 四不两直 visits recorded on a task."""

    __tablename__ = "inspections"

    inspection_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    inspector: Mapped[str] = mapped_column(String(200))
    visited_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    place: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(40))
    nodes: Mapped[list[Any]] = mapped_column(JSON)
    findings_count: Mapped[int] = mapped_column(Integer, default=0)


class FindingRow(Base):
    """Read model: findings (问题清单) and their rectification state."""

    __tablename__ = "findings"

    finding_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    inspection_id: Mapped[str | None] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(40))
    deadline: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    evidence: Mapped[list[Any]] = mapped_column(JSON)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class NoticeRow(Base):
    """A 督办单 issued. Unique (task_id, step_key): a notice exists at most once per step.

    A 督办单 (action "notice") is numbered per plan and local year of its rung, 〔2026〕第15号,
    when first recorded (migration 0005); reminders and rows recorded before have no number.
    `signed_at`/`signed_by`: 签收 by the responsible unit; `reply_missed_at`: when it was found
    neither signed for nor answered by its 反馈时限."""

    __tablename__ = "notices"
    __table_args__ = (
        UniqueConstraint("task_id", "step_key", name="uq_notices_task_step"),
        UniqueConstraint("plan_code", "year", "number", name="uq_notices_plan_year_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(200))
    step_key: Mapped[str] = mapped_column(String(200))
    node: Mapped[str | None] = mapped_column(String(100))
    ladder: Mapped[str] = mapped_column(String(100))
    step: Mapped[str] = mapped_column(String(100))
    level: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    document: Mapped[str] = mapped_column(Text)
    reply_by: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    plan_code: Mapped[str | None] = mapped_column(String(100))
    year: Mapped[int | None] = mapped_column(Integer)
    number: Mapped[int | None] = mapped_column(Integer)
    signed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    signed_by: Mapped[str | None] = mapped_column(String(200))
    reply_missed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class OutboxRow(Base):
    """A message to send. Unique per (task, step, channel, recipient): sent at most once."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint(
            "task_id", "step_key", "channel", "recipient", name="uq_outbox_task_step_to"
        ),
        # The delivery worker looks only at open rows (migration 0006).
        Index("ix_outbox_delivered_at", "delivered_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(200))
    step_key: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(50))
    recipient: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ArchiveRow(Base):
    """A workflow run's full engine history, kept after Temporal's retention deletes it.
    `history` is the exact JSON text (`temporal workflow show --output json`); `sha256` is over
    that text so the archive itself is tamper-evident."""

    __tablename__ = "archives"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(200), index=True)
    workflow_id: Mapped[str] = mapped_column(String(300))
    run_id: Mapped[str] = mapped_column(String(100), unique=True)
    reason: Mapped[str] = mapped_column(String(40))
    history: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    event_count: Mapped[int] = mapped_column(Integer)
    archived_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PersonRow(Base):
    """Read model: the roster (名册) of each loaded plan, one row per (plan, actor). Rewritten
    whole for a plan when it is loaded; an actor may be on several plans."""

    __tablename__ = "people"
    __table_args__ = (Index("ix_people_actor", "actor"),)

    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    actor: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    unit: Mapped[str] = mapped_column(String(100))
    unit_name: Mapped[str] = mapped_column(Text)
    roles: Mapped[list[Any]] = mapped_column(JSON)
    loaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CredentialRow(Base):
    """A sign-in password issued to an actor: only its Argon2id hash (salted) is kept. At most
    one is live per actor; issuing a new one revokes the earlier."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    issued_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class SignInRow(Base):
    """Every sign-in attempt, successful or not; also what throttling counts (per actor and
    per remote address, hence the two indexes)."""

    __tablename__ = "sign_ins"
    __table_args__ = (
        Index("ix_sign_ins_actor_at", "actor", "at"),
        Index("ix_sign_ins_remote_at", "remote", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)
    remote: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(40))


class WebSessionRow(Base):
    """A signed-in browser session. Keyed by the SHA-256 of the cookie's token, so that the
    table alone cannot be replayed as cookies."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    credential_id: Mapped[int] = mapped_column(Integer)
    csrf: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class DirectoryRow(Base):
    """Read model: the 通讯录 of each loaded plan (migration 0006), one row per unit and per
    roster member, with their delivery addresses and (members) unit and roles; rewritten whole
    for a plan when it is loaded, before its tasks start, so the delivery worker can resolve a
    notice's recipients ("t02:unit_head", "leader") without the task's recorded spec."""

    __tablename__ = "directory"

    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)  # "unit" | "member"
    code: Mapped[str] = mapped_column(String(200), primary_key=True)  # unit code or actor
    unit: Mapped[str] = mapped_column(String(100))  # the unit itself, or the member's unit
    name: Mapped[str] = mapped_column(Text)
    roles: Mapped[list[Any]] = mapped_column(JSON)
    emails: Mapped[list[Any]] = mapped_column(JSON)
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_secret_env: Mapped[str | None] = mapped_column(String(100))
    loaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class DeliveryRow(Base):
    """One copy of an outbox message to one address (migration 0006): outbox row × channel ×
    address. `idempotency_key` is stable per copy and goes out with every attempt (e-mail
    Message-ID, webhook Idempotency-Key), so a repeated attempt is recognised by the receiver.
    Status: pending → attempting (claimed, `lease_until`) → delivered, or failed (retried at
    `next_attempt_at`), or dead (the dead-letter list) after the last attempt."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("outbox_id", "channel", "address", name="uq_deliveries_copy"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_deliveries_plan_status", "plan_code", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int] = mapped_column(Integer, index=True)
    plan_code: Mapped[str] = mapped_column(String(100))
    task_id: Mapped[str] = mapped_column(String(200))
    step_key: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(20))  # inbox | email | webhook | none
    address: Mapped[str] = mapped_column(Text)
    secret_env: Mapped[str | None] = mapped_column(String(100))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


metadata = Base.metadata
