"""A front door's signing key (Ed25519) and the deployment's trust policy, from files.

- `DUBAN_SIGNING_KEY`: PEM private key of this process's sender (the web app, an office's
  command line); `DUBAN_SIGNER`: its sender name (default "web").
- `DUBAN_TRUSTED_KEYS`: JSON list of {"sender", "public_key"} the workflows trust.
- `DUBAN_REQUIRE_SIGNED=1`: tasks started from now on refuse unsigned commands.
The policy is copied into each task's input when the plan is loaded, so a task decides by the
policy it was started with (a replay years later needs no key file).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domain.identity import (
    ASSERTION_KEY,
    AuthPolicy,
    TrustedKey,
    key_fingerprint,
    payload_digest,
    signing_bytes,
)


@dataclass(frozen=True)
class Signer:
    sender: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key)

    def trusted(self) -> TrustedKey:
        return TrustedKey(sender=self.sender, public_key=self.public_key)

    def sign(self, workflow_id: str, command: str, payload: dict[str, Any],
             now: dt.datetime | None = None) -> dict[str, Any]:
        """`payload` with a signed assertion that its actor sends it to `workflow_id`."""
        own = {k: v for k, v in payload.items() if k != ASSERTION_KEY}
        at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        actor = str(own.get("actor", ""))
        digest = payload_digest(own)
        signature = self.key.sign(signing_bytes(sender=self.sender, actor=actor,
                                                workflow_id=workflow_id, command=command,
                                                digest=digest, at=at))
        return {**own, ASSERTION_KEY: {
            "sender": self.sender, "actor": actor, "workflow_id": workflow_id,
            "command": command, "digest": digest, "at": at.isoformat(),
            "signature": base64.b64encode(signature).decode()}}


def new_signer(sender: str) -> Signer:
    return Signer(sender=sender, key=Ed25519PrivateKey.generate())


def write_key(signer: Signer, path: Path) -> None:
    """The private key as PEM, readable by its owner only."""
    pem = signer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def read_key(sender: str, path: Path) -> Signer:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return Signer(sender=sender, key=key)


def read_trusted(path: Path) -> tuple[TrustedKey, ...]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return tuple(TrustedKey.model_validate(k) for k in data)


def trust(path: Path, key: TrustedKey) -> None:
    """Add (or replace) a sender's public key in the trusted-keys file."""
    keys = [k for k in (read_trusted(path) if path.exists() else ()) if k.sender != key.sender]
    keys.append(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([k.model_dump() for k in keys], indent=2) + "\n", encoding="utf-8")


def load_signer(env: dict[str, str] | None = None) -> Signer | None:
    e = os.environ if env is None else env
    path = e.get("DUBAN_SIGNING_KEY")
    if not path:
        return None
    return read_key(e.get("DUBAN_SIGNER") or "web", Path(path))


def load_policy(env: dict[str, str] | None = None) -> AuthPolicy:
    e = os.environ if env is None else env
    trusted_path = e.get("DUBAN_TRUSTED_KEYS")
    trusted = read_trusted(Path(trusted_path)) if trusted_path else ()
    required = (e.get("DUBAN_REQUIRE_SIGNED") or "").strip().lower() in ("1", "true", "yes")
    return AuthPolicy(require_signed=required, trusted=trusted)
