import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.durations import DurationError, format_duration, parse_duration


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
