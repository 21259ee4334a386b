"""The channels that carry a 督办单 out of the system: SMTP e-mail and signed webhooks.

Adapters only: each `send` hands one copy to one address, or raises `DeliveryError`
(`permanent` when trying again cannot help, e.g. a mailbox the server says does not exist).
Deciding when to try again, and recording what happened, is service/delivery.py's job.

Every copy carries its idempotency key, the same on every attempt: the e-mail's Message-ID
(`<key@domain>`, plus `X-Duban-Idempotency-Key`) and the webhook's `Idempotency-Key` header, so
that a receiver can recognise a repeated attempt after a worker died between sending and
recording the send.

Webhooks are signed in the manner of work-IM robots: `X-Duban-Timestamp` (milliseconds since
the epoch) and `X-Duban-Signature`, the Base64 HMAC-SHA256, under the shared secret, of
"<timestamp>\\n<body>" (the body's exact bytes). `verify_webhook` is the receiver's side.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from typing import Any, Protocol

__all__ = [
    "Attachment",
    "DeliveryError",
    "Outgoing",
    "SmtpConfig",
    "SmtpTransport",
    "Transport",
    "WebhookTransport",
    "sign_webhook",
    "verify_webhook",
]

SIGNATURE_HEADER = "X-Duban-Signature"
TIMESTAMP_HEADER = "X-Duban-Timestamp"
KEY_HEADER = "Idempotency-Key"
MAIL_KEY_HEADER = "X-Duban-Idempotency-Key"
# How far a receiver lets a signed timestamp stray from its clock (replayed requests are older).
SIGNATURE_TOLERANCE = dt.timedelta(minutes=5)


class DeliveryError(Exception):
    """One attempt failed. `permanent`: the address refuses it for good (no retry helps)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime_type: str  # e.g. "application/pdf"


@dataclass(frozen=True)
class Outgoing:
    """One copy of a notice for one address."""

    key: str  # idempotency key: the same on every attempt of this copy
    channel: str
    address: str
    subject: str
    text: str  # the 督办单 as rendered (Markdown)
    secret_env: str | None = None
    attachment: Attachment | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Transport(Protocol):
    channel: str

    def send(self, message: Outgoing, *, now: dt.datetime) -> None:
        """Hand the copy over, or raise DeliveryError."""
        ...


# --- e-mail ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    """DUBAN_SMTP_HOST (unset: e-mail is not configured, copies fail and are retried),
    DUBAN_SMTP_PORT (25; 465 implies TLS), DUBAN_SMTP_TLS ("starttls", "tls" or "none"),
    DUBAN_SMTP_USER / DUBAN_SMTP_PASSWORD, DUBAN_SMTP_FROM ("督办室 <duban@example.gov.cn>")."""

    host: str | None = None
    port: int = 25
    tls: str = "none"  # "none" | "starttls" | "tls"
    user: str | None = None
    password: str | None = None
    sender: str = "督办系统 <duban@localhost>"
    timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpConfig:
        e = os.environ if env is None else env
        port = int(e.get("DUBAN_SMTP_PORT") or 25)
        tls = (e.get("DUBAN_SMTP_TLS") or ("tls" if port == 465 else "none")).strip().lower()
        if tls not in ("none", "starttls", "tls"):
            raise ValueError(f"DUBAN_SMTP_TLS must be none, starttls or tls, not {tls!r}")
        return cls(host=e.get("DUBAN_SMTP_HOST") or None, port=port, tls=tls,
                   user=e.get("DUBAN_SMTP_USER") or None,
                   password=e.get("DUBAN_SMTP_PASSWORD") or None,
                   sender=e.get("DUBAN_SMTP_FROM") or cls.sender)

    @property
    def domain(self) -> str:
        """The domain of Message-IDs: the sender's."""
        address = parseaddr(self.sender)[1]
        return address.rpartition("@")[2] or "localhost"


def message_id(key: str, domain: str) -> str:
    return f"<{key}@{domain}>"


def build_email(message: Outgoing, config: SmtpConfig, *, now: dt.datetime) -> EmailMessage:
    """The e-mail of one copy: the 督办单 as text, and attached (PDF, or the Markdown)."""
    name, address = parseaddr(config.sender)
    mail = EmailMessage()
    mail["From"] = formataddr((name, address)) if name else address
    mail["To"] = message.address
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(now.astimezone(dt.UTC))
    mail["Message-ID"] = message_id(message.key, config.domain)
    mail[MAIL_KEY_HEADER] = message.key
    for header, meta_key in (("X-Duban-Task", "task_id"), ("X-Duban-Step", "step_key")):
        if message.meta.get(meta_key):
            mail[header] = str(message.meta[meta_key])
    mail.set_content(message.text)
    if message.attachment is not None:
        maintype, _, subtype = message.attachment.mime_type.partition("/")
        if maintype == "text":  # as text, so that its charset is declared
            mail.add_attachment(message.attachment.content.decode("utf-8"), subtype=subtype,
                                charset="utf-8", filename=message.attachment.filename)
        else:
            mail.add_attachment(message.attachment.content, maintype=maintype,
                                subtype=subtype, filename=message.attachment.filename)
    return mail


class SmtpTransport:
    channel = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def send(self, message: Outgoing, *, now: dt.datetime) -> None:
        c = self.config
        if not c.host:
            raise DeliveryError("e-mail is not configured (set DUBAN_SMTP_HOST)")
        mail = build_email(message, c, now=now)
        try:
            if c.tls == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            with smtp:
                if c.tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if c.user:
                    smtp.login(c.user, c.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(f"SMTP refused {message.address}: {exc.recipients}",
                                permanent=all(500 <= code < 600 for code in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(
                exc.smtp_error, bytes) else str(exc.smtp_error)
            raise DeliveryError(f"SMTP {exc.smtp_code} {text}",
                                permanent=500 <= exc.smtp_code < 600) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {c.host}:{c.port}: {exc!r}") from exc


# --- webhooks --------------------------------------------------------------------------------


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """Base64 HMAC-SHA256 of "<timestamp>\\n<body>" under `secret`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, *,
                   now: dt.datetime | None = None) -> bool:
    """A receiver's check: the signature matches and its timestamp is recent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit() or not signature:
        return False
    at = dt.datetime.fromtimestamp(int(timestamp) / 1000, dt.UTC)
    moment = now or dt.datetime.now(dt.UTC)
    if abs(moment - at) > SIGNATURE_TOLERANCE:
        return False
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


def webhook_body(message: Outgoing, *, now: dt.datetime) -> bytes:
    """The JSON a robot shows (msgtype markdown: title and text) plus the notice's facts."""
    payload = {
        "msgtype": "markdown",
        "markdown": {"title": message.subject, "text": message.text},
        "notice": dict(message.meta),
        "idempotency_key": message.key,
        "sent_at": now.astimezone(dt.UTC).isoformat(),
    }
    return json.dumps(payload, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


# Answers worth another try: timeouts, throttling and server trouble.
_TRANSIENT = {408, 425, 429}


class WebhookTransport:
    channel = "webhook"

    def __init__(self, env: Mapping[str, str] | None = None, timeout: float = 15.0) -> None:
        self._env = env
        self.timeout = timeout

    def send(self, message: Outgoing, *, now: dt.datetime) -> None:
        env = os.environ if self._env is None else self._env
        name = message.secret_env or ""
        secret = env.get(name) if name else None
        if not secret:
            raise DeliveryError(f"the webhook's secret is not set (environment variable "
                                f"{name or '(none named)'})")
        body = webhook_body(message, now=now)
        timestamp = str(int(now.timestamp() * 1000))
        request = urllib.request.Request(message.address, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "duban-delivery/1",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(secret, timestamp, body),
            KEY_HEADER: message.key,
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace") if exc.fp is not None else ""
            raise DeliveryError(f"webhook answered HTTP {exc.code} {detail}".rstrip(),
                                permanent=400 <= exc.code < 500 and exc.code not in _TRANSIENT
                                ) from exc
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            raise DeliveryError(f"webhook {message.address}: {exc!r}") from exc
