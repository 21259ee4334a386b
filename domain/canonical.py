"""Canonical JSON (RFC 8785, "JCS") for hashing events.

An event is hashed as the bytes of its canonical JSON, so the same facts always give the same
bytes, whatever the key order or the serializer that stored them. `rfc8785` is the reference;
it is written in pure Python and costs ~25 µs per event, so the usual path uses the C `json`
encoder, which yields the same bytes for our value domain (checked by a property test):

* no floats: events never hold them (JCS number formatting is where encoders disagree most);
  they are rejected, as are NaN/Infinity (also floats);
* integers within ±(2**53 - 1), the range JSON numbers carry exactly (as rfc8785 enforces);
* strings: with ``ensure_ascii=False`` the C encoder escapes exactly what JCS escapes
  (``"``, ``\\`` and U+0000..U+001F, using the short forms \\b \\f \\n \\r \\t and lower-case
  ``\\u00xx`` otherwise) and writes everything else as UTF-8; lone surrogates fail to encode;
* object keys: JCS sorts by UTF-16 code units, ``sort_keys`` by code points. The orders differ
  only when a key holds a character above U+FFFF, so such objects go to the reference encoder.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

__all__ = ["CanonicalError", "MAX_SAFE_INT", "canonical_json"]

MAX_SAFE_INT = 2**53 - 1

_fast_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


class CanonicalError(ValueError):
    """The value cannot be canonicalised (a float, a non-string key, an unsupported type...)."""


def canonical_json(obj: object) -> bytes:
    """RFC 8785 canonical JSON of `obj` as UTF-8 bytes; ValueError (CanonicalError) on floats,
    out-of-range integers, non-string keys, lone surrogates and non-JSON types."""
    if _needs_reference_encoder(obj):
        return rfc8785.dumps(obj)  # type: ignore[arg-type]  # checked by _needs_reference_encoder
    try:
        return _fast_encode(obj).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"string is not valid Unicode (lone surrogate): {exc}") from exc


def _needs_reference_encoder(obj: object) -> bool:
    """Validate the whole value (raising CanonicalError with a JSON path on the first bad one)
    and tell whether some key needs JCS's UTF-16 ordering. Iterative, so that deep nesting
    cannot hit the recursion limit."""
    slow = False
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        kind = type(value)
        # Exact-type checks first: they are the common case and much cheaper than isinstance.
        if kind is str or kind is bool or value is None:
            continue
        if kind is int or isinstance(value, int):
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
                raise CanonicalError(
                    f"integer {value} at {_path(obj, value)} is outside ±(2**53-1)"
                )
            continue
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise CanonicalError(
                        f"object key {key!r} at {_path(obj, value)} is not a string"
                    )
                if not key.isascii() and max(key) > "\uffff":
                    slow = True
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str):
            continue
        elif isinstance(value, float):
            raise CanonicalError(
                f"float {value!r} at {_path(obj, value)}: events must not hold floats "
                "(use an int in a smaller unit, or a decimal string)"
            )
        else:
            raise CanonicalError(f"{kind.__name__} at {_path(obj, value)} is not a JSON value")
    return slow


def _path(root: object, target: object) -> str:
    """JSON path of `target` inside `root`, for error messages only (so the hot path builds none)."""
    todo: list[tuple[object, str]] = [(root, "$")]
    while todo:
        value, path = todo.pop()
        if value is target:
            return path
        if isinstance(value, dict):
            todo.extend((v, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list | tuple):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return "$"
