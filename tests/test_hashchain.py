"""Canonical JSON and the hash chain (pure: no database)."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.canonical import MAX_SAFE_INT, CanonicalError, canonical_json
from domain.hashchain import (
    EVENT_DOMAIN,
    GENESIS_DOMAIN,
    MERKLE_EMPTY_DOMAIN,
    MERKLE_LEAF_DOMAIN,
    MERKLE_NODE_DOMAIN,
    ChainVerifier,
    chain,
    event_hash,
    genesis_hash,
    head_leaf,
    heads_root,
    merkle_root,
    verify_chain,
)

# --- strategies ---------------------------------------------------------------------------

# Keys mix ordinary text with the characters where UTF-16 and code-point order disagree
# (U+E000..U+FFFF against astral ones), and with characters JCS escapes.
tricky_chars = st.sampled_from(
    ["a", "B", "é", "\x00", "\x1f", "\x7f", '"', "\\", "\ue000", "\uffff", "😀", "\U00010000", "中"]
)
keys = st.one_of(st.text(max_size=8), st.text(alphabet=tricky_chars, max_size=4))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT),
    st.text(),
    st.text(alphabet=tricky_chars),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(keys, json_values, max_size=8)
# Smaller bodies for chains: many events each, and generation dominates the test's time.
bodies = st.dictionaries(
    keys, st.recursive(scalars, lambda c: st.lists(c, max_size=3), max_leaves=4), max_size=4
)


def make_events(task_id: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **body,
            "task_id": task_id,
            "seq": i,
            "type": "Generated",
            "at": f"2026-11-{1 + i % 28:02d}T10:00:00Z",
            "actor": "tester",
            "v": 1,
        }
        for i, body in enumerate(bodies, start=1)
    ]


def rows_of(
    task_id: str, events: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any], str, str]]:
    return [(e["seq"], e, p, h) for e, (p, h) in zip(events, chain(task_id, events), strict=True)]


# --- canonical JSON -------------------------------------------------------------------------


@settings(max_examples=400)
@given(json_values)
def test_canonical_json_matches_rfc8785_reference(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(json_objects, st.randoms())
def test_canonical_json_is_stable_under_key_order(obj: dict[str, Any], rnd: random.Random) -> None:
    items = list(obj.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(obj)


@given(json_values)
def test_canonical_json_round_trips(value: Any) -> None:
    encoded = canonical_json(value)
    assert canonical_json(json.loads(encoded)) == encoded


def test_canonical_json_known_bytes() -> None:
    assert canonical_json({"b": [1, True, None], "a": "中\n\x01"}) == (
        b'{"a":"\xe4\xb8\xad\\n\\u0001","b":[1,true,null]}'
    )
    # UTF-16 ordering: U+1F600 (D83D DE00) sorts before U+E000.
    assert canonical_json({"\ue000": 1, "😀": 2}) == '{"😀":2,"\ue000":1}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        {"a": [1, {"b": 0.0}]},
        [float("nan")],
        {"x": float("inf")},
        {"n": MAX_SAFE_INT + 1},
        {"n": -MAX_SAFE_INT - 1},
        {1: "non-string key"},
        {"s": {1, 2}},
        {"b": b"bytes"},
        {"lone": "\ud800"},
    ],
)
def test_canonical_json_rejects_values_outside_the_domain(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)


def test_float_error_names_the_path() -> None:
    with pytest.raises(CanonicalError, match=r"\$\.a\[1\]\.b"):
        canonical_json({"a": [1, {"b": 2.5}]})


@given(json_objects, st.floats(allow_nan=True, allow_infinity=True))
def test_a_float_anywhere_is_rejected(obj: dict[str, Any], f: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({**obj, "nested": [obj, {"deep": [f]}]})


# --- chain ----------------------------------------------------------------------------------


def test_genesis_and_event_hash_follow_the_documented_formula() -> None:
    assert genesis_hash("T-1") == hashlib.sha256(GENESIS_DOMAIN + b"T-1").hexdigest()
    prev = genesis_hash("T-1")
    event: dict[str, Any] = {
        "task_id": "T-1",
        "seq": 1,
        "type": "X",
        "at": "2026-11-23T10:00:00Z",
        "actor": "a",
        "v": 1,
    }
    expected = hashlib.sha256(EVENT_DOMAIN + bytes.fromhex(prev) + rfc8785.dumps(event)).hexdigest()
    assert event_hash(prev, event) == expected
    assert chain("T-1", [event]) == [(prev, expected)]


def test_genesis_binds_the_task() -> None:
    events = make_events("A", [{}])
    assert chain("A", events)[0][1] != chain("B", make_events("B", [{}]))[0][1]


def test_event_hash_rejects_floats() -> None:
    with pytest.raises(ValueError):
        event_hash(genesis_hash("T"), {"x": 0.1})


@settings(max_examples=100)
@given(st.lists(bodies, max_size=12))
def test_any_chain_verifies(generated: list[dict[str, Any]]) -> None:
    events = make_events("T-prop", generated)
    rows = rows_of("T-prop", events)
    verdict = verify_chain("T-prop", rows)
    assert verdict.ok, verdict
    assert verdict.checked == len(events)
    if events:
        assert verdict.head == (len(events), rows[-1][3])
        assert verify_chain("T-prop", rows, expected_head=(len(events), rows[-1][3])).ok


@settings(max_examples=100)
@given(st.lists(bodies, min_size=1, max_size=10), st.data())
def test_any_single_payload_change_is_found_at_its_seq(
    generated: list[dict[str, Any]], data: st.DataObject
) -> None:
    events = make_events("T-prop", generated)
    rows = rows_of("T-prop", events)
    k = data.draw(st.integers(min_value=1, max_value=len(events)))
    seq, event, prev, h = rows[k - 1]
    tampered = dict(event)
    tampered[data.draw(keys.filter(lambda key: key not in ("seq", "task_id")))] = data.draw(scalars)
    if canonical_json(tampered) == canonical_json(event):
        return  # drew the value it already had
    rows[k - 1] = (seq, tampered, prev, h)
    verdict = verify_chain("T-prop", rows)
    assert not verdict.ok
    assert verdict.first_bad_seq == k


def _twenty() -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any], str, str]]]:
    events = make_events("T", [{"i": i, "note": f"第{i}条"} for i in range(20)])
    return events, rows_of("T", events)


def test_edits_deletions_swaps_and_truncation_are_all_found() -> None:
    events, rows = _twenty()
    n = len(rows)
    head = (n, rows[-1][3])
    for k in range(1, n + 1):
        seq, event, prev, h = rows[k - 1]
        cases = {
            "payload": (seq, {**event, "note": "改"}, prev, h),
            "prev": (seq, event, "0" * 64, h),
            "hash": (seq, event, prev, "f" * 64),
            "event seq": (seq, {**event, "seq": seq + 100}, prev, h),
            "event task": (seq, {**event, "task_id": "other"}, prev, h),
            "row seq": (seq + 100, event, prev, h),
        }
        for name, row in cases.items():
            tampered = [*rows[: k - 1], row, *rows[k:]]
            verdict = verify_chain("T", tampered, expected_head=head)
            assert not verdict.ok and verdict.first_bad_seq == k, (name, k, verdict)
        deleted = rows[: k - 1] + rows[k:]
        verdict = verify_chain("T", deleted, expected_head=head)
        assert not verdict.ok and verdict.first_bad_seq == k, ("delete", k, verdict)
    for i in range(n):
        for j in range(i + 1, n):
            swapped = list(rows)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            verdict = verify_chain("T", swapped)
            assert not verdict.ok and verdict.first_bad_seq == i + 1


def test_truncation_needs_a_known_head() -> None:
    _, rows = _twenty()
    head = (20, rows[-1][3])
    for keep in range(20):
        assert verify_chain("T", rows[:keep]).ok  # a shorter chain is still a chain
        verdict = verify_chain("T", rows[:keep], expected_head=head)
        assert not verdict.ok
        assert verdict.first_bad_seq == keep + 1
        assert verdict.reason == f"truncated: store ends at seq {keep}, checkpoint says 20"


def test_rewritten_chain_is_caught_by_the_checkpoint() -> None:
    events, rows = _twenty()
    head = (20, rows[-1][3])
    rewritten = rows_of("T", [*events[:5], {**events[5], "note": "伪造"}, *events[6:]])
    assert verify_chain("T", rewritten).ok  # internally consistent...
    verdict = verify_chain("T", rewritten, expected_head=head)
    assert not verdict.ok and verdict.first_bad_seq == 20  # ...but not the head we kept
    assert verify_chain("T", rows, expected_head=(10, rows[9][3])).ok  # an older checkpoint


def test_unhashable_event_is_a_verdict_not_a_crash() -> None:
    _, rows = _twenty()
    seq, event, prev, h = rows[3]
    rows[3] = (seq, {**event, "x": 1.5}, prev, h)
    verdict = verify_chain("T", rows)
    assert not verdict.ok and verdict.first_bad_seq == 4
    assert verdict.reason is not None and "canonicalised" in verdict.reason


def test_verifier_reports_caller_problems_after_chain_checks() -> None:
    _, rows = _twenty()
    verifier = ChainVerifier("T")
    for seq, event, prev, h in rows[:3]:
        assert verifier.feed(seq, event, prev, h)
    seq, event, prev, h = rows[3]
    assert not verifier.feed(seq, event, prev, h, problem="column type disagrees")
    verdict = verifier.verdict()
    assert (verdict.ok, verdict.first_bad_seq, verdict.reason) == (
        False,
        4,
        "column type disagrees",
    )
    assert verdict.head == (3, rows[2][3]) and verdict.checked == 4


# --- Merkle ---------------------------------------------------------------------------------


def _leaf(x: str) -> bytes:
    return hashlib.sha256(MERKLE_LEAF_DOMAIN + bytes.fromhex(x)).digest()


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(MERKLE_NODE_DOMAIN + a + b).digest()


LEAVES = [bytes([i]).hex() * 4 for i in range(1, 8)]


def test_merkle_shapes() -> None:
    a, b, c, d, e = (LEAVES[i] for i in range(5))
    assert merkle_root([]) == hashlib.sha256(MERKLE_EMPTY_DOMAIN).hexdigest()
    assert merkle_root([a]) == _leaf(a).hex()
    assert merkle_root([a, b]) == _node(_leaf(a), _leaf(b)).hex()
    # Odd levels promote the last node unchanged: ((a b) c), and (((a b)(c d)) e).
    assert merkle_root([a, b, c]) == _node(_node(_leaf(a), _leaf(b)), _leaf(c)).hex()
    ab_cd = _node(_node(_leaf(a), _leaf(b)), _node(_leaf(c), _leaf(d)))
    assert merkle_root([a, b, c, d, e]) == _node(ab_cd, _leaf(e)).hex()


def test_merkle_never_duplicates_the_odd_node() -> None:
    a, b, c = LEAVES[:3]
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    assert merkle_root([a, a]) != merkle_root([a])


def test_merkle_separates_leaves_from_nodes() -> None:
    a, b = LEAVES[:2]
    inner = (_leaf(a) + _leaf(b)).hex()  # a leaf whose bytes are an inner node's input
    assert merkle_root([inner]) != merkle_root([a, b])


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10), st.binary(min_size=32, max_size=32), max_size=30
    ),
    st.randoms(),
)
def test_heads_root_is_order_free_and_sensitive_to_every_head(
    heads: dict[str, bytes], rnd: random.Random
) -> None:
    hexed = {k: v.hex() for k, v in heads.items()}
    shuffled = list(hexed.items())
    rnd.shuffle(shuffled)
    root = heads_root(hexed)
    assert heads_root(dict(shuffled)) == root
    for task_id in hexed:
        changed = dict(hexed)
        changed[task_id] = hashlib.sha256(bytes.fromhex(hexed[task_id])).hexdigest()
        assert heads_root(changed) != root


def test_head_leaf_is_unambiguous() -> None:
    h = "ab" * 32
    assert head_leaf("ab", h) != head_leaf("a", "b" + h[1:])
    assert head_leaf("T", h) == (b"\x00\x00\x00\x01T" + bytes.fromhex(h)).hex()
