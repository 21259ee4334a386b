"""Prometheus metrics shared by activities and the worker.

Defined once at import on the default registry (a second definition of the same name would
raise), so every module imports them from here.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

EVENTS_RECORDED = Counter(
    "duban_events_recorded",  # the client appends `_total`
    "Domain events appended to the event store.",
)
COMMANDS_REJECTED = Counter(
    "duban_commands_rejected",
    "Commands rejected by the domain (malformed, unauthorised, invalid in the state).",
    ["reason"],
)
ESCALATIONS = Counter(
    "duban_escalations",
    "Escalation ladder steps taken.",
    ["ladder", "step"],
)
NOTICES_SENT = Counter(
    "duban_notices_sent",
    "Notifications and supervision notices (督办单) sent, by channel.",
    ["channel"],
)
STORE_REFUSALS = Counter(
    "duban_store_refusals",
    "Event batches the store refused for good (a different event at a stored seq, a seq gap, "
    "a malformed batch): the task's workflow decided events that are not recorded.",
    ["kind"],
)
RECORD_LATENCY = Histogram(
    "duban_record_latency_seconds",
    "Time to record a batch of events (append + projections).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> int:
    """Serve /metrics on `addr:port` in a daemon thread; port 0 picks a free one.
    Returns the bound port."""
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_port)
