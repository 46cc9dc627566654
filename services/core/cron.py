"""Cron schedules: five-field expressions evaluated in an IANA time zone, as UTC instants.

Shared by the registry (which refuses a schedule that does not parse) and the scheduler (which fires
its ticks), so both read an expression the same way.

Built on cronsim, which evaluates expressions the way Debian's cron does, DST included: a job at a
fixed local time that falls into the hour skipped in spring runs once right after the change, one in
the hour repeated in autumn runs once (its first occurrence), and `*`-minute or `*`-hour jobs follow
the real clock through both. It is small, pure Python and typed, and iterates backwards too (the
latest missed tick, for catch-up). Rejected: croniter (much larger: seconds fields, hashed and random
expressions, and no stated goal of matching any cron's DST behaviour) and a hand-written parser (DST
is exactly where hand-written cron gets it wrong).

An expression has exactly five fields (minute, hour, day of month, month, day of week): cronsim 2.8
also takes a sixth, seconds field, which is refused here. Its extensions within a field (`L`, `LW`,
`MON#2`, names such as `MON` and `JAN`) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import invalid_argument

DEFAULT_TIMEZONE = "UTC"
MAX_SCHEDULE_LENGTH = 256
MAX_TIMEZONE_LENGTH = 64
_FIELDS = 5
_MINUTE = timedelta(minutes=1)
# Ticks looked at to step over a DST overlap (`0-59 2 * * *` has 60 in the repeated hour).
_MAX_STEPS = 128


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule. `schedule` is the expression with its whitespace normalised."""

    schedule: str
    timezone: str
    zone: ZoneInfo

    def next_after(self, when: datetime) -> datetime | None:
        """The first tick strictly after `when` (aware), in UTC; None if there is none within 50 years."""
        ticks = CronSim(self.schedule, when.astimezone(self.zone))
        # cronsim walks a fixed-time job's local wall clock, so from inside the hour that repeats when
        # DST ends it can name a tick of that hour's first pass, which is already past: walk on.
        for _ in range(_MAX_STEPS):
            tick = _step(ticks)
            if tick is None or tick > when:
                return tick
        return None

    def latest_at_or_before(self, when: datetime) -> datetime | None:
        """The last tick at or before `when` (aware), in UTC; None if there is none within 50 years."""
        # Ticks fall on whole minutes and reverse iteration starts strictly before the time it is
        # given, so start from the minute after `when`'s.
        start = when.astimezone(self.zone).replace(second=0, microsecond=0) + _MINUTE
        ticks = CronSim(self.schedule, start, reverse=True)
        for _ in range(_MAX_STEPS):
            tick = _step(ticks)
            if tick is None or tick <= when:
                return tick
        return None


def _step(ticks: CronSim) -> datetime | None:
    try:
        return next(ticks).astimezone(UTC)
    except (StopIteration, OverflowError):
        return None


def parse_schedule(schedule: str, timezone: str = "", *, field: str, now: datetime) -> CronSchedule:
    """Check a cron trigger's schedule and zone; INVALID_ARGUMENT names `<field>.schedule` or
    `<field>.timezone`. `now` is when the schedule must fire next (an expression that never fires
    again, such as one for the 5th Monday of February, is refused)."""
    parts = schedule.split()
    if not parts:
        raise invalid_argument(f"{field}.schedule", "is required, for example '0 9 * * *'")
    normalised = " ".join(parts)
    if len(normalised) > MAX_SCHEDULE_LENGTH:
        raise invalid_argument(f"{field}.schedule", f"must be at most {MAX_SCHEDULE_LENGTH} characters")
    if len(parts) != _FIELDS:
        raise invalid_argument(
            f"{field}.schedule",
            f"{normalised!r} has {len(parts)} fields; a cron expression has five: "
            "minute hour day-of-month month day-of-week",
        )
    zone_name = timezone or DEFAULT_TIMEZONE
    zone = _zone(zone_name, field=f"{field}.timezone")
    try:
        next(CronSim(normalised, now.astimezone(zone)))
    except CronSimError as exc:
        raise invalid_argument(
            f"{field}.schedule", f"{normalised!r} is not a valid cron expression ({exc})"
        ) from exc
    except (StopIteration, OverflowError):
        raise invalid_argument(
            f"{field}.schedule", f"{normalised!r} never matches a time in the next 50 years"
        ) from None
    except Exception as exc:  # whatever the parser trips on, the input is what was wrong
        raise invalid_argument(f"{field}.schedule", f"{normalised!r} is not a valid cron expression") from exc
    return CronSchedule(schedule=normalised, timezone=zone_name, zone=zone)


def _zone(name: str, *, field: str) -> ZoneInfo:
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise invalid_argument(field, f"must be at most {MAX_TIMEZONE_LENGTH} characters")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ValueError: not a valid key (`../x`, a NUL); OSError: a directory such as `Europe`.
        raise invalid_argument(
            field, f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'"
        ) from exc
