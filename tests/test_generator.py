"""The seeded int16 generator: bounds, encoding, reproducibility, pieces, pacing. Never
sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import struct
import threading
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from transfer.core.errors import ConfigError
from transfer.sender.generator import (
    BLOCK,
    GENERATOR_VERSION,
    PIECE,
    VERSIONS,
    FileSpec,
    GeneratorConfig,
    _write_and_publish,
    content_for,
    content_pieces,
    generate,
    spec_for,
    version_of,
    write_file,
)

seeds = st.integers(min_value=-(2**63), max_value=2**63)
indices = st.integers(min_value=0, max_value=10_000)


@st.composite
def configs(draw: st.DrawFn) -> GeneratorConfig:
    min_size = draw(st.integers(min_value=2, max_value=2**21))
    max_size = draw(st.integers(min_value=min_size, max_value=2**21))
    if min_size == max_size and min_size % 2:
        max_size += 1  # otherwise no even size fits
    intervals = st.floats(min_value=0, max_value=10, allow_nan=False)
    min_interval = draw(intervals)
    max_interval = draw(intervals.filter(lambda x: x >= min_interval))
    return GeneratorConfig(
        count=draw(st.integers(min_value=0, max_value=20)),
        min_size=min_size,
        max_size=max_size,
        min_interval=min_interval,
        max_interval=max_interval,
    )


@dataclass
class FakeTime:
    """A clock that only moves when `sleep` (or the test) moves it."""

    now: float = 1000.0
    delays: list[float] = field(default_factory=list)

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay

    def clock(self) -> float:
        return self.now


async def collect(
    config: GeneratorConfig, seed: int, fake: FakeTime, start: int = 0
) -> list[FileSpec]:
    return [
        f async for f in generate(config, seed, start=start, sleep=fake.sleep, clock=fake.clock)
    ]


# --- bounds and encoding -------------------------------------------------------------


@given(configs(), seeds, indices)
def test_spec_sizes_even_and_intervals_within_bounds(
    config: GeneratorConfig, seed: int, index: int
) -> None:
    spec = spec_for(config, seed, index)
    assert spec.index == index
    assert spec.size % 2 == 0
    assert config.min_size <= spec.size <= config.max_size
    assert config.min_interval <= spec.interval <= config.max_interval


def test_defaults_match_the_brief() -> None:
    config = GeneratorConfig()
    assert (config.count, config.min_size, config.max_size) == (100, 1024, 1024 * 1024)
    assert (config.min_interval, config.max_interval, config.max_duration) == (0.001, 1.0, None)


def test_odd_bounds_round_inward() -> None:
    config = GeneratorConfig(min_size=3, max_size=5)
    assert {spec_for(config, 0, i).size for i in range(200)} == {4}


@given(seeds, indices, st.integers(min_value=0, max_value=4096).map(lambda n: 2 * n))
def test_content_is_size_bytes_of_little_endian_int16(seed: int, index: int, size: int) -> None:
    data = content_for(seed, index, size)
    assert len(data) == size
    samples = array("h")
    samples.frombytes(data)
    assert len(samples) == size // 2
    assert list(samples) == list(struct.unpack(f"={size // 2}h", data))
    little = list(struct.unpack(f"<{size // 2}h", data))
    assert all(-(2**15) <= s < 2**15 for s in little)
    assert struct.pack(f"<{size // 2}h", *little) == data


def test_content_of_a_mebibyte_is_not_degenerate() -> None:
    data = content_for(7, 3, 1024 * 1024)
    samples = array("h", data)
    assert len(set(samples)) > 30_000  # random samples spread over the int16 range
    assert min(samples) < -30_000 and max(samples) > 30_000


@pytest.mark.parametrize("size", [-2, 1, 1023])
def test_content_rejects_partial_samples(size: int) -> None:
    with pytest.raises(ValueError, match="even"):
        content_for(0, 0, size)


# --- reproducibility -----------------------------------------------------------------


@given(configs(), seeds, indices)
def test_same_seed_same_files(config: GeneratorConfig, seed: int, index: int) -> None:
    spec = spec_for(config, seed, index)
    assert spec_for(config, seed, index) == spec
    assert content_for(seed, index, 256) == content_for(seed, index, 256)


@given(seeds, seeds, indices)
def test_different_seed_different_files(seed: int, other: int, index: int) -> None:
    if seed == other:
        other += 1
    config = GeneratorConfig()
    assert spec_for(config, seed, index) != spec_for(config, other, index)
    assert content_for(seed, index, 1024) != content_for(other, index, 1024)
    assert content_for(seed, index, 1024) != content_for(seed, index + 1, 1024)


AES_42_0_32 = "c55d9d12ea256a327b1e4506724bb51b4f179facdf0766bf7a0ef1abf8f12d47"


def test_files_are_pinned_across_processes_and_versions() -> None:
    # String seeds hash with SHA-512: these values hold in every process and platform, so
    # a sender restarted (or upgraded) regenerates exactly the files it had journaled.
    specs = [spec_for(GeneratorConfig(), 42, i) for i in range(3)]
    assert [(s.index, s.size) for s in specs] == [(0, 104054), (1, 1002910), (2, 333054)]
    assert [round(s.interval, 9) for s in specs] == [0.726177752, 0.1554086, 0.518639719]
    digest = hashlib.sha256(content_for(42, 0, 1024, version=1)).hexdigest()
    assert digest.startswith("43ddda98e8437c8f")
    # Version 2 (SHAKE128): pinned just the same.
    digest = hashlib.sha256(content_for(42, 0, 1024, version=2)).hexdigest()
    assert digest.startswith("993d88ba3930a67a")
    digest = hashlib.sha256(content_for(42, 1, 3 * BLOCK + 6, version=2)).hexdigest()
    assert digest.startswith("68ece147e55d976f")
    # Version 3 (AES-128-CTR), the one new spools get; the last file crosses a piece.
    assert GENERATOR_VERSION == 3
    assert content_for(42, 0, 32, version=3).hex() == AES_42_0_32
    pins = [(0, 1024, "cf3abbc1"), (1, 3 * BLOCK + 6, "3dac20b1"), (0, PIECE + 18, "d3251a9f")]
    for index, size, pin in pins:
        digest = hashlib.sha256(content_for(42, index, size, version=3)).hexdigest()
        assert digest.startswith(pin), (index, size)
    assert content_for(42, 0, 1024) == content_for(42, 0, 1024, version=GENERATOR_VERSION)


def test_the_versions_make_different_bytes() -> None:
    made = {content_for(3, 4, 4096, version=v) for v in VERSIONS}
    assert len(made) == len(VERSIONS)


@pytest.mark.parametrize("version", [0, 4, -1])
def test_an_unknown_version_is_refused(version: int) -> None:
    with pytest.raises(ValueError, match="version"):
        content_for(0, 0, 8, version=version)


def test_a_journal_names_its_version_and_none_is_version_1() -> None:
    assert version_of({}) == 1  # a journal written before versions existed
    assert version_of({"seed": "4", "generator": "1"}) == 1
    assert version_of({"generator": "2"}) == 2
    assert version_of({"generator": "3"}) == 3
    assert set(VERSIONS) == {1, 2, 3}
    for unknown in ("4", "three", ""):
        with pytest.raises(ConfigError, match="generator version"):
            version_of({"generator": unknown})


@given(configs(), seeds, st.data())
def test_restart_at_k_yields_the_same_files_as_a_full_run(
    config: GeneratorConfig, seed: int, data: st.DataObject
) -> None:
    small = GeneratorConfig(
        count=config.count,
        min_size=2,
        max_size=64,
        min_interval=config.min_interval,
        max_interval=config.max_interval,
    )
    start = data.draw(st.integers(min_value=0, max_value=small.count))
    full = asyncio.run(collect(small, seed, FakeTime()))
    restarted = asyncio.run(collect(small, seed, FakeTime(), start=start))
    assert restarted == full[start:]


# --- large files, in pieces --------------------------------------------------------


def one_call(seed: int, index: int, size: int) -> bytes:
    """What version 1 was before the pieces: one `randbytes` for the whole file."""
    return random.Random(f"{seed}:{index}:content").randbytes(size)


@given(seeds, indices, st.integers(min_value=0, max_value=3000).map(lambda n: 2 * n))
def test_pieces_concatenate_to_the_one_call_bytes(seed: int, index: int, size: int) -> None:
    # Pieces of 4 and 12 bytes cut the stream at every word boundary a piece can have.
    for piece in (4, 12, PIECE):
        joined = b"".join(content_pieces(seed, index, size, piece, version=1))
        assert joined == one_call(seed, index, size)


@pytest.mark.parametrize("size", [PIECE - 2, PIECE, PIECE + 2, 3 * PIECE + 6])
def test_files_around_piece_boundaries_are_the_one_call_bytes(size: int) -> None:
    assert content_for(11, 2, size, version=1) == one_call(11, 2, size)
    pieces = content_pieces(11, 2, size, version=1)
    assert [len(p) for p in pieces][:-1] == [PIECE] * (-(-size // PIECE) - 1)


@pytest.mark.parametrize("piece", [0, -4, 2, 6])
def test_pieces_must_be_whole_words(piece: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        content_pieces(0, 0, 8, piece)


@pytest.mark.slow
def test_a_256_mib_file_is_written_in_pieces(tmp_path: Path) -> None:
    # One randbytes call cannot make it (OverflowError: its bit count is a C int).
    size = 256 * 1024 * 1024
    with pytest.raises(OverflowError):
        one_call(1, 0, size)
    path = tmp_path / "big.bin"
    digest = asyncio.run(write_file(path, 1, 0, size, version=1))
    assert path.stat().st_size == size
    hasher = xxhash.xxh3_128()
    with path.open("rb") as stream:
        while block := stream.read(PIECE):
            hasher.update(block)
    assert digest == hasher.hexdigest()
    assert list(tmp_path.iterdir()) == [path]  # no .tmp left behind
    # It starts with the one-call bytes of a smaller file of the same index (one whose
    # size is whole 32-bit words: a file ending in half a word takes the word's top half).
    with path.open("rb") as stream:
        assert stream.read(PIECE + 4) == one_call(1, 0, PIECE + 4)


@pytest.mark.parametrize("version", VERSIONS)
def test_write_file_matches_content_for_and_its_digest(tmp_path: Path, version: int) -> None:
    path = tmp_path / "f.bin"
    size = BLOCK + 1030  # two blocks of version 2, one piece; not whole AES blocks
    digest = asyncio.run(write_file(path, 42, 0, size, version))
    expected = content_for(42, 0, size, version=version)
    assert path.read_bytes() == expected
    assert digest == xxhash.xxh3_128_hexdigest(expected)
    assert list(tmp_path.iterdir()) == [path]  # published: no .tmp left


def test_a_write_stopped_before_its_rename_publishes_nothing(tmp_path: Path) -> None:
    # What a cancelled `write_file` tells its thread: the pieces stop and the rename is
    # skipped, so the final name never holds a file that was not finished.
    stop = threading.Event()
    stop.set()
    path = tmp_path / "f.bin"
    _write_and_publish(path, content_pieces(1, 1, 64), lambda _: None, stop)
    assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin.tmp"]  # swept on the next start


# --- pacing --------------------------------------------------------------------------


async def test_generate_yields_count_minus_start_files_sleeping_each_interval() -> None:
    config = GeneratorConfig(count=10, min_size=2, max_size=4096)
    fake = FakeTime()
    files = await collect(config, 5, fake, start=3)
    assert files == [spec_for(config, 5, i) for i in range(3, 10)]
    assert fake.delays == [spec_for(config, 5, i).interval for i in range(3, 10)]


async def test_generate_yields_nothing_when_start_is_count() -> None:
    fake = FakeTime()
    assert await collect(GeneratorConfig(count=4), 1, fake, start=4) == []
    assert fake.delays == []


@pytest.mark.parametrize("start", [-1, 5])
async def test_generate_rejects_start_outside_range(start: int) -> None:
    with pytest.raises(ValueError, match="start"):
        await collect(GeneratorConfig(count=4), 1, FakeTime(), start=start)


async def test_max_duration_stops_before_the_deadline() -> None:
    config = GeneratorConfig(count=100, min_size=2, max_size=2, max_duration=5.0)
    fake = FakeTime()
    files = await collect(config, 9, fake)
    intervals = [spec_for(config, 9, i).interval for i in range(100)]
    elapsed = [sum(intervals[: i + 1]) for i in range(100)]
    expected = sum(1 for t in elapsed if t < 5.0)
    assert 0 < expected < 100
    assert len(files) == expected
    assert fake.delays == intervals[:expected]  # the wait past the deadline is skipped
    assert fake.now - 1000.0 < 5.0


async def test_max_duration_counts_consumer_time() -> None:
    config = GeneratorConfig(count=10, min_size=2, max_size=2, max_duration=3.0)
    fake = FakeTime()
    seen = []
    async for spec in generate(config, 0, sleep=fake.sleep, clock=fake.clock):
        seen.append(spec.index)
        fake.now += 2.0  # the consumer is slow
    assert seen == [0]


async def test_overshooting_sleep_never_yields_after_the_deadline() -> None:
    config = GeneratorConfig(count=10, min_size=2, max_size=2, max_duration=0.5)
    fake = FakeTime()

    async def late_sleep(delay: float) -> None:
        fake.now += delay + 1.0  # the event loop woke us far too late

    files = [f async for f in generate(config, 0, sleep=late_sleep, clock=fake.clock)]
    assert files == []


async def test_zero_max_duration_yields_nothing() -> None:
    fake = FakeTime()
    config = GeneratorConfig(count=3, min_interval=0.0, max_interval=0.0, max_duration=0.0)
    assert await collect(config, 0, fake) == []


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": -1},
        {"min_size": 1},
        {"min_size": 0, "max_size": 0},
        {"min_size": 10, "max_size": 8},
        {"min_size": 3, "max_size": 3},
        {"min_interval": -0.1},
        {"min_interval": 2.0, "max_interval": 1.0},
        {"min_interval": math.nan},
        {"max_interval": math.nan},
        {"max_interval": math.inf},
        {"max_duration": -1.0},
        {"max_duration": math.nan},
    ],
)
def test_invalid_configs_raise_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError) as info:
        GeneratorConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
