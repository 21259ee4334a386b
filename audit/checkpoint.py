"""Anchoring the record: signed checkpoints of every task's chain head.

A hash chain proves that nothing inside it changed, but not that its tail was not cut off, nor
that someone with write access did not rewrite a task and recompute its whole chain. A
checkpoint kept outside the database closes both gaps: it lists every task's head (seq, hash),
a Merkle root over them (`domain.hashchain.heads_root`), when and from which store it was taken,
and an Ed25519 signature by a key that never enters the database.

    starter.py audit keygen --out ~/.duban-audit.key        # once; keep the key off the server
    starter.py audit checkpoint --key ~/.duban-audit.key --out cp-2026-06-30.json
    starter.py audit checkpoint-verify cp-2026-06-30.json   # later: has the store only grown?

File format (JSON): {"format": "duban-checkpoint/v1", "created_at", "store": {...},
"tasks", "events", "heads": {task_id: {"seq", "hash"}}, "merkle_root", "public_key" (raw
Ed25519, hex), "key_fingerprint" ("sha256:" + hex of the raw public key), "signature"}. The
signature covers `SIGNATURE_DOMAIN || canonical_json(every field but "signature")`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select

from audit.chain_check import verify_store
from domain.canonical import canonical_json
from domain.hashchain import heads_root
from infra.db.models import EventRow

__all__ = [
    "FORMAT",
    "SIGNATURE_DOMAIN",
    "CheckpointError",
    "CheckpointReport",
    "TaskCheck",
    "fingerprint",
    "generate_key",
    "load_checkpoint",
    "load_private_key",
    "make_checkpoint",
    "read_checkpoint",
    "store_heads",
    "store_identity",
    "verify_against_checkpoint",
    "write_checkpoint",
]

FORMAT = "duban-checkpoint/v1"
SIGNATURE_DOMAIN = b"duban/checkpoint/v1\x00"
_HEX64 = frozenset("0123456789abcdef")


class CheckpointError(ValueError):
    """The checkpoint is malformed, forged or altered, or was signed by another key."""


# --- keys ---------------------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """"sha256:" + hex SHA-256 of the raw 32-byte public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return "sha256:" + hashlib.sha256(_raw_public(pub)).hexdigest()


def public_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def generate_key(path: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Write a new Ed25519 private key (PKCS#8 PEM) readable by its owner only (0600).

    The file is created with those permissions (never world-readable, even for an instant);
    an existing file is refused unless `force`."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise CheckpointError(f"{path} exists; refusing to overwrite a key (use --force)") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)  # O_TRUNC on an existing file keeps its old mode
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read key {path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def key_file_too_open(path: Path) -> bool:
    """True when group or others may read the key file."""
    mode = Path(path).stat().st_mode
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def _public_key_from(value: Any) -> Ed25519PublicKey | str:
    """A public key object, or a fingerprint string to compare with, from what a caller has:
    an Ed25519 key object, PEM bytes/text, a path to a PEM file, 64 hex digits (raw key), or a
    "sha256:..." fingerprint."""
    if isinstance(value, Ed25519PublicKey):
        return value
    if isinstance(value, Ed25519PrivateKey):
        return value.public_key()
    if isinstance(value, str) and value.startswith("sha256:"):
        return value.lower()
    if isinstance(value, str) and len(value) == 64 and set(value.lower()) <= _HEX64:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    data: bytes
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        data = value.encode("ascii")
    elif isinstance(value, str | os.PathLike):
        try:
            data = Path(value).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read public key {value}: {exc}") from exc
    else:
        raise CheckpointError(f"unsupported public key value {type(value).__name__}")
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise CheckpointError("the key given is not an Ed25519 key")
            return private.public_key()
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise CheckpointError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("the public key given is not an Ed25519 key")
    return key


# --- taking a checkpoint ------------------------------------------------------------------------


def store_heads(store: Any) -> tuple[dict[str, tuple[int, str]], int]:
    """Every task's head (seq, hash) in one query, and the number of events."""
    events = EventRow.__table__
    last = (select(events.c.task_id, func.max(events.c.seq).label("seq"))
            .group_by(events.c.task_id).subquery())
    stmt = (select(events.c.task_id, events.c.seq, events.c.hash)
            .join(last, (events.c.task_id == last.c.task_id) & (events.c.seq == last.c.seq))
            .order_by(events.c.task_id))
    with store.engine.connect() as conn:
        heads = {r.task_id: (int(r.seq), str(r.hash)) for r in conn.execute(stmt)}
        total = conn.execute(select(func.count()).select_from(events)).scalar_one()
    return heads, int(total)


def store_identity(store: Any) -> dict[str, Any]:
    """Which store this is, without credentials: backend, host, port, database (file)."""
    url = store.engine.url
    ident: dict[str, Any] = {"backend": url.get_backend_name(), "database": url.database}
    if url.host:
        ident["host"] = url.host
        ident["port"] = url.port
    options = url.query.get("options")
    if isinstance(options, str) and "search_path" in options:
        ident["search_path"] = options.split("search_path=", 1)[1].split()[0]
    return ident


def _signed_bytes(body: Mapping[str, Any]) -> bytes:
    return SIGNATURE_DOMAIN + canonical_json(dict(body))


def make_checkpoint(store: Any, key: Ed25519PrivateKey, *,
                    created_at: dt.datetime | None = None, note: str = "") -> dict[str, Any]:
    """A signed checkpoint document of every chain head in `store`."""
    heads, events = store_heads(store)
    body: dict[str, Any] = {
        "format": FORMAT,
        "created_at": (created_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(),
        "store": store_identity(store),
        "note": note,
        "tasks": len(heads),
        "events": events,
        "heads": {t: {"seq": s, "hash": h} for t, (s, h) in sorted(heads.items())},
        "merkle_root": heads_root({t: h for t, (_s, h) in heads.items()}),
        "public_key": _raw_public(key.public_key()).hex(),
        "key_fingerprint": fingerprint(key),
    }
    signature = key.sign(_signed_bytes(body))
    return {**body, "signature": signature.hex()}


def write_checkpoint(doc: Mapping[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


# --- reading one back ---------------------------------------------------------------------------


def read_checkpoint(source: Path | str | Mapping[str, Any],
                    public_key: Any = None) -> dict[str, Any]:
    """The checkpoint document, after checking its form, its Merkle root and its signature.

    `public_key` (a key, a PEM file or text, raw hex, or a "sha256:..." fingerprint) pins the
    signer; without it the key embedded in the file is used, which proves the file is intact
    but not who made it. Raises CheckpointError, naming what is wrong."""
    if isinstance(source, Mapping):
        doc = dict(source)
        where = "checkpoint"
    else:
        where = str(source)
        try:
            doc = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CheckpointError(f"cannot read {where}: {exc}") from exc
        except ValueError as exc:
            raise CheckpointError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a Duban checkpoint (format {FORMAT!r} expected)")
    for name in ("heads", "merkle_root", "public_key", "key_fingerprint", "signature",
                 "created_at"):
        if name not in doc:
            raise CheckpointError(f"{where}: field {name!r} is missing")
    heads = doc["heads"]
    if not isinstance(heads, dict):
        raise CheckpointError(f"{where}: 'heads' must be an object")
    for task_id, head in heads.items():
        ok = (isinstance(head, dict) and type(head.get("seq")) is int and head["seq"] >= 1
              and isinstance(head.get("hash"), str) and len(head["hash"]) == 64
              and set(head["hash"]) <= _HEX64)
        if not ok:
            raise CheckpointError(f"{where}: head of task {task_id!r} is malformed: {head!r}")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(doc["public_key"])))
        signature = bytes.fromhex(str(doc["signature"]))
    except ValueError as exc:
        raise CheckpointError(f"{where}: public key or signature is not valid hex: {exc}") from exc
    if fingerprint(embedded) != doc["key_fingerprint"]:
        raise CheckpointError(f"{where}: key_fingerprint does not match the embedded public key")
    verifier = embedded
    if public_key is not None:
        pinned = _public_key_from(public_key)
        expected = pinned if isinstance(pinned, str) else fingerprint(pinned)
        if expected != fingerprint(embedded):
            raise CheckpointError(
                f"{where} was signed by key {fingerprint(embedded)}, not by the expected key "
                f"{expected}")
        if not isinstance(pinned, str):
            verifier = pinned
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        verifier.verify(signature, _signed_bytes(body))
    except InvalidSignature as exc:
        raise CheckpointError(
            f"{where}: the signature does not verify: the checkpoint was altered after it was "
            f"signed (or the signature was forged)") from exc
    except ValueError as exc:  # e.g. a float smuggled in: cannot be canonicalised
        raise CheckpointError(f"{where}: cannot canonicalise the checkpoint: {exc}") from exc
    root = heads_root({t: h["hash"] for t, h in heads.items()})
    if root != doc["merkle_root"]:
        raise CheckpointError(f"{where}: the Merkle root does not match the heads listed "
                              f"(computed {root}, recorded {doc['merkle_root']})")
    return doc


def load_checkpoint(path: Path | str | Mapping[str, Any],
                    public_key: Any = None) -> dict[str, tuple[int, str]]:
    """task_id -> (seq, hash) from a verified checkpoint (see `read_checkpoint`); raises
    CheckpointError on any tampering."""
    doc = read_checkpoint(path, public_key)
    return {t: (int(h["seq"]), str(h["hash"])) for t, h in doc["heads"].items()}


# --- comparing a store with a checkpoint --------------------------------------------------------


@dataclass(frozen=True)
class TaskCheck:
    task_id: str
    status: str  # unchanged | grown | new | missing | truncated | rewritten | tampered
    checkpoint_seq: int | None
    store_seq: int | None
    first_bad_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("unchanged", "grown", "new")

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "ok": self.ok,
                "checkpoint_seq": self.checkpoint_seq, "store_seq": self.store_seq,
                "first_bad_seq": self.first_bad_seq, "reason": self.reason}


@dataclass
class CheckpointReport:
    created_at: str | None
    key_fingerprint: str | None
    tasks: list[TaskCheck] = field(default_factory=list)

    @property
    def failures(self) -> list[TaskCheck]:
        return [t for t in self.tasks if not t.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checkpoint_created_at": self.created_at,
                "key_fingerprint": self.key_fingerprint, "counts": self.counts(),
                "failures": [t.to_json() for t in self.failures],
                "tasks": [t.to_json() for t in self.tasks]}


def _hash_at(store: Any, task_id: str, seq: int) -> str | None:
    events = EventRow.__table__
    with store.engine.connect() as conn:
        found = conn.execute(select(events.c.hash).where(events.c.task_id == task_id,
                                                         events.c.seq == seq)).scalar()
    return None if found is None else str(found)


def verify_against_checkpoint(store: Any, checkpoint: Any, public_key: Any = None,
                              *, workers: int = 1) -> CheckpointReport:
    """Has the store only grown since the checkpoint? Every checkpointed task must still be
    there, at least up to its checkpointed seq, with the same hash there and an intact chain
    (the store's own `verify_all`, given the heads). `checkpoint` is a path, a checkpoint
    document (both verified first), or a mapping task_id -> (seq, hash) already verified."""
    created = fpr = None
    if isinstance(checkpoint, Mapping) and checkpoint.get("format") != FORMAT:
        heads = {str(t): (int(h[0]), str(h[1])) for t, h in checkpoint.items()}
    else:
        doc = read_checkpoint(checkpoint, public_key)
        created, fpr = doc["created_at"], doc["key_fingerprint"]
        heads = {t: (int(h["seq"]), str(h["hash"])) for t, h in doc["heads"].items()}
    current, _events = store_heads(store)
    audit = verify_store(store, checkpoints=heads, workers=workers)
    failed = dict(audit.failures)
    report = CheckpointReport(created_at=created, key_fingerprint=fpr)
    for task_id in sorted(set(heads) | set(current)):
        cp = heads.get(task_id)
        now = current.get(task_id)
        verdict = failed.get(task_id)
        if cp is None:
            status = "new" if verdict is None else "tampered"
            report.tasks.append(TaskCheck(task_id, status, None, now[0] if now else None,
                                          verdict.first_bad_seq if verdict else None,
                                          verdict.reason or "" if verdict else
                                          "not in the checkpoint (created since)"))
            continue
        if now is None:
            report.tasks.append(TaskCheck(task_id, "missing", cp[0], None, 1,
                                          f"task {task_id} is in the checkpoint (seq {cp[0]}) "
                                          f"but has no events in the store"))
            continue
        if now[0] < cp[0]:
            report.tasks.append(TaskCheck(
                task_id, "truncated", cp[0], now[0], now[0] + 1,
                f"store ends at seq {now[0]}, the checkpoint says {cp[0]}: events were removed"))
            continue
        stored_hash = _hash_at(store, task_id, cp[0])
        if stored_hash != cp[1]:
            report.tasks.append(TaskCheck(
                task_id, "rewritten", cp[0], now[0],
                verdict.first_bad_seq if verdict else cp[0],
                f"the hash at seq {cp[0]} differs from the checkpoint: history was rewritten "
                f"at or before seq {cp[0]}"))
            continue
        if verdict is not None:
            report.tasks.append(TaskCheck(task_id, "tampered", cp[0], now[0],
                                          verdict.first_bad_seq, verdict.reason or ""))
            continue
        status = "unchanged" if now[0] == cp[0] else "grown"
        reason = "" if status == "unchanged" else f"{now[0] - cp[0]} event(s) added since"
        report.tasks.append(TaskCheck(task_id, status, cp[0], now[0], None, reason))
    return report
