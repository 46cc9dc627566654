"""Tracing: off unless asked for, W3C context that survives every carrier, and the RPC interceptors'
spans and parent links (checked with an in-memory exporter, the interceptors given its tracer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import Headers, RequestContext
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, TraceState

import ironflow
from ironflow._execution import execute
from ironflow.services.core import telemetry
from ironflow.services.core.errors import ServiceError
from ironflow.v1 import runs_pb2
from tests.otlp_receiver import OtlpReceiver
from tests.support import eventually

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable from the environment, and no provider left behind by a test."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    telemetry.shutdown_tracing()
    yield
    telemetry.shutdown_tracing()


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


# -- setup ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "none", ""])
def test_tracing_is_off_by_default_and_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    assert telemetry.setup_tracing("ironflow") is None
    assert not telemetry.tracing_enabled()
    assert telemetry.client_interceptors() == []
    assert telemetry.server_interceptors() == []
    assert isinstance(telemetry.tracer(), trace.NoOpTracer)
    with telemetry.span("anything") as span:
        assert not span.get_span_context().is_valid
    job = runs_pb2.Job(run_id="run_1", function_id="f")
    telemetry.record_dispatch(job, worker_id="w", transport="stream")
    assert dict(job.trace_context) == {}


def test_the_sdk_kill_switch_wins_over_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.setup_tracing("ironflow") is None


def test_console_exporter_names_the_service_unless_otel_service_name_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = telemetry.setup_tracing("ironflow-scheduler")
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "ironflow-scheduler"
    assert telemetry.tracing_enabled()
    assert len(telemetry.client_interceptors()) == 4  # one per call shape
    telemetry.shutdown_tracing()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-engine")
    provider = telemetry.setup_tracing("ironflow-scheduler")
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "checkout-engine"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "zipkin"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
)
def test_a_setting_we_cannot_honour_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ServiceError, match=variable):
        telemetry.setup_tracing("ironflow")
    assert not telemetry.tracing_enabled()


def test_otlp_over_grpc_builds_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    assert telemetry.setup_tracing("ironflow") is not None


async def test_otlp_over_http_exports_to_the_configured_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver:
        for name, value in receiver.env().items():
            monkeypatch.setenv(name, value)
        assert telemetry.setup_tracing("ironflow-ingest") is not None
        with telemetry.span("emit order.placed", attributes={telemetry.ATTR_EVENT_NAME: "order.placed"}):
            pass
        telemetry.shutdown_tracing()  # flushes the batch

        async def arrived() -> bool:
            return bool(receiver.named("emit order.placed"))

        await eventually(arrived, what="the span at the receiver")
        [span] = receiver.named("emit order.placed")
        assert span.service == "ironflow-ingest"
        assert span.attributes[telemetry.ATTR_EVENT_NAME] == "order.placed"


def test_an_injected_provider_wins_and_is_only_flushed_at_shutdown(
    monkeypatch: pytest.MonkeyPatch, memory: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = memory
    assert telemetry.setup_tracing("test", provider=provider) is provider
    # A server starting later keeps it (its setup reads the environment: nothing to do).
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert telemetry.setup_tracing("ironflow") is provider
    with telemetry.span("kept"):
        pass
    telemetry.shutdown_tracing()
    assert not telemetry.tracing_enabled()
    assert [span.name for span in exporter.get_finished_spans()] == ["kept"]
    with provider.get_tracer("test").start_as_current_span("still usable"):
        pass  # not shut down: the test owns it


# -- carriers -------------------------------------------------------------------------------------


def test_traceparent_and_tracestate_round_trip_through_a_carrier(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = memory
    tracer = provider.get_tracer("test")
    remote = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    with tracer.start_as_current_span(
        "inner", context=trace.set_span_in_context(trace.NonRecordingSpan(remote))
    ):
        carrier = telemetry.inject_trace({"subject": "events.order.placed"})
        current = trace.get_current_span().get_span_context()
    assert carrier["subject"] == "events.order.placed"
    assert carrier["traceparent"] == f"00-{remote.trace_id:032x}-{current.span_id:016x}-01"
    assert carrier["tracestate"] == "vendor=value"

    extracted = trace.get_current_span(telemetry.extract_trace(carrier)).get_span_context()
    assert extracted.trace_id == remote.trace_id
    assert extracted.span_id == current.span_id
    assert extracted.is_remote
    assert extracted.trace_state == remote.trace_state


def test_outside_a_trace_nothing_is_injected_or_extracted() -> None:
    assert telemetry.inject_trace({}) == {}
    assert not trace.get_current_span(telemetry.extract_trace({})).get_span_context().is_valid


def test_dispatch_is_a_child_of_the_run_and_becomes_the_parent_the_worker_sees(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    telemetry.setup_tracing("test", provider=provider)
    with telemetry.span("create_run f") as created:
        job = runs_pb2.Job(
            run_id="run_1", function_id="f", attempt=2, trace_context=telemetry.inject_trace({})
        )
    telemetry.record_dispatch(job, worker_id="worker-1", transport="poll")

    dispatched = _by_name(exporter)["dispatch f"]
    assert dispatched.kind == SpanKind.PRODUCER
    assert dispatched.parent is not None
    assert dispatched.parent.span_id == created.get_span_context().span_id
    assert dict(dispatched.attributes or {}) == {
        telemetry.ATTR_RUN_ID: "run_1",
        telemetry.ATTR_FUNCTION_ID: "f",
        telemetry.ATTR_RUN_ATTEMPT: 2,
        telemetry.ATTR_WORKER_ID: "worker-1",
        telemetry.ATTR_WORKER_TRANSPORT: "poll",
    }
    handed_on = trace.get_current_span(telemetry.extract_trace(job.trace_context)).get_span_context()
    assert handed_on.span_id == dispatched.context.span_id
    assert handed_on.trace_id == created.get_span_context().trace_id


# -- server interceptor ----------------------------------------------------------------------------


def _request(service: str, method: str, headers: dict[str, str] | None = None) -> RequestContext[Any, Any]:
    info = MethodInfo(
        name=method,
        service_name=service,
        input=runs_pb2.TriggerRequest,
        output=runs_pb2.TriggerResponse,
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )
    return RequestContext(
        method=info,
        http_method="POST",
        request_headers=Headers({"content-type": "application/grpc", **(headers or {})}),
    )


def _traceparent(tracer: trace.Tracer, name: str) -> tuple[dict[str, str], trace.SpanContext]:
    with tracer.start_as_current_span(name) as caller:
        return telemetry.inject_trace({}), caller.get_span_context()


async def test_a_server_span_continues_the_callers_trace(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    headers, caller = _traceparent(tracer, "caller")
    seen: list[trace.SpanContext] = []

    async def handler(request: Any, ctx: RequestContext[Any, Any]) -> str:
        seen.append(trace.get_current_span().get_span_context())
        return "ok"

    interceptor = telemetry.ServerTracingInterceptor(tracer)
    ctx = _request("ironflow.v1.SchedulerService", "Trigger", headers)
    assert await interceptor.intercept_unary(handler, object(), ctx) == "ok"

    served = _by_name(exporter)["ironflow.v1.SchedulerService/Trigger"]
    assert served.kind == SpanKind.SERVER
    assert served.context.trace_id == caller.trace_id
    assert served.parent is not None
    assert served.parent.span_id == caller.span_id
    assert served.parent.is_remote
    assert seen == [served.context]  # current inside the handler
    assert dict(served.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "ironflow.v1.SchedulerService",
        "rpc.method": "Trigger",
    }
    assert served.status.status_code == StatusCode.UNSET


async def test_server_faults_are_errors_and_caller_mistakes_are_not(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    interceptor = telemetry.ServerTracingInterceptor(provider.get_tracer("test"))

    async def invalid(request: Any, ctx: RequestContext[Any, Any]) -> None:
        raise ConnectError(Code.INVALID_ARGUMENT, "event.id is required")

    async def broken(request: Any, ctx: RequestContext[Any, Any]) -> None:
        try:
            raise KeyError("bug")
        except KeyError as exc:
            raise ConnectError(Code.INTERNAL, "internal error") from exc

    with pytest.raises(ConnectError):
        await interceptor.intercept_unary(invalid, object(), _request("ironflow.v1.EventService", "Emit"))
    with pytest.raises(ConnectError):
        await interceptor.intercept_unary(broken, object(), _request("ironflow.v1.EventService", "GetEvent"))

    spans = _by_name(exporter)
    refused = spans["ironflow.v1.EventService/Emit"]
    assert refused.status.status_code == StatusCode.UNSET
    assert refused.attributes is not None
    assert refused.attributes["rpc.connect_rpc.error_code"] == "invalid_argument"
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    failed = spans["ironflow.v1.EventService/GetEvent"]
    assert failed.status.status_code == StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in failed.events if event.attributes] == ["KeyError"]


async def test_streams_are_traced_for_their_whole_length(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    headers, caller = _traceparent(tracer, "caller")
    seen: list[trace.SpanContext] = []

    async def handler(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[int]:
        for item in range(3):
            seen.append(trace.get_current_span().get_span_context())
            yield item

    async def requests() -> AsyncIterator[int]:
        yield 1

    interceptor = telemetry.ServerTracingInterceptor(tracer)
    ctx = _request("ironflow.v1.SubscriptionService", "Subscribe", headers)
    assert [item async for item in interceptor.intercept_server_stream(handler, object(), ctx)] == [0, 1, 2]
    ctx = _request("ironflow.v1.SubscriptionService", "SubscribeStream", headers)
    responses = interceptor.intercept_bidi_stream(handler, requests(), ctx)
    assert await anext(responses) == 0
    await responses.aclose()  # the client went away mid-stream

    spans = _by_name(exporter)
    for name in ("Subscribe", "SubscribeStream"):
        served = spans[f"ironflow.v1.SubscriptionService/{name}"]
        assert served.parent is not None
        assert served.parent.span_id == caller.span_id
        assert served.end_time is not None
    subscribe = spans["ironflow.v1.SubscriptionService/Subscribe"]
    assert seen[:3] == [subscribe.context] * 3
    assert not trace.get_current_span().get_span_context().is_valid  # nothing leaked out


async def test_job_plumbing_is_traced_only_inside_a_callers_trace(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    interceptor = telemetry.ServerTracingInterceptor(tracer)

    async def handler(request: Any, ctx: RequestContext[Any, Any]) -> str:
        return "ok"

    await interceptor.intercept_unary(
        handler, object(), _request("ironflow.v1.SchedulerService", "LeaseJobs")
    )
    assert exporter.get_finished_spans() == ()
    headers, _ = _traceparent(tracer, "caller")
    ctx = _request("ironflow.v1.SchedulerService", "LeaseJobs", headers)
    await interceptor.intercept_unary(handler, object(), ctx)
    assert "ironflow.v1.SchedulerService/LeaseJobs" in _by_name(exporter)


# -- client interceptors ---------------------------------------------------------------------------


class _FinishedCall:
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def details(self) -> str:
        return "peer said no"


def _details(method: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(method, 10.0, grpc.aio.Metadata(("x-other", "kept")), None, None)


async def test_a_client_call_inside_a_trace_sends_its_span_in_the_metadata(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    interceptors = telemetry.client_interceptors(tracer)
    unary = next(i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor))
    sent: list[Any] = []

    async def continuation(details: Any, request: Any) -> _FinishedCall:
        sent.append(details)
        return _FinishedCall(grpc.StatusCode.UNAVAILABLE)

    with tracer.start_as_current_span("emit order.placed") as outer:
        await unary.intercept_unary_unary(
            continuation, _details("/ironflow.v1.SchedulerService/Trigger"), object()
        )

    async def ended() -> ReadableSpan | None:
        return _by_name(exporter).get("ironflow.v1.SchedulerService/Trigger")

    called = await eventually(ended, what="the client span to end with its call")
    assert called.kind == SpanKind.CLIENT
    assert called.parent is not None
    assert called.parent.span_id == outer.get_span_context().span_id
    assert called.status.status_code == StatusCode.ERROR
    assert called.attributes is not None
    assert called.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    metadata = dict(sent[0].metadata)
    assert metadata["x-other"] == "kept"
    parent = trace.get_current_span(telemetry.extract_trace(metadata)).get_span_context()
    assert (parent.trace_id, parent.span_id) == (called.context.trace_id, called.context.span_id)


async def test_a_client_call_outside_a_trace_is_left_alone(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    interceptors = telemetry.client_interceptors(provider.get_tracer("test"))
    unary = next(i for i in interceptors if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor))
    details = _details("/ironflow.v1.SchedulerService/LeaseJobs")
    sent: list[Any] = []

    async def continuation(details: Any, request: Any) -> _FinishedCall:
        sent.append(details)
        return _FinishedCall(grpc.StatusCode.OK)

    await unary.intercept_unary_unary(continuation, details, object())
    assert sent == [details]
    assert exporter.get_finished_spans() == ()


# -- the worker (SDK) ------------------------------------------------------------------------------


class _AcceptingChannel:
    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        return True


async def test_the_worker_traces_its_run_and_each_step_it_executes_but_not_replays(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")

    @ironflow.function(id="charge-order", triggers=[ironflow.on_event("order.placed")])
    async def handler(ctx: ironflow.Context) -> None:
        await ctx.step.run("reserve", lambda: 1)  # memoized: replayed, not run
        await ctx.step.run("charge", lambda: 2)
        await ctx.step.run("ship", _no_stock)

    with tracer.start_as_current_span("dispatch charge-order") as dispatched:
        carrier = telemetry.inject_trace({})
    memo = runs_pb2.MemoizedStep(step_id="reserve", status=runs_pb2.STEP_STATUS_COMPLETED)
    memo.output.number_value = 1
    job = runs_pb2.Job(
        run_id="run_1", function_id="charge-order", attempt=1, steps=[memo], trace_context=carrier
    )
    await execute(job, handler, _AcceptingChannel(), tracer=tracer)

    spans = _by_name(exporter)
    assert "step reserve" not in spans
    run = spans["run charge-order"]
    assert run.kind == SpanKind.CONSUMER
    assert run.context.trace_id == dispatched.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == dispatched.get_span_context().span_id
    assert run.attributes is not None
    assert run.attributes["ironflow.run.outcome"] == "step_failed"
    charged, shipped = spans["step charge"], spans["step ship"]
    for step in (charged, shipped):
        assert step.parent is not None
        assert step.parent.span_id == run.context.span_id
    assert charged.status.status_code == StatusCode.UNSET
    assert shipped.status.status_code == StatusCode.ERROR
    assert shipped.attributes is not None
    assert shipped.attributes["ironflow.step.id"] == "ship"


def _no_stock() -> None:
    raise RuntimeError("out of stock")


async def test_the_worker_runs_untraced_without_a_provider() -> None:
    @ironflow.function(id="f", triggers=[ironflow.on_event("e")])
    async def handler(ctx: ironflow.Context) -> int:
        return int(await ctx.step.run("one", lambda: 1))

    reports: list[runs_pb2.JobReport] = []

    class Channel:
        async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
            reports.append(report)
            return True

    await execute(runs_pb2.Job(run_id="run_1", function_id="f"), handler, Channel())
    assert reports[-1].WhichOneof("outcome") == "completed"
