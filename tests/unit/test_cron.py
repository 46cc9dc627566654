"""Cron schedules: what the registry refuses, ticks as UTC instants (DST included), and what the
scheduler does with a due tick (fire, skip missed ticks, catch up the latest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ironflow
from ironflow.services.core.cron import CronSchedule, parse_schedule
from ironflow.services.core.errors import ErrorCode, ServiceError
from ironflow.services.scheduler._convert import event_from_json
from ironflow.services.scheduler._cron import decide
from ironflow.v1 import functions_pb2

NOW = datetime(2026, 1, 5, 10, 0, 30, tzinfo=UTC)
FIELD = "functions[0].triggers[1].cron"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _schedule(schedule: str, timezone: str = "") -> CronSchedule:
    return parse_schedule(schedule, timezone, field=FIELD, now=NOW)


@pytest.mark.parametrize(
    ("schedule", "timezone", "field", "says"),
    [
        ("", "", "schedule", "is required"),
        ("   ", "", "schedule", "is required"),
        ("61 * * * *", "", "schedule", "Bad minute"),
        ("* 24 * * *", "", "schedule", "Bad hour"),
        ("* * * * MOON", "", "schedule", "Bad day-of-week"),
        ("*/0 * * * *", "", "schedule", "Bad minute"),
        ("0 9 * *", "", "schedule", "has 4 fields"),
        ("0 0 9 * * *", "", "schedule", "has 6 fields"),
        ("@daily", "", "schedule", "has 1 fields"),
        ("0 0 30 2 *", "", "schedule", "Bad day-of-month"),
        ("* * */20 * 1L", "", "schedule", "never matches"),
        ("0 9 * * *", "Mars/Olympus", "timezone", "unknown time zone"),
        ("0 9 * * *", "Europe", "timezone", "unknown time zone"),
        ("0 9 * * *", "../etc/passwd", "timezone", "unknown time zone"),
        ("0 9 * * *", "Europe/Berlin\x00", "timezone", "unknown time zone"),
        ("0 9 * * *", "x" * 65, "timezone", "at most 64"),
        ("0 " * 200, "", "schedule", "at most 256"),
    ],
)
def test_bad_schedules_and_zones_name_the_field(schedule: str, timezone: str, field: str, says: str) -> None:
    with pytest.raises(ServiceError) as info:
        parse_schedule(schedule, timezone, field=FIELD, now=NOW)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert info.value.message.startswith(f"{FIELD}.{field}: ")
    assert says in info.value.message


def _outcome(schedule: str, timezone: str) -> CronSchedule | ServiceError:
    try:
        return parse_schedule(schedule, timezone, field=FIELD, now=NOW)
    except ServiceError as exc:
        return exc


@given(st.text(max_size=80), st.text(max_size=40))
def test_any_input_is_accepted_or_refused_as_invalid_argument(schedule: str, timezone: str) -> None:
    outcome = _outcome(schedule, timezone)
    if isinstance(outcome, ServiceError):
        assert outcome.code == ErrorCode.INVALID_ARGUMENT
        assert outcome.message.startswith(f"{FIELD}.")


@given(
    st.lists(
        st.sampled_from(["*", "*/7", "0", "5-10", "1,2", "MON", "L", "JAN", "3#2", "x", "-"]), max_size=6
    )
)
def test_cron_looking_input_is_accepted_or_refused_as_invalid_argument(fields: list[str]) -> None:
    outcome = _outcome(" ".join(fields), "Europe/Berlin")
    if isinstance(outcome, ServiceError):
        assert outcome.code == ErrorCode.INVALID_ARGUMENT
        return
    tick = outcome.next_after(NOW)
    assert tick is not None
    assert tick > NOW


def test_a_good_schedule_is_normalised_and_defaults_to_utc() -> None:
    parsed = _schedule("  0   9 * *  mon-fri ")
    assert (parsed.schedule, parsed.timezone) == ("0 9 * * mon-fri", "UTC")


def test_ticks_are_strictly_after_and_at_or_before() -> None:
    every_five = _schedule("*/5 * * * *")
    assert every_five.next_after(_at("2026-01-05T10:00:00")) == _at("2026-01-05T10:05:00")
    assert every_five.next_after(_at("2026-01-05T10:04:59")) == _at("2026-01-05T10:05:00")
    assert every_five.latest_at_or_before(_at("2026-01-05T10:05:00")) == _at("2026-01-05T10:05:00")
    assert every_five.latest_at_or_before(_at("2026-01-05T10:09:59")) == _at("2026-01-05T10:05:00")
    yearly = _schedule("0 0 1 1 *")
    assert yearly.latest_at_or_before(_at("2026-06-01T00:00:00")) == _at("2026-01-01T00:00:00")


def test_berlin_local_times_across_both_dst_changes() -> None:
    nine = _schedule("0 9 * * *", "Europe/Berlin")
    assert nine.next_after(_at("2026-03-28T12:00:00")) == _at("2026-03-29T07:00:00")  # CEST
    assert nine.next_after(_at("2026-10-24T12:00:00")) == _at("2026-10-25T08:00:00")  # CET again
    # 02:30 does not exist on 2026-03-29: it fires once, at 03:00 CEST.
    half_two = _schedule("30 2 * * *", "Europe/Berlin")
    assert half_two.next_after(_at("2026-03-28T12:00:00")) == _at("2026-03-29T01:00:00")
    assert half_two.next_after(_at("2026-03-29T01:00:00")) == _at("2026-03-30T00:30:00")
    # 02:30 happens twice on 2026-10-25: it fires at the first, and not again in the second pass.
    assert half_two.next_after(_at("2026-10-24T12:00:00")) == _at("2026-10-25T00:30:00")
    assert half_two.next_after(_at("2026-10-25T00:30:00")) == _at("2026-10-26T01:30:00")
    assert half_two.next_after(_at("2026-10-25T01:15:00")) == _at("2026-10-26T01:30:00")
    assert half_two.latest_at_or_before(_at("2026-10-25T01:45:00")) == _at("2026-10-25T00:30:00")
    # Every 30 minutes follows the real clock through the repeated hour.
    halves = _schedule("*/30 * * * *", "Europe/Berlin")
    assert halves.next_after(_at("2026-10-25T00:30:00")) == _at("2026-10-25T01:00:00")
    assert halves.next_after(_at("2026-10-25T01:00:00")) == _at("2026-10-25T01:30:00")


def test_a_due_tick_on_time_fires_and_moves_on() -> None:
    every_minute = _schedule("* * * * *")
    decision = decide(
        every_minute,
        due_at=_at("2026-01-05T10:01:00"),
        now=_at("2026-01-05T10:01:04"),
        grace=timedelta(seconds=10),
        catch_up=False,
    )
    assert (decision.fire_at, decision.missed, decision.next_at) == (
        _at("2026-01-05T10:01:00"),
        False,
        _at("2026-01-05T10:02:00"),
    )


@pytest.mark.parametrize("catch_up", [False, True])
def test_missed_ticks_are_skipped_or_the_latest_is_caught_up(catch_up: bool) -> None:
    hourly = _schedule("0 * * * *")
    decision = decide(
        hourly,
        due_at=_at("2026-01-05T03:00:00"),
        now=_at("2026-01-05T10:20:00"),
        grace=timedelta(seconds=10),
        catch_up=catch_up,
    )
    assert decision.missed
    assert decision.fire_at == (_at("2026-01-05T10:00:00") if catch_up else None)
    assert decision.next_at == _at("2026-01-05T11:00:00")


def test_after_missed_ticks_a_tick_just_due_is_on_time() -> None:
    hourly = _schedule("0 * * * *")
    decision = decide(
        hourly,
        due_at=_at("2026-01-05T03:00:00"),
        now=_at("2026-01-05T10:00:03"),
        grace=timedelta(seconds=10),
        catch_up=False,
    )
    assert (decision.fire_at, decision.missed) == (_at("2026-01-05T10:00:00"), True)


def test_a_system_event_keeps_its_namespace_and_others_stay_events() -> None:
    base = {"id": "evt_1", "data": {}, "metadata": {}, "timestamp": None, "sequence": 0}
    cron = event_from_json({**base, "name": "system.cron.nightly", "namespace": "system"})
    assert (cron.namespace, cron.subject) == ("system", "system.cron.nightly")
    emitted = event_from_json({**base, "name": "order.placed"})
    assert (emitted.namespace, emitted.subject) == ("events", "events:order.placed")


def test_on_cron_describes_the_trigger() -> None:
    trigger = ironflow.on_cron("0 9 * * *", timezone="Europe/Berlin", catch_up=True)
    assert trigger.to_proto() == functions_pb2.Trigger(
        cron=functions_pb2.CronTrigger(schedule="0 9 * * *", timezone="Europe/Berlin", catch_up=True)
    )
    assert ironflow.on_cron("*/5 * * * *").to_proto().cron.timezone == ""
    with pytest.raises(ValueError, match="five-field"):
        ironflow.on_cron("0 9 * *")
    with pytest.raises(ValueError, match="catch_up"):
        ironflow.on_cron("0 9 * * *", catch_up="yes")  # type: ignore[arg-type]
