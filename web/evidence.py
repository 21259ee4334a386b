"""The evidence store (佐证材料): uploaded files kept by their SHA-256, never by their name.

A file is written once to `evidence_dir/<sha256>` (the same bytes always land in the same
place, so uploading a photo twice stores it once). Beside it, `<sha256>.json` keeps the name
and type it was uploaded with and the tasks it was uploaded for: the candidates a download is
checked against. A download is served only when a task the viewer can see has an event that
references the hash, so the side file only narrows which tasks' events are read (each by its
task id, an index lookup), it never grants anything by itself.

The download is `/evidence/{sha256}` (`router`, below).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from web.access import can_see
from web.auth import ViewerDep, ctx_of

router = APIRouter()

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_BYTES = 20 * 1024 * 1024  # a phone photo is a few MB; a scanned PDF rarely more
MAX_FILES = 20  # per form submission
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Stored:
    sha256: str
    name: str
    size: int
    content_type: str


class EvidenceTooLarge(ValueError):
    pass


def _safe_name(name: str) -> str:
    """The base name only, without control characters, at most 200 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "file"


def _meta_path(root: Path, sha: str) -> Path:
    return root / f"{sha}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(root: Path, sha: str) -> dict[str, Any]:
    path = _meta_path(root, sha)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(root: Path, stream: Any, *, name: str, content_type: str | None,
          task_ids: Iterable[str]) -> Stored:
    """Copy `stream` (a binary file object) into the store, hashing it with SHA-256 on the way;
    note `task_ids` as tasks it was uploaded for. Raises EvidenceTooLarge past MAX_FILE_BYTES."""
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise EvidenceTooLarge(
                        f"文件 {_safe_name(name)} 超过 {MAX_FILE_BYTES // (1024 * 1024)} MB")
                digest.update(chunk)
                out.write(chunk)
        sha = digest.hexdigest()
        target = root / sha
        if target.exists():
            Path(tmp).unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = read_meta(root, sha)
    tasks = list(meta.get("tasks", []))
    for t in task_ids:
        if t not in tasks:
            tasks.append(t)
    clean = _safe_name(name)
    meta = {"name": meta.get("name") or clean, "content_type": meta.get("content_type")
            or (content_type or "application/octet-stream"), "size": size, "tasks": tasks}
    _write_atomic(_meta_path(root, sha), json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    return Stored(sha, clean, size, meta["content_type"])


def path_of(root: Path, sha: str) -> Path | None:
    if not SHA256.match(sha):
        return None
    path = root / sha
    return path if path.is_file() else None


def candidate_tasks(root: Path, sha: str) -> list[str]:
    tasks = read_meta(root, sha).get("tasks", [])
    return [t for t in tasks if isinstance(t, str)]


def references(event: dict[str, Any], sha: str) -> bool:
    """Whether a stored event names `sha` as evidence (a claim, a finding, a rectification)."""
    def has(items: Any) -> bool:
        return any(isinstance(x, dict) and x.get("sha256") == sha for x in items or ())

    if has(event.get("evidence")):
        return True
    return any(isinstance(f, dict) and has(f.get("evidence")) for f in event.get("findings") or ())


# --- evidence download -------------------------------------------------------------------------

NOT_FOUND = "没有这份佐证材料，或您无权查看"
INLINE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"}


@router.get("/evidence/{sha256}")
async def evidence_file(request: Request, viewer: ViewerDep, sha256: str) -> Response:
    """A stored file, to a viewer who can see a task whose record references it (else 404)."""
    ctx = ctx_of(request)
    sha = sha256.lower()
    path = path_of(ctx.evidence_dir, sha)
    if path is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    for task_id in candidate_tasks(ctx.evidence_dir, sha):
        if not can_see(ctx.engine, viewer, task_id):
            continue
        if any(references(s.event, sha) for s in ctx.store.load(task_id)):
            meta = read_meta(ctx.evidence_dir, sha)
            kind = str(meta.get("content_type") or "application/octet-stream")
            inline = kind in INLINE_TYPES
            return FileResponse(
                path, media_type=kind if inline else "application/octet-stream",
                filename=str(meta.get("name") or sha),
                content_disposition_type="inline" if inline else "attachment",
                headers={"X-Content-Type-Options": "nosniff",
                         "Content-Security-Policy": "default-src 'none'; sandbox",
                         "Cache-Control": "private, max-age=3600"})
    raise HTTPException(status_code=404, detail=NOT_FOUND)

