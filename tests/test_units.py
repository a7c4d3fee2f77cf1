"""Tests for `transfer.units`: sizes and durations given on the command line."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import ConfigError
from transfer.core.units import format_size, parse_duration, parse_size

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("512b", 512),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("1K", 1024),
        ("256KiB", 262144),
        ("1MiB", 1048576),
        ("1M", 1048576),
        ("1GiB", 1073741824),
        ("1TiB", 1099511627776),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1MB", 1000000),
        ("1GB", 1000000000),
        ("1.5KiB", 1536),
        ("0.5KiB", 512),
        ("2.25MiB", 2359296),
        ("1.0B", 1),
        ("1.001kB", 1001),  # exact decimals: as a float product this was "not whole"
        ("2.3MB", 2300000),
        ("1 MiB", 1048576),
        (" 64KiB ", 65536),
        ("9007199254740993", 9007199254740993),  # 2**53 + 1: no rounding through floats
        ("1" + "0" * 30, 10**30),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    result = parse_size(text)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "KiB",
        "1XB",
        "1KiBs",
        "1 K iB",
        "-1",
        "+1",
        "-1KiB",
        "0.5B",
        "0.5",
        "1.1KiB",  # 1126.4 bytes
        "0.0001kB",
        "1.",
        ".5KiB",
        "1e3",
        "1,000",
        "1_000",
        "0x10",
        "1KiB1",
        "inf",
        "nan",
        "\u0661\u0660\u0662\u0664",  # 1024 in Arabic-Indic digits
        "\N{FULLWIDTH DIGIT ONE}KiB",  # fullwidth one
        "1\N{SUPERSCRIPT TWO}",
        "1\N{NO-BREAK SPACE}KiB",
        "9" * 5000,  # too many digits to convert: an error, not a crash
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


_SIZE_FACTORS = {"": 1, "B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "kB": 1000, "MB": 10**6}


@given(
    # Any number of thousandths up to 10**6, drawn uniformly: st.decimals favours round values.
    st.integers(0, 10**9).map(lambda thousandths: Decimal(thousandths).scaleb(-3)),
    st.sampled_from(sorted(_SIZE_FACTORS)),
)
def test_parse_size_is_exact_decimal_arithmetic(number: Decimal, unit: str) -> None:
    text = f"{number:f}{unit}"
    exact = number * _SIZE_FACTORS[unit]
    if exact == exact.to_integral_value():
        assert parse_size(text) == int(exact)
    else:
        with pytest.raises(ConfigError, match="whole number"):
            parse_size(text)


@given(st.text(max_size=20))
def test_parse_size_fails_only_with_config_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ConfigError:
        return
    assert isinstance(size, int)
    assert size >= 0


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1ms", 0.001),
        ("20ms", 0.02),
        ("1s", 1.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("300", 300.0),
        ("2.5s", 2.5),
        ("0", 0.0),
        ("0.5", 0.5),
        ("250us", 0.00025),
        ("1.5h", 5400.0),
        (" 30 s ", 30.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0)


def test_brief_durations_are_exact() -> None:
    # The values the CLI documents must not be off by an ulp either.
    assert parse_duration("1ms") == 0.001
    assert parse_duration("20ms") == 0.02
    assert parse_duration("1s") == 1
    assert parse_duration("5m") == 300
    assert parse_duration("300") == 300


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "s",
        "1d",
        "1x",
        "1 sec",
        "1S",  # units are case-sensitive: M would be ambiguous
        "1M",
        "1MS",
        "-1s",
        "+1s",
        "1e3",
        "1.s",
        ".5s",
        "1s1",
        "1ms ms",
        "inf",
        "nan",
        "\N{ARABIC-INDIC DIGIT ONE}s",
        "\N{FULLWIDTH DIGIT NINE}s",
        "9" * 400,  # float('9' * 400) is inf: an absurd duration, not infinity
        "9" * 400 + "h",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@given(st.integers(0, 10**9), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("", 1)]))
def test_parse_duration_whole_units(number: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_duration(f"{number}{suffix}") == number * factor


@given(st.text(max_size=20))
def test_parse_duration_fails_only_with_config_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ConfigError:
        return
    assert isinstance(seconds, float)
    assert 0 <= seconds < float("inf")


# --- format_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (262144, "256.0 KiB"),
        (1048576, "1.0 MiB"),
        (1572864, "1.5 MiB"),
        (1073741824, "1.0 GiB"),
        (1099511627776, "1024.0 GiB"),  # GiB is the largest unit
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(0, 1023))
def test_format_size_whole_kibibytes_round_trip(kib: int) -> None:
    # What format_size prints for whole KiB parses back to the same size.
    text = format_size(kib * KIB)
    assert parse_size(text.replace(" ", "")) == kib * KIB
