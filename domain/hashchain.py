"""The per-task hash chain that makes the event record tamper-evident, and a Merkle root over
the heads of many chains (a compact checkpoint an auditor can keep elsewhere).

    h_0 = sha256(GENESIS_DOMAIN || task_id)
    h_n = sha256(EVENT_DOMAIN || h_{n-1} || canonical_json(event_n))

Domain prefixes keep a genesis hash, an event hash and Merkle nodes from ever being confused
for one another. Hashes travel as lower-case hex strings (that is how they are stored).

A chain proves that nothing *inside* it changed; it cannot show that its tail was cut off,
because a shorter chain is still a valid chain. That needs a head remembered elsewhere
(`expected_head`, e.g. from a Merkle checkpoint).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domain.canonical import CanonicalError, canonical_json

__all__ = [
    "EVENT_DOMAIN",
    "GENESIS_DOMAIN",
    "MERKLE_EMPTY_DOMAIN",
    "MERKLE_LEAF_DOMAIN",
    "MERKLE_NODE_DOMAIN",
    "ChainVerdict",
    "ChainVerifier",
    "chain",
    "event_hash",
    "event_hash_canonical",
    "genesis_hash",
    "head_leaf",
    "heads_root",
    "merkle_root",
    "verify_chain",
]

GENESIS_DOMAIN = b"duban/genesis/v1\x00"
EVENT_DOMAIN = b"duban/event/v1\x00"
MERKLE_LEAF_DOMAIN = b"duban/merkle/leaf/v1\x00"
MERKLE_NODE_DOMAIN = b"duban/merkle/node/v1\x00"
MERKLE_EMPTY_DOMAIN = b"duban/merkle/empty/v1\x00"

_sha256 = hashlib.sha256


def genesis_hash(task_id: str) -> str:
    """The chain's anchor: binds the first event to its task, so a chain cannot be moved."""
    return _sha256(GENESIS_DOMAIN + task_id.encode("utf-8")).hexdigest()


def event_hash_canonical(prev_hash_hex: str, canonical: bytes) -> str:
    """Hash of an event given its canonical bytes (lets a verifier reuse stored canonical text)."""
    return _sha256(EVENT_DOMAIN + bytes.fromhex(prev_hash_hex) + canonical).hexdigest()


def event_hash(prev_hash_hex: str, event: Mapping[str, Any]) -> str:
    """sha256(EVENT_DOMAIN || prev || canonical_json(event)) as hex; ValueError on floats."""
    return event_hash_canonical(prev_hash_hex, canonical_json(event))


def chain(task_id: str, events: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(prev_hash, hash) for each event in order, starting from the task's genesis hash."""
    links: list[tuple[str, str]] = []
    prev = genesis_hash(task_id)
    for event in events:
        current = event_hash(prev, event)
        links.append((prev, current))
        prev = current
    return links


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """Outcome of a verification. `first_bad_seq` is the first chain position (1-based) that
    cannot be trusted: everything before it verified. `checked` counts rows examined and
    `head` is the last verified (seq, hash)."""

    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None
    checked: int = 0
    head: tuple[int, str] | None = None


class ChainVerifier:
    """Walks one task's rows in seq order, one `feed` at a time, so that stores can stream
    millions of rows in constant memory and add their own per-row checks (`fail`).

    After the first failure the verdict is fixed and further rows are ignored."""

    __slots__ = ("_bad", "_checked", "_expected_head", "_prev", "_seq", "task_id")

    def __init__(self, task_id: str, expected_head: tuple[int, str] | None = None) -> None:
        self.task_id = task_id
        self._expected_head = expected_head
        self._prev = genesis_hash(task_id)
        self._seq = 0
        self._checked = 0
        self._bad: ChainVerdict | None = None

    @property
    def failed(self) -> bool:
        return self._bad is not None

    @property
    def next_seq(self) -> int:
        """The seq the next row must carry."""
        return self._seq + 1

    def fail(self, reason: str, seq: int | None = None) -> None:
        """Record a failure found by the caller (e.g. a column disagreeing with the payload)."""
        if self._bad is None:
            self._bad = ChainVerdict(
                ok=False,
                first_bad_seq=self.next_seq if seq is None else seq,
                reason=reason,
                checked=self._checked,
                head=self._head(),
            )

    def feed(
        self,
        seq: int,
        event: Mapping[str, Any],
        prev_hash: str,
        hash_: str,
        canonical: bytes | None = None,
        problem: str | None = None,
    ) -> bool:
        """Check one row; True if it extends the chain.

        `canonical`: the stored text `event` was parsed from. It is trusted only if it
        reproduces `hash_` (then it *is* the canonical text that was hashed); otherwise the
        event is re-canonicalised, since stored text may have been reformatted harmlessly.
        `problem`: a defect the caller found in this row (e.g. a copied column disagreeing
        with the payload), reported at this row's position if the chain itself holds."""
        if self._bad is not None:
            return False
        self._checked += 1
        expected = self._seq + 1
        if seq != expected:
            self.fail(f"seq gap: expected seq {expected}, found {seq}", expected)
            return False
        event_seq = event.get("seq")
        if type(event_seq) is not int or event_seq != seq:
            self.fail(f"event seq {event_seq!r} does not match row seq {seq}", expected)
            return False
        if event.get("task_id") != self.task_id:
            self.fail(
                f"event task_id {event.get('task_id')!r} does not match {self.task_id!r}", expected
            )
            return False
        if prev_hash != self._prev:
            self.fail(f"prev_hash does not link to the hash of seq {seq - 1}", expected)
            return False
        try:
            recomputed = None
            if canonical is not None:
                recomputed = event_hash_canonical(self._prev, canonical)
            if recomputed != hash_:
                recomputed = event_hash(self._prev, event)
        except CanonicalError as exc:
            self.fail(f"event cannot be canonicalised: {exc}", expected)
            return False
        if recomputed != hash_:
            self.fail("hash mismatch: the event or its stored hash was altered", expected)
            return False
        if self._expected_head is not None:
            head_seq, head_hash = self._expected_head
            if seq == head_seq and hash_ != head_hash:
                self.fail(
                    f"hash at seq {seq} differs from the checkpoint: the chain was rewritten "
                    f"at or before seq {seq}",
                    seq,
                )
                return False
        if problem is not None:
            self.fail(problem, expected)
            return False
        self._seq = seq
        self._prev = hash_
        return True

    def _head(self) -> tuple[int, str] | None:
        return (self._seq, self._prev) if self._seq else None

    def verdict(self) -> ChainVerdict:
        """Final verdict; call after the last row (it checks the tail against expected_head)."""
        if self._bad is not None:
            return self._bad
        if self._expected_head is not None and self._seq < self._expected_head[0]:
            return ChainVerdict(
                ok=False,
                first_bad_seq=self._seq + 1,
                reason=f"truncated: store ends at seq {self._seq}, "
                f"checkpoint says {self._expected_head[0]}",
                checked=self._checked,
                head=self._head(),
            )
        return ChainVerdict(ok=True, checked=self._checked, head=self._head())


def verify_chain(
    task_id: str,
    rows: Iterable[Sequence[Any]],
    expected_head: tuple[int, str] | None = None,
) -> ChainVerdict:
    """Verify rows of (seq, event_dict, prev_hash, hash) in seq order: contiguity from 1, the
    event's own seq and task_id, prev links, recomputed hashes and, if given, the known head."""
    verifier = ChainVerifier(task_id, expected_head)
    for seq, event, prev_hash, hash_ in rows:
        if not verifier.feed(seq, event, prev_hash, hash_):
            break
    return verifier.verdict()


# --- Merkle root over chain heads -----------------------------------------------------------
#
# Leaves are hashed with MERKLE_LEAF_DOMAIN and inner nodes with MERKLE_NODE_DOMAIN, so a leaf
# can never be passed off as an inner node (second-preimage attack). On a level with an odd
# number of nodes the last one is *promoted* unchanged to the next level rather than paired
# with a copy of itself: duplicating would give [a, b, c] and [a, b, c, c] the same root
# (the Bitcoin CVE-2012-2459 ambiguity). The resulting shape is that of RFC 6962 §2.1.


def merkle_root(leaves: list[str]) -> str:
    """Root (hex) of a binary sha256 Merkle tree over hex-encoded leaves, in the given order.
    Pass leaves sorted (see `heads_root`) so that the root does not depend on listing order."""
    if not leaves:
        return _sha256(MERKLE_EMPTY_DOMAIN).hexdigest()
    level = [_sha256(MERKLE_LEAF_DOMAIN + bytes.fromhex(leaf)).digest() for leaf in leaves]
    while len(level) > 1:
        paired = [
            _sha256(MERKLE_NODE_DOMAIN + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])  # promote the odd node; never duplicate it
        level = paired
    return level[0].hex()


def head_leaf(task_id: str, head_hash: str) -> str:
    """Hex encoding of a (task_id, head_hash) leaf: 4-byte big-endian length of the UTF-8
    task_id, the task_id, then the 32-byte head hash (length-prefixed, so unambiguous)."""
    tid = task_id.encode("utf-8")
    return (len(tid).to_bytes(4, "big") + tid + bytes.fromhex(head_hash)).hex()


def heads_root(heads: Mapping[str, str]) -> str:
    """Merkle root over {task_id: head_hash}, leaves sorted by task_id."""
    return merkle_root([head_leaf(task_id, heads[task_id]) for task_id in sorted(heads)])
