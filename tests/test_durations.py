from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.durations import InvalidDuration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("3d", timedelta(days=3)),
     ("2w", timedelta(weeks=2)), ("1d12h", timedelta(hours=36)), (" 7D ", timedelta(days=7)), ("forever", None)],
)
def test_parse(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "3", "d", "3x", "-3d", "0m", "3 d", "1.5h", "forever!", "9999999d"])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidDuration):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**8))
def test_format_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@given(st.text(max_size=50))
def test_parse_gives_a_positive_duration_or_a_clear_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except InvalidDuration as exc:
        assert "duration" in str(exc)
    else:
        assert result is None or result > timedelta(0)
