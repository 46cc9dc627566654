"""Throttle as declared (SDK), validated (registry) and scheduled (the GCRA rule the scheduler applies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ironflow
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.registry._validation import normalise_definition
from ironflow.services.scheduler._throttle import ThrottleRule, compile_throttle
from ironflow.v1 import functions_pb2

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


async def _noop(ctx: ironflow.Context) -> None:
    return None


# -- SDK ----------------------------------------------------------------------------------------------


def test_the_decorator_puts_the_throttle_in_the_definition() -> None:
    declared = ironflow.function(
        id="f",
        triggers=[ironflow.on_event("sync.requested")],
        throttle=ironflow.Throttle(limit=3, period="1m", key="event.data.userId", burst=2),
    )(_noop)
    throttle = declared.definition().throttle
    assert (throttle.limit, throttle.period.ToTimedelta(), throttle.key, throttle.burst) == (
        3,
        timedelta(minutes=1),
        "event.data.userId",
        2,
    )

    plain = ironflow.Throttle(limit=1, period=timedelta(seconds=5))
    assert (plain.key, plain.burst) == (None, 0)
    bare = ironflow.function(id="g", triggers=[ironflow.on_event("x")])(_noop).definition()
    assert not bare.HasField("throttle")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ironflow.Throttle(limit=0, period="1m"), "throttle.limit"),
        (lambda: ironflow.Throttle(limit=True, period="1m"), "throttle.limit"),
        (lambda: ironflow.Throttle(limit=1.5, period="1m"), "throttle.limit"),
        (lambda: ironflow.Throttle(limit=1, period=0), "throttle.period"),
        (lambda: ironflow.Throttle(limit=1, period="8d"), "throttle.period"),
        (lambda: ironflow.Throttle(limit=1, period="soon"), "throttle.period"),
        (lambda: ironflow.Throttle(limit=1, period="1m", key=""), "throttle.key"),
        (lambda: ironflow.Throttle(limit=1, period="1m", burst=-1), "throttle.burst"),
        (lambda: ironflow.Throttle(limit=1, period="1m", burst=False), "throttle.burst"),
        (lambda: ironflow.function(id="f", throttle="2/s")(_noop), "throttle"),
    ],
)
def test_the_sdk_refuses_a_bad_throttle_naming_the_field(make: object, field: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make()


# -- registry -----------------------------------------------------------------------------------------


def _throttle(
    limit: int = 1, period: timedelta | None = timedelta(seconds=1), key: str = "", burst: int = 0
) -> functions_pb2.Throttle:
    throttle = functions_pb2.Throttle(limit=limit, key=key, burst=burst)
    if period is not None:
        throttle.period.FromTimedelta(period)
    return throttle


@pytest.mark.parametrize(
    ("throttle", "field"),
    [
        (_throttle(limit=0), "functions[0].throttle.limit"),
        (_throttle(period=None), "functions[0].throttle.period"),
        (_throttle(period=timedelta(0)), "functions[0].throttle.period"),
        (_throttle(period=timedelta(days=7, seconds=1)), "functions[0].throttle.period"),
        (_throttle(burst=-1), "functions[0].throttle.burst"),
        (_throttle(burst=100_001), "functions[0].throttle.burst"),
        (_throttle(key="event.data.("), "functions[0].throttle.key"),
    ],
)
def test_registration_refuses_a_bad_throttle_naming_the_field(
    throttle: functions_pb2.Throttle, field: str
) -> None:
    definition = functions_pb2.FunctionDefinition(id="f", throttle=throttle)
    with pytest.raises(ServiceError) as info:
        normalise_definition(definition, field="functions[0]", default_endpoint_url="", now=T0)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert info.value.message.startswith(f"{field}:")


def test_registration_keeps_a_good_throttle_as_given() -> None:
    throttle = _throttle(limit=5, period=timedelta(days=7), key="event.data.userId", burst=3)
    definition = functions_pb2.FunctionDefinition(id="f", throttle=throttle)
    normalised = normalise_definition(definition, field="functions[0]", default_endpoint_url="", now=T0)
    assert normalised.throttle == throttle


def test_a_throttle_stored_out_of_range_is_left_out() -> None:
    """Stored before validation: a limit or period out of range is no throttle; a burst is clamped."""
    for bad in (_throttle(limit=0), _throttle(period=None), _throttle(period=timedelta(days=8))):
        definition = functions_pb2.FunctionDefinition(id="f", throttle=bad)
        assert compile_throttle(definition, field="f") is None
    definition = functions_pb2.FunctionDefinition(id="f", throttle=_throttle(burst=-4))
    rule = compile_throttle(definition, field="f")
    assert rule is not None
    assert rule.burst == 0
    assert compile_throttle(functions_pb2.FunctionDefinition(id="g"), field="g") is None


# -- the rule -----------------------------------------------------------------------------------------


def test_the_interval_rounds_up_to_a_microsecond() -> None:
    """1 s / 3 is 333 333.3 µs: rounding down would fit 4 starts (0, I, 2I, 3I = 999 999 µs) into
    one second."""
    rule = ThrottleRule(limit=3, period=timedelta(seconds=1), burst=0, key=None)
    assert rule.interval == timedelta(microseconds=333_334)
    assert ThrottleRule(limit=4, period=timedelta(seconds=1), burst=0, key=None).interval == timedelta(
        milliseconds=250
    )


def _simulate(rule: ThrottleRule, arrivals: list[datetime]) -> list[datetime]:
    """Start times for runs triggered at `arrivals`, as the scheduler gives them (a new key's row
    starts with tat = now)."""
    tat: datetime | None = None
    starts = []
    for now in arrivals:
        start, tat = rule.schedule(now if tat is None else tat, now)
        starts.append(start)
    return starts


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=12),
    period_us=st.integers(min_value=1, max_value=10**8),
    burst=st.integers(min_value=0, max_value=8),
    gaps=st.lists(st.integers(min_value=0, max_value=3 * 10**7), min_size=1, max_size=60),
    bursty=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_no_window_of_a_period_releases_more_than_limit_plus_burst(
    limit: int, period_us: int, burst: int, gaps: list[int], bursty: list[bool]
) -> None:
    """Whatever the arrivals: every run starts no earlier than it arrived, in arrival order, and any
    window [t, t + period) holds at most limit + burst starts."""
    period = timedelta(microseconds=period_us)
    rule = ThrottleRule(limit=limit, period=period, burst=burst, key=None)
    arrivals, now = [], T0
    for gap, together in zip(gaps, bursty, strict=False):
        now += timedelta(microseconds=0 if together else gap)
        arrivals.append(now)
    starts = _simulate(rule, arrivals)

    assert all(start >= arrived for start, arrived in zip(starts, arrivals, strict=True))
    assert starts == sorted(starts)
    for index, first in enumerate(starts):
        in_window = [s for s in starts[index:] if s < first + period]
        assert len(in_window) <= limit + burst


@pytest.mark.parametrize(("limit", "burst"), [(1, 0), (3, 0), (3, 2), (10, 5)])
def test_the_bound_is_reached_by_a_crowd_after_quiet(limit: int, burst: int) -> None:
    """Many runs at once on a fresh key: burst + 1 start at once, then one every interval, so the
    first period holds exactly limit + burst of them."""
    period = timedelta(seconds=60)
    rule = ThrottleRule(limit=limit, period=period, burst=burst, key=None)
    starts = _simulate(rule, [T0] * (3 * (limit + burst)))
    assert starts[: burst + 1] == [T0] * (burst + 1)
    assert [b - a for a, b in zip(starts[burst:], starts[burst + 1 :], strict=False)] == [rule.interval] * (
        len(starts) - burst - 1
    )
    assert sum(1 for start in starts if start < T0 + period) == limit + burst
