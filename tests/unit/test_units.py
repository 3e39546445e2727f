"""Unit tests of gateway.units: human-friendly durations and sizes."""
from __future__ import annotations

import pytest

from gateway.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0s", 0.0),
        ("30", 30.0),
        (" 10 s ", 10.0),
        (3, 3.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
    ids=["ms", "s", "m", "h", "fraction-s", "250ms", "zero", "bare-string", "spaces", "int", "float", "int-zero"],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "expected a duration"),
        ("-1s", "expected a duration"),
        ("10x", "expected a duration"),
        ("", "expected a duration"),
        ("1 m s", "expected a duration"),
        ("10S", "expected a duration"),
        (True, "not a boolean"),
        (False, "not a boolean"),
        (None, "expected a duration"),
        ([1], "expected a duration"),
        (-1, "cannot be negative"),
        (-0.5, "cannot be negative"),
    ],
    ids=["word", "negative-string", "unknown-unit", "empty", "two-units", "upper-unit", "true", "false", "none", "list",
         "negative-int", "negative-float"],
)
def test_parse_duration_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MB", 10_000_000),
        ("1MiB", 1_048_576),
        ("512KB", 512_000),
        ("512KiB", 524_288),
        ("1GB", 1_000_000_000),
        ("2GiB", 2 * 1024**3),
        ("100B", 100),
        ("100", 100),
        ("10mb", 10_000_000),
        ("1.5MB", 1_500_000),
        (" 1 KB ", 1000),
        (100, 100),
        (0, 0),
    ],
    ids=["MB", "MiB", "KB", "KiB", "GB", "GiB", "B", "bare-string", "lowercase", "fraction", "spaces", "int", "zero"],
)
def test_parse_size_accepts(value: object, size: int) -> None:
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "expected a size"),
        ("10XB", "expected a size"),
        ("-1MB", "expected a size"),
        ("", "expected a size"),
        ("10 M", "expected a size"),
        (1.5, "expected a size"),
        (None, "expected a size"),
        (True, "not a boolean"),
        (-1, "cannot be negative"),
    ],
    ids=["word", "unknown-unit", "negative-string", "empty", "unit-without-b", "float", "none", "bool", "negative-int"],
)
def test_parse_size_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(value)
