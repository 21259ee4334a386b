"""送达: 督办单 from the outbox to real receivers — an SMTP server (aiosmtpd) and an HTTP server
— with retries, idempotency keys, dead letters, and addresses checked at plan load.

Times are controlled through the worker's `now` argument: no test sleeps for a backoff or a
lease. Store tests run on SQLite and, with DUBAN_TEST_POSTGRES_URL, PostgreSQL (the shared
`store` fixture of tests/fixtures_db.py). Receivers dedupe the way real ones are asked to: the mail sink on Message-ID, the
webhook sink on Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from openpyxl import load_workbook
from sqlalchemy import select, update
from temporalio.testing import WorkflowEnvironment

from activities.notice_document import load_notice_record
from activities.notice_pdf import notice_pdf
from domain.plan import Addresses, Directory, Plan, resolve_plan
from infra.channels import (
    DeliveryError,
    Outgoing,
    SmtpConfig,
    SmtpTransport,
    WebhookTransport,
    verify_webhook,
)
from infra.db.store import EventStore, open_store
from infra.temporal.devserver import free_port
from planfiles import PlanReadError, load_plan, read_plan, write_plan
from service.delivery import (
    DeliveryPolicy,
    DeliveryWorker,
    dead_letters,
    deliveries_t,
    delivery_counts,
    list_deliveries,
    read_directory,
    requeue,
    resolve_recipient,
    store_directory,
)
from tests.conftest import WORKFLOW_QUEUE
from tests.scenario import ROSTER, UNITS, ladders, make_spec
from tests.waiting import until
from workflows.inputs import KeyTaskInput
from workflows.keytask import WORKFLOW_NAME
from workflows.search import initial_search_attributes

T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)  # 09:00 in Shanghai
SECRET = "s3cr3t-robot-key"
SENDER = "区委督查室 <duban@qu.example.cn>"
UNIT_MAIL = "v01@cun.example.cn"
HEAD_MAIL = "li.shuji@cun.example.cn"
LEADER_MAIL = "wu.shuji@qu.example.cn"
TASK = "dl/T1/v01"


# --- receivers -------------------------------------------------------------------------------


class MailSink:
    """An SMTP server's handler that keeps every message and dedupes on Message-ID."""

    def __init__(self) -> None:
        self.received: list[EmailMessage] = []
        self.by_id: dict[str, EmailMessage] = {}
        self.before_accept: Any = None  # called with the message, before it is kept

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        if self.before_accept is not None:
            self.before_accept(msg)
        self.received.append(msg)
        self.by_id.setdefault(str(msg["Message-ID"]), msg)
        return "250 OK"


@pytest.fixture
def mail() -> Iterator[tuple[MailSink, int]]:
    sink = MailSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


class HookSink:
    """A webhook receiver: answers `fail_with` to the first `failures` requests (all of them if
    None), then verifies the signature and keeps the body per Idempotency-Key."""

    def __init__(self, failures: int | None = 0, fail_with: int = 503) -> None:
        self.failures = failures
        self.fail_with = fail_with
        self.requests: list[dict[str, Any]] = []
        self.accepted: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append({"headers": headers, "body": body})
            if self.failures is None or len(self.requests) <= self.failures:
                return self.fail_with
            # Checked independently of infra.channels: HMAC-SHA256 of "timestamp\nbody".
            timestamp = headers["X-Duban-Timestamp"]
            expected = base64.b64encode(hmac.new(
                SECRET.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256).digest())
            if not hmac.compare_digest(expected.decode(), headers["X-Duban-Signature"]):
                return 401
            self.accepted.setdefault(headers["Idempotency-Key"], json.loads(body))
            return 200


@pytest.fixture
def hooks() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(sink: HookSink) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = sink.answer(dict(self.headers.items()), body)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/robot/send?access_token=t"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


# --- set-up ----------------------------------------------------------------------------------


def plan_with(code: str, *, unit: Addresses | None = None,
              members: dict[str, Addresses] | None = None) -> Plan:
    return Plan(code=code, title="送达测试", start=dt.date(2026, 3, 1), units=UNITS,
                roster=ROSTER, tasks=(),
                directory=Directory(units={"v01": unit} if unit else {},
                                    members=members or {}))


def queue(store: EventStore, recipient: str, *, step: str = "order",
          task_id: str = TASK) -> None:
    store.record_notice(task_id, f"N1:{step}", ladder="deadline-lights", step=step, level=2,
                        title="督办单：两委增补（东城镇一村）", document="# 督办单\n\n限期完成。")
    store.add_outbox(task_id, f"N1:{step}", "outbox", recipient, "督办单：两委增补（东城镇一村）",
                     {"title": "督办单", "level": 2, "ladder": "deadline-lights", "step": step,
                      "action": "notice", "document": "# 督办单\n\n限期完成。"})


def smtp(port: int) -> SmtpTransport:
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, sender=SENDER, timeout=10))


def copies(store: EventStore, channel: str | None = None) -> list[dict[str, Any]]:
    rows = list_deliveries(store.engine)
    return [r for r in rows if channel is None or r["channel"] == channel]


# --- the time-skipping server: a rung's 督办单 by e-mail -----------------------------------------


async def test_a_rung_fired_on_the_time_skipping_server_arrives_by_email_with_the_notice(
        ts_env: WorkflowEnvironment, worker: None, wf_store: EventStore,
        mail: tuple[MailSink, int]) -> None:
    sink, port = mail
    now = await ts_env.get_current_time()
    code = f"dl{uuid.uuid4().hex[:8]}"
    spec = make_spec(now, plan_code=code, due_days=(1,), progress=(100,))
    # The directory is stored before the task starts, as `plan load` does.
    store_directory(wf_store.engine, plan_with(
        code, unit=Addresses(email=(UNIT_MAIL,)),
        members={"unit.head": Addresses(email=(HEAD_MAIL,))}), now=now)
    handle = await ts_env.client.start_workflow(
        WORKFLOW_NAME, KeyTaskInput(spec=spec), id=spec.task_id, task_queue=WORKFLOW_QUEUE,
        search_attributes=initial_search_attributes(spec))
    try:
        steps = {s.code: s for s in spec.ladders[spec.ladder].steps}
        order_at = steps["order"].after.after(spec.nodes[0].due, spec.timezone)[0]
        await ts_env.sleep(order_at - await ts_env.get_current_time() + dt.timedelta(hours=1))
        fired = [e for e in await handle.query("events") if e["type"] == "EscalationFired"]
        assert [e["step"] for e in fired] == ["remind", "order"]
        order_key = fired[1]["step_key"]
        # The rung's record_batch activity writes the outbox rows: wait for the record.
        await until(lambda: {(o["step_key"], o["recipient"]) for o in wf_store.list_outbox()
                             if o["task_id"] == spec.task_id}
                    >= {(order_key, "v01:unit"), (order_key, "v01:unit_head")},
                    "the order rung's outbox rows")

        delivery = DeliveryWorker(wf_store.engine, transports={"email": smtp(port)},
                                  plans=[code])
        result = await asyncio.to_thread(delivery.run_once, dt.datetime.now(dt.UTC))
    finally:
        await handle.terminate("test over")
    assert result.failed == result.dead == 0 and result.delivered == 3  # remind 1, order 2
    orders = [m for m in sink.by_id.values() if m["X-Duban-Step"] == order_key]
    assert sorted(str(m["To"]) for m in orders) == sorted([UNIT_MAIL, HEAD_MAIL])
    notice = next(n for n in wf_store.list_notices(spec.task_id) if n["step_key"] == order_key)
    for m in orders:
        assert "督办单" in str(m["Subject"]) and m["X-Duban-Task"] == spec.task_id
        assert str(m["From"]) == SENDER
        key = m["X-Duban-Idempotency-Key"]
        assert m["Message-ID"] == f"<{key}@qu.example.cn>"
        attachments = list(m.iter_attachments())
        assert len(attachments) == 1
        filename = attachments[0].get_filename()
        assert filename is not None and filename.startswith("督办单")
        # The 督办单 itself, as its A4 PDF (numbered: 〔year〕第n号 in the file's name).
        assert attachments[0].get_content_type() == "application/pdf"
        assert filename == f"督办单〔{notice['year']}〕第{notice['number']}号.pdf"
        pdf = attachments[0].get_content()
        assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF")
        assert pdf == notice_pdf(notice, load_notice_record(wf_store, spec.task_id))
    # Each copy recorded as delivered, and the outbox rows closed with them.
    mine = [c for c in copies(wf_store) if c["task_id"] == spec.task_id]
    assert {c["status"] for c in mine} == {"delivered"}
    assert {c["channel"] for c in mine} == {"email", "inbox"}
    assert not [o for o in wf_store.list_outbox() if o["task_id"] == spec.task_id]


# --- webhooks --------------------------------------------------------------------------------


def test_a_webhook_is_signed_and_the_receiver_verifies_it(store: EventStore, hooks: Any) -> None:
    sink = HookSink()
    url = hooks(sink)
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        webhook=url, webhook_secret_env="DUBAN_HOOK_V01")), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine, transports={
        "webhook": WebhookTransport(env={"DUBAN_HOOK_V01": SECRET})})
    assert worker.run_once(T0).delivered == 1
    assert len(sink.requests) == 1 and len(sink.accepted) == 1
    request = sink.requests[0]
    headers, body = request["headers"], request["body"]
    assert headers["X-Duban-Timestamp"] == str(int(T0.timestamp() * 1000))
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert verify_webhook(SECRET, headers, body, now=T0)
    assert not verify_webhook("another secret", headers, body, now=T0)
    assert not verify_webhook(SECRET, headers, body + b" ", now=T0)  # body changed
    assert not verify_webhook(SECRET, headers, body, now=T0 + dt.timedelta(minutes=6))  # replay
    payload = json.loads(body)
    [copy] = copies(store, "webhook")
    assert headers["Idempotency-Key"] == payload["idempotency_key"] == copy["idempotency_key"]
    assert payload["msgtype"] == "markdown"
    assert payload["markdown"]["text"] == "# 督办单\n\n限期完成。"
    assert payload["notice"]["task_id"] == TASK and payload["notice"]["recipient"] == "v01:unit"


def test_a_channel_failing_three_times_then_recovering_delivers_exactly_once(
        store: EventStore, hooks: Any) -> None:
    sink = HookSink(failures=3)
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        webhook=hooks(sink), webhook_secret_env="HOOK")), now=T0)
    queue(store, "v01:unit")
    policy = DeliveryPolicy(max_attempts=5, base_delay=dt.timedelta(seconds=30))
    worker = DeliveryWorker(store.engine, policy=policy,
                            transports={"webhook": WebhookTransport(env={"HOOK": SECRET})})
    now = T0
    for attempt, wait in ((1, 30), (2, 60), (3, 120)):
        result = worker.run_once(now)
        assert result.failed == 1 and result.delivered == 0
        [copy] = copies(store, "webhook")
        assert copy["status"] == "failed" and copy["attempts"] == attempt
        assert copy["last_error"] == "webhook answered HTTP 503 ok"
        assert copy["next_attempt_at"] == now + dt.timedelta(seconds=wait)  # 30 s × 2^(n-1)
        # Not due before its backoff has passed.
        assert worker.run_once(now + dt.timedelta(seconds=wait - 1)).as_dict() == \
            dict.fromkeys(result.as_dict(), 0)
        now += dt.timedelta(seconds=wait)
    assert worker.run_once(now).delivered == 1
    for later in (now + dt.timedelta(hours=1), now + dt.timedelta(days=3)):
        assert worker.run_once(later).delivered == 0
    assert len(sink.requests) == 4
    assert len(sink.accepted) == 1  # one message, whatever the receiver saw before
    [copy] = copies(store, "webhook")
    assert (copy["status"], copy["attempts"], copy["last_error"]) == ("delivered", 4, None)
    assert len({r["headers"]["Idempotency-Key"] for r in sink.requests}) == 1
    assert store.list_outbox() == []  # every copy delivered: the outbox row is closed


def test_a_channel_that_never_recovers_ends_in_the_dead_letters(store: EventStore,
                                                              hooks: Any) -> None:
    sink = HookSink(failures=None)
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        webhook=hooks(sink), webhook_secret_env="HOOK")), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine, policy=DeliveryPolicy(max_attempts=5),
                            transports={"webhook": WebhookTransport(env={"HOOK": SECRET})})
    now, outcomes = T0, []
    for _ in range(8):
        r = worker.run_once(now)
        outcomes.append((r.failed, r.dead))
        now += dt.timedelta(hours=2)  # past any backoff
    assert outcomes == [(1, 0)] * 4 + [(0, 1)] + [(0, 0)] * 3
    assert len(sink.requests) == 5
    [dead] = dead_letters(store.engine)
    assert dead["channel"] == "webhook" and dead["attempts"] == 5
    assert dead["last_error"] == "webhook answered HTTP 503 ok"
    assert delivery_counts(store.engine) == {"pending": 0, "attempting": 0, "delivered": 1,
                                             "failed": 0, "dead": 1}  # + the inbox copy
    assert delivery_counts(store.engine, plan_code="other")["dead"] == 0
    assert len(store.list_outbox()) == 1  # not delivered everywhere: still open
    # Once the receiver is mended, an operator requeues it: the same key goes out again.
    sink.failures = 0
    assert requeue(store.engine, dead["id"], now=now) is True
    assert requeue(store.engine, dead["id"], now=now) is False
    assert worker.run_once(now).delivered == 1
    assert list(sink.accepted) == [dead["idempotency_key"]]
    assert dead_letters(store.engine) == []


def test_an_address_refusing_for_good_is_dead_at_once(store: EventStore, hooks: Any) -> None:
    sink = HookSink(failures=None, fail_with=404)
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        webhook=hooks(sink), webhook_secret_env="HOOK")), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine,
                            transports={"webhook": WebhookTransport(env={"HOOK": SECRET})})
    assert worker.run_once(T0).dead == 1
    assert len(sink.requests) == 1
    [dead] = dead_letters(store.engine)
    assert dead["attempts"] == 1 and "HTTP 404" in dead["last_error"]


def test_a_webhook_without_its_secret_is_not_sent(store: EventStore, hooks: Any) -> None:
    sink = HookSink()
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        webhook=hooks(sink), webhook_secret_env="HOOK")), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine, transports={"webhook": WebhookTransport(env={})})
    assert worker.run_once(T0).failed == 1
    assert sink.requests == []
    assert "HOOK" in copies(store, "webhook")[0]["last_error"]


# --- a worker killed between sending and recording ---------------------------------------------


class Killed(BaseException):
    """The process dying: not an Exception, so nothing in the worker catches it."""


class DyingAfterSend:
    """Sends for real, then "dies" before the worker can record the send."""

    channel = "email"

    def __init__(self, real: SmtpTransport) -> None:
        self.real = real

    def send(self, message: Outgoing, *, now: dt.datetime) -> None:
        self.real.send(message, now=now)
        raise Killed


def test_a_worker_killed_between_sending_and_recording_does_not_deliver_twice(
        store: EventStore, mail: tuple[MailSink, int]) -> None:
    sink, port = mail
    store_directory(store.engine, plan_with("dl", unit=Addresses(email=(UNIT_MAIL,))), now=T0)
    queue(store, "v01:unit")
    seen: list[dict[str, Any]] = []

    def attempting_mark_is_recorded(msg: EmailMessage) -> None:
        # At the moment the message arrives, the store already says who is attempting it,
        # with the key the message carries.
        [copy] = copies(store, "email")
        seen.append(copy)
        assert copy["status"] == "attempting"
        assert msg["X-Duban-Idempotency-Key"] == copy["idempotency_key"]

    sink.before_accept = attempting_mark_is_recorded
    policy = DeliveryPolicy(lease=dt.timedelta(minutes=5))
    first = DeliveryWorker(store.engine, policy=policy,
                           transports={"email": DyingAfterSend(smtp(port))}, worker_id="w1")
    with pytest.raises(Killed):
        first.run_once(T0)
    [copy] = copies(store, "email")
    assert (copy["status"], copy["attempts"], copy["claimed_by"]) == ("attempting", 1, "w1")
    # Restarted (or another worker): nothing is re-sent while the lease runs...
    second = DeliveryWorker(store.engine, policy=policy, transports={"email": smtp(port)},
                            worker_id="w2")
    assert second.run_once(T0 + dt.timedelta(minutes=4)).delivered == 0
    assert len(sink.received) == 1
    # ...and after it, the copy goes out again with the SAME key, which the receiver drops.
    assert second.run_once(T0 + dt.timedelta(minutes=6)).delivered == 1
    assert len(sink.received) == 2
    assert sink.received[0]["Message-ID"] == sink.received[1]["Message-ID"]
    assert len(sink.by_id) == 1  # one message for the mailbox
    # No task record to print the PDF from: the rendered text is attached instead.
    [attached] = list(sink.received[1].iter_attachments())
    assert attached.get_filename() == "督办单-order.md"
    assert attached.get_content().replace("\r\n", "\n").strip() == "# 督办单\n\n限期完成。"
    [copy] = copies(store, "email")
    assert (copy["status"], copy["attempts"], copy["claimed_by"]) == ("delivered", 2, "w2")
    # The first worker, had it lived on, could record nothing any more (fenced).
    assert first._finish(seen[0], 1, "failed", T0, holder="w1", error="late") is False


def test_two_workers_cannot_claim_the_same_copy(store: EventStore) -> None:
    store_directory(store.engine, plan_with("dl", unit=Addresses(email=(UNIT_MAIL,))), now=T0)
    queue(store, "v01:unit")
    a = DeliveryWorker(store.engine, transports={}, worker_id="a")
    b = DeliveryWorker(store.engine, transports={}, worker_id="b")
    a.expand(T0)
    [copy] = copies(store, "email")
    assert a.claim(copy, T0) is True
    assert b.claim(copy, T0) is False  # it read the same row, but the row has moved on
    [now_held] = copies(store, "email")
    assert (now_held["claimed_by"], now_held["attempts"]) == ("a", 1)
    # And a pass of b finds nothing due while a's lease runs.
    assert b.run_once(T0 + dt.timedelta(minutes=1)).as_dict() == {
        "expanded": 0, "unresolved": 0, "delivered": 0, "failed": 0, "dead": 0, "skipped": 0}


def test_claims_race_from_threads_and_each_copy_is_sent_once(store: EventStore) -> None:
    store_directory(store.engine, plan_with("dl", unit=Addresses(
        email=tuple(f"m{i}@cun.example.cn" for i in range(20)))), now=T0)
    queue(store, "v01:unit")
    sent: list[str] = []
    lock = threading.Lock()

    class Counting:
        channel = "email"

        def send(self, message: Outgoing, *, now: dt.datetime) -> None:
            with lock:
                sent.append(message.key)

    workers = [DeliveryWorker(store.engine, transports={"email": Counting()},
                              worker_id=f"w{i}") for i in range(4)]
    workers[0].expand(T0)
    barrier = threading.Barrier(len(workers))

    def run(w: DeliveryWorker) -> None:
        barrier.wait()
        w.run_once(T0)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sent) == 20 and len(set(sent)) == 20
    assert delivery_counts(store.engine)["delivered"] == 21  # 20 mailboxes + the inbox


# --- recipients ------------------------------------------------------------------------------


def test_recipients_resolve_through_the_directory(store: EventStore) -> None:
    store_directory(store.engine, plan_with(
        "dl", unit=Addresses(email=(UNIT_MAIL,)),
        members={"unit.head": Addresses(email=(HEAD_MAIL,), webhook="https://im.example.cn/h",
                                        webhook_secret_env="HOOK_HEAD"),
                 "leader": Addresses(email=(LEADER_MAIL,))}), now=T0)
    with store.engine.connect() as conn:
        book = read_directory(conn, "dl")
        empty = read_directory(conn, "nothing")
    assert empty.empty and not book.empty

    def of(recipient: str, **kw: Any) -> list[tuple[str, str]]:
        found, _ = resolve_recipient(book, recipient, **kw)
        return [(a.channel, a.address) for a in found]

    assert of("v01:unit") == [("inbox", "v01"), ("email", UNIT_MAIL)]
    assert of("v01:unit_head") == [("inbox", "v01"), ("email", HEAD_MAIL),
                                   ("webhook", "https://im.example.cn/h")]
    assert of("v02:unit") == [("inbox", "v02")]  # no addresses: the inbox still
    assert of("leader") == [("inbox", "office"), ("email", LEADER_MAIL)]
    assert of("supervisor") == [("inbox", "office")]
    assert of("lead", lead_unit="office") == [("inbox", "office")]
    assert of("discipline") == []
    assert resolve_recipient(book, "discipline")[1] == (
        "no one on the plan's roster holds the role 'discipline'")
    # A new plan load replaces the directory.
    store_directory(store.engine, plan_with("dl"), now=T0)
    with store.engine.connect() as conn:
        again = read_directory(conn, "dl")
    assert resolve_recipient(again, "v01:unit")[0][1:] == []


def test_the_outbox_expands_into_copies_once(store: EventStore) -> None:
    queue(store, "v01:unit", task_id="nodir/T1/v01")
    store_directory(store.engine, plan_with("dl", unit=Addresses(email=(UNIT_MAIL,))), now=T0)
    for recipient in ("v01:unit", "v01:unit_head", "discipline"):
        queue(store, recipient)
    worker = DeliveryWorker(store.engine, transports={})
    first = worker.expand(T0)
    assert first == 3 and worker.expand(T0) == 0  # rows with copies are not expanded again
    rows = {(c["recipient"], c["channel"]): c for c in copies(store)}
    assert set(rows) == {("v01:unit", "inbox"), ("v01:unit", "email"),
                         ("v01:unit_head", "inbox"), ("discipline", "none")}
    assert rows[("v01:unit", "inbox")]["status"] == "delivered"
    assert rows[("v01:unit", "email")]["status"] == "pending"
    assert rows[("discipline", "none")]["status"] == "dead"
    assert "discipline" in rows[("discipline", "none")]["last_error"]
    # The head has no address but the inbox: that outbox row is done; the plan without a
    # directory waits for one (its rows are left for a later pass).
    open_rows = {(o["task_id"], o["recipient"]) for o in store.list_outbox()}
    assert open_rows == {("nodir/T1/v01", "v01:unit"), (TASK, "v01:unit"), (TASK, "discipline")}
    assert worker.run_once(T0).unresolved == 1
    # Keys are stable per copy and distinct between copies.
    keys = [c["idempotency_key"] for c in copies(store)]
    assert len(set(keys)) == len(keys)


def test_rows_waiting_for_a_directory_do_not_hold_up_the_others(store: EventStore) -> None:
    for i in range(5):  # older rows of a plan loaded before it had a directory
        queue(store, "v01:unit", task_id=f"old/T{i}/v01")
    store_directory(store.engine, plan_with("dl", unit=Addresses(email=(UNIT_MAIL,))), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine, transports={}, policy=DeliveryPolicy(batch=2))
    result = worker.run_once(T0)
    assert (result.expanded, result.unresolved) == (1, 5)
    assert {c["task_id"] for c in copies(store)} == {TASK}


def test_an_unexpected_error_in_one_copy_does_not_stop_the_others(store: EventStore) -> None:
    store_directory(store.engine, plan_with(
        "dl", unit=Addresses(email=("a@cun.example.cn", "b@cun.example.cn"))), now=T0)
    queue(store, "v01:unit")

    class Flaky:
        channel = "email"

        def send(self, message: Outgoing, *, now: dt.datetime) -> None:
            if message.address.startswith("a@"):
                raise RuntimeError("bug")

    result = DeliveryWorker(store.engine, transports={"email": Flaky()}).run_once(T0)
    assert (result.failed, result.delivered) == (1, 1)


def test_smtp_not_configured_is_a_failure_to_retry() -> None:
    transport = SmtpTransport(SmtpConfig.from_env({}))
    msg = Outgoing(key="k", channel="email", address=UNIT_MAIL, subject="s", text="t")
    with pytest.raises(DeliveryError, match="DUBAN_SMTP_HOST") as info:
        transport.send(msg, now=T0)
    assert info.value.permanent is False
    assert SmtpConfig.from_env({"DUBAN_SMTP_PORT": "465"}).tls == "tls"
    assert SmtpConfig.from_env({"DUBAN_SMTP_FROM": SENDER}).domain == "qu.example.cn"


def test_policy_from_the_environment() -> None:
    p = DeliveryPolicy.from_env({"DUBAN_DELIVERY_MAX_ATTEMPTS": "3",
                                 "DUBAN_DELIVERY_BASE_DELAY": "10",
                                 "DUBAN_DELIVERY_MAX_DELAY": "60"})
    assert p.max_attempts == 3
    assert [p.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert DeliveryPolicy.from_env({}) == DeliveryPolicy()


# --- the board -------------------------------------------------------------------------------


def test_the_board_shows_dead_letters_to_the_office_only(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service import users
    from tests import board_seed as seed
    from web.app import create_app
    from web.context import WebContext

    st = open_store(f"sqlite:///{tmp_path / 'board.db'}")
    seed.seed(st)
    task = f"{seed.PLAN}/T1/c01"
    queue(st, "discipline", task_id=task)  # nobody in the seed plan holds it: a dead letter
    store_directory(st.engine, seed.plan(), now=T0)
    DeliveryWorker(st.engine, transports={}).run_once(T0)

    async def no_temporal() -> Any:
        raise AssertionError("not needed")

    def board(actor: str) -> str:
        app = create_app(WebContext(engine=st.engine, store=st, evidence_dir=tmp_path,
                                    connect=no_temporal, clock=lambda: seed.NOW))
        with TestClient(app) as client:
            password = users.issue(st.engine, actor, now=dt.datetime.now(dt.UTC),
                                   issued_by="test")
            client.post("/login", data={"actor": actor, "password": password, "next": "/"})
            return client.get("/").text

    assert 'data-stat="dead_letters">1<' in board("office.staff")
    assert 'data-stat="dead_letters">1<' in board("supervisor")
    assert "dead_letters" not in board("m.c01")
    st.engine.dispose()


# --- addresses in plan files -----------------------------------------------------------------

YAML_PLAN = """\
code: p1
title: 送达测试
timezone: Asia/Shanghai
start: 2026-03-01
units:
  - {code: office, name: 区委督查室, kind: office, email: duban@qu.example.cn}
  - {code: v01, name: 一村, kind: village, email: "v01@cun.example.cn, v01b@cun.example.cn",
     webhook: "https://oapi.example.cn/robot/send?access_token=abc",
     webhook_secret_env: DUBAN_HOOK_V01}
roster:
  - {actor: li.v01, name: 李书记, unit: v01, roles: [head], email: [li@cun.example.cn]}
  - {actor: wu, name: 吴书记, unit: office, roles: [leader]}
tasks:
  - code: T1
    title: 两委增补
    lead_unit: office
    responsible: [v01]
    nodes:
      - {code: N1, title: 完成, due: 2026-03-31, planned_progress: 100}
"""


def test_yaml_addresses_are_read_into_the_directory_and_written_back(tmp_path: Path) -> None:
    src = tmp_path / "plan.yaml"
    src.write_text(YAML_PLAN, encoding="utf-8")
    plan = load_plan(src)
    assert plan.directory.units["v01"] == Addresses(
        email=("v01@cun.example.cn", "v01b@cun.example.cn"),
        webhook="https://oapi.example.cn/robot/send?access_token=abc",
        webhook_secret_env="DUBAN_HOOK_V01")
    assert plan.directory.units["office"].email == ("duban@qu.example.cn",)
    assert plan.directory.members == {"li.v01": Addresses(email=("li@cun.example.cn",))}
    for suffix in ("yaml", "xlsx"):
        out = tmp_path / f"again.{suffix}"
        write_plan(plan, out)
        assert read_plan(out) == plan, suffix
    text = (tmp_path / "again.yaml").read_text(encoding="utf-8")
    assert "directory" not in text and "webhook_secret_env: DUBAN_HOOK_V01" in text
    # The addresses stay out of the task specs: the specs of the same plan without them are
    # identical, byte for byte.
    bare = plan.model_copy(update={"directory": Directory()})
    specs = resolve_plan(plan, ladders())
    assert [s.model_dump_json() for s in specs] == [
        s.model_dump_json() for s in resolve_plan(bare, ladders())]
    assert "cun.example.cn" not in specs[0].model_dump_json()


def test_bad_addresses_in_yaml_are_all_reported_at_their_lines(tmp_path: Path) -> None:
    bad = (YAML_PLAN
           .replace("email: duban@qu.example.cn", "email: duban@@qu")
           .replace("v01b@cun.example.cn", "v01b@cun")
           .replace("https://oapi.example.cn/robot/send?access_token=abc", "ftp://oapi.example.cn/x")
           .replace("webhook_secret_env: DUBAN_HOOK_V01", "webhook_secret_env: my-secret")
           .replace("email: [li@cun.example.cn]",
                    "email: [li@cun.example.cn], webhook: 'https://im.example.cn/x'"))
    src = tmp_path / "bad.yaml"
    src.write_text(bad, encoding="utf-8")
    with pytest.raises(PlanReadError) as info:
        load_plan(src)
    problems = info.value.problems
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    assert "line 6: units.office.email: e-mail address 'duban@@qu'" in joined
    assert "line 7: units.v01.email: e-mail address 'v01b@cun': 'cun' is not a valid domain" \
        in joined
    assert ("line 8: units.v01.webhook: webhook address 'ftp://oapi.example.cn/x': "
            "use https://") in joined
    assert ("line 9: units.v01.webhook_secret_env: 'my-secret' is not an environment "
            "variable name") in joined
    assert "line 11: roster.li.v01.webhook_secret_env: a webhook needs webhook_secret_env" \
        in joined


def test_a_secret_written_into_a_yaml_plan_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "secret.yaml"
    src.write_text(YAML_PLAN.replace("webhook_secret_env: DUBAN_HOOK_V01",
                                     "webhook_secret: hunter2"), encoding="utf-8")
    with pytest.raises(PlanReadError, match="a secret never goes in the plan"):
        load_plan(src)


def test_bad_addresses_in_xlsx_are_reported_in_their_cells(tmp_path: Path) -> None:
    src = tmp_path / "plan.yaml"
    src.write_text(YAML_PLAN, encoding="utf-8")
    book = tmp_path / "plan.xlsx"
    write_plan(load_plan(src), book)
    wb = load_workbook(book)
    units, people = wb["单位"], wb["人员"]
    headers = {c.value: c.column for c in units[1]}
    assert {"邮箱", "Webhook", "Webhook密钥变量"} <= set(headers)
    units.cell(row=3, column=headers["邮箱"], value="v01@cun")
    units.cell(row=3, column=headers["Webhook"], value="http://bad host/x")
    pheaders = {c.value: c.column for c in people[1]}
    people.cell(row=3, column=pheaders["Webhook密钥变量"], value="HOOK_WU")
    wb.save(book)
    with pytest.raises(PlanReadError) as info:
        load_plan(book)
    problems = info.value.problems
    assert len(problems) == 3, problems
    email_col = units.cell(row=1, column=headers["邮箱"]).column_letter
    hook_col = units.cell(row=1, column=headers["Webhook"]).column_letter
    env_col = people.cell(row=1, column=pheaders["Webhook密钥变量"]).column_letter
    assert any(p.startswith(f"sheet 单位, row 3, column {email_col} (邮箱): units.v01.email:")
               for p in problems), problems
    assert any(p.startswith(f"sheet 单位, row 3, column {hook_col} (Webhook): units.v01.webhook")
               for p in problems), problems
    assert any(p.startswith(f"sheet 人员, row 3, column {env_col} (Webhook密钥变量): "
                            "roster.wu.webhook_secret_env: webhook_secret_env without a webhook")
               for p in problems), problems


def test_address_syntax() -> None:
    from domain.addresses import email_problem, secret_env_problem, webhook_problem

    for good in ("a@b.cn", "li.wei+duban@xq.gov.cn", "x_y@mail.xn--fiqs8s"):
        assert email_problem(good) is None, good
    for bad in ("", "a", "a@", "@b.cn", "a@b", "a b@c.cn", "a..b@c.cn", "a@-b.cn", "a@b.c1",
                "李@b.cn"):
        assert email_problem(bad) is not None, bad
    for good in ("https://oapi.dingtalk.example/robot/send?access_token=x",
                 "http://127.0.0.1:8080/hook", "https://[::1]:9000/x", "https://h.cn"):
        assert webhook_problem(good) is None, good
    for bad in ("ftp://h.cn/x", "https://", "https://user:pw@h.cn/x", "h.cn/x",
                "https://h .cn/x", "https://h.cn:99999/x", "https://h.cn/#frag"):
        assert webhook_problem(bad) is not None, bad
    assert secret_env_problem("DUBAN_HOOK_T01") is None
    assert secret_env_problem("duban_hook") is not None
    assert secret_env_problem("1HOOK") is not None


def test_old_plans_without_addresses_stay_valid(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    plan = load_plan(repo / "plans" / "sample-2026.yaml")
    assert plan.directory == Directory()
    assert load_plan(repo / "plans" / "sample-2026.xlsx") == plan
    # A workbook made before the address columns existed reads as it did.
    wb = load_workbook(repo / "plans" / "sample-2026.xlsx")
    for sheet in ("单位", "人员"):
        ws = wb[sheet]
        first = next(c.column for c in ws[1] if c.value == "邮箱")
        ws.delete_cols(first, 3)
        assert [c.value for c in ws[1]][-1] in ("上级单位", "角色")
    old = tmp_path / "old.xlsx"
    wb.save(old)
    assert load_plan(old) == plan


def test_deliver_once_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         hooks: Any) -> None:
    from typer.testing import CliRunner

    from infra.settings import get_settings
    from starter import app

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    st = open_store(url)
    sink = HookSink(failures=None, fail_with=410)
    store_directory(st.engine, plan_with("dl", unit=Addresses(
        webhook=hooks(sink), webhook_secret_env="DUBAN_TEST_HOOK")), now=T0)
    queue(st, "v01:unit")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DUBAN_TEST_HOOK", SECRET)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        once = runner.invoke(app, ["deliver", "--once", "--json"])
        assert once.exit_code == 0, once.output
        assert json.loads(once.stdout)["dead"] == 1
        dead = runner.invoke(app, ["deliver", "--dead", "--json"])
        assert dead.exit_code == 0, dead.output
        [row] = json.loads(dead.stdout)
        assert row["task_id"] == TASK and "HTTP 410" in row["last_error"]
        again = runner.invoke(app, ["deliver", "--requeue", str(row["id"])])
        assert again.exit_code == 0 and "requeued" in again.output
        with st.engine.connect() as conn:
            assert conn.execute(select(deliveries_t.c.status).where(
                deliveries_t.c.id == row["id"])).scalar() == "pending"
    finally:
        get_settings.cache_clear()
        st.engine.dispose()


def test_a_lost_attempt_past_the_last_is_given_up(store: EventStore) -> None:
    store_directory(store.engine, plan_with("dl", unit=Addresses(email=(UNIT_MAIL,))), now=T0)
    queue(store, "v01:unit")
    worker = DeliveryWorker(store.engine, transports={}, policy=DeliveryPolicy(max_attempts=2))
    worker.expand(T0)
    with store.engine.begin() as conn:  # a worker died during its second and last attempt
        conn.execute(update(deliveries_t).where(deliveries_t.c.channel == "email").values(
            status="attempting", attempts=2, claimed_by="gone",
            lease_until=T0 + dt.timedelta(minutes=5)))
    assert worker.run_once(T0 + dt.timedelta(minutes=6)).dead == 1
    [dead] = dead_letters(store.engine)
    assert "was lost" in dead["last_error"]
