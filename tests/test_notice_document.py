"""督办单 as a document: numbered per plan and year (〔2026〕第15号) when first recorded, on
SQLite and PostgreSQL, under concurrency and retries; rendered as an A4 PDF with its Chinese font
embedded and its text readable back; shown as an A4 print page to the viewers who may see the
task (and to no one else)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError

from activities.notice_document import load_notice_record, notice_sheet, sheet_for
from activities.notice_pdf import notice_pdf, sheet_pdf
from infra.db.store import NOTICE_NUMBER_SLOT, EventStore
from service import users
from tests import board_seed as seed
from tests.web_harness import SCREENSHOTS, serve
from web.app import create_app
from web.context import WebContext

UTC = dt.UTC
C02 = f"{seed.PLAN}/T1/c02"  # N1 overdue since T0+5d: a reminder, then 督办单 and 约谈


def record(store: EventStore, task_id: str, step_key: str, *, plan: str = "p1",
           year: int = 2026, numbered: bool = True) -> bool:
    return store.record_notice(
        task_id, step_key, ladder="deadline-lights", step=step_key.rsplit(":", 1)[-1], level=2,
        title="督办单", document=f"编号 {NOTICE_NUMBER_SLOT}\n请限期整改", node="N1",
        reply_by=dt.datetime(2026, 3, 13, 16, tzinfo=UTC), plan_code=plan, year=year,
        numbered=numbered)


def numbers(store: EventStore) -> dict[tuple[str, str], tuple[str | None, int | None, int | None]]:
    return {(n["task_id"], n["step_key"]): (n["plan_code"], n["year"], n["number"])
            for n in store.list_notices()}


# --- numbering ---------------------------------------------------------------------------------


def test_numbers_run_per_plan_and_year(store: EventStore) -> None:
    assert record(store, "p1/T1/a", "node:N1:0:order")
    assert record(store, "p1/T1/a", "node:N1:0:remind", numbered=False)  # 督办提醒: no number
    assert record(store, "p1/T2/b", "node:N1:0:order")
    assert record(store, "p2/T1/a", "node:N1:0:order", plan="p2")  # another plan: its own 1
    assert record(store, "p1/T1/a", "node:N2:0:order", year=2027)  # a new year: from 1 again
    assert record(store, "p1/T3/c", "node:N1:0:talk")
    assert numbers(store) == {
        ("p1/T1/a", "node:N1:0:order"): ("p1", 2026, 1),
        ("p1/T1/a", "node:N1:0:remind"): ("p1", 2026, None),
        ("p1/T2/b", "node:N1:0:order"): ("p1", 2026, 2),
        ("p2/T1/a", "node:N1:0:order"): ("p2", 2026, 1),
        ("p1/T1/a", "node:N2:0:order"): ("p1", 2027, 1),
        ("p1/T3/c", "node:N1:0:talk"): ("p1", 2026, 3),
    }
    docs = {n["step_key"]: n["document"] for n in store.list_notices("p1/T1/a")}
    # The number is written into the filed document; a reminder keeps its text as given.
    assert docs["node:N1:0:order"] == "编号 〔2026〕第1号\n请限期整改"
    assert docs["node:N2:0:order"] == "编号 〔2027〕第1号\n请限期整改"
    assert docs["node:N1:0:remind"] == f"编号 {NOTICE_NUMBER_SLOT}\n请限期整改"
    with pytest.raises(ValueError, match="plan_code and year"):
        store.record_notice("p1/T9/z", "s", ladder="l", step="s", level=1, title="t",
                            document="d", numbered=True)


def test_a_re_recorded_notice_keeps_its_number(store: EventStore) -> None:
    assert record(store, "p1/T1/a", "node:N1:0:order")
    assert record(store, "p1/T2/b", "node:N1:0:order")
    first = store.notice("p1/T1/a", "node:N1:0:order")
    # A retried activity records the same notice again, even under another year or plan.
    assert not record(store, "p1/T1/a", "node:N1:0:order")
    assert not record(store, "p1/T1/a", "node:N1:0:order", year=2027, plan="p9")
    assert store.notice("p1/T1/a", "node:N1:0:order") == first
    assert first is not None and (first["number"], first["year"]) == (1, 2026)
    assert record(store, "p1/T3/c", "node:N1:0:order")  # and no number was used up
    assert numbers(store)[("p1/T3/c", "node:N1:0:order")] == ("p1", 2026, 3)


def test_concurrent_notices_get_distinct_numbers(store: EventStore) -> None:
    writers = 12
    start = threading.Barrier(writers * 2)

    def write(i: int) -> bool:
        start.wait()
        # Every notice twice at once: a retry racing the first attempt.
        return record(store, f"p1/T{i // 2}/u", "node:N1:0:order")

    with ThreadPoolExecutor(max_workers=writers * 2) as pool:
        created = list(pool.map(write, range(writers * 2)))
    assert sum(created) == writers  # one row per notice, whoever won
    got = sorted(n for _, _, n in numbers(store).values())
    assert got == list(range(1, writers + 1))  # no gap, no duplicate


def test_a_writer_that_loses_its_number_counts_again(store: EventStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The unique (plan, year, number) is the last line of defence: a writer that counted
    before another's commit (here: a stale count) gets a constraint violation from the
    database and starts over with a fresh count."""
    assert record(store, "p1/T1/a", "node:N1:0:order")
    real = EventStore._next_number
    calls: list[int] = []

    def stale_then_real(self: EventStore, conn: Any, plan_code: str, year: int) -> int:
        calls.append(1)
        return 1 if len(calls) == 1 else real(self, conn, plan_code, year)

    monkeypatch.setattr(EventStore, "_next_number", stale_then_real)
    assert record(store, "p1/T2/b", "node:N1:0:order")
    assert len(calls) == 2
    assert numbers(store)[("p1/T2/b", "node:N1:0:order")] == ("p1", 2026, 2)

    monkeypatch.setattr(EventStore, "_next_number", lambda *_: 1)  # never recovers
    with pytest.raises(IntegrityError):
        record(store, "p1/T3/c", "node:N1:0:order")
    assert ("p1/T3/c", "node:N1:0:order") not in numbers(store)


# --- through the recording activity: the board's known state -----------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventStore]:
    with seed.seeded_store(request.param, tmp_path_factory.mktemp("notices")) as st:
        yield st


def c02_notices(store: EventStore) -> dict[str, dict[str, Any]]:
    return {n["step_key"].rsplit(":", 1)[-1]: n for n in store.list_notices(C02)}


def test_record_batch_numbers_each_notice_in_the_rungs_local_year(seeded: EventStore) -> None:
    rows = c02_notices(seeded)
    assert {k: (r["plan_code"], r["year"], r["number"]) for k, r in rows.items()} == {
        "remind": (seed.PLAN, 2026, None),  # 催办提醒: a reminder, not numbered
        "order": (seed.PLAN, 2026, 1),      # 督办单
        "talk": (seed.PLAN, 2026, 2),       # 约谈
    }
    assert "**编号**: 〔2026〕第1号" in rows["order"]["document"]
    assert NOTICE_NUMBER_SLOT not in rows["talk"]["document"]
    # The outbox copies carry the filed document, number and all.
    copies = [o for o in seeded.list_outbox(undelivered_only=False)
              if o["task_id"] == C02 and o["step_key"].endswith(":order")]
    assert copies and all(o["body"]["number"] == "〔2026〕第1号" and
                          "〔2026〕第1号" in o["body"]["document"] for o in copies)


# --- the PDF ------------------------------------------------------------------------------------


def info_string(pdf: bytes, key: bytes) -> str:
    """A text string of the PDF's Info dictionary: a literal (...) with backslash escapes,
    in UTF-16BE after a byte-order mark when it is not plain ASCII."""
    m = re.search(rb"/" + key + rb" \(((?:\\.|[^\\)])*)\)", pdf, re.S)
    assert m, key
    body = re.sub(rb"\\([0-7]{1,3}|.)", lambda e: bytes([int(e.group(1), 8)])
                  if e.group(1)[:1].isdigit() else e.group(1), m.group(1), flags=re.S)
    return body[2:].decode("utf-16-be") if body.startswith(b"\xfe\xff") else body.decode()


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    """The PDF's text layer, by poppler's pdftotext (.ci/run installs poppler-utils)."""
    tool = shutil.which("pdftotext")
    if tool is None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail("pdftotext is missing in CI (.ci/run installs poppler-utils)")
        pytest.skip("pdftotext is not installed (apt-get install poppler-utils)")
    path = tmp_path / "notice.pdf"
    path.write_bytes(pdf)
    out = subprocess.run([tool, "-layout", "-enc", "UTF-8", str(path), "-"], check=True,
                         capture_output=True, timeout=60)
    return out.stdout.decode("utf-8")


def test_the_pdf_is_one_a4_page_with_its_font_and_text(seeded: EventStore,
                                                       tmp_path: Path) -> None:
    row = c02_notices(seeded)["order"]
    record_ = load_notice_record(seeded, C02)
    raw = notice_pdf(row, record_, compress=False)
    assert raw.startswith(b"%PDF-1.") and raw.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type /Page\b(?!s)", raw)) == 1
    assert re.search(rb"/MediaBox \[ 0 0 595\.27\d* 841\.88\d* \]", raw)  # A4, portrait
    # The Chinese font travels inside the file (a subset, with a ToUnicode map) ...
    assert b"/FontFile2" in raw and re.search(rb"/BaseFont /[A-Z]{6}\+WenQuanYiZenHei", raw)
    assert b"/ToUnicode" in raw and b"Helvetica" not in raw
    # ... the title names the number; the document's date is the rung's, not the print's.
    assert info_string(raw, b"Title") == "督办单 〔2026〕第1号"
    assert info_string(raw, b"Author") == "区委组织部"
    assert b"D:20260311090000+08'00'" in raw
    # Same notice, same bytes: a retried e-mail carries an identical attachment.
    assert notice_pdf(row, record_, compress=False) == raw
    packed = notice_pdf(row, record_)
    assert packed.startswith(b"%PDF-") and len(packed) < len(raw)

    text = re.sub(r"[ \t]+", " ", pdf_text(packed, tmp_path))
    for words in ("区委组织部", "〔2026〕第1号", "北关社区", "两委增补", "N1 摸底调查",
                  "2026-03-07 09:00", "4天", "单位主要负责人签批督办单，限期完成并书面反馈",
                  "2026-03-13（星期五）24:00前", "亮灯督办（绿黄红灯） · 督办单（第2级）",
                  "盖章处", "2026年3月11日", "签收人"):
        assert words in text, words
    assert re.search(r"督\s*办\s*单", text)


def test_the_pdf_of_a_reminder_has_no_number(seeded: EventStore, tmp_path: Path) -> None:
    sheet = sheet_for(seeded, C02, c02_notices(seeded)["remind"]["step_key"])
    assert sheet is not None and not sheet.numbered and sheet.kind == "督办提醒"
    assert sheet_for(seeded, C02, "node:N9:0:none") is None
    text = pdf_text(notice_pdf(c02_notices(seeded)["remind"], load_notice_record(seeded, C02)),
                    tmp_path)
    assert "督办提醒" in text and "〔2026〕" not in text


def test_a_long_demand_flows_onto_more_pages(seeded: EventStore, tmp_path: Path) -> None:
    sheet = notice_sheet(c02_notices(seeded)["order"], load_notice_record(seeded, C02))
    long = replace(sheet, demand="".join(f"第{i}条：限期整改到位并报送佐证材料。" for i in range(1, 121)),
                   office="中共某某省某某市某某区委员会办公室（区委督查室、区政府督查室合署办公）")
    text = re.sub(r"\s+", "", pdf_text(sheet_pdf(long), tmp_path))
    assert "第1条" in text and "第120条" in text  # nothing lost
    assert "（续）" in text and "盖章处" in text
    assert len(re.findall(r"第\d+页", text)) > 1


def test_the_sheet_says_what_was_issued(seeded: EventStore) -> None:
    row = c02_notices(seeded)["talk"]
    sheet = notice_sheet(row, load_notice_record(seeded, C02))
    assert (sheet.number, sheet.office, sheet.unit_name, sheet.lead_unit_name) == (
        "〔2026〕第2号", "区委组织部", "北关社区", "区委组织部")  # office: the roster's 专班
    assert (sheet.step_title, sheet.level, sheet.target) == ("约谈", 3, "N1 摸底调查")
    assert sheet.issued_on == "2026年3月17日" and sheet.days_late == "10天"
    assert sheet.file_name == "dubandan-board-2026-T1-c02-node-N1-0-talk.pdf"
    signed = notice_sheet({**row, "signed_at": dt.datetime(2026, 3, 18, 1, 30, tzinfo=UTC),
                           "signed_by": "m.c02"}, load_notice_record(seeded, C02))
    assert signed.signed == "2026-03-18 09:30 吴斌（m.c02）"
    with pytest.raises(LookupError):
        notice_sheet({**row, "step_key": "node:N1:0:never"}, load_notice_record(seeded, C02))


# --- the web pages --------------------------------------------------------------------------------


async def _no_temporal() -> Any:
    raise AssertionError("the notice pages never need Temporal")


@pytest.fixture
def client_for(seeded: EventStore, tmp_path: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(actor: str | None) -> TestClient:
        app = create_app(WebContext(engine=seeded.engine, store=seeded,
                                    evidence_dir=tmp_path / "evidence", connect=_no_temporal,
                                    clock=lambda: seed.NOW))
        client = TestClient(app)
        clients.append(client)
        if actor is None:
            return client
        password = users.issue(seeded.engine, actor, now=dt.datetime.now(UTC), issued_by="test")
        r = client.post("/login", data={"actor": actor, "password": password, "next": "/"},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        return client

    yield make
    for c in clients:
        c.close()


@pytest.mark.parametrize("actor", ["m.c02", "lead.head", "office.staff", "supervisor"])
def test_the_print_page_and_pdf_for_those_who_see_the_task(client_for: Any, seeded: EventStore,
                                                           actor: str) -> None:
    notice_id = c02_notices(seeded)["order"]["id"]
    client = client_for(actor)
    page = client.get(f"/notices/{notice_id}")
    assert page.status_code == 200
    html = page.text
    assert 'href="/static/notice.css"' in html and f'href="/notices/{notice_id}.pdf"' in html
    for words in ("区委组织部", "〔2026〕第1号", "北关社区", "N1 摸底调查", "2026-03-07 09:00",
                  "4天", "单位主要负责人签批督办单，限期完成并书面反馈", "2026-03-13（星期五）24:00前",
                  "（盖章处）", "2026年3月11日", "第2级督办"):
        assert words in html, words
    pdf = client.get(f"/notices/{notice_id}.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert 'filename="dubandan-board-2026-T1-c02-node-N1-0-order.pdf"' in \
        pdf.headers["content-disposition"]
    # The task page links to both.
    task = client.get(f"/tasks/{C02}").text
    assert f'href="/notices/{notice_id}"' in task and f'href="/notices/{notice_id}.pdf"' in task
    assert "〔2026〕第1号" in task


@pytest.mark.parametrize("actor", ["m.v01", "m.t01", "m.mzj"])
def test_a_notice_of_a_task_not_seen_is_not_found(client_for: Any, seeded: EventStore,
                                                  actor: str) -> None:
    notice_id = c02_notices(seeded)["order"]["id"]
    client = client_for(actor)
    for path in (f"/notices/{notice_id}", f"/notices/{notice_id}.pdf", "/notices/999999",
                 "/notices/999999.pdf"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "〔2026〕" not in r.text and "北关社区" not in r.text


def test_the_notice_pages_need_a_sign_in(client_for: Any, seeded: EventStore) -> None:
    notice_id = c02_notices(seeded)["order"]["id"]
    r = client_for(None).get(f"/notices/{notice_id}.pdf", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


async def test_the_print_page_prints_on_one_a4_page(seeded: EventStore, browser: Any,
                                                    tmp_path: Path) -> None:
    """In Chromium (Debian's): the page is an A4 sheet on screen and prints as exactly one A4
    portrait page. With DUBAN_SCREENSHOTS=1 the sheet is saved as docs/screenshots/dubandan.png."""
    notice_id = c02_notices(seeded)["order"]["id"]
    password = users.issue(seeded.engine, "m.c02", now=dt.datetime.now(UTC), issued_by="test")
    server = await serve(lambda: create_app(WebContext(
        engine=seeded.engine, store=seeded, evidence_dir=tmp_path / "evidence",
        connect=_no_temporal, clock=lambda: seed.NOW)))
    context = await browser.new_context(viewport={"width": 900, "height": 1300})
    try:
        page = await context.new_page()
        await page.goto(f"{server.url}/login?next=/notices/{notice_id}")
        await page.fill("input[name=actor]", "m.c02")
        await page.fill("input[name=password]", password)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"**/notices/{notice_id}")
        assert (await page.text_content("#number") or "").strip() == "〔2026〕第1号"
        box = await page.locator("#sheet").bounding_box()
        assert box is not None and abs(box["width"] - 210 / 25.4 * 96) < 2  # 210 mm on screen
        if os.environ.get("DUBAN_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.locator("#sheet").screenshot(path=str(SCREENSHOTS / "dubandan.png"))
        await page.emulate_media(media="print")
        assert await page.locator("nav.toolbar").is_hidden()
        printed = await page.pdf(prefer_css_page_size=True, print_background=True)
        assert re.search(rb"/MediaBox \[0 0 59[45]\.\d+ 841\.\d+\]", printed)  # A4 portrait
        assert re.findall(rb"/Count (\d+)", printed) == [b"1"]  # one page
    finally:
        await context.close()
        server.stop()
