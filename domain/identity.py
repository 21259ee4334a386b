"""Proven identity (身份核验): a command's actor as asserted and signed by a trusted sender.

A person never talks to the engine directly: a front door (the web app, the command line of an
office) knows who is signed in and signs, with its own Ed25519 key, an assertion of who sends
what: the task (workflow id), the command's name, the digest of its payload, the actor and the
time. The workflow checks that assertion here, deterministically (the keys and the policy are
in its recorded input, the clock is the workflow's), before deciding, and records how the actor
was proven on the events the command causes (`events.ActorProof`).

The assertion travels inside the payload under `ASSERTION_KEY` and is taken out before the
command is read, so commands keep their strict fields. What is signed is `signing_bytes`: a
domain-separated canonical JSON text, so a signature for one task, command or payload is
worthless for another.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping, Set
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.canonical import canonical_json
from domain.commands import Rejection
from domain.events import ActorProof

ASSERTION_KEY = "assertion"
SIGNING_DOMAIN = "duban/command-assertion/v1"
SENDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TrustedKey(BaseModel):
    """A sender whose signatures the deployment trusts: a name and its Ed25519 public key (the
    32 raw bytes, base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sender: str = Field(pattern=SENDER_PATTERN)
    public_key: str = Field(min_length=40, max_length=48)

    def fingerprint(self) -> str:
        return key_fingerprint(self.public_key)


class AuthPolicy(BaseModel):
    """What a deployment requires of a command's actor (part of each task's recorded input).

    `require_signed`: an unsigned command is refused and recorded (code "unauthenticated").
    Otherwise (the dev demo) an unsigned command is taken as self-asserted and marked so.
    A signature that does not verify is refused either way: a forged proof is never good.
    `max_age_seconds` / `max_skew_seconds`: how old / how far ahead of the workflow's clock a
    signed time may be (an old assertion cannot be played again later)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    require_signed: bool = False
    trusted: tuple[TrustedKey, ...] = ()
    max_age_seconds: int = Field(900, ge=1)
    max_skew_seconds: int = Field(300, ge=0)

    def key_of(self, sender: str) -> TrustedKey | None:
        return next((k for k in self.trusted if k.sender == sender), None)


DEFAULT_POLICY = AuthPolicy()


class Assertion(BaseModel):
    """Who sends what, signed: the wire form under `ASSERTION_KEY`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sender: str = Field(pattern=SENDER_PATTERN)
    actor: str = Field(min_length=1, max_length=120)
    workflow_id: str = Field(min_length=1, max_length=400)
    command: str = Field(min_length=1, max_length=120)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    at: dt.datetime
    signature: str = Field(min_length=1, max_length=200)


def key_fingerprint(public_key_b64: str) -> str:
    """The first 16 hex digits of the SHA-256 of a public key's raw bytes."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raw = public_key_b64.encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def split_assertion(payload: object) -> tuple[object, object | None]:
    """The command's own payload and the assertion it carried (None if none)."""
    if isinstance(payload, Mapping) and ASSERTION_KEY in payload:
        rest = {k: v for k, v in payload.items() if k != ASSERTION_KEY}
        return rest, payload[ASSERTION_KEY]
    return payload, None


def payload_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the command payload's canonical JSON (RFC 8785), the assertion left out."""
    own = {k: v for k, v in payload.items() if k != ASSERTION_KEY}
    return hashlib.sha256(canonical_json(own)).hexdigest()


def signing_bytes(*, sender: str, actor: str, workflow_id: str, command: str, digest: str,
                  at: dt.datetime) -> bytes:
    """Exactly what the sender signs and the workflow verifies."""
    return canonical_json({
        "domain": SIGNING_DOMAIN, "sender": sender, "actor": actor, "workflow_id": workflow_id,
        "command": command, "digest": digest, "at": _utc_text(at),
    })


def _utc_text(at: dt.datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("the assertion's time must carry its UTC offset")
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _refuse(reason: str) -> Rejection:
    return Rejection(code="unauthenticated", reason=reason)


def prove(policy: AuthPolicy | None, *, workflow_id: str, command: str,
          payload: Mapping[str, Any], raw_assertion: object | None, actor: str,
          now: dt.datetime, seen: Set[str] = frozenset()) -> ActorProof | Rejection:
    """How `actor` is proven for this command, or why the command is refused.

    `payload` is the command's own payload (assertion taken out); `now` the workflow's clock;
    `seen` the `assertion` digests of proofs this task already recorded (within the age
    window), so the same signed command sent twice counts once."""
    policy = policy or DEFAULT_POLICY
    if raw_assertion is None:
        if policy.require_signed:
            return _refuse(f"{command}: this deployment accepts only signed commands; the "
                           f"command from {actor!r} carries no signed assertion")
        return ActorProof(method="self_asserted")
    try:
        a = Assertion.model_validate(raw_assertion)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in first["loc"]) or ASSERTION_KEY
        return _refuse(f"{command}: the signed assertion is malformed ({ASSERTION_KEY}.{loc}: "
                       f"{first['msg']})")
    key = policy.key_of(a.sender)
    if key is None:
        return _refuse(f"{command}: the assertion is signed by {a.sender!r}, which this "
                       f"deployment does not trust")
    mismatch = [name for name, want, got in (
        ("actor", actor, a.actor), ("workflow_id", workflow_id, a.workflow_id),
        ("command", command, a.command)) if want != got]
    if mismatch:
        return _refuse(f"{command}: the assertion was signed for another "
                       f"{'/'.join(mismatch)} than this command's")
    try:
        digest = payload_digest(payload)
    except ValueError as exc:
        return _refuse(f"{command}: the payload cannot be digested ({exc})")
    if digest != a.digest:
        return _refuse(f"{command}: the assertion was signed for another payload (digest "
                       f"{a.digest[:12]}…, this payload {digest[:12]}…)")
    if a.at.tzinfo is None:
        return _refuse(f"{command}: the assertion's time carries no UTC offset")
    age = (now - a.at).total_seconds()
    if age > policy.max_age_seconds:
        return _refuse(f"{command}: the assertion was signed {int(age)} s ago; at most "
                       f"{policy.max_age_seconds} s are accepted")
    if -age > policy.max_skew_seconds:
        return _refuse(f"{command}: the assertion is dated {int(-age)} s ahead of the task's clock")
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key,
                                                                     validate=True))
        signature = base64.b64decode(a.signature, validate=True)
        public.verify(signature, signing_bytes(
            sender=a.sender, actor=a.actor, workflow_id=a.workflow_id, command=a.command,
            digest=a.digest, at=a.at))
    except (InvalidSignature, binascii.Error, ValueError):
        return _refuse(f"{command}: the signature does not verify with {a.sender!r}'s key "
                       f"({key.fingerprint()})")
    used = hashlib.sha256(signature).hexdigest()[:32]
    if used in seen:
        return _refuse(f"{command}: this signed assertion was already used (signed at "
                       f"{_utc_text(a.at)}); a command is signed afresh each time it is sent")
    return ActorProof(method="signed", sender=a.sender, key=key.fingerprint(), assertion=used,
                      signed_at=a.at)
