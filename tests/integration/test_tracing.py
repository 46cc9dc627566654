"""One trace per run: from the emit through triggering, run creation and dispatch to the worker's run
and every step it executes, within one process (spans nest) and across processes (W3C trace context
in gRPC metadata, in the run row and in the job).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import ironflow
from ironflow.services.core.firehose import FirehoseMessage
from ironflow.services.core.grpc_client import service_channel
from ironflow.services.core.telemetry import extract_trace, setup_tracing, shutdown_tracing
from ironflow.services.ingest import RemoteScheduler, StoredEvent
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer, running_server, server_settings
from tests.integration.processes import start_server
from tests.integration.workers import running_worker, wait_for_run
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import eventually, free_port


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """An in-memory exporter installed as the services' tracing (and handed to workers)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setup_tracing("ironflow", provider=provider)
    try:
        yield provider, exporter
    finally:
        shutdown_tracing()
        provider.shutdown()


@pytest.fixture
async def traced_server(
    memory: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> AsyncIterator[LiveServer]:
    async with running_server(server_settings("embedded", tmp_path)) as server:
        yield server


def two_steps(event: str) -> ironflow.Function:
    @ironflow.function(id=unique_name("traced"), triggers=[ironflow.on_event(event)])
    async def handler(ctx: ironflow.Context) -> int:
        first = await ctx.step.run("first", lambda: 1)
        second = await ctx.step.run("second", lambda: 2)
        return int(first) + int(second)

    return handler


async def finished(exporter: InMemorySpanExporter, names: Sequence[str]) -> dict[str, ReadableSpan]:
    """The named spans once all have ended (the worker's run span ends just after its report)."""

    async def ended() -> dict[str, ReadableSpan] | None:
        spans = {span.name: span for span in exporter.get_finished_spans()}
        return spans if all(name in spans for name in names) else None

    return await eventually(ended, what=f"spans {', '.join(names)}")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("transport", ["stream", "poll"])
async def test_one_trace_follows_a_run_from_the_emit_to_every_step(
    traced_server: LiveServer, memory: tuple[TracerProvider, InMemorySpanExporter], transport: str
) -> None:
    provider, exporter = memory
    event = unique_name("order")
    handler = two_steps(event)
    async with (
        ironflow.Client(traced_server.url) as client,
        running_worker(traced_server, [handler], transport=transport, tracer_provider=provider),
    ):
        emitted = await client.emit(event, {"orderId": "o1"})
        run = await wait_for_run(client, emitted.run_ids[0])
    assert run.status == "completed", run.error

    names = {
        "ingest": "ironflow.v1.EventService/Emit",
        "emit": f"emit {event}",
        "scheduler": f"create_run {handler.id}",
        "gateway": f"dispatch {handler.id}",
        "worker": f"run {handler.id}",
        "first": "step first",
        "second": "step second",
    }
    ended = await finished(exporter, list(names.values()))
    spans = {key: ended[name] for key, name in names.items()}
    assert len({span.context.trace_id for span in spans.values()}) == 1, "one trace id for the whole run"

    # Parent links: Emit (SERVER) -> emit -> create_run -> dispatch -> run -> each step.
    assert spans["ingest"].kind == SpanKind.SERVER
    assert spans["ingest"].parent is None
    assert parent_of(spans["emit"]) == spans["ingest"].context.span_id
    assert parent_of(spans["scheduler"]) == spans["emit"].context.span_id
    assert parent_of(spans["gateway"]) == spans["scheduler"].context.span_id
    assert parent_of(spans["worker"]) == spans["gateway"].context.span_id
    assert parent_of(spans["first"]) == spans["worker"].context.span_id
    assert parent_of(spans["second"]) == spans["worker"].context.span_id

    assert spans["emit"].attributes is not None
    assert spans["emit"].attributes["ironflow.event.id"] == emitted.event_id
    assert spans["scheduler"].attributes is not None
    assert spans["scheduler"].attributes["ironflow.run.id"] == run.id
    assert spans["gateway"].attributes is not None
    assert spans["gateway"].attributes["ironflow.worker.transport"] == transport
    assert spans["worker"].attributes is not None
    assert spans["worker"].attributes["ironflow.run.outcome"] == "completed"
    assert spans["worker"].kind == SpanKind.CONSUMER

    # The event's firehose entry carries the emit's context for subscribers.
    stream = await traced_server.stream()
    entries = await stream.read(traced_server.firehose, after="0-0", count=100_000)
    [entry] = [e for e in entries if FirehoseMessage.decode(e.fields).event_id == emitted.event_id]
    carried = trace.get_current_span(extract_trace(entry.fields)).get_span_context()
    assert carried.trace_id == spans["emit"].context.trace_id
    assert carried.span_id == spans["emit"].context.span_id


async def test_a_run_triggered_over_grpc_continues_the_callers_trace(
    traced_server: LiveServer, memory: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Ingest's own client for the scheduler (the distributed shape's hop), through a real grpcio
    channel: the Trigger server span is a child of the call's CLIENT span by its metadata, and the
    run it creates, dispatched later from another request, stays in that trace."""
    provider, exporter = memory
    event = unique_name("order")
    handler = two_steps(event)
    channel = service_channel(traced_server.url, idempotent={})
    stored = StoredEvent(
        id=unique_name("evt"),
        namespace="events",
        name=event,
        data={},
        metadata={},
        idempotency_key=None,
        created_at=datetime.now(UTC),
        position=0,
        stream_sequence=None,
        run_ids=None,
    )
    try:
        async with (
            ironflow.Client(traced_server.url) as client,
            running_worker(traced_server, [handler], transport="stream", tracer_provider=provider),
        ):
            with provider.get_tracer("test").start_as_current_span("ingest") as ingest:
                [run_id] = await RemoteScheduler(channel).trigger(stored)
            run = await wait_for_run(client, run_id)
    finally:
        await channel.close()
    assert run.status == "completed", run.error

    trigger = "ironflow.v1.SchedulerService/Trigger"
    spans = await finished(
        exporter, [trigger, f"create_run {handler.id}", f"run {handler.id}", "step second"]
    )
    called = [s for s in exporter.get_finished_spans() if s.name == trigger and s.kind == SpanKind.CLIENT]
    served = [s for s in exporter.get_finished_spans() if s.name == trigger and s.kind == SpanKind.SERVER]
    assert len(called) == 1
    assert len(served) == 1
    assert parent_of(called[0]) == ingest.get_span_context().span_id
    assert parent_of(served[0]) == called[0].context.span_id
    assert served[0].parent is not None
    assert served[0].parent.is_remote
    assert parent_of(spans[f"create_run {handler.id}"]) == served[0].context.span_id
    trace_id = ingest.get_span_context().trace_id
    assert spans[f"run {handler.id}"].context.trace_id == trace_id
    assert spans["step second"].context.trace_id == trace_id


async def test_server_and_worker_processes_export_one_trace_over_otlp(tmp_path: Path) -> None:
    """`ironflow serve` exports through OTLP/HTTP as configured by the standard variables; a worker in
    another process (this one) exports its spans to the same collector, in the same trace."""
    event = unique_name("order")
    handler = two_steps(event)
    with OtlpReceiver() as receiver:
        port = free_port()
        server = await start_server(tmp_path, port, env=receiver.env())
        worker_tracing = TracerProvider(resource=Resource.create({"service.name": "ironflow-test-worker"}))
        worker_tracing.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint), schedule_delay_millis=100)
        )
        url = f"http://127.0.0.1:{port}"
        try:
            worker = ironflow.Worker(url, [handler], tracer_provider=worker_tracing)
            worker.start()

            async def connected() -> bool:
                return worker.connected.is_set()

            await eventually(connected, what="the worker to connect")
            async with ironflow.Client(url) as client:
                emitted = await client.emit(event, {"orderId": "o1"})
                run = await wait_for_run(client, emitted.run_ids[0])
            await worker.stop()
            assert run.status == "completed", run.error

            expected = {
                ("ironflow", "ironflow.v1.EventService/Emit"),
                ("ironflow", f"emit {event}"),
                ("ironflow", f"create_run {handler.id}"),
                ("ironflow", f"dispatch {handler.id}"),
                ("ironflow-test-worker", f"run {handler.id}"),
                ("ironflow-test-worker", "step first"),
                ("ironflow-test-worker", "step second"),
            }

            async def arrived() -> list[ReceivedSpan] | None:
                spans = [s for s in receiver.spans() if (s.service, s.name) in expected]
                return spans if {(s.service, s.name) for s in spans} == expected else None

            spans = await eventually(arrived, within=20, what="every span at the collector")
        finally:
            await asyncio.to_thread(worker_tracing.shutdown)
            if server.returncode is None:
                server.terminate()
                await server.wait()

    assert len({span.trace_id for span in spans}) == 1, spans
    by_name = {span.name: span for span in spans}
    assert by_name[f"run {handler.id}"].parent_span_id == by_name[f"dispatch {handler.id}"].span_id
