"""One run's trace across the processes of the distributed topology."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import ironflow
from tests.cluster.conftest import running_cluster
from tests.conftest import unique_name
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_a_runs_trace_has_spans_from_every_service_and_the_worker(tmp_path: Path) -> None:
    """Every service replica exports to one OTLP collector (the standard OTEL_* variables); a worker
    exports its own spans there too. The event is emitted through the front door, triggered by a
    scheduler replica over gRPC, dispatched by a gateway replica and run by the worker: the spans of
    ingest, scheduler, worker-gateway and the worker all carry one trace id, linked parent to child
    across the process boundaries (gRPC metadata, the stored run, the job)."""
    function_id, event = unique_name("traced"), unique_name("traced")

    @ironflow.function(id=function_id, triggers=[ironflow.on_event(event)])
    async def traced(ctx: ironflow.Context) -> int:
        first = await ctx.step.run("first", lambda: 1)
        return await ctx.step.run("second", lambda: first + 1)

    with OtlpReceiver() as receiver:
        worker_tracing = TracerProvider(resource=Resource.create({"service.name": "order-worker"}))
        worker_tracing.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint), schedule_delay_millis=100)
        )
        with running_cluster(tmp_path / "cluster", env=receiver.env()) as cluster:
            worker = ironflow.Worker(cluster.url, [traced], tracer_provider=worker_tracing)
            worker.start()
            try:
                async with ironflow.Client(cluster.url) as client:
                    await eventually(lambda: client.get_function(function_id), within=30, what="registration")
                    results = await client.emit_sync(event, {"orderId": "o1"}, timeout="30s")
                assert [result.status for result in results] == ["completed"]
            finally:
                await worker.stop()
                await asyncio.to_thread(worker_tracing.shutdown)
            expected = {
                ("ironflow-ingest", "ironflow.v1.EventService/EmitSync"),
                ("ironflow-ingest", "ironflow.v1.SchedulerService/Trigger"),  # the client side
                ("ironflow-scheduler", "ironflow.v1.SchedulerService/Trigger"),
                ("ironflow-scheduler", f"create_run {function_id}"),
                ("ironflow-worker-gateway", f"dispatch {function_id}"),
                ("order-worker", f"run {function_id}"),
                ("order-worker", "step first"),
                ("order-worker", "step second"),
            }

            async def arrived() -> list[ReceivedSpan] | None:
                run_trace = {s.trace_id for s in receiver.named(f"create_run {function_id}")}
                spans = [s for s in receiver.spans() if s.trace_id in run_trace]
                return spans if expected <= {(s.service, s.name) for s in spans} else None

            spans = await eventually(arrived, within=30, what="the run's spans at the collector")
    assert len({span.trace_id for span in spans}) == 1
    by_name = {(span.service, span.name): span for span in spans}
    ids = {span.span_id for span in spans}
    for key in expected - {("ironflow-ingest", "ironflow.v1.EventService/EmitSync")}:
        assert by_name[key].parent_span_id in ids, f"{key} is not linked into the trace"
    assert (
        by_name[("order-worker", f"run {function_id}")].parent_span_id
        == by_name[("ironflow-worker-gateway", f"dispatch {function_id}")].span_id
    )
