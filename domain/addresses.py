"""Delivery addresses (通讯录) as a plan names them: e-mail addresses, a webhook (a work-IM group
robot) and the environment variable that holds the webhook's HMAC secret.

Checked by syntax only, at plan load, so that an office hears about a typo before a 督办单 goes
nowhere; whether an address really receives mail is for the delivery worker to find out. The
checks are plain regular expressions (domain/ does no I/O and parses no URLs with urllib).
"""

from __future__ import annotations

import re

# The dot-atom form of RFC 5322 (no quoted local parts, no IP literals: a plan names mailboxes
# an office uses), a domain of at least two labels and a top-level label of letters (or an IDN
# in its xn-- form).
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TOP = re.compile(r"^(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})$")

# scheme://host[:port][/path][?query] — no user:password@ (credentials do not belong in a plan),
# no fragment, no white space.
_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^/?#@:\[\]\s]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<rest>[/?][^#\s]*)?$"
)
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")

MAX_EMAIL = 254
MAX_URL = 2000


def email_problem(address: str) -> str | None:
    """Why `address` is not a usable e-mail address, or None if it is one."""
    if not address or address != address.strip() or any(c.isspace() for c in address):
        return f"e-mail address {address!r} has spaces in it"
    if len(address) > MAX_EMAIL:
        return f"e-mail address {address[:40]!r}... is longer than {MAX_EMAIL} characters"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"e-mail address {address!r} needs the form name@domain"
    if len(local) > 64 or not _LOCAL.match(local):
        return f"e-mail address {address!r}: {local!r} is not a valid name before the @"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(x) for x in labels) or not _TOP.match(labels[-1]):
        return f"e-mail address {address!r}: {domain!r} is not a valid domain"
    return None


def webhook_problem(url: str) -> str | None:
    """Why `url` is not a usable webhook address (https or http), or None if it is one."""
    if len(url) > MAX_URL:
        return f"webhook address is longer than {MAX_URL} characters"
    m = _URL.match(url)
    if m is None:
        if "@" in url.split("?", 1)[0]:
            return (f"webhook address {url!r} carries a user name or password: name the "
                    "secret in webhook_secret_env instead")
        return f"webhook address {url!r} is not a URL such as https://host/path"
    if m["scheme"].lower() not in ("https", "http"):
        return f"webhook address {url!r}: use https:// (or http://), not {m['scheme']}://"
    host = m["host"]
    if not host.startswith("["):
        labels = host.split(".")
        if not _IPV4.match(host) and not all(_LABEL.match(x) for x in labels):
            return f"webhook address {url!r}: {host!r} is not a valid host name"
    if m["port"] is not None and not 0 < int(m["port"]) < 65536:
        return f"webhook address {url!r}: port {m['port']} is out of range"
    return None


def secret_env_problem(name: str) -> str | None:
    """Why `name` is not an environment variable name for a webhook secret, or None."""
    if not ENV_NAME.match(name):
        return (f"{name!r} is not an environment variable name (capital letters, digits and _, "
                "e.g. DUBAN_HOOK_T01); the secret itself never goes in the plan")
    return None
