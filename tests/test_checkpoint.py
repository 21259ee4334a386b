"""Signed checkpoints of the chain heads: sign, verify, and catch tampering, truncation,
rewriting and deletion — while a store that only grew passes. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from audit.chain_check import verify_task_chain
from audit.checkpoint import (
    CheckpointError,
    fingerprint,
    generate_key,
    load_checkpoint,
    load_private_key,
    make_checkpoint,
    read_checkpoint,
    verify_against_checkpoint,
    write_checkpoint,
)
from domain.hashchain import heads_root
from infra.db.store import EventStore

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def ev(task_id: str, seq: int, percent: int | None = None) -> dict[str, Any]:
    return {"task_id": task_id, "seq": seq, "type": "ProgressReported",
            "at": (T0 + dt.timedelta(hours=seq)).isoformat().replace("+00:00", "Z"),
            "actor": "unit.member", "v": 1, "percent": seq if percent is None else percent,
            "note": "", "meets_report_node": None}


def fill(store: EventStore, task_id: str, first: int, last: int) -> None:
    store.append(task_id, [ev(task_id, s) for s in range(first, last + 1)])


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return generate_key(tmp_path / "keys" / "audit.key")


@pytest.fixture
def filled(store: EventStore) -> EventStore:
    fill(store, "p/A/v01", 1, 5)
    fill(store, "p/B/v01", 1, 3)
    fill(store, "p/C/v02", 1, 4)
    return store


def sql(store: EventStore, statement: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_keygen_writes_an_owner_only_pem(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert fingerprint(load_private_key(path)) == fingerprint(key)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        generate_key(path)
    path.chmod(0o644)
    generate_key(path, force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sign_and_load(filled: EventStore, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    doc = make_checkpoint(filled, key)
    assert doc["tasks"] == 3 and doc["events"] == 12
    assert doc["key_fingerprint"] == fingerprint(key)
    assert doc["store"]["backend"] in ("sqlite", "postgresql")
    assert "password" not in json.dumps(doc["store"])
    path = tmp_path / "cp.json"
    write_checkpoint(doc, path)
    heads = load_checkpoint(path)
    assert heads == {t: (h.seq, h.hash) for t in filled.task_ids() if (h := filled.head(t))}
    assert heads["p/A/v01"][0] == 5
    assert doc["merkle_root"] == heads_root({t: h for t, (_s, h) in heads.items()})
    # pinned to the right key by object, by fingerprint; refused for another key
    assert load_checkpoint(path, key.public_key()) == heads
    assert load_checkpoint(path, fingerprint(key)) == heads
    with pytest.raises(CheckpointError, match="not by the expected key"):
        load_checkpoint(path, Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("edit", ["head hash", "head seq", "drop task", "created_at",
                                  "signature", "swap key"])
def test_tampered_checkpoint_is_refused(filled: EventStore, key: Ed25519PrivateKey,
                                        tmp_path: Path, edit: str) -> None:
    doc = make_checkpoint(filled, key)
    if edit == "head hash":
        doc["heads"]["p/A/v01"]["hash"] = "0" * 64
    elif edit == "head seq":
        doc["heads"]["p/A/v01"]["seq"] = 2
    elif edit == "drop task":
        del doc["heads"]["p/B/v01"]
    elif edit == "created_at":
        doc["created_at"] = "2020-01-01T00:00:00+00:00"
    elif edit == "signature":
        doc["signature"] = ("00" if doc["signature"][:2] != "00" else "11") + doc["signature"][2:]
    else:  # a forger re-signs with his own key and swaps it in: only a pinned key catches it
        other = Ed25519PrivateKey.generate()
        forged = make_checkpoint(filled, other)
        write_checkpoint(forged, tmp_path / "forged.json")
        load_checkpoint(tmp_path / "forged.json")  # self-consistent
        with pytest.raises(CheckpointError, match="expected key"):
            load_checkpoint(tmp_path / "forged.json", key.public_key())
        return
    path = tmp_path / "cp.json"
    write_checkpoint(doc, path)
    with pytest.raises(CheckpointError, match="signature does not verify"):
        load_checkpoint(path)


def test_merkle_root_is_checked_too(filled: EventStore, key: Ed25519PrivateKey) -> None:
    """A root that does not match its heads is refused even under a valid signature."""
    from audit.checkpoint import _signed_bytes

    doc = make_checkpoint(filled, key)
    body = {k: v for k, v in doc.items() if k != "signature"}
    body["merkle_root"] = "ab" * 32
    doc = {**body, "signature": key.sign(_signed_bytes(body)).hex()}
    with pytest.raises(CheckpointError, match="Merkle root does not match"):
        read_checkpoint(doc)


def test_malformed_checkpoints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_checkpoint(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a Duban checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.json")


def test_store_that_only_grew_passes(filled: EventStore, key: Ed25519PrivateKey) -> None:
    doc = make_checkpoint(filled, key)
    fill(filled, "p/A/v01", 6, 8)  # grew
    fill(filled, "p/D/v03", 1, 2)  # a task created since
    report = verify_against_checkpoint(filled, doc)
    assert report.ok, report.to_json()
    assert {t.task_id: t.status for t in report.tasks} == {
        "p/A/v01": "grown", "p/B/v01": "unchanged", "p/C/v02": "unchanged", "p/D/v03": "new"}


def test_truncation_rewrite_and_deletion_are_found(filled: EventStore,
                                                   key: Ed25519PrivateKey) -> None:
    doc = make_checkpoint(filled, key)
    # A: the tail cut off (the remaining chain is still valid on its own)
    sql(filled, "DELETE FROM events WHERE task_id = 'p/A/v01' AND seq > 3")
    # B: rewritten from scratch with a recomputed chain, one event longer
    sql(filled, "DELETE FROM events WHERE task_id = 'p/B/v01'")
    filled.append("p/B/v01", [ev("p/B/v01", s, percent=50 + s) for s in range(1, 5)])
    # C: deleted altogether
    sql(filled, "DELETE FROM events WHERE task_id = 'p/C/v02'")
    assert verify_task_chain(filled, "p/A/v01").ok and verify_task_chain(filled, "p/B/v01").ok  # chains alone: fine
    report = verify_against_checkpoint(filled, doc)
    assert not report.ok
    by = {t.task_id: t for t in report.tasks}
    assert by["p/A/v01"].status == "truncated" and by["p/A/v01"].store_seq == 3
    assert by["p/A/v01"].first_bad_seq == 4
    assert by["p/B/v01"].status == "rewritten" and "rewritten" in by["p/B/v01"].reason
    assert by["p/C/v02"].status == "missing"
    assert {t.task_id for t in report.failures} == {"p/A/v01", "p/B/v01", "p/C/v02"}


def test_edited_event_below_the_head_is_tampered(filled: EventStore,
                                                 key: Ed25519PrivateKey) -> None:
    doc = make_checkpoint(filled, key)
    fill(filled, "p/A/v01", 6, 6)
    sql(filled, "UPDATE events SET actor = 'someone' WHERE task_id = 'p/A/v01' AND seq = 2")
    report = verify_against_checkpoint(filled, doc)
    (bad,) = report.failures
    assert bad.task_id == "p/A/v01" and bad.status == "tampered" and bad.first_bad_seq == 2


def test_cli_keygen_checkpoint_verify(filled: EventStore, tmp_path: Path, db_url: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.cli import audit_app
    from infra.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    run = CliRunner()
    try:
        keyfile = tmp_path / "audit.key"
        made = run.invoke(audit_app, ["keygen", "--out", str(keyfile)])
        assert made.exit_code == 0, made.output
        assert "BEGIN PUBLIC KEY" in made.stdout and "sha256:" in made.stdout
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        assert run.invoke(audit_app, ["keygen", "--out", str(keyfile)]).exit_code == 2
        cp = tmp_path / "cp.json"
        signed = run.invoke(audit_app, ["checkpoint", "--key", str(keyfile), "--out", str(cp),
                                        "--json"])
        assert signed.exit_code == 0, signed.output
        assert json.loads(signed.stdout)["tasks"] == 3
        fpr = fingerprint(load_private_key(keyfile))
        ok = run.invoke(audit_app, ["checkpoint-verify", str(cp), "--public-key", fpr])
        assert ok.exit_code == 0 and "only grew" in ok.stdout, ok.output
        sql(filled, "DELETE FROM events WHERE task_id = 'p/A/v01' AND seq = 5")
        bad = run.invoke(audit_app, ["checkpoint-verify", str(cp), "--json"])
        assert bad.exit_code == 1
        assert json.loads(bad.stdout)["failures"][0]["status"] == "truncated"
        text = cp.read_text().replace('"seq": 3', '"seq": 2', 1)
        cp.write_text(text)
        forged = run.invoke(audit_app, ["checkpoint-verify", str(cp)])
        assert forged.exit_code == 2 and "signature does not verify" in forged.stderr
    finally:
        get_settings.cache_clear()
