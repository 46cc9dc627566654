"""Debounce and batching as declared (SDK), validated (registry), compiled (scheduler), and what a
handler sees of a batch (`ctx.events`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import ironflow
from ironflow._execution import execute
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.core.protojson import dict_to_struct
from ironflow.services.registry._validation import normalise_definition
from ironflow.services.scheduler._accumulation import BatchingRule, DebounceRule, compile_accumulation
from ironflow.v1 import common_pb2, functions_pb2, runs_pb2


async def _noop(ctx: ironflow.Context) -> None:
    return None


def test_the_decorator_puts_debounce_and_batching_in_the_definition() -> None:
    debounced = ironflow.function(
        id="f",
        triggers=[ironflow.on_event("doc.saved")],
        debounce=ironflow.Debounce(period="30s", key="event.data.docId", max_wait="5m"),
    )(_noop).definition()
    assert debounced.debounce.period.ToTimedelta() == timedelta(seconds=30)
    assert debounced.debounce.max_wait.ToTimedelta() == timedelta(minutes=5)
    assert debounced.debounce.key == "event.data.docId"
    assert not debounced.HasField("batching")

    batched = ironflow.function(
        id="g",
        triggers=[ironflow.on_event("row.inserted")],
        batching=ironflow.Batching(max_size=50, timeout=2.5),
    )(_noop).definition()
    assert (batched.batching.max_size, batched.batching.timeout.ToTimedelta()) == (50, timedelta(seconds=2.5))
    assert batched.batching.key == ""
    assert not batched.HasField("debounce")

    plain = ironflow.function(id="h", triggers=[ironflow.on_event("x")])(_noop).definition()
    assert not plain.HasField("debounce")
    assert not plain.HasField("batching")
    assert not ironflow.Debounce(period=1).to_proto().HasField("max_wait")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ironflow.Debounce(period=0), "debounce.period"),
        (lambda: ironflow.Debounce(period="soon"), "debounce.period"),
        (lambda: ironflow.Debounce(period="8d"), "debounce.period"),
        (lambda: ironflow.Debounce(period="1m", max_wait="30s"), "debounce.max_wait"),
        (lambda: ironflow.Debounce(period="1m", key=""), "debounce.key"),
        (lambda: ironflow.Batching(max_size=0, timeout="1s"), "batching.max_size"),
        (lambda: ironflow.Batching(max_size=1001, timeout="1s"), "batching.max_size"),
        (lambda: ironflow.Batching(max_size=True, timeout="1s"), "batching.max_size"),
        (lambda: ironflow.Batching(max_size=10, timeout=0), "batching.timeout"),
        (lambda: ironflow.Batching(max_size=10, timeout="1s", key=""), "batching.key"),
        (lambda: ironflow.function(id="f", debounce="30s")(_noop), "debounce"),
        (lambda: ironflow.function(id="f", batching=10)(_noop), "batching"),
        (
            lambda: ironflow.function(
                id="f",
                debounce=ironflow.Debounce(period="1s"),
                batching=ironflow.Batching(max_size=2, timeout="1s"),
            )(_noop),
            "batching",
        ),
    ],
)
def test_the_sdk_refuses_bad_settings_naming_the_field(make: object, field: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make()


def _normalised(**controls: object) -> functions_pb2.FunctionDefinition:
    definition = functions_pb2.FunctionDefinition(id="f", **controls)
    return normalise_definition(
        definition, field="functions[0]", default_endpoint_url="", now=datetime.now(UTC)
    )


def test_registration_accepts_the_bounds() -> None:
    longest = functions_pb2.Debounce(key="event.data.id")
    longest.period.FromTimedelta(timedelta(days=7))
    longest.max_wait.FromTimedelta(timedelta(days=7))
    assert _normalised(debounce=longest).debounce == longest
    largest = functions_pb2.Batching(max_size=1000)
    largest.timeout.FromTimedelta(timedelta(seconds=1))
    assert _normalised(batching=largest).batching == largest


def test_registration_refuses_a_throttle_beside_batching() -> None:
    batching = functions_pb2.Batching(max_size=2)
    batching.timeout.FromTimedelta(timedelta(seconds=1))
    throttle = functions_pb2.Throttle(limit=1)
    throttle.period.FromTimedelta(timedelta(minutes=1))
    with pytest.raises(ServiceError) as info:
        _normalised(batching=batching, throttle=throttle)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert info.value.message.startswith("functions[0].throttle: cannot be combined with batching")


def test_the_scheduler_reads_a_definition_stored_before_validation_leniently() -> None:
    """Both controls (debounce wins); a max_wait below the period (raised to it); an invalid batch."""
    debounce = functions_pb2.Debounce()
    debounce.period.FromTimedelta(timedelta(seconds=10))
    debounce.max_wait.FromTimedelta(timedelta(seconds=1))
    batching = functions_pb2.Batching(max_size=5)
    batching.timeout.FromTimedelta(timedelta(seconds=1))
    both = functions_pb2.FunctionDefinition(id="f", debounce=debounce, batching=batching)
    assert compile_accumulation(both, field="f") == DebounceRule(
        period=timedelta(seconds=10), max_wait=timedelta(seconds=10), key=None
    )
    only_batching = functions_pb2.FunctionDefinition(id="f", batching=batching)
    assert compile_accumulation(only_batching, field="f") == BatchingRule(
        max_size=5, timeout=timedelta(seconds=1), key=None
    )
    broken = functions_pb2.FunctionDefinition(id="f", batching=functions_pb2.Batching(max_size=5))
    assert compile_accumulation(broken, field="f") is None
    assert compile_accumulation(functions_pb2.FunctionDefinition(id="g"), field="g") is None


class _AcceptingChannel:
    def __init__(self) -> None:
        self.reports: list[runs_pb2.JobReport] = []

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool:
        self.reports.append(report)
        return True


def _event(event_id: str, data: dict[str, Any]) -> common_pb2.Event:
    return common_pb2.Event(id=event_id, name="row.inserted", namespace="events", data=dict_to_struct(data))


async def test_ctx_events_is_the_batch_or_the_one_event() -> None:
    seen: list[tuple[str, list[str]]] = []

    @ironflow.function(id="f", triggers=[ironflow.on_event("row.inserted")])
    async def handler(ctx: ironflow.Context) -> None:
        seen.append((ctx.event.id, [event.id for event in ctx.events]))

    batch = [_event("evt_1", {"n": 1}), _event("evt_2", {"n": 2})]
    await execute(runs_pb2.Job(run_id="run_1", event=batch[0], events=batch), handler, _AcceptingChannel())
    await execute(runs_pb2.Job(run_id="run_2", event=_event("evt_3", {})), handler, _AcceptingChannel())
    assert seen == [("evt_1", ["evt_1", "evt_2"]), ("evt_3", ["evt_3"])]
