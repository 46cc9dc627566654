"""Durations: the accepted spellings, the rejects, and the format/parse round trip."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ironflow.services.core.durations import format_duration, parse_duration
from ironflow.services.core.errors import ErrorCode, ServiceError

td = datetime.timedelta


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, td(0)),
        (30, td(seconds=30)),
        (1.5, td(seconds=1.5)),
        (0.1, td(milliseconds=100)),
        ("0", td(0)),
        ("1.5", td(seconds=1.5)),
        ("500ms", td(milliseconds=500)),
        ("30s", td(seconds=30)),
        ("10m", td(minutes=10)),
        ("1h", td(hours=1)),
        ("7d", td(days=7)),
        ("1h30m", td(hours=1, minutes=30)),
        ("1d2h3m4s5ms", td(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1.5h", td(minutes=90)),
        ("0.1s", td(milliseconds=100)),
        ("0.25ms", td(microseconds=250)),
        ("1m0.5s", td(seconds=60.5)),
        (" 2s\n", td(seconds=2)),
        (td(minutes=5), td(minutes=5)),
    ],
)
def test_accepted(value: str | float | td, expected: td) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "-1s",
        "-1",
        -1,
        -0.5,
        math.nan,
        math.inf,
        -math.inf,
        td(seconds=-1),
        True,
        None,
        [1],
        "abc",
        "1x",
        "s",
        "1 h",
        "1h 30m",
        "30m1h",
        "1m1m",
        "1ms1s",
        "1H",
        "1e3",
        "nan",
        "inf",
        ".5s",
        "5.s",
        "1h-30m",
        "+1s",
        "\u0661s",  # ARABIC-INDIC DIGIT ONE: \d would accept it, the grammar must not
        "1" * 100 + "s",
        10**30,
        1e300,
    ],
)
def test_rejected(value: object) -> None:
    with pytest.raises(ServiceError) as exc:
        parse_duration(value, field="retry.backoff")  # type: ignore[arg-type]
    assert exc.value.code is ErrorCode.INVALID_ARGUMENT
    assert exc.value.message.startswith("retry.backoff: ")


def test_rejection_names_the_value() -> None:
    with pytest.raises(ServiceError) as exc:
        parse_duration("10 minutes", field="timeout")
    assert "'10 minutes'" in exc.value.message


def test_allow_zero() -> None:
    assert parse_duration("0s", allow_zero=True) == td(0)
    for zero in (0, 0.0, "0", "0ms", td(0), "0.0000001s"):
        with pytest.raises(ServiceError) as exc:
            parse_duration(zero, field="ack_wait", allow_zero=False)
        assert exc.value.message.startswith("ack_wait: ")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (td(0), "0s"),
        (td(milliseconds=500), "500ms"),
        (td(microseconds=250), "0.25ms"),
        (td(seconds=1.5), "1.5s"),
        (td(seconds=30), "30s"),
        (td(minutes=90), "1h30m"),
        (td(hours=36), "1d12h"),
        (td(days=7), "7d"),
        (td(minutes=1, milliseconds=250), "1m250ms"),
        (td(hours=1, seconds=0.5), "1h500ms"),
        (td(days=1, seconds=1, microseconds=1), "1d1.000001s"),
    ],
)
def test_format(value: td, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(td(seconds=-1))


def test_extremes_round_trip() -> None:
    assert parse_duration(format_duration(td.max)) == td.max
    assert parse_duration(format_duration(td.resolution)) == td.resolution


@given(st.integers(0, 10**12))
def test_millisecond_round_trip(ms: int) -> None:
    value = td(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


@given(st.timedeltas(min_value=td(0)))
def test_microsecond_round_trip(value: td) -> None:
    assert parse_duration(format_duration(value)) == value


@given(st.integers(0, 10**9))
def test_integer_seconds(seconds: int) -> None:
    assert parse_duration(seconds) == td(seconds=seconds)
    assert parse_duration(str(seconds)) == td(seconds=seconds)
    assert parse_duration(f"{seconds}s") == td(seconds=seconds)


@given(st.integers(0, 10**6), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_compound_strings(d: int, h: int, m: int, s: int, ms: int) -> None:
    text = "".join(f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s"), (ms, "ms")) if n) or "0s"
    assert parse_duration(text) == td(days=d, hours=h, minutes=m, seconds=s, milliseconds=ms)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_float_seconds_match_timedelta(seconds: float) -> None:
    # timedelta rounds float seconds to the microsecond half-even, exactly as parse_duration does.
    assert parse_duration(seconds) == td(seconds=seconds)


@given(
    st.one_of(
        st.integers(max_value=-1), st.floats(max_value=-1e-3), st.floats(allow_nan=True).filter(math.isnan)
    )
)
def test_negative_and_nan_numbers_rejected(value: float) -> None:
    with pytest.raises(ServiceError) as exc:
        parse_duration(value, field="delay")
    assert exc.value.message.startswith("delay: ")


@given(st.text(alphabet="0123456789.dhms -+eE:x", max_size=20))
def test_strings_parse_or_reject_cleanly(text: str) -> None:
    # Any string either parses to a non-negative timedelta or is an INVALID_ARGUMENT, never a crash.
    error: ServiceError | None = None
    try:
        value = parse_duration(text)
    except ServiceError as exc:
        error = exc
    if error is not None:
        assert error.code is ErrorCode.INVALID_ARGUMENT
        assert error.message.startswith("duration: ")
    else:
        assert value >= td(0)
        assert parse_duration(format_duration(value)) == value
