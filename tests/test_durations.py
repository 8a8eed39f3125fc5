from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import gocompat
from registry.gocompat import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m30s", 90), ("1.5h", 5400), ("300ms", 0.3), ("72h", 259200), ("0", 0), ("1us", 1e-6),
     ("1\u00b5s", 1e-6), ("2h45m", 9900), ("100ns", 1e-7)],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "s", "10x", "-5s", "1h-5m", "abc", "1.2.3s", "10 s", "NaNs", "9999999h"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)


def test_numbers_are_nanoseconds() -> None:
    assert parse_duration(10_000_000_000) == 10
    with pytest.raises(DurationError):
        parse_duration(True)
    with pytest.raises(DurationError):
        parse_duration(-1)


@pytest.mark.parametrize(("seconds", "text"), [(90, "1m30s"), (259200, "72h0m0s"), (0.5, "500ms"), (0, "0s"), (10, "10s")])
def test_format_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10 * 365 * 24 * 3600 * 1000))
def test_round_trip_milliseconds(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000, abs=1e-9)


@given(st.text(max_size=20))
def test_never_crashes(text: str) -> None:
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert value >= 0


# ---------------------------------------------------------------------- the one Go duration core and its views


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("-0", 0), ("1ns", 1), ("1.5ns", 1), ("1.5us", 1500), ("1.5\u03bcs", 1500), ("300ms", 300_000_000),
     ("1.s", 1_000_000_000), (".5s", 500_000_000), ("-1m30s", -90_000_000_000), ("+2h", 7_200_000_000_000),
     ("1h30m15.5s", 5_415_500_000_000), ("0.000000001s", 1)],
)
def test_parse_duration_ns_is_go(text: str, ns: int) -> None:
    assert gocompat.parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [("10", 'time: missing unit in duration "10"'), ("10x", 'time: invalid duration "10x"'),
     ("", 'time: invalid duration ""'), ("-", 'time: invalid duration "-"'), (" 1s", 'time: invalid duration " 1s"')],
)
def test_parse_duration_ns_errors_in_go_words(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        gocompat.parse_duration_ns(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (1, "1ns"), (999, "999ns"), (1_500, "1.5\u00b5s"), (1_500_000, "1.5ms"), (999_999_999, "999.999999ms"),
     (1_000_000_001, "1.000000001s"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"), (-1_500_000, "-1.5ms")],
)
def test_format_duration_ns_is_go(ns: int, text: str) -> None:
    assert gocompat.format_duration_ns(ns) == text


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_format_then_parse_is_exact(ns: int) -> None:
    assert gocompat.parse_duration_ns(gocompat.format_duration_ns(ns)) == ns


@given(st.integers(min_value=0, max_value=10 * 365 * 24 * 3600 * 1000))
def test_the_two_views_agree(ms: int) -> None:
    """The registry's float-seconds view and the CA's timedelta view read and print the same text alike
    (to the millisecond: a float of seconds cannot carry every nanosecond of ten years)."""
    td = timedelta(milliseconds=ms)
    text = gocompat.format_go_duration(td)
    assert text == gocompat.format_duration(ms / 1000)
    assert gocompat.parse_go_duration(text) == td
    assert parse_duration(text) == pytest.approx(ms / 1000, abs=1e-9)


# ---------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("when", "text"),
    [(datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC), "2026-11-25T08:00:00Z"),
     (datetime(2026, 11, 25, 8, 0, 0, 120000, tzinfo=UTC), "2026-11-25T08:00:00.12Z"),
     (datetime(2026, 11, 25, 9, 30, 0, 5, tzinfo=timezone(timedelta(hours=1, minutes=30))),
      "2026-11-25T08:00:00.000005Z")],
)
def test_go_time_json_form(when: datetime, text: str) -> None:
    assert gocompat.format_go_time(when) == text
    assert gocompat.parse_go_time(text) == when


def test_parse_go_time_offsets_and_nanoseconds() -> None:
    assert gocompat.parse_go_time("2026-11-25T10:00:00.123456789+02:00") == datetime(
        2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC
    )
    for bad in ["", "2026-11-25", "2026-11-25T08:00:00", "2026-11-25 08:00:00Z", gocompat.GO_ZERO_TIME + " "]:
        with pytest.raises(ValueError):
            gocompat.parse_go_time(bad)


# ---------------------------------------------------------------------- strconv


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("web", '"web"'), ('a"b\\c', '"a\\"b\\\\c"'), ("tab\there\n", '"tab\\there\\n"'), ("\x00\x7f", '"\\x00\\x7f"'),
     ("caf\u00e9", '"caf\u00e9"'), ("\u200b", '"\\u200b"'), ("\U000e0001", '"\\U000e0001"')],
)
def test_go_quote_round_trips_through_unquote(text: str, quoted: str) -> None:
    assert gocompat.go_quote(text) == quoted
    assert gocompat.go_unquote(quoted) == text


@pytest.mark.parametrize("bad", ['"', '"a', "'a'", '"a"b"', '"\\q"', '"\\u12"', "`a`b`", '"a\nb"'])
def test_go_unquote_refuses_what_go_refuses(bad: str) -> None:
    with pytest.raises(gocompat.UnquoteError, match="invalid syntax"):
        gocompat.go_unquote(bad)
